/* Forward values of batchnorm (training and eval) and layernorm against
 * naive double-precision references on random data, running-statistic
 * updates after two runs against hand computation, thread-count
 * independence, and the error messages of the normalisation, dropout,
 * embedding and concat builders. */
#include "kiln/kiln.h"
#include "testutil.h"
#include "ops/ops.h" /* kl_batchnorm_act */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static uint64_t rs = 0x2545F4914F6CDD1Dull;
static double urand(void) /* [0, 1) */
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    return (double)(rs >> 11) / 9007199254740992.0;
}
static double nzrand(double lo, double hi) /* never exactly 0 */
{
    double v = lo + (hi - lo) * urand();
    return v == 0 ? 0.125 : v;
}

static double max_rel(const double *a, const double *b, int64_t n)
{
    double m = 0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs(a[i] - b[i]) / fmax(1.0, fabs(b[i]));
        if (e > m || isnan(e)) m = isnan(e) ? INFINITY : e;
    }
    return m;
}

/* naive batchnorm (biased variance) of x [N, C, S]; also the batch stats */
static void bn_ref(const double *x, int64_t N, int64_t C, int64_t S, const double *gm, const double *bt,
                   const double *mean_in, const double *var_in, double eps, double *y, double *mean, double *var)
{
    for (int64_t c = 0; c < C; c++) {
        double s = 0, v = 0, M = (double)(N * S);
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < S; k++) s += x[(n * C + c) * S + k];
        double mu = mean_in ? mean_in[c] : s / M;
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < S; k++) v += (x[(n * C + c) * S + k] - s / M) * (x[(n * C + c) * S + k] - s / M);
        double va = var_in ? var_in[c] : v / M;
        mean[c] = s / M;
        var[c] = v / M;
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < S; k++) {
                int64_t i = (n * C + c) * S + k;
                y[i] = (x[i] - mu) / sqrt(va + eps) * gm[c] + bt[c];
            }
    }
}

