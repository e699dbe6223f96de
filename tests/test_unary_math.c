/* The float exp and tanh that the CPU loops and CUDA kernels share
 * (ops/elem.h; exp: check_exp) and the tanh against libm's tanh in double: within 4.5e-7 absolute and
 * relative over [-12, 12] on a fine grid and over 1e-8 .. 10 on a log
 * grid, odd, and exactly +-1 beyond the clamp; and the float activations
 * built on it (GELU, tanh, their gradients; LSTM and GRU cells) against
 * their double versions (within 4e-6 of max(|value|, 1)). ReLU keeps NaN,
 * as PyTorch does, in the per-element rule and in a graph (check_relu_nan). */
#include "kiln/kiln.h"
#include "testutil.h"
#include "ops/elem.h"
#include "ops/seq.h"

#include <math.h>

static void check_tanh(void)
{
    double worst_abs = 0, worst_rel = 0, at = 0;
    int odd = 1;
    for (int i = -1200000; i <= 1200000; i++) { /* step 1e-5 */
        float x = (float)(i * 1e-5);
        double r = tanh((double)x), g = (double)kl_tanh_float(x);
        double ea = fabs(g - r), er = r != 0 ? ea / fabs(r) : ea;
        if (er > worst_rel) worst_rel = er, at = x;
        worst_abs = fmax(worst_abs, ea);
        odd &= kl_tanh_float(-x) == -kl_tanh_float(x);
    }
    for (int k = 0; k <= 9000; k++) { /* 1e-8 .. 10 */
        float x = (float)pow(10.0, -8 + k * 1e-3);
        double r = tanh((double)x), g = (double)kl_tanh_float(x);
        double er = fabs(g - r) / r;
        if (er > worst_rel) worst_rel = er, at = x;
    }
    /* 3.4e-7 where the compiler fuses multiply-adds (-O3, the GPU), 3.95e-7 without (-O0) */
    if (!(worst_rel <= 4.5e-7 && worst_abs <= 4.5e-7))
        fprintf(stderr, "  kl_tanh_float: max abs %.3g, max rel %.3g at %.9g\n", worst_abs, worst_rel, at);
    CHECK(worst_rel <= 4.5e-7 && worst_abs <= 4.5e-7);
    CHECK(odd);
    /* run-time values (volatile: a constant would be folded where the clamp
     * is not): exactly +-1 from the clamp on, NaN stays NaN */
    volatile float big[] = {7.90531110763549805f, 7.9054f, 9.0f, 50.0f, 1e4f, INFINITY}, nan = NAN, tiny = 1e-30f;
    int sat = 1;
    for (int i = 0; i < 6; i++) sat &= kl_tanh_float(big[i]) == 1.0f && kl_tanh_float(-big[i]) == -1.0f;
    CHECK(sat);
    CHECK(isnan(kl_tanh_float(nan)) && kl_tanh_float(tiny) == tiny && kl_tanh_float(-0.0f) == 0.0f);
}

/* kl_exp_float against libm's exp in double: within 1.2e-7 relative (8.4e-8
 * measured, with or without fused multiply-adds) where the result is a
 * normal float, within 2^-149 where it
 * is subnormal, over [-105, 89] on a fine grid; 0, inf and NaN at the ends */
static void check_exp(void)
{
    double worst = 0, at = 0, worst_sub = 0;
    for (int i = -10500000; i <= 8900000; i++) { /* step 1e-5 */
        float x = (float)(i * 1e-5);
        double r = exp((double)x), g = (double)kl_exp_float(x);
        if (r > 3.4028234663852886e38) { /* beyond FLT_MAX */
            worst = g == INFINITY || g >= 3.40282e38 ? worst : 1, at = g == INFINITY || g >= 3.40282e38 ? at : x;
            continue;
        }
        if (r >= 1.1754943508222875e-38) {
            double er = fabs(g - r) / r;
            if (er > worst) worst = er, at = x;
        } else worst_sub = fmax(worst_sub, fabs(g - r));
    }
    if (!(worst <= 1.2e-7 && worst_sub <= 0x1p-149))
        fprintf(stderr, "  kl_exp_float: max rel %.3g at %.9g, subnormal abs %.3g\n", worst, at, worst_sub);
    CHECK(worst <= 1.2e-7);
    CHECK(worst_sub <= 0x1p-149);
    volatile float lo = -104.5f, hi = 88.8f, ninf = -INFINITY, pinf = INFINITY, nan = NAN, zero = 0.0f;
    CHECK(kl_exp_float(lo) == 0.0f && kl_exp_float(ninf) == 0.0f);
    CHECK(kl_exp_float(hi) == INFINITY && kl_exp_float(pinf) == INFINITY);
    CHECK(isnan(kl_exp_float(nan)) && kl_exp_float(zero) == 1.0f);
}

/* float f against the double reference, relative to max(|ref|, 1) */
static double off(double f, double ref) { return fabs(f - ref) / fmax(fabs(ref), 1.0); }

