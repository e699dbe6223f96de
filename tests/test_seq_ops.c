/* Forward values of the sequence ops (LSTM, GRU, attention, RMSNorm, RoPE)
 * in f64 and f32 against straightforward double-precision references on
 * random data, LSTM/GRU f32 gradients against f64 ones, a hand-computed
 * RoPE value, attention gradients identical
 * for 1 and 2 threads, and the builders' error messages. Gradients are
 * checked in test_gradcheck_seq.c. */
#include "kiln/kiln.h"
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static uint64_t rs = 0x2545F4914F6CDD1Dull;
static double nzrand(double lo, double hi) /* [lo, hi), never exactly 0 */
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    double v = lo + (hi - lo) * (double)(rs >> 11) / 9007199254740992.0;
    return v == 0 ? 0.125 : v;
}
static double *rnd(int64_t n, double lo, double hi)
{
    double *v = malloc((size_t)n * sizeof *v);
    for (int64_t i = 0; i < n; i++) v[i] = nzrand(lo, hi);
    return v;
}
static double sigm(double x) { return 1 / (1 + exp(-x)); }

/* Inputs get their values once the graph is built (adding nodes replans the
 * arena): in_set records them, set_inputs writes them. */
static struct { kl_tensor *t; kl_dtype dt; int64_t n; const double *v; } pending[16];
static int n_pending;

/* an input of dtype dt that will hold v (converted for f32) */
static kl_tensor *in_set(kl_graph *g, const char *name, kl_dtype dt, int nd, const int64_t *d, const double *v)
{
    kl_tensor *t = NULL;
    int64_t n = 1;
    for (int i = 0; i < nd; i++) n *= d[i];
    CHECK_OK(kl_input(g, name, dt, nd, d, &t));
    if (t && n_pending < 16) pending[n_pending++] = (typeof(pending[0])){t, dt, n, v};
    return t;
}
static void set_inputs(void)
{
    for (int k = 0; k < n_pending; k++) {
        int64_t n = pending[k].n;
        if (pending[k].dt == KL_F64) {
            CHECK_OK(kl_tensor_set(pending[k].t, pending[k].v, (size_t)n * 8));
            continue;
        }
        float *f = malloc((size_t)n * 4);
        for (int64_t i = 0; i < n; i++) f[i] = (float)pending[k].v[i];
        CHECK_OK(kl_tensor_set(pending[k].t, f, (size_t)n * 4));
        free(f);
    }
    n_pending = 0;
}
static void run(kl_graph *g)
{
    set_inputs();
    CHECK_OK(kl_graph_run(g));
}

/* max relative error of t's value against ref */
static double err_vs(const kl_tensor *t, kl_dtype dt, const double *ref, int64_t n)
{
    double *v = malloc((size_t)n * 8), e = 0;
    if (dt == KL_F64) {
        CHECK_OK(kl_tensor_get(t, v, (size_t)n * 8));
    } else {
        float *f = malloc((size_t)n * 4);
        CHECK_OK(kl_tensor_get(t, f, (size_t)n * 4));
        for (int64_t i = 0; i < n; i++) v[i] = f[i];
        free(f);
    }
    for (int64_t i = 0; i < n; i++) {
        double r = fabs(v[i] - ref[i]) / fmax(1.0, fabs(ref[i]));
        e = (r > e || isnan(r)) ? (isnan(r) ? INFINITY : r) : e;
    }
    free(v);
    return e;
}
static double tol(kl_dtype dt) { return dt == KL_F64 ? 1e-12 : 2e-5; }

/* ---- recurrent layers: reference and test (G 4: LSTM, 3: GRU) ---- */

/* pre[k*H + j] = b_ih + W_ih x (+ b_hh + W_hh h unless split) for gate k, unit j */
static void proj(int64_t GH, int64_t n, const double *w, const double *b, const double *v, double *out)
{
    for (int64_t r = 0; r < GH; r++) {
        double s = b ? b[r] : 0;
        for (int64_t i = 0; i < n; i++) s += w[r * n + i] * v[i];
        out[r] = s;
    }
}