/* Training mode, f64 [3,4,2,3]: outputs per run and running stats after two runs. */
static void test_bn_train_running(void)
{
    enum { N = 3, C = 4, S = 6, NX = N * C * S };
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *x, *gm, *bt, *rm, *rv, *y;
    int64_t xd[4] = {N, C, 2, 3}, cd[1] = {C};
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "x", KL_F64, 4, xd, &x));
    CHECK_OK(kl_param(g, "bn.weight", KL_F64, 1, cd, NULL, &gm));
    CHECK_OK(kl_param(g, "bn.bias", KL_F64, 1, cd, NULL, &bt));
    CHECK_OK(kl_buffer(g, "bn.running_mean", KL_F64, 1, cd, NULL, &rm));
    CHECK_OK(kl_buffer(g, "bn.running_var", KL_F64, 1, cd, NULL, &rv));
    kl_batchnorm_opts o = {.eps = 1e-3, .momentum = 0.2, .training = 1};
    CHECK_OK(kl_batchnorm(g, x, gm, bt, rm, rv, &o, &y));
    CHECK_OK(kl_output(g, y));
    double gv[C], bv[C], r_m[C], r_v[C], xv[NX], yv[NX], ref[NX], mean[C], var[C];
    for (int c = 0; c < C; c++) {
        gv[c] = nzrand(0.5, 2), bv[c] = nzrand(-1, 1), r_m[c] = nzrand(-1, 1), r_v[c] = nzrand(0.5, 2);
    }
    CHECK_OK(kl_tensor_set(gm, gv, sizeof gv));
    CHECK_OK(kl_tensor_set(bt, bv, sizeof bv));
    CHECK_OK(kl_tensor_set(rm, r_m, sizeof r_m));
    CHECK_OK(kl_tensor_set(rv, r_v, sizeof r_v));
    for (int run = 0; run < 2; run++) {
        for (int i = 0; i < NX; i++) xv[i] = nzrand(-3, 3) + (run ? 5 : 0);
        CHECK_OK(kl_tensor_set(x, xv, sizeof xv));
        CHECK_OK(kl_graph_run(g));
        CHECK_OK(kl_tensor_get(y, yv, sizeof yv));
        bn_ref(xv, N, C, S, gv, bv, NULL, NULL, 1e-3, ref, mean, var);
        CHECK(max_rel(yv, ref, NX) < 1e-12);
        for (int c = 0; c < C; c++) { /* by hand: PyTorch's update with the unbiased variance */
            r_m[c] = 0.8 * r_m[c] + 0.2 * mean[c];
            r_v[c] = 0.8 * r_v[c] + 0.2 * var[c] * (double)(N * S) / (double)(N * S - 1);
        }
    }
    double got_m[C], got_v[C];
    CHECK_OK(kl_tensor_get(rm, got_m, sizeof got_m));
    CHECK_OK(kl_tensor_get(rv, got_v, sizeof got_v));
    CHECK(max_rel(got_m, r_m, C) < 1e-13);
    CHECK(max_rel(got_v, r_v, C) < 1e-13);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* exact: momentum 0 keeps the running statistics (PyTorch's meaning);
 * without exact, 0 is the 0.1 default. */
static void test_bn_momentum_zero(void)
{
    for (int exact = 0; exact < 2; exact++) {
        kl_ctx *ctx;
        kl_graph *g;
        kl_tensor *x, *rm, *rv, *y;
        int64_t xd[2] = {4, 2}, cd[1] = {2};
        CHECK_OK(kl_ctx_new(NULL, &ctx));
        CHECK_OK(kl_graph_new(ctx, &g));
        CHECK_OK(kl_input(g, "x", KL_F64, 2, xd, &x));
        CHECK_OK(kl_buffer(g, "bn.running_mean", KL_F64, 1, cd, NULL, &rm));
        CHECK_OK(kl_buffer(g, "bn.running_var", KL_F64, 1, cd, NULL, &rv));
        kl_batchnorm_opts o = {.training = 1, .exact = exact};
        CHECK_OK(kl_batchnorm(g, x, NULL, NULL, rm, rv, &o, &y));
        CHECK_OK(kl_output(g, y));
        double xv[8] = {1, 2, 3, 4, 5, 6, 7, 9}, m0[2] = {0.5, -0.5}, v0[2] = {2, 3}, m1[2], v1[2];
        CHECK_OK(kl_tensor_set(rm, m0, sizeof m0));
        CHECK_OK(kl_tensor_set(rv, v0, sizeof v0));
        CHECK_OK(kl_tensor_set(x, xv, sizeof xv));
        CHECK_OK(kl_graph_run(g));
        CHECK_OK(kl_tensor_get(rm, m1, sizeof m1));
        CHECK_OK(kl_tensor_get(rv, v1, sizeof v1));
        if (exact) CHECK(m1[0] == m0[0] && m1[1] == m0[1] && v1[0] == v0[0] && v1[1] == v0[1]);
        else CHECK(fabs(m1[0] - (0.9 * 0.5 + 0.1 * 4)) < 1e-12); /* mean of 1, 3, 5, 7 */
        kl_graph_free(g);
        kl_ctx_free(ctx);
    }
}

/* f32 batchnorm on a large input with a big common offset (checks the
 * variance is free of cancellation); training and eval; threads 1 vs 2. */
static void bn_f32_case(int training, int ndim, const int64_t *xd, int threads, float *out)
{
    int64_t N = xd[0], C = xd[1], n = 1;
    for (int d = 0; d < ndim; d++) n *= xd[d];
    int64_t S = n / (N * C);
    kl_ctx_opts co = {.threads = threads};
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *x, *gm, *bt, *rm, *rv, *y;
    CHECK_OK(kl_ctx_new(&co, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "x", KL_F32, ndim, xd, &x));
    CHECK_OK(kl_input(g, "gamma", KL_F32, 1, &C, &gm));
    CHECK_OK(kl_input(g, "beta", KL_F32, 1, &C, &bt));
    CHECK_OK(kl_buffer(g, "rm", KL_F32, 1, &C, NULL, &rm));
    CHECK_OK(kl_buffer(g, "rv", KL_F32, 1, &C, NULL, &rv));
    kl_batchnorm_opts o = {.training = training};
    CHECK_OK(kl_batchnorm(g, x, gm, bt, rm, rv, &o, &y));
    CHECK_OK(kl_output(g, y));
    float *xf = malloc((size_t)n * sizeof *xf), *gf = malloc((size_t)C * 4), *bf = malloc((size_t)C * 4);
    float *mf = malloc((size_t)C * 4), *vf = malloc((size_t)C * 4);
    double *xd64 = malloc((size_t)n * sizeof *xd64), *ref = malloc((size_t)n * sizeof *ref);
    double *gd = malloc((size_t)C * 8), *bd = malloc((size_t)C * 8), *md = malloc((size_t)C * 8),
           *vd = malloc((size_t)C * 8), *st = malloc((size_t)C * 16);
    rs = 0x1234567 + (uint64_t)ndim; /* same data for every thread count */
    for (int64_t i = 0; i < n; i++) xd64[i] = xf[i] = (float)(1000 + nzrand(-2, 2));
    for (int64_t c = 0; c < C; c++) {
        gd[c] = gf[c] = (float)nzrand(0.5, 1.5), bd[c] = bf[c] = (float)nzrand(-1, 1);
        md[c] = mf[c] = (float)(1000 + nzrand(-0.5, 0.5)), vd[c] = vf[c] = (float)nzrand(0.5, 2);
    }
    CHECK_OK(kl_tensor_set(x, xf, (size_t)n * 4));
    CHECK_OK(kl_tensor_set(gm, gf, (size_t)C * 4));
    CHECK_OK(kl_tensor_set(bt, bf, (size_t)C * 4));
    CHECK_OK(kl_tensor_set(rm, mf, (size_t)C * 4));
    CHECK_OK(kl_tensor_set(rv, vf, (size_t)C * 4));
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_tensor_get(y, out, (size_t)n * 4));
    bn_ref(xd64, N, C, S, gd, bd, training ? NULL : md, training ? NULL : vd, 1e-5, ref, st, st + C);
    double err = 0;
    for (int64_t i = 0; i < n; i++) err = fmax(err, fabs(out[i] - ref[i]) / fmax(1.0, fabs(ref[i])));
    CHECK(err < (training ? 2e-4 : 2e-3)); /* eval: x - mean loses digits of the 1000 offset in f32 */
    if (!training) { /* eval leaves running stats alone */
        CHECK_OK(kl_tensor_get(rm, gf, (size_t)C * 4));
        CHECK(memcmp(gf, mf, (size_t)C * 4) == 0);
    }
    free(xf), free(gf), free(bf), free(mf), free(vf), free(xd64), free(ref), free(gd), free(bd), free(md), free(vd);
    free(st);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

static void test_bn_f32(void)
{
    const int64_t d4[4] = {16, 16, 12, 12}, d2[2] = {512, 80}, d3[3] = {4, 5, 7};
    const int64_t *dims[3] = {d4, d2, d3};
    int nd[3] = {4, 2, 3};
    for (int k = 0; k < 3; k++)
        for (int tr = 0; tr <= 1; tr++) {
            int64_t n = 1;
            for (int d = 0; d < nd[k]; d++) n *= dims[k][d];
            float *a = malloc((size_t)n * 4), *b = malloc((size_t)n * 4);
            bn_f32_case(tr, nd[k], dims[k], 1, a);
            bn_f32_case(tr, nd[k], dims[k], 2, b);
            CHECK(memcmp(a, b, (size_t)n * 4) == 0); /* same bits whatever the thread count */
            free(a), free(b);
        }
}

/* batchnorm with a fused activation (kl_batchnorm_act, what nn/model.c
 * builds for batchnorm + relu) against batchnorm then the activation: the
 * same bits for y, the running statistics and every gradient. */
typedef struct { kl_ctx *ctx; kl_graph *g; kl_tensor *y; } bn_act_run;

static void bn_act_build(bn_act_run *r, int fused, kl_act act, int training, int ndim, const int64_t *xd)
{
    kl_ctx_opts co = {.seed = 11, .threads = 2};
    kl_tensor *x, *gm, *bt, *rm, *rv, *rr, *l;
    const kl_init u = {KL_INIT_UNIFORM, 1.0}, half = {KL_INIT_UNIFORM, 0.5}, ones = {KL_INIT_ONES, 0};
    int64_t C = xd[1];
    CHECK_OK(kl_ctx_new(&co, &r->ctx));
    CHECK_OK(kl_graph_new(r->ctx, &r->g));
    kl_graph *g = r->g;
    CHECK_OK(kl_param(g, "x", KL_F32, ndim, xd, &u, &x));
    CHECK_OK(kl_param(g, "gamma", KL_F32, 1, &C, &u, &gm));
    CHECK_OK(kl_param(g, "beta", KL_F32, 1, &C, &u, &bt));
    CHECK_OK(kl_buffer(g, "rm", KL_F32, 1, &C, &half, &rm));
    CHECK_OK(kl_buffer(g, "rv", KL_F32, 1, &C, &ones, &rv));
    kl_batchnorm_opts o = {.training = training, .momentum = 0.2};
    if (fused) CHECK_OK(kl_batchnorm_act(g, x, gm, bt, rm, rv, &o, act, &r->y));
    else {
        CHECK_OK(kl_batchnorm(g, x, gm, bt, rm, rv, &o, &r->y));
        CHECK_OK(kl_activation(g, r->y, act, &r->y));
    }
    CHECK_OK(kl_output(g, r->y));
    CHECK_OK(kl_buffer(g, "r", KL_F32, ndim, xd, &u, &rr));
    CHECK_OK(kl_mul(g, r->y, rr, &l));
    CHECK_OK(kl_sum(g, l, 0, NULL, 0, &l));
    CHECK_OK(kl_backward(g, l));
    CHECK_OK(kl_graph_run(g));
}

static void test_bn_fused_act(void)
{
    static const int64_t d4[4] = {6, 5, 7, 3}, d2[2] = {40, 9};
    static const kl_act acts[3] = {KL_ACT_RELU, KL_ACT_TANH, KL_ACT_SIGMOID};
    for (int k = 0; k < 2; k++)
        for (int a = 0; a < 3; a++)
            for (int tr = 0; tr <= 1; tr++) {
                bn_act_run r[2];
                for (int f = 0; f < 2; f++) bn_act_build(&r[f], f, acts[a], tr, k ? 2 : 4, k ? d2 : d4);
                int np = kl_ctx_param_count(r[0].ctx), same = np == kl_ctx_param_count(r[1].ctx);
                float va[4096], vb[4096];
                CHECK_OK(kl_tensor_get(r[0].y, va, (size_t)kl_tensor_numel(r[0].y) * 4));
                CHECK_OK(kl_tensor_get(r[1].y, vb, (size_t)kl_tensor_numel(r[1].y) * 4));
                same &= !memcmp(va, vb, (size_t)kl_tensor_numel(r[0].y) * 4);
                for (int i = 0; same && i < np; i++) { /* x, gamma, beta and their gradients; rm, rv, r */
                    int nd = 0, trainable = 0;
                    int64_t dims[KL_MAX_DIMS];
                    CHECK_OK(kl_ctx_param_info(r[0].ctx, i, NULL, NULL, &nd, dims, &trainable));
                    size_t bytes = 4;
                    for (int d = 0; d < nd; d++) bytes *= (size_t)dims[d];
                    CHECK_OK(kl_ctx_param_get(r[0].ctx, i, va, bytes));
                    CHECK_OK(kl_ctx_param_get(r[1].ctx, i, vb, bytes));
                    same &= !memcmp(va, vb, bytes);
                    if (trainable) {
                        CHECK_OK(kl_ctx_grad_get(r[0].ctx, i, va, bytes));
                        CHECK_OK(kl_ctx_grad_get(r[1].ctx, i, vb, bytes));
                        same &= !memcmp(va, vb, bytes);
                    }
                }
                if (!same) fprintf(stderr, "  fused act %d, training %d, %s: differs\n", (int)acts[a], tr, k ? "2-D" : "4-D");
                CHECK(same);
                for (int f = 0; f < 2; f++) kl_graph_free(r[f].g), kl_ctx_free(r[f].ctx);
            }
}

/* layernorm f32 [3,5,40] and f64 [4,9] with and without affine terms; x
 * spread over amp around 3 * amp (small amp with eps 0: eps is not replaced) */
static void ln_case(kl_dtype dt, int ndim, const int64_t *xd, int affine, double eps, double amp)
{
    int64_t n = 1, D = xd[ndim - 1];
    for (int d = 0; d < ndim; d++) n *= xd[d];
    size_t es = dt == KL_F32 ? 4 : 8;
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *x, *gm = NULL, *bt = NULL, *y;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "x", dt, ndim, xd, &x));
    if (affine) {
        CHECK_OK(kl_input(g, "gamma", dt, 1, &D, &gm));
        CHECK_OK(kl_input(g, "beta", dt, 1, &D, &bt));
    }
    CHECK_OK(kl_layernorm(g, x, gm, bt, eps, &y));
    CHECK_OK(kl_output(g, y));
    double *xv = malloc((size_t)n * 8), *ref = malloc((size_t)n * 8), *yv = malloc((size_t)n * 8);
    double *gv = malloc((size_t)D * 8), *bv = malloc((size_t)D * 8);
    void *buf = malloc((size_t)n * es);
    for (int64_t i = 0; i < n; i++) xv[i] = (nzrand(-2, 2) + 3) * amp;
    for (int64_t i = 0; i < D; i++) gv[i] = affine ? nzrand(0.5, 2) : 1, bv[i] = affine ? nzrand(-1, 1) : 0;