static void check_activations(void)
{
    double worst = 0;
    static const int kinds[] = {KL_UN_GELU, KL_UN_TANH, KL_UN_SIGMOID};
    for (int k = 0; k < 3; k++)
        for (int i = -4000; i <= 4000; i++) {
            double x = i * 2.5e-3, dy = 0.75;
            float xf = (float)x;
            worst = fmax(worst, off(kl_unary_float(kinds[k], xf, 0), kl_unary_double(kinds[k], (double)xf, 0)));
            double s = kinds[k] == KL_UN_GELU ? (double)xf : kl_unary_double(kinds[k], (double)xf, 0);
            worst = fmax(worst, off(kl_unary_grad_float(kinds[k], (float)s, (float)dy, 0),
                                    kl_unary_grad_double(kinds[k], (double)(float)s, dy, 0)));
        }
    for (int i = -60; i <= 60; i++) { /* GELU's gradient far out (|s| up to 1000): 1 - t^2 is exactly 0 there */
        volatile float sv = (float)(i < 0 ? -pow(10.0, -i / 20.0) : pow(10.0, i / 20.0));
        float s = sv;
        double g = kl_unary_grad_float(KL_UN_GELU, s, 1.0f, 0), ref = kl_unary_grad_double(KL_UN_GELU, (double)s, 1.0, 0);
        worst = fmax(worst, isnan(g) ? INFINITY : off(g, ref));
    }
    for (int i = -300; i <= 300; i++) { /* LSTM and GRU cells on pre-activations around 0 */
        double v = i * 0.02;
        float fi = (float)v, ff = (float)(0.5 - v), fg = (float)(v * 1.5), fo = (float)(-v), fh;
        double di = fi, df = ff, dg = fg, dd = fo, dh;
        double cf = kl_lstm_cell_float(&fi, &ff, &fg, &fo, 0.3f, &fh);
        double cd = kl_lstm_cell_double(&di, &df, &dg, &dd, 0.3, &dh);
        worst = fmax(worst, fmax(off(cf, cd), off(fh, dh)));
        float r, z, n;
        double rd, zd, nd;
        double hf = kl_gru_cell_float((float)v, 0.2f, (float)(v * 0.7), -0.1f, (float)v, 0.4f, 0.25f, &r, &z, &n);
        double hd = kl_gru_cell_double((double)(float)v, (double)0.2f, (double)(float)(v * 0.7), (double)-0.1f,
                                       (double)(float)v, (double)0.4f, (double)0.25f, &rd, &zd, &nd);
        worst = fmax(worst, off(hf, hd));
    }
    /* GELU's gradient near |x| = 5 is the worst: its (1 - t^2) takes tanh's
     * absolute error (3.4e-7) times s * du / 2 ~ 8 (libm's tanhf: 4.4e-7) */
    if (!(worst <= 4e-6)) fprintf(stderr, "  float activations off their double versions by %.3g\n", worst);
    CHECK(worst <= 4e-6);
}

static void check_relu_nan(void)
{
    volatile float nan = NAN;
    CHECK(isnan(kl_relu_float(nan)) && isnan(kl_unary_float(KL_UN_RELU, nan, 0)) && isnan(kl_relu_double(nan)));
    CHECK(kl_relu_float(-2.0f) == 0 && kl_relu_float(3.0f) == 3.0f);
    CHECK(kl_relu_grad_float(nan, 0.5f) == 0.5f && kl_relu_grad_float(-1.0f, 0.5f) == 0 && kl_relu_grad_double(2.0, 0.5) == 0.5);
    /* the graph: relu's NaN reaches the sum; x's gradient passes through it */
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *x, *y, *loss, *dx;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_param(g, "x", KL_F32, 1, (int64_t[]){4}, NULL, &x));
    CHECK_OK(kl_relu(g, x, &y));
    CHECK_OK(kl_sum(g, y, 0, NULL, 0, &loss));
    CHECK_OK(kl_output(g, y));
    CHECK_OK(kl_backward(g, loss));
    CHECK_OK(kl_grad(g, x, &dx));
    CHECK_OK(kl_output(g, dx));
    float xv[4] = {NAN, -1.5f, 2.5f, -0.25f}, yv[4], gv[4], l;
    CHECK_OK(kl_tensor_set(x, xv, sizeof xv));
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_tensor_get(y, yv, sizeof yv));
    CHECK_OK(kl_tensor_get(loss, &l, sizeof l));
    CHECK_OK(kl_tensor_get(dx, gv, sizeof gv));
    CHECK(isnan(yv[0]) && yv[1] == 0 && yv[2] == 2.5f && yv[3] == 0 && isnan(l));
    CHECK(gv[0] == 1 && gv[1] == 0 && gv[2] == 1 && gv[3] == 0);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

int main(void)
{
    check_relu_nan();
    check_tanh();
    check_exp();
    check_activations();
    return kl_test_done("test_unary_math");
}