static void rnn_ref(int G, int64_t B, int64_t T, int64_t I, int64_t H, const double *const *p, double *y, double *hn,
                    double *cn)
{
    const double *x = p[0], *wih = p[1], *whh = p[2], *bih = p[3], *bhh = p[4], *h0 = p[5], *c0 = p[6];
    double h[64], c[64], gi[256], gh[256];
    for (int64_t b = 0; b < B; b++) {
        for (int64_t j = 0; j < H; j++) h[j] = h0 ? h0[b * H + j] : 0, c[j] = c0 ? c0[b * H + j] : 0;
        for (int64_t t = 0; t < T; t++) {
            proj(G * H, I, wih, bih, x + (b * T + t) * I, gi);
            proj(G * H, H, whh, bhh, h, gh);
            for (int64_t j = 0; j < H; j++) {
                if (G == 4) {
                    double i = sigm(gi[j] + gh[j]), f = sigm(gi[H + j] + gh[H + j]);
                    double gg = tanh(gi[2 * H + j] + gh[2 * H + j]), o = sigm(gi[3 * H + j] + gh[3 * H + j]);
                    c[j] = f * c[j] + i * gg;
                    y[(b * T + t) * H + j] = o * tanh(c[j]);
                } else {
                    double r = sigm(gi[j] + gh[j]), z = sigm(gi[H + j] + gh[H + j]);
                    double n = tanh(gi[2 * H + j] + r * gh[2 * H + j]);
                    y[(b * T + t) * H + j] = (1 - z) * n + z * h[j];
                }
            }
            for (int64_t j = 0; j < H; j++) h[j] = y[(b * T + t) * H + j];
        }
        for (int64_t j = 0; j < H; j++) hn[b * H + j] = h[j], cn[b * H + j] = c[j];
    }
}

static void test_rnn(int G, kl_dtype dt, int64_t B, int64_t T, int64_t I, int64_t H, int full)
{
    kl_ctx *ctx;
    kl_graph *g;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    int64_t dx[3] = {B, T, I}, dwi[2] = {G * H, I}, dwh[2] = {G * H, H}, db[1] = {G * H}, ds[2] = {B, H};
    double *p[7] = {rnd(B * T * I, -1, 1), rnd(G * H * I, -0.6, 0.6), rnd(G * H * H, -0.6, 0.6)};
    if (full) p[3] = rnd(G * H, -0.5, 0.5), p[4] = rnd(G * H, -0.5, 0.5), p[5] = rnd(B * H, -1, 1);
    if (full && G == 4) p[6] = rnd(B * H, -1, 1);
    kl_tensor *x = in_set(g, "x", dt, 3, dx, p[0]), *wih = in_set(g, "w_ih", dt, 2, dwi, p[1]);
    kl_tensor *whh = in_set(g, "w_hh", dt, 2, dwh, p[2]), *t[7] = {NULL}, *y, *hn, *cn = NULL;
    if (full) {
        t[3] = in_set(g, "b_ih", dt, 1, db, p[3]), t[4] = in_set(g, "b_hh", dt, 1, db, p[4]);
        t[5] = in_set(g, "h0", dt, 2, ds, p[5]);
        if (G == 4) t[6] = in_set(g, "c0", dt, 2, ds, p[6]);
    }
    if (G == 4) CHECK_OK(kl_lstm(g, x, t[5], t[6], wih, whh, t[3], t[4], &y, &hn, &cn));
    else CHECK_OK(kl_gru(g, x, t[5], wih, whh, t[3], t[4], &y, &hn));
    CHECK_OK(kl_output(g, y));
    CHECK_OK(kl_output(g, hn));
    if (cn) CHECK_OK(kl_output(g, cn));
    run(g);
    double *ry = malloc((size_t)(B * T * H) * 8), *rh = malloc((size_t)(B * H) * 8), *rc = malloc((size_t)(B * H) * 8);
    rnn_ref(G, B, T, I, H, (const double *const *)p, ry, rh, rc);
    CHECK(err_vs(y, dt, ry, B * T * H) < tol(dt));
    CHECK(err_vs(hn, dt, rh, B * H) < tol(dt));
    if (cn) CHECK(err_vs(cn, dt, rc, B * H) < tol(dt));
    for (int i = 0; i < 7; i++) free(p[i]);
    free(ry), free(rh), free(rc);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* The gradients of every operand of an LSTM (G 4) or GRU (G 3) layer in dt
 * for the loss sum(y ry) + sum(h_n rh) (+ sum(c_n rc)), concatenated into
 * out (doubles). p: the operands' values (x, w_ih, w_hh, then with full
 * b_ih, b_hh, h0, c0), r: ry, rh, rc. */