#define PUT(t, v, cnt)                                                                             \
    do {                                                                                           \
        for (int64_t i_ = 0; i_ < (cnt); i_++)                                                     \
            if (dt == KL_F32) ((float *)buf)[i_] = (float)(v)[i_];                                 \
            else ((double *)buf)[i_] = (v)[i_];                                                    \
        CHECK_OK(kl_tensor_set(t, buf, (size_t)(cnt) * es));                                      \
    } while (0)
    PUT(x, xv, n);
    if (affine) {
        PUT(gm, gv, D);
        PUT(bt, bv, D);
    }
    if (dt == KL_F32) /* the reference sees the rounded inputs */
        for (int64_t i = 0; i < n; i++) xv[i] = (float)xv[i];
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_tensor_get(y, buf, (size_t)n * es));
    for (int64_t i = 0; i < n; i++) yv[i] = dt == KL_F32 ? ((float *)buf)[i] : ((double *)buf)[i];
    for (int64_t r = 0; r < n / D; r++) {
        double s = 0, v = 0;
        for (int64_t i = 0; i < D; i++) s += xv[r * D + i];
        s /= (double)D;
        for (int64_t i = 0; i < D; i++) v += (xv[r * D + i] - s) * (xv[r * D + i] - s);
        v /= (double)D;
        for (int64_t i = 0; i < D; i++)
            ref[r * D + i] = (xv[r * D + i] - s) / sqrt(v + eps) * (float)gv[i] + (float)bv[i];
    }
    CHECK(max_rel(yv, ref, n) < (dt == KL_F32 ? 1e-5 : 1e-7)); /* f64 ref uses f32-rounded gamma, beta */
    free(xv), free(ref), free(yv), free(gv), free(bv), free(buf);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

