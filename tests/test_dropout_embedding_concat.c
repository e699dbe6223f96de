/* Dropout (mask fraction, the per-element Philox rule, determinism per seed
 * and run, new masks per run and per layer, backward mask), embedding
 * (values, repeated-index gradient written not accumulated, run-time index
 * errors, thread-count independence) and concat (values with strided views,
 * i32, more inputs than a node holds). Random data, never zeros. */
#include "kiln/kiln.h"
#include "ops/norm.h" /* kl_dropout_keep: the rule the kernels share */
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint64_t rs = 0x9E3779B97F4A7C15ull;
static double nzrand(double lo, double hi)
{
    rs ^= rs << 13;
    rs ^= rs >> 7;
    rs ^= rs << 17;
    double v = lo + (hi - lo) * ((double)(rs >> 11) / 9007199254740992.0);
    return v == 0 ? 0.25 : v;
}

enum { DN = 1 << 20 };

/* y = dropout(x, p) of a fresh graph with ctx seed; returns the graph's ctx/graph for reuse */
static void dropout_graph(uint64_t seed, double p, kl_ctx **ctx, kl_graph **g, kl_tensor **x, kl_tensor **y)
{
    kl_ctx_opts o = {.seed = seed};
    int64_t n = DN;
    CHECK_OK(kl_ctx_new(&o, ctx));
    CHECK_OK(kl_graph_new(*ctx, g));
    CHECK_OK(kl_input(*g, "x", KL_F32, 1, &n, x));
    CHECK_OK(kl_dropout(*g, *x, p, y));
    CHECK_OK(kl_output(*g, *y));
}

static int64_t n_diff_mask(const float *a, const float *b, int64_t n)
{
    int64_t d = 0;
    for (int64_t i = 0; i < n; i++) d += (a[i] == 0) != (b[i] == 0);
    return d;
}

static void test_dropout(void)
{
    const double p = 0.3;
    kl_ctx *ctx, *ctx2;
    kl_graph *g, *g2;
    kl_tensor *x, *y, *x2, *y2;
    float *xv = malloc(DN * 4), *a = malloc(DN * 4), *b = malloc(DN * 4), *c = malloc(DN * 4);
    for (int64_t i = 0; i < DN; i++) xv[i] = (float)nzrand(-3, 3);
    dropout_graph(42, p, &ctx, &g, &x, &y);
    CHECK_OK(kl_tensor_set(x, xv, DN * 4));
    CHECK_OK(kl_graph_run(g)); /* run 0 */
    CHECK_OK(kl_tensor_get(y, a, DN * 4));
    /* fraction dropped near p (sd 0.00045) and kept values scaled exactly */
    int64_t zeros = 0, badscale = 0, badrule = 0;
    float scale = (float)(1.0 / (1.0 - p));
    unsigned salt = 0; /* the graph's first dropout layer */
    uint32_t thr = kl_dropout_threshold(p);
    CHECK(thr == 1288490188u); /* floor(0.3 * 2^32) */
    for (int64_t i = 0; i < DN; i++) {
        zeros += a[i] == 0;
        badscale += a[i] != 0 && a[i] != xv[i] * scale;
        badrule += (a[i] != 0) != kl_dropout_keep(42, salt, 0, (uint64_t)i, thr);
    }
    CHECK(fabs((double)zeros / DN - p) < 0.003);
    CHECK(badscale == 0);
    CHECK(badrule == 0);
    /* same seed and run: same mask (another ctx, and a rerun after resetting runs) */
    dropout_graph(42, p, &ctx2, &g2, &x2, &y2);
    CHECK_OK(kl_tensor_set(x2, xv, DN * 4));
    CHECK_OK(kl_graph_run(g2));
    CHECK_OK(kl_tensor_get(y2, b, DN * 4));
    CHECK(memcmp(a, b, DN * 4) == 0);
    CHECK_OK(kl_ctx_set_threads(ctx2, 1));
    CHECK_OK(kl_graph_set_runs(g2, 0));
    CHECK_OK(kl_graph_run(g2));
    CHECK_OK(kl_tensor_get(y2, b, DN * 4));
    CHECK(memcmp(a, b, DN * 4) == 0);
    kl_graph_free(g2);
    kl_ctx_free(ctx2);
    /* next run: a new mask, still following the rule with run 1 */
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_tensor_get(y, b, DN * 4));
    CHECK(n_diff_mask(a, b, DN) > DN / 4); /* independent masks differ in 2p(1-p) = 42 % */
    badrule = 0;
    for (int64_t i = 0; i < DN; i += 7) badrule += (b[i] != 0) != kl_dropout_keep(42, salt, 1, (uint64_t)i, thr);
    CHECK(badrule == 0);
    /* another seed: another mask */
    dropout_graph(43, p, &ctx2, &g2, &x2, &y2);
    CHECK_OK(kl_tensor_set(x2, xv, DN * 4));
    CHECK_OK(kl_graph_run(g2));
    CHECK_OK(kl_tensor_get(y2, c, DN * 4));
    CHECK(n_diff_mask(a, c, DN) > DN / 4);
    kl_graph_free(g2);
    kl_ctx_free(ctx2);
    kl_graph_free(g);
    kl_ctx_free(ctx);
    free(xv), free(a), free(b), free(c);
}