static int64_t rnn_grads(int G, kl_dtype dt, int64_t B, int64_t T, int64_t I, int64_t H, int full, double **p,
                         double **r, double *out)
{
    kl_ctx *ctx;
    kl_graph *g;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    int64_t dims[7][3] = {{B, T, I}, {G * H, I}, {G * H, H}, {G * H}, {G * H}, {B, H}, {B, H}};
    int nd[7] = {3, 2, 2, 1, 1, 2, 2}, np = full ? (G == 4 ? 7 : 6) : 3;
    static const char *names[7] = {"x", "w_ih", "w_hh", "b_ih", "b_hh", "h0", "c0"};
    kl_tensor *t[7] = {NULL}, *y, *hn, *cn = NULL, *l, *terms[3];
    for (int k = 0; k < np; k++) CHECK_OK(kl_param(g, names[k], dt, nd[k], dims[k], NULL, &t[k]));
    if (G == 4) CHECK_OK(kl_lstm(g, t[0], t[5], t[6], t[1], t[2], t[3], t[4], &y, &hn, &cn));
    else CHECK_OK(kl_gru(g, t[0], t[5], t[1], t[2], t[3], t[4], &y, &hn));
    kl_tensor *outs[3] = {y, hn, cn};
    int64_t bth[3] = {B, T, H};
    for (int k = 0; k < (cn ? 3 : 2); k++) {
        kl_tensor *rt = in_set(g, k ? (k == 1 ? "rh" : "rc") : "ry", dt, k ? 2 : 3, k ? dims[5] : bth, r[k]);
        CHECK_OK(kl_mul(g, outs[k], rt, &terms[k]));
        CHECK_OK(kl_sum(g, terms[k], 0, NULL, 0, &terms[k]));
    }
    CHECK_OK(kl_add(g, terms[0], terms[1], &l));
    if (cn) CHECK_OK(kl_add(g, l, terms[2], &l));
    CHECK_OK(kl_backward(g, l));
    kl_tensor *gr[7];
    for (int k = 0; k < np; k++) {
        CHECK_OK(kl_grad(g, t[k], &gr[k]));
        CHECK_OK(kl_output(g, gr[k]));
    }
    for (int k = 0; k < np; k++) { /* the operands' values, converted */
        int64_t n = kl_tensor_numel(t[k]);
        float *f = malloc((size_t)n * 4);
        for (int64_t i = 0; i < n; i++) f[i] = (float)p[k][i];
        CHECK_OK(kl_tensor_set(t[k], dt == KL_F64 ? (void *)p[k] : (void *)f, (size_t)n * (dt == KL_F64 ? 8 : 4)));
        free(f);
    }
    run(g);
    int64_t at = 0;
    for (int k = 0; k < np; k++) {
        int64_t n = kl_tensor_numel(gr[k]);
        float *f = malloc((size_t)n * 4);
        if (dt == KL_F64) CHECK_OK(kl_tensor_get(gr[k], out + at, (size_t)n * 8));
        else {
            CHECK_OK(kl_tensor_get(gr[k], f, (size_t)n * 4));
            for (int64_t i = 0; i < n; i++) out[at + i] = f[i];
        }
        free(f);
        at += n;
    }
    kl_graph_free(g);
    kl_ctx_free(ctx);
    return at;
}

/* f32 gradients against f64 ones (the f32 per-step GEMMs go through oneDNN
 * where it is loaded; test_seq_ops_blas runs them on BLAS) */