static void test_layernorm(void)
{
    int64_t a[3] = {3, 5, 40}, b[2] = {4, 9}, c[2] = {700, 64};
    ln_case(KL_F32, 3, a, 1, 1e-5, 1);
    ln_case(KL_F32, 2, c, 1, 1e-5, 1);
    ln_case(KL_F64, 2, b, 0, 1e-5, 1);
    ln_case(KL_F32, 2, b, 0, 1e-5, 1);
    ln_case(KL_F64, 2, b, 1, 0, 1e-3);
    ln_case(KL_F32, 3, a, 0, 0, 1e-3);
}

static void test_errors(void)
{
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *x4, *x2, *x1c, *g4, *g3, *w, *rm, *rv, *idx, *xi, *xf64, *y;
    int64_t d4[4] = {8, 3, 5, 5}, d2[2] = {2, 5}, d1c[2] = {1, 3}, c4 = 4, c3 = 3, wd[2] = {6, 4}, id[1] = {3};
    int64_t d24[2] = {2, 4};
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "x4", KL_F32, 4, d4, &x4));
    CHECK_OK(kl_input(g, "x2", KL_F32, 2, d2, &x2));
    CHECK_OK(kl_input(g, "x1c", KL_F32, 2, d1c, &x1c));
    CHECK_OK(kl_input(g, "xi", KL_I32, 2, d2, &xi));
    CHECK_OK(kl_input(g, "xf64", KL_F64, 2, d24, &xf64));
    CHECK_OK(kl_param(g, "g4", KL_F32, 1, &c4, NULL, &g4));
    CHECK_OK(kl_param(g, "g3", KL_F32, 1, &c3, NULL, &g3));
    CHECK_OK(kl_buffer(g, "rm", KL_F32, 1, &c3, NULL, &rm));
    CHECK_OK(kl_buffer(g, "rv", KL_F32, 1, &c3, NULL, &rv));
    CHECK_OK(kl_param(g, "w", KL_F32, 2, wd, NULL, &w));
    CHECK_OK(kl_input(g, "idx", KL_I32, 1, id, &idx));
    kl_batchnorm_opts tr = {.training = 1}, ev = {.training = 0};
    /* batchnorm */
    CHECK_ERR(kl_batchnorm(g, x4, g4, NULL, rm, rv, &tr, &y), KL_EINVAL,
              "batchnorm: gamma is [4] f32, expected [3] f32 for input [8,3,5,5] f32 (3 channels)");
    CHECK(y == NULL);
    CHECK_ERR(kl_batchnorm(g, x4, NULL, g4, NULL, NULL, &tr, &y), KL_EINVAL, "batchnorm: beta is [4] f32");
    CHECK_ERR(kl_batchnorm(g, x1c, NULL, NULL, NULL, NULL, &tr, &y), KL_EINVAL,
              "batchnorm: training needs more than 1 value per channel, input [1,3] f32 has 1");
    CHECK_ERR(kl_batchnorm(g, x4, NULL, NULL, NULL, NULL, &ev, &y), KL_EINVAL,
              "eval mode (training 0) needs running_mean and running_var");
    CHECK_ERR(kl_batchnorm(g, x4, NULL, NULL, rm, NULL, &tr, &y), KL_EINVAL, "pass both running_mean and running_var");
    CHECK_ERR(kl_batchnorm(g, x4, NULL, NULL, g3, rv, &tr, &y), KL_EINVAL,
              "batchnorm: running_mean 'g3' [3] f32 must be a buffer (kl_buffer)");
    CHECK_ERR(kl_batchnorm(g, x4, NULL, NULL, rm, rv, NULL, &y), KL_EMISUSE, "batchnorm: opts is NULL");
    CHECK_ERR(kl_batchnorm(g, x4, NULL, NULL, rm, rm, &tr, &y), KL_EINVAL,
              "running_mean and running_var are the same tensor 'rm'");
    CHECK_ERR(kl_batchnorm(g, xi, NULL, NULL, NULL, NULL, &tr, &y), KL_EINVAL,
              "batchnorm: expected floating-point input, got [2,5] i32");
    CHECK_ERR(kl_batchnorm(g, idx, NULL, NULL, NULL, NULL, &tr, &y), KL_EINVAL, "expected floating-point input");
    CHECK_OK(kl_batchnorm(g, xf64, NULL, NULL, NULL, NULL, &tr, &y)); /* f64 fine */
    CHECK_ERR(kl_batchnorm(g, x4, g3, NULL, NULL, NULL, &(kl_batchnorm_opts){.momentum = 2, .training = 1}, &y),
              KL_EINVAL, "momentum 2 in [0, 1]");
    /* layernorm */
    CHECK_ERR(kl_layernorm(g, x2, g4, NULL, 1e-5, &y), KL_EINVAL,
              "layernorm: gamma is [4] f32, expected [5] f32 for input [2,5] f32 (last dim 5)");
    CHECK_ERR(kl_layernorm(g, xf64, NULL, g4, 1e-5, &y), KL_EINVAL, "layernorm: beta is [4] f32, expected [4] f64");
    CHECK_ERR(kl_layernorm(g, xi, NULL, NULL, 1e-5, &y), KL_EINVAL, "layernorm: expected floating-point input, got [2,5] i32");
    CHECK_ERR(kl_layernorm(g, x2, NULL, NULL, -1, &y), KL_EINVAL, "layernorm: eps must be finite and >= 0, got -1");
    /* dropout */
    CHECK_ERR(kl_dropout(g, x2, 1.0, &y), KL_EINVAL, "dropout: p must be in [0, 1), got 1");
    CHECK_ERR(kl_dropout(g, x2, -0.1, &y), KL_EINVAL, "dropout: p must be in [0, 1), got -0.1");
    CHECK_ERR(kl_dropout(g, x2, NAN, &y), KL_EINVAL, "dropout: p must be in [0, 1), got nan");
    CHECK_ERR(kl_dropout(g, xi, 0.5, &y), KL_EINVAL, "dropout: expected floating-point input, got [2,5] i32");
    CHECK_OK(kl_dropout(g, x2, 0.0, &y));
    CHECK(y == x2);
    /* embedding */
    CHECK_ERR(kl_embedding(g, w, x2, &y), KL_EINVAL, "embedding: indices must be i32, got [2,5] f32");
    CHECK_ERR(kl_embedding(g, x4, idx, &y), KL_EINVAL, "embedding: weight must be [V, D] floating-point, got [8,3,5,5] f32");
    CHECK_ERR(kl_embedding(g, w, NULL, &y), KL_EMISUSE, "embedding: input 1 is NULL");
    /* concat */
    kl_tensor *p[3] = {x2, xf64, x2};
    CHECK_ERR(kl_concat(g, 2, p, 0, &y), KL_EINVAL, "concat: input 1 [2,4] f64 has dtype f64, input 0 [2,5] f32 has f32");
    kl_tensor *q[3] = {x2, x2, g4};
    CHECK_ERR(kl_concat(g, 3, q, 0, &y), KL_EINVAL, "concat: input 2 [4] f32 has 1 dims, input 0 [2,5] f32 has 2");
    kl_tensor *r[3] = {x2, x2, x1c};
    CHECK_ERR(kl_concat(g, 3, r, 0, &y), KL_EINVAL,
              "concat: input 2 [1,3] f32 differs from input 0 [2,5] f32 in dim 1 (only axis 0 may differ)");
    CHECK(kl_concat(g, 3, r, 1, &y) == KL_EINVAL); /* dim 0 differs too */
    CHECK_ERR(kl_concat(g, 2, r, 2, &y), KL_EINVAL, "concat: axis 2 out of range for [2,5] f32");
    CHECK_ERR(kl_concat(g, 0, r, 0, &y), KL_EMISUSE, "concat: needs at least one input (n = 0");
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

int main(void)
{
    test_bn_train_running();
    test_bn_momentum_zero();
    test_bn_f32();
    test_bn_fused_act();
    test_layernorm();
    test_errors();
    return kl_test_done("test_norm_ops");
}