/* two layers differ; the gradient uses the forward's mask (dx = mask / (1-p)) */
static void test_dropout_layers_and_grad(void)
{
    enum { N = 5000 };
    const double p = 0.45;
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *w, *y1, *y2, *s, *loss;
    int64_t n = N;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_param(g, "w", KL_F64, 1, &n, NULL, &w));
    CHECK_OK(kl_dropout(g, w, p, &y1));
    CHECK_OK(kl_dropout(g, w, p, &y2));
    CHECK_OK(kl_output(g, y1));
    CHECK_OK(kl_output(g, y2));
    CHECK_OK(kl_sum(g, y1, 0, NULL, 0, &s));
    CHECK_OK(kl_scale(g, s, 3.0, &loss));
    CHECK_OK(kl_backward(g, loss));
    static double wv[N], a[N], b[N], gr[N];
    for (int i = 0; i < N; i++) wv[i] = nzrand(-1, 1);
    CHECK_OK(kl_tensor_set(w, wv, sizeof wv));
    for (int run = 0; run < 2; run++) {
        CHECK_OK(kl_graph_run(g));
        CHECK_OK(kl_tensor_get(y1, a, sizeof a));
        CHECK_OK(kl_tensor_get(y2, b, sizeof b));
        CHECK_OK(kl_ctx_grad_get(ctx, kl_ctx_param_find(ctx, "w"), gr, sizeof gr));
        int same = 0, bad = 0;
        for (int i = 0; i < N; i++) {
            same += (a[i] == 0) == (b[i] == 0);
            bad += fabs(gr[i] - (a[i] != 0 ? 3.0 / (1 - p) : 0.0)) > 1e-12;
        }
        CHECK(same < N * 0.6); /* independent: agree on ~50 % */
        CHECK(bad == 0);
    }
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* embedding forward / backward values; threads 1 and 2 give the same bits */
static void embedding_case(int64_t V, int64_t D, int64_t P, int threads, float *dw_out)
{
    kl_ctx_opts co = {.threads = threads};
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *w, *idx, *r, *y, *m, *loss;
    int64_t wd[2] = {V, D}, id[2] = {2, P / 2}, yd[3] = {2, P / 2, D};
    CHECK_OK(kl_ctx_new(&co, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_param(g, "emb", KL_F32, 2, wd, NULL, &w));
    CHECK_OK(kl_input(g, "idx", KL_I32, 2, id, &idx));
    CHECK_OK(kl_input(g, "r", KL_F32, 3, yd, &r));
    CHECK_OK(kl_embedding(g, w, idx, &y));
    CHECK(kl_tensor_ndim(y) == 3 && kl_tensor_dim(y, 2) == D);
    CHECK_OK(kl_output(g, y));
    CHECK_OK(kl_mul(g, y, r, &m));
    CHECK_OK(kl_sum(g, m, 0, NULL, 0, &loss));
    CHECK_OK(kl_backward(g, loss));
    float *wv = malloc((size_t)(V * D) * 4), *rv = malloc((size_t)(P * D) * 4), *yv = malloc((size_t)(P * D) * 4);
    double *ref = calloc((size_t)(V * D), 8);
    int32_t *iv = malloc((size_t)P * 4);
    rs = 77;
    for (int64_t i = 0; i < V * D; i++) wv[i] = (float)nzrand(-1, 1);
    for (int64_t i = 0; i < P * D; i++) rv[i] = (float)nzrand(0.5, 1.5);
    for (int64_t p = 0; p < P; p++) iv[p] = (int32_t)((p * 7 + p / 3) % (V - 1)); /* repeats; row V-1 unused */
    CHECK_OK(kl_tensor_set(w, wv, (size_t)(V * D) * 4));
    CHECK_OK(kl_tensor_set(idx, iv, (size_t)P * 4));
    CHECK_OK(kl_tensor_set(r, rv, (size_t)(P * D) * 4));
    for (int run = 0; run < 2; run++) { /* the second run writes, not adds */
        CHECK_OK(kl_graph_run(g));
        CHECK_OK(kl_tensor_get(y, yv, (size_t)(P * D) * 4));
        int64_t bad = 0;
        for (int64_t p = 0; p < P; p++)
            for (int64_t i = 0; i < D; i++) bad += yv[p * D + i] != wv[iv[p] * D + i];
        CHECK(bad == 0);
        CHECK_OK(kl_ctx_grad_get(ctx, kl_ctx_param_find(ctx, "emb"), dw_out, (size_t)(V * D) * 4));
    }
    for (int64_t p = 0; p < P; p++)
        for (int64_t i = 0; i < D; i++) ref[iv[p] * D + i] += rv[p * D + i];
    double err = 0;
    for (int64_t i = 0; i < V * D; i++) err = fmax(err, fabs(dw_out[i] - ref[i]));
    CHECK(err < 1e-4);
    for (int64_t i = 0; i < D; i++) CHECK(dw_out[(V - 1) * D + i] == 0);
    /* an index out of range fails the run, naming node, value and position */
    iv[3] = (int32_t)V;
    CHECK_OK(kl_tensor_set(idx, iv, (size_t)P * 4));
    char want[96];
    snprintf(want, sizeof want, "embedding: index %d at position 3 out of range [0,%lld)", (int)V, (long long)V);
    CHECK_ERR(kl_graph_run(g), KL_EINVAL, want);
    CHECK_ERR(kl_graph_run(g), KL_EINVAL, "embedding 'embedding#");
    iv[3] = 0, iv[P - 1] = -2;
    CHECK_OK(kl_tensor_set(idx, iv, (size_t)P * 4));
    snprintf(want, sizeof want, "index -2 at position %lld out of range", (long long)(P - 1));
    CHECK_ERR(kl_graph_run(g), KL_EINVAL, want);
    free(wv), free(rv), free(yv), free(ref), free(iv);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

static void test_embedding(void)
{
    float small[8 * 3];
    embedding_case(8, 3, 10, 2, small);
    float *a = malloc(300 * 64 * 4), *b = malloc(300 * 64 * 4);
    embedding_case(300, 64, 2000, 1, a);
    embedding_case(300, 64, 2000, 2, b);
    CHECK(memcmp(a, b, 300 * 64 * 4) == 0);
    free(a), free(b);
}

static void test_concat(void)
{
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *a, *b, *c, *bt, *y, *ia, *ib, *iy, *parts[20], *many, *one[20];
    int64_t ad[2] = {2, 3}, bd[2] = {4, 2}, cd[2] = {2, 1}, od[2] = {1, 2};
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "a", KL_F32, 2, ad, &a));
    CHECK_OK(kl_input(g, "b", KL_F32, 2, bd, &b));
    CHECK_OK(kl_input(g, "c", KL_F32, 2, cd, &c));
    CHECK_OK(kl_input(g, "ia", KL_I32, 2, ad, &ia));
    CHECK_OK(kl_input(g, "ib", KL_I32, 2, cd, &ib));
    CHECK_OK(kl_transpose(g, b, 0, 1, &bt)); /* [2,4] strided */
    kl_tensor *xs[3] = {a, bt, c}, *is[2] = {ia, ib};
    CHECK_OK(kl_concat(g, 3, xs, -1, &y));
    CHECK_OK(kl_concat(g, 2, is, 1, &iy));
    for (int i = 0; i < 20; i++) {
        char nm[16];
        snprintf(nm, sizeof nm, "p%d", i);
        CHECK_OK(kl_input(g, nm, KL_F32, 2, od, &parts[i]));
        one[i] = parts[i];
    }
    CHECK_OK(kl_concat(g, 20, one, 0, &many));
    CHECK_OK(kl_output(g, y));
    CHECK_OK(kl_output(g, iy));
    CHECK_OK(kl_output(g, many));
    CHECK(kl_tensor_dim(y, 1) == 8 && kl_tensor_dim(many, 0) == 20 && kl_tensor_dtype(iy) == KL_I32);
    float av[6], bv[8], cv[2], pv[20][2], yv[16], mv[40];
    int32_t iav[6] = {5, -6, 7, 8, -9, 10}, ibv[2] = {-11, 12}, iyv[8];
    for (int i = 0; i < 6; i++) av[i] = (float)nzrand(-5, 5);
    for (int i = 0; i < 8; i++) bv[i] = (float)nzrand(-5, 5);
    for (int i = 0; i < 2; i++) cv[i] = (float)nzrand(-5, 5);
    CHECK_OK(kl_tensor_set(a, av, sizeof av));
    CHECK_OK(kl_tensor_set(b, bv, sizeof bv));
    CHECK_OK(kl_tensor_set(c, cv, sizeof cv));
    CHECK_OK(kl_tensor_set(ia, iav, sizeof iav));
    CHECK_OK(kl_tensor_set(ib, ibv, sizeof ibv));
    for (int i = 0; i < 20; i++) {
        pv[i][0] = (float)nzrand(-1, 1), pv[i][1] = (float)i + 0.5f;
        CHECK_OK(kl_tensor_set(parts[i], pv[i], sizeof pv[i]));
    }
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_tensor_get(y, yv, sizeof yv));
    CHECK_OK(kl_tensor_get(iy, iyv, sizeof iyv));
    CHECK_OK(kl_tensor_get(many, mv, sizeof mv));
    for (int r = 0; r < 2; r++) {
        for (int j = 0; j < 3; j++) CHECK(yv[r * 8 + j] == av[r * 3 + j]);
        for (int j = 0; j < 4; j++) CHECK(yv[r * 8 + 3 + j] == bv[j * 2 + r]); /* b transposed */
        CHECK(yv[r * 8 + 7] == cv[r]);
        for (int j = 0; j < 3; j++) CHECK(iyv[r * 4 + j] == iav[r * 3 + j]);
        CHECK(iyv[r * 4 + 3] == ibv[r]);
    }
    for (int i = 0; i < 20; i++) CHECK(mv[2 * i] == pv[i][0] && mv[2 * i + 1] == pv[i][1]);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

int main(void)
{
    test_dropout();
    test_dropout_layers_and_grad();
    test_embedding();
    test_concat();
    return kl_test_done("test_dropout_embedding_concat");
}