static void test_rnn_grads_f32(int G, int64_t B, int64_t T, int64_t I, int64_t H, int full)
{
    double *p[7] = {rnd(B * T * I, -1, 1), rnd(G * H * I, -0.4, 0.4), rnd(G * H * H, -0.4, 0.4), rnd(G * H, -0.5, 0.5),
                    rnd(G * H, -0.5, 0.5), rnd(B * H, -1, 1), rnd(B * H, -1, 1)};
    double *r[3] = {rnd(B * T * H, -1, 1), rnd(B * H, -1, 1), rnd(B * H, -1, 1)};
    int64_t n = B * T * I + G * H * (I + H + 2) + 2 * B * H;
    double *g64 = malloc((size_t)n * 8), *g32 = malloc((size_t)n * 8), e = 0, big = 1e-30;
    int64_t n64 = rnn_grads(G, KL_F64, B, T, I, H, full, p, r, g64), n32 = rnn_grads(G, KL_F32, B, T, I, H, full, p, r, g32);
    CHECK(n64 == n32);
    for (int64_t i = 0; i < n64; i++) big = fmax(big, fabs(g64[i]));
    for (int64_t i = 0; i < n64; i++) e = fmax(e, isnan(g32[i]) ? INFINITY : fabs(g32[i] - g64[i]) / big);
    if (!(e < 1e-5)) printf("  %s f32 gradients (B %lld T %lld I %lld H %lld%s): off by %.3g of the largest\n",
                            G == 4 ? "lstm" : "gru", (long long)B, (long long)T, (long long)I, (long long)H,
                            full ? ", biases and initial state" : "", e);
    CHECK(e < 1e-5);
    for (int k = 0; k < 7; k++) free(p[k]);
    for (int k = 0; k < 3; k++) free(r[k]);
    free(g64), free(g32);
}

/* ---- attention ---- */

static void att_ref(int64_t BH, int64_t Tq, int64_t Tk, int64_t D, int64_t Dv, int causal, const double *q,
                    const double *k, const double *v, double *o)
{
    double s[256];
    for (int64_t bh = 0; bh < BH; bh++)
        for (int64_t i = 0; i < Tq; i++) {
            double mx = -INFINITY, sum = 0;
            for (int64_t j = 0; j < Tk; j++) {
                double d = 0;
                for (int64_t c = 0; c < D; c++) d += q[(bh * Tq + i) * D + c] * k[(bh * Tk + j) * D + c];
                s[j] = causal && j > i ? -INFINITY : d / sqrt((double)D);
                mx = fmax(mx, s[j]);
            }
            for (int64_t j = 0; j < Tk; j++) sum += (s[j] = exp(s[j] - mx));
            for (int64_t c = 0; c < Dv; c++) {
                double acc = 0;
                for (int64_t j = 0; j < Tk; j++) acc += s[j] / sum * v[(bh * Tk + j) * Dv + c];
                o[(bh * Tq + i) * Dv + c] = acc;
            }
        }
}

static void test_attention(kl_dtype dt, int causal, int64_t B, int64_t H, int64_t Tq, int64_t Tk, int64_t D, int64_t Dv)
{
    kl_ctx *ctx;
    kl_graph *g;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    int64_t dq[4] = {B, H, Tq, D}, dk[4] = {B, H, Tk, D}, dv[4] = {B, H, Tk, Dv}, BH = B * H;
    double *q = rnd(BH * Tq * D, -2, 2), *k = rnd(BH * Tk * D, -2, 2), *v = rnd(BH * Tk * Dv, -1, 1);
    double *ref = malloc((size_t)(BH * Tq * Dv) * 8);
    kl_tensor *o;
    CHECK_OK(kl_attention(g, in_set(g, "q", dt, 4, dq, q), in_set(g, "k", dt, 4, dk, k), in_set(g, "v", dt, 4, dv, v),
                          causal, &o));
    CHECK_OK(kl_output(g, o));
    run(g);
    att_ref(BH, Tq, Tk, D, Dv, causal, q, k, v, ref);
    CHECK(err_vs(o, dt, ref, BH * Tq * Dv) < tol(dt));
    free(q), free(k), free(v), free(ref);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* f32 causal attention [2,3,150,16]: the gradients of q, k, v have the same bits for 1 and 2 threads */
static void att_grads(int threads, float *out, size_t n)
{
    kl_ctx_opts co = {.seed = 11, .threads = threads};
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *p[3], *o, *loss;
    int64_t d[4] = {2, 3, 150, 16};
    kl_init init = {KL_INIT_UNIFORM, 1.5};
    const char *names[3] = {"q", "k", "v"};
    CHECK_OK(kl_ctx_new(&co, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    for (int i = 0; i < 3; i++) CHECK_OK(kl_param(g, names[i], KL_F32, 4, d, &init, &p[i]));
    CHECK_OK(kl_attention(g, p[0], p[1], p[2], 1, &o));
    CHECK_OK(kl_square(g, o, &o));
    CHECK_OK(kl_sum(g, o, 0, NULL, 0, &loss));
    CHECK_OK(kl_backward(g, loss));
    CHECK_OK(kl_graph_run(g));
    for (int i = 0; i < 3; i++) CHECK_OK(kl_ctx_grad_get(ctx, i, out + i * n, n * 4));
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

static void test_attention_threads(void)
{
    size_t n = 2 * 3 * 150 * 16;
    float *a = malloc(3 * n * 4), *b = malloc(3 * n * 4);
    att_grads(1, a, n);
    att_grads(2, b, n);
    CHECK(memcmp(a, b, 3 * n * 4) == 0);
    free(a), free(b);
}

/* ---- RMSNorm and RoPE ---- */

static void test_rmsnorm(kl_dtype dt, int64_t R, int64_t D, int weight)
{
    kl_ctx *ctx;
    kl_graph *g;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    int64_t d[2] = {R, D};
    double *x = rnd(R * D, -3, 3), *w = rnd(D, 0.5, 2), *ref = malloc((size_t)(R * D) * 8);
    kl_tensor *y;
    CHECK_OK(kl_rmsnorm(g, in_set(g, "x", dt, 2, d, x), weight ? in_set(g, "w", dt, 1, &D, w) : NULL, 1e-6, &y));
    CHECK_OK(kl_output(g, y));
    run(g);
    for (int64_t r = 0; r < R; r++) {
        double ss = 0;
        for (int64_t i = 0; i < D; i++) ss += x[r * D + i] * x[r * D + i];
        double rstd = 1 / sqrt(ss / (double)D + 1e-6);
        for (int64_t i = 0; i < D; i++) ref[r * D + i] = x[r * D + i] * rstd * (weight ? w[i] : 1);
    }
    CHECK(err_vs(y, dt, ref, R * D) < tol(dt));
    free(x), free(w), free(ref);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

static void test_rope(kl_dtype dt, int64_t R, int64_t T, int64_t D, double base)
{
    kl_ctx *ctx;
    kl_graph *g;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    int64_t d[3] = {R, T, D}, h = D / 2;
    double *x = rnd(R * T * D, -2, 2), *ref = malloc((size_t)(R * T * D) * 8);
    kl_tensor *y;
    CHECK_OK(kl_rope(g, in_set(g, "x", dt, 3, d, x), base, &y));
    CHECK_OK(kl_output(g, y));
    run(g);
    double bs = base > 0 ? base : 10000;
    for (int64_t r = 0; r < R * T; r++)
        for (int64_t i = 0; i < h; i++) {
            double ang = (double)(r % T) / pow(bs, (double)(2 * i) / (double)D), a = x[r * D + i], b = x[r * D + h + i];
            ref[r * D + i] = a * cos(ang) - b * sin(ang);
            ref[r * D + h + i] = b * cos(ang) + a * sin(ang);
        }
    CHECK(err_vs(y, dt, ref, R * T * D) < tol(dt));
    free(x), free(ref);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* x = e_0 and e_1 at positions 0..2, D 4, base 10000: pair 0 turns 1 rad per
 * position, pair 1 0.01 rad. */
static void test_rope_by_hand(void)
{
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *x, *y;
    int64_t d[2] = {3, 4};
    double xv[12] = {1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0}, yv[12];
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "x", KL_F64, 2, d, &x));
    CHECK_OK(kl_rope(g, x, 0, &y));
    CHECK_OK(kl_output(g, y));
    CHECK_OK(kl_tensor_set(x, xv, sizeof xv));
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_tensor_get(y, yv, sizeof yv));
    CHECK(yv[0] == 1 && yv[1] == 0 && yv[2] == 0 && yv[3] == 0);         /* position 0: unchanged */
    CHECK(fabs(yv[4] - cos(1.0)) < 1e-15 && fabs(yv[6] - sin(1.0)) < 1e-15); /* (x0, x2) by 1 rad */
    CHECK(fabs(yv[9] - cos(0.02)) < 1e-15 && fabs(yv[11] - sin(0.02)) < 1e-15); /* (x1, x3) by 2 * 0.01 */
    CHECK(yv[5] == 0 && yv[7] == 0 && yv[8] == 0 && yv[10] == 0);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* ---- error messages ---- */

static kl_tensor *mk(kl_graph *g, kl_dtype dt, int nd, int64_t a, int64_t b, int64_t c, int64_t e)
{
    static int n;
    char name[16];
    snprintf(name, sizeof name, "t%d", n++);
    int64_t d[4] = {a, b, c, e};
    kl_tensor *t = NULL;
    CHECK_OK(kl_input(g, name, dt, nd, d, &t));
    return t;
}

static void test_errors(void)
{
    kl_ctx *ctx;
    kl_graph *g;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    kl_dtype F = KL_F64;
    kl_tensor *x = mk(g, F, 3, 2, 3, 3, 0), *wi = mk(g, F, 2, 16, 3, 0, 0), *wh = mk(g, F, 2, 16, 4, 0, 0);
    kl_tensor *b = mk(g, F, 1, 16, 0, 0, 0), *s = mk(g, F, 2, 2, 4, 0, 0), *y = NULL, *hn = NULL;
    CHECK_ERR(kl_lstm(g, mk(g, F, 2, 2, 3, 0, 0), s, s, wi, wh, b, b, &y, &hn, NULL), KL_EINVAL,
              "lstm: input must be [B, T, I] (batch first) floating-point, got [2,3] f64");
    CHECK(y == NULL && hn == NULL);
    CHECK_ERR(kl_lstm(g, x, s, s, wi, mk(g, F, 2, 15, 4, 0, 0), b, b, &y, NULL, NULL), KL_EINVAL,
              "lstm: weight_hh must be [4*H, H] f64, got [15,4] f64");
    CHECK_ERR(kl_lstm(g, x, s, s, mk(g, F, 2, 16, 5, 0, 0), wh, b, b, &y, NULL, NULL), KL_EINVAL,
              "lstm: weight_ih must be [16, 3] f64 (4*H, I) for input [2,3,3] f64 and weight_hh [16,4] f64, "
              "got [16,5] f64");
    CHECK_ERR(kl_lstm(g, x, s, s, wi, wh, mk(g, F, 1, 12, 0, 0, 0), b, &y, NULL, NULL), KL_EINVAL,
              "lstm: bias_ih must be [16] f64, got [12] f64");
    CHECK_ERR(kl_lstm(g, x, s, s, wi, wh, b, mk(g, KL_F32, 1, 16, 0, 0, 0), &y, NULL, NULL), KL_EINVAL,
              "lstm: bias_hh must be [16] f64, got [16] f32");
    CHECK_ERR(kl_lstm(g, x, mk(g, F, 2, 3, 4, 0, 0), s, wi, wh, b, b, &y, NULL, NULL), KL_EINVAL,
              "lstm: h0 must be [2, 4] f64 (B, H) for input [2,3,3] f64, got [3,4] f64");
    CHECK_ERR(kl_lstm(g, x, s, mk(g, F, 2, 2, 5, 0, 0), wi, wh, b, b, &y, NULL, NULL), KL_EINVAL,
              "lstm: c0 must be [2, 4] f64 (B, H)");
    CHECK_ERR(kl_lstm(g, x, s, s, wi, wh, b, b, NULL, NULL, NULL), KL_EMISUSE, "lstm: y (the output pointer) is NULL");
    CHECK_ERR(kl_lstm(g, x, s, s, NULL, wh, b, b, &y, NULL, NULL), KL_EMISUSE, "lstm: w_ih is NULL");
    CHECK_ERR(kl_lstm(g, x, NULL, NULL, wi, NULL, b, b, &y, NULL, NULL), KL_EMISUSE, "lstm: w_hh is NULL");
    CHECK_ERR(kl_lstm(g, NULL, NULL, NULL, wi, wh, b, b, &y, NULL, NULL), KL_EMISUSE, "lstm: x is NULL");
    CHECK_ERR(kl_gru(g, x, NULL, NULL, wh, NULL, NULL, &y, &hn), KL_EMISUSE, "gru: w_ih is NULL");
    CHECK_ERR(kl_gru(g, x, s, mk(g, F, 2, 12, 3, 0, 0), wh, NULL, NULL, &y, &hn), KL_EINVAL,
              "gru: weight_hh must be [3*H, H] f64, got [16,4] f64");
    CHECK_ERR(kl_gru(g, mk(g, KL_I32, 3, 2, 3, 3, 0), NULL, wi, wh, NULL, NULL, &y, &hn), KL_EINVAL,
              "gru: input must be [B, T, I] (batch first) floating-point, got [2,3,3] i32");
    CHECK(y == NULL && hn == NULL);

    kl_tensor *q = mk(g, F, 4, 2, 2, 5, 4), *o = NULL;
    CHECK_ERR(kl_attention(g, q, mk(g, F, 4, 2, 2, 5, 3), q, 0, &o), KL_EINVAL,
              "attention: k must be [2, 2, Tk, 4] f64 to match q [2,2,5,4] f64, got [2,2,5,3] f64");
    CHECK_ERR(kl_attention(g, q, q, mk(g, F, 4, 2, 2, 6, 4), 1, &o), KL_EINVAL,
              "attention: v must be [2, 2, 5, Dv] f64 to match k [2,2,5,4] f64, got [2,2,6,4] f64");
    CHECK_ERR(kl_attention(g, mk(g, F, 3, 2, 5, 4, 0), q, q, 0, &o), KL_EINVAL,
              "attention: q must be [B, H, T, D] floating-point, got [2,5,4] f64");
    CHECK_ERR(kl_attention(g, q, mk(g, KL_F32, 4, 2, 2, 5, 4), q, 0, &o), KL_EINVAL, "got [2,2,5,4] f32");
    CHECK_ERR(kl_attention(g, q, q, q, 0, NULL), KL_EMISUSE, "attention: out is NULL");
    CHECK(o == NULL);

    kl_tensor *r = mk(g, F, 2, 3, 5, 0, 0);
    CHECK_ERR(kl_rmsnorm(g, r, mk(g, F, 1, 3, 0, 0, 0), 0, &o), KL_EINVAL,
              "rmsnorm: weight is [3] f64, expected [5] f64 for input [3,5] f64 (last dim 5)");
    CHECK_ERR(kl_rmsnorm(g, r, NULL, -1, &o), KL_EINVAL, "rmsnorm: eps must be finite and >= 0, got -1");
    CHECK_ERR(kl_rmsnorm(g, mk(g, KL_I32, 1, 4, 0, 0, 0), NULL, 0, &o), KL_EINVAL,
              "rmsnorm: expected floating-point input, got [4] i32");
    CHECK_ERR(kl_rope(g, r, 0, &o), KL_EINVAL, "rope: head size D = 5 of [3,5] f64 must be even");
    CHECK_ERR(kl_rope(g, mk(g, F, 1, 4, 0, 0, 0), 0, &o), KL_EINVAL,
              "rope: input must be [..., T, D] floating-point, got [4] f64");
    CHECK_ERR(kl_rope(g, q, -2, &o), KL_EINVAL, "rope: base must be finite and > 0 (0 means 10000), got -2");
    CHECK_ERR(kl_rope(g, q, NAN, &o), KL_EINVAL, "rope: base must be finite");
    CHECK(o == NULL);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

int main(void)
{
    for (int f32 = 0; f32 <= 1; f32++) {
        kl_dtype dt = f32 ? KL_F32 : KL_F64;
        test_rnn(4, dt, 2, 5, 3, 4, 1);
        test_rnn(4, dt, 3, 4, 7, 5, 0);
        test_rnn(3, dt, 2, 5, 3, 4, 1);
        test_rnn(3, dt, 3, 1, 2, 6, 0);
        test_attention(dt, 0, 2, 2, 5, 5, 4, 4);
        test_attention(dt, 1, 2, 2, 5, 5, 4, 4);
        test_attention(dt, 1, 1, 3, 7, 4, 8, 5);
        test_attention(dt, 1, 2, 3, 130, 130, 8, 8); /* three query blocks */
        test_attention(dt, 0, 1, 2, 70, 90, 6, 3);
        test_rmsnorm(dt, 4, 7, 1);
        test_rmsnorm(dt, 3, 300, 0);
        test_rope(dt, 3, 5, 4, 0);
        test_rope(dt, 2, 9, 10, 500);
    }
    for (int G = 3; G <= 4; G++) {
        test_rnn_grads_f32(G, 3, 6, 5, 37, 1);
        test_rnn_grads_f32(G, 4, 9, 7, 64, 0);
    }
    test_rope_by_hand();
    test_attention_threads();
    test_errors();
    return kl_test_done("test_seq_ops");
}
