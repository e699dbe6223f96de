/* The CUDA convolution and pooling kernels' arithmetic, run on the host (CI
 * has no GPU). Every kernel's per-thread function (ops/conv2d_index.h,
 * ops/pool2d.h) runs over all its indices; the GEMMs run exactly as
 * kl_conv_gemm_of hands them to cuBLASLt (emulated in double, with their
 * leading dimensions, strides and extents checked against the buffers); the
 * chunk loop runs with several chunk sizes (a short last chunk included) in
 * scratch carved as kl_conv_cu_layout_of says, NaN-filled so that a read of
 * anything not written first shows; db's running sums as db_k makes them.
 * Results are compared with the CPU ops' forward and backward on random
 * inputs (never zero), f32 and f64: odd sizes, stride 2, padding (also wider
 * than the kernel), dilation, groups, depthwise, 1x1, stride > kernel, each
 * fused activation, with and without bias. Pooling: the CUDA thread's output
 * and argmax against the CPU's (saved argmax read from its aux, ties
 * included), the gather backward against the CPU's scatter. Also: the 1-D
 * tap inverses and window ranges exhaustively, and the chunk-size choice. */
#include "kiln/kiln.h"
#include "testutil.h"
#include "cuda_parity.h" /* kl_parity_compare, kl_parity_to_double */
#include "core/graph.h"  /* node attributes, the arena (saved argmax) */
#include "ops/conv2d_index.h"
#include "ops/pool2d.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---- */

static uint32_t g_rng = 2024;
static double rnd(int ties) /* U(+-[0.05, 1]); ties: one of +-{0.25, 0.5, 0.75, 1} */
{
    g_rng = g_rng * 1664525u + 1013904223u;
    double u = (double)(g_rng >> 8) / 16777216.0, s = (g_rng >> 7 & 1) ? 1 : -1;
    return ties ? s * (floor(u * 4) + 1) / 4 : s * (0.05 + 0.95 * u);
}

/* Sets slot `name` of ctx to random values. */
static kl_status fill_slot(kl_ctx *ctx, const char *name, kl_dtype dt, int ties)
{
    int i = kl_ctx_param_find(ctx, name), nd, tr;
    const char *nm;
    kl_dtype pdt;
    int64_t ne[KL_MAX_DIMS], n = 1;
    KL_TRY(kl_ctx_param_info(ctx, i, &nm, &pdt, &nd, ne, &tr));
    for (int d = 0; d < nd; d++) n *= ne[d];
    size_t es = kl_dtype_size(dt);
    unsigned char *v = malloc((size_t)n * es);
    for (int64_t k = 0; k < n; k++) {
        double r = rnd(ties);
        if (dt == KL_F32) ((float *)(void *)v)[k] = (float)r;
        else ((double *)(void *)v)[k] = r;
    }
    kl_status s = kl_ctx_param_set(ctx, i, v, (size_t)n * es);
    free(v);
    return s;
}

/* Slot `name`'s value (grad 0) or gradient (grad 1) as doubles; *n its size. */
static double *slot_get(kl_ctx *ctx, const char *name, int grad, int64_t *n)
{
    int i = kl_ctx_param_find(ctx, name), nd, tr;
    const char *nm;
    kl_dtype dt;
    int64_t ne[KL_MAX_DIMS];
    *n = 1;
    if (kl_ctx_param_info(ctx, i, &nm, &dt, &nd, ne, &tr) != KL_OK) return NULL;
    for (int d = 0; d < nd; d++) *n *= ne[d];
    size_t bytes = (size_t)*n * kl_dtype_size(dt);
    void *tmp = malloc(bytes);
    double *out = malloc((size_t)*n * sizeof *out);
    kl_status s = grad ? kl_ctx_grad_get(ctx, i, tmp, bytes) : kl_ctx_param_get(ctx, i, tmp, bytes);
    if (s == KL_OK) kl_parity_to_double(tmp, dt, *n, out);
    free(tmp);
    CHECK_OK(s);
    return out;
}

static double *tensor_get(kl_tensor *t)
{
    int64_t n = kl_tensor_numel(t);
    size_t es = kl_dtype_size(kl_tensor_dtype(t));
    void *tmp = malloc((size_t)n * es);
    double *out = malloc((size_t)n * sizeof *out);
    CHECK_OK(kl_tensor_get(t, tmp, (size_t)n * es));
    kl_parity_to_double(tmp, kl_tensor_dtype(t), n, out);
    free(tmp);
    return out;
}

/* Scratch of exactly `bytes` (so ASan sees overruns), NaN everywhere. */
static unsigned char *nan_buf(size_t bytes)
{
    unsigned char *p = malloc(bytes ? bytes : 1);
    memset(p, 0xff, bytes); /* all-ones: a NaN as float and as double */
    return p;
}

/* elements a row-major operand of rows x cols (ld) batched with stride s occupies */
static int64_t extent(int64_t batch, int64_t s, int64_t rows, int64_t ld, int64_t cols)
{
    return (batch - 1) * s + (rows - 1) * ld + cols;
}

static bool gemm_ok(const char *cs, kl_conv_gemm q, int64_t na, int64_t nb, int64_t ny)
{
    int64_t ar = q.ta ? q.K : q.M, ac = q.ta ? q.M : q.K, br = q.tb ? q.N : q.K, bc = q.tb ? q.K : q.N;
    bool ok = q.batch >= 1 && q.lda >= ac && q.ldb >= bc && q.ldy >= q.N && extent(q.batch, q.sa, ar, q.lda, ac) <= na &&
              extent(q.batch, q.sb, br, q.ldb, bc) <= nb && extent(q.batch, q.sy, q.M, q.ldy, q.N) <= ny &&
              (q.batch == 1 || q.sy >= extent(1, 0, q.M, q.ldy, q.N)); /* batch outputs do not overlap */
    if (!ok)
        fprintf(stderr, "  %s: GEMM M %lld N %lld K %lld lda %lld ldb %lld ldy %lld batch %lld does not fit (%lld %lld %lld)\n",
                cs, (long long)q.M, (long long)q.N, (long long)q.K, (long long)q.lda, (long long)q.ldb, (long long)q.ldy,
                (long long)q.batch, (long long)na, (long long)nb, (long long)ny);
    CHECK(ok);
    return ok;
}

/* ---- the CUDA conv ops, emulated (conv.cu's loops, kernel by kernel) ---- */

typedef struct {
    const double *x, *w, *b, *dy, *y;   /* CPU inputs, dy = r, y the CPU forward (read by dz) */
    const double *ref_dx, *ref_dw, *ref_db;
} conv_ref;

#define CONV_EMU(T)                                                                                \
    static T *to_##T(const double *v, int64_t n)                                                   \
    {                                                                                              \
        T *o = malloc((size_t)(n ? n : 1) * sizeof(T));                                            \
        for (int64_t i = 0; i < n; i++) o[i] = (T)v[i];                                            \
        return o;                                                                                  \
    }                                                                                              \
    static void back_##T(const T *v, int64_t n, double *o)                                         \
    {                                                                                              \
        for (int64_t i = 0; i < n; i++) o[i] = v[i];                                               \
    }                                                                                              \
    /* kl_cu_gemm_run: y = a @ b + beta * y, row-major, transposes, strided batch */               \
    static void gemm_##T(const char *cs, kl_conv_gemm q, const T *a, int64_t na, const T *b, int64_t nb, T *y, \
                         int64_t ny, double beta)                                                  \
    {                                                                                              \
        if (!gemm_ok(cs, q, na, nb, ny)) return;                                                   \
        for (int64_t t = 0; t < q.batch; t++)                                                      \
            for (int64_t i = 0; i < q.M; i++)                                                      \
                for (int64_t j = 0; j < q.N; j++) {                                                \
                    double acc = 0;                                                                \
                    for (int64_t k = 0; k < q.K; k++)                                              \
                        acc += (double)(q.ta ? a[t * q.sa + k * q.lda + i] : a[t * q.sa + i * q.lda + k]) * \
                               (double)(q.tb ? b[t * q.sb + j * q.ldb + k] : b[t * q.sb + k * q.ldb + j]); \
                    T *yp = y + t * q.sy + i * q.ldy + j;                                          \
                    *yp = (T)(beta != 0 ? acc + beta * (double)*yp : acc); /* beta 0: y not read */ \
                }                                                                                  \
    }                                                                                              \
    static void conv_emu_##T(const char *cs, const kl_conv_attr *a0, int64_t nc, const conv_ref *r, \
                             const double *ref_y, double tol)                                      \
    {                                                                                              \
        kl_conv_attr a = *a0;                                                                      \
        kl_conv_ix c = kl_conv_ix_of(&a);                                                          \
        int64_t nx = c.N * c.C * c.H * c.W, nw = c.O * c.Kg, ny = c.N * c.O * c.P, CHW = c.C * c.H * c.W; \
        T *x = to_##T(r->x, nx), *w = to_##T(r->w, nw), *b = r->b ? to_##T(r->b, c.O) : NULL;     \
        T *dy = to_##T(r->dy, ny), *yc = to_##T(r->y, ny), *ys = c.act >= 0 ? yc : NULL;          \
        T *y = (T *)(void *)nan_buf((size_t)ny * sizeof(T)), *dx = (T *)(void *)nan_buf((size_t)nx * sizeof(T)); \
        T *dw = (T *)(void *)nan_buf((size_t)nw * sizeof(T)), *db = (T *)(void *)nan_buf((size_t)c.O * sizeof(T)); \
        int64_t nmax = nx > ny ? nx : ny;                                                          \
        double *out = malloc((size_t)(nmax > nw ? nmax : nw) * sizeof *out);                       \
        int64_t oob = 0; /* source indices past x or dy */                                         \
        static const int ops[3] = {KL_OP_conv2d, KL_OP_conv2d_bwd_data, KL_OP_conv2d_bwd_filter};  \
        for (int oi = 0; oi < 3; oi++) {                                                           \
            int op = ops[oi];                                                                      \
            a.has_bias = op == KL_OP_conv2d_bwd_filter && b;                                       \
            kl_conv_cu_layout L = kl_conv_cu_layout_of(&a, op, sizeof(T), nc);                     \
            CHECK(L.col % 256 == 0 && L.cn % 256 == 0 && L.dbsum % 256 == 0 && L.bytes >= L.dbsum); \
            unsigned char *s = nan_buf(L.bytes);                                                   \
            T *col = (T *)(void *)(s + L.col), *cn = (T *)(void *)(s + L.cn);                      \
            double *dbsum = (double *)(void *)(s + L.dbsum);                                       \
            int64_t ncol = (int64_t)((L.cn - L.col) / sizeof(T)), ncn = (int64_t)((L.dbsum - L.cn) / sizeof(T)); \
            if (a.has_bias) CHECK((int64_t)((L.bytes - L.dbsum) / sizeof(double)) >= c.O);         \
            for (int64_t n0 = 0; n0 < c.N; n0 += nc) {                                             \
                int64_t m = c.N - n0 < nc ? c.N - n0 : nc, mp = m * c.P;                           \
                CHECK(c.G * c.Kg * mp <= ncol && c.O * mp <= ncn);                                 \
                if (c.G * c.Kg * mp > ncol || c.O * mp > ncn) break;                               \
                kl_conv_gemm q = kl_conv_gemm_of(&c, op, m);                                       \
                if (op != KL_OP_conv2d) /* dz_k */                                                 \
                    for (int64_t i = 0; i < c.O * mp; i++) {                                       \
                        oob += kl_conv_cn_nchw(&c, n0, m, i) >= ny;                                \
                        cn[i] = kl_conv_dz_##T(&c, dy, ys, n0, m, i);                              \
                    }                                                                              \
                if (op != KL_OP_conv2d_bwd_data) /* im2col_k */                                    \
                    for (int64_t i = 0; i < c.G * c.Kg * mp; i++) {                                \
                        oob += kl_conv_col_src(&c, n0, m, i) >= nx;                                \
                        col[i] = kl_conv_im2col_##T(&c, x, n0, m, i);                              \
                    }                                                                              \
                if (op == KL_OP_conv2d) {                                                          \
                    gemm_##T(cs, q, w, nw, col, ncol, cn, ncn, 0);                                 \
                    for (int64_t i = 0; i < m * c.O * c.P; i++) /* out_k */                        \
                        y[n0 * c.O * c.P + i] = kl_conv_out_##T(&c, cn, b, m, i);                  \
                } else if (op == KL_OP_conv2d_bwd_data) {                                          \
                    gemm_##T(cs, q, w, nw, cn, ncn, col, ncol, 0);                                 \
                    for (int64_t i = 0; i < m * CHW; i++) /* col2im_k */                           \
                        dx[n0 * CHW + i] = kl_conv_col2im_##T(&c, col, m, i);                      \
                } else {                                                                           \
                    gemm_##T(cs, q, cn, ncn, col, ncol, dw, nw, n0 == 0 ? 0 : 1);                  \
                    for (int64_t o = 0; b && o < c.O; o++) { /* db_k */                            \
                        double acc = 0;                                                            \
                        for (int64_t j = 0; j < mp; j++) acc += (double)cn[o * mp + j];            \
                        double v = n0 == 0 ? acc : dbsum[o] + acc;                                 \
                        if (n0 + m == c.N) db[o] = (T)v;                                           \
                        else dbsum[o] = v;                                                         \
                    }                                                                              \
                }                                                                                  \
            }                                                                                      \
            free(s);                                                                               \
        }                                                                                          \
        CHECK(oob == 0);                                                                           \
        back_##T(y, ny, out);                                                                      \
        kl_parity_compare(cs, "y", ref_y, out, ny, tol);                                           \
        back_##T(dx, nx, out);                                                                     \
        kl_parity_compare(cs, "dx", r->ref_dx, out, nx, tol);                                      \
        back_##T(dw, nw, out);                                                                     \
        kl_parity_compare(cs, "dw", r->ref_dw, out, nw, tol);                                      \
        if (b) {                                                                                   \
            back_##T(db, c.O, out);                                                                \
            kl_parity_compare(cs, "db", r->ref_db, out, c.O, tol);                                 \
        }                                                                                          \
        free(x), free(w), free(b), free(dy), free(yc), free(y), free(dx), free(dw), free(db), free(out); \
    }
CONV_EMU(float)
CONV_EMU(double)

/* ---- conv cases: the CPU ops' results, then the emulation at several chunk sizes ---- */

typedef struct {
    const char *name;
    int64_t N, C, H, W, O, KH, KW;
    kl_conv2d_opts o;
    int bias, act;
} conv_case;

#define OPTS(s0, s1, p0, p1, d0, d1, gr) {.stride = {s0, s1}, .padding = {p0, p1}, .dilation = {d0, d1}, .groups = gr}

static const conv_case conv_cases[] = {
    {"plain_3x3_p1", 3, 3, 7, 6, 5, 3, 3, OPTS(1, 1, 1, 1, 1, 1, 1), 1, KL_ACT_NONE},
    {"stride2_relu", 4, 2, 9, 8, 3, 3, 3, OPTS(2, 2, 1, 1, 1, 1, 1), 1, KL_ACT_RELU},
    {"dilation2_tanh", 3, 2, 8, 7, 4, 3, 3, OPTS(1, 1, 2, 2, 2, 2, 1), 1, KL_ACT_TANH},
    {"groups2_sigmoid", 3, 4, 6, 7, 6, 3, 3, OPTS(1, 1, 1, 1, 1, 1, 2), 1, KL_ACT_SIGMOID},
    {"depthwise_nobias", 2, 3, 5, 6, 6, 3, 3, OPTS(1, 1, 1, 1, 1, 1, 3), 0, KL_ACT_NONE},
    {"1x1", 3, 5, 4, 5, 3, 1, 1, OPTS(1, 1, 0, 0, 1, 1, 1), 1, KL_ACT_NONE},
    {"1x1_stride2_relu", 2, 3, 5, 4, 2, 1, 1, OPTS(2, 2, 0, 0, 1, 1, 1), 1, KL_ACT_RELU},
    {"nonsquare", 3, 2, 7, 9, 3, 2, 3, OPTS(2, 1, 1, 0, 1, 2, 1), 0, KL_ACT_RELU},
    {"pad_wider_than_kernel", 2, 2, 4, 5, 3, 2, 2, OPTS(1, 1, 3, 2, 1, 1, 1), 1, KL_ACT_NONE},
    {"stride_gt_kernel_g2", 5, 4, 8, 9, 4, 2, 2, OPTS(3, 3, 0, 1, 1, 1, 2), 1, KL_ACT_TANH},
    {"batch5_odd", 5, 3, 5, 5, 4, 3, 3, OPTS(2, 1, 1, 1, 1, 1, 1), 1, KL_ACT_SIGMOID},
};

static void conv_case_run(const conv_case *cc, kl_dtype dt)
{
    char cs[96];
    snprintf(cs, sizeof cs, "%s/%s", cc->name, kl_dtype_name(dt));
    int fails = kl_test_failures;
    kl_ctx_opts co = {.device = {KL_DEVICE_CPU, 0}, .seed = 77};
    kl_ctx *ctx = NULL;
    kl_graph *g = NULL;
    kl_tensor *x, *w, *b = NULL, *y = NULL, *r, *l;
    int64_t Cg = cc->C / (cc->o.groups ? cc->o.groups : 1);
    kl_status s = kl_ctx_new(&co, &ctx);
    if (s == KL_OK) s = kl_graph_new(ctx, &g);
    if (s == KL_OK) s = kl_parity_param(g, "x", dt, 4, (int64_t[]){cc->N, cc->C, cc->H, cc->W}, &x);
    if (s == KL_OK) s = kl_parity_param(g, "w", dt, 4, (int64_t[]){cc->O, Cg, cc->KH, cc->KW}, &w);
    if (s == KL_OK && cc->bias) s = kl_parity_param(g, "b", dt, 1, (int64_t[]){cc->O}, &b);
    if (s == KL_OK) s = kl_conv2d_act(g, x, w, b, &cc->o, (kl_act)cc->act, &y);
    if (s == KL_OK) s = kl_output(g, y);
    if (s == KL_OK) s = kl_buffer(g, "r", dt, 4, y->ne, &kl_parity_u1, &r);
    if (s == KL_OK) s = kl_mul(g, y, r, &l);
    if (s == KL_OK) s = kl_sum(g, l, 0, NULL, 0, &l);
    if (s == KL_OK) s = kl_backward(g, l);
    if (s == KL_OK) s = fill_slot(ctx, "x", dt, 0);
    if (s == KL_OK) s = fill_slot(ctx, "w", dt, 0);
    if (s == KL_OK && b) s = fill_slot(ctx, "b", dt, 0);
    if (s == KL_OK) s = fill_slot(ctx, "r", dt, 0);
    if (s == KL_OK) s = kl_graph_run(g);
    if (s != KL_OK) fprintf(stderr, "  %s: %s\n", cs, kl_last_error());
    CHECK(s == KL_OK);
    if (s == KL_OK) {
        int64_t n;
        conv_ref ref = {slot_get(ctx, "x", 0, &n), slot_get(ctx, "w", 0, &n), b ? slot_get(ctx, "b", 0, &n) : NULL,
                        slot_get(ctx, "r", 0, &n), tensor_get(y), slot_get(ctx, "x", 1, &n), slot_get(ctx, "w", 1, &n),
                        b ? slot_get(ctx, "b", 1, &n) : NULL};
        const kl_conv_attr *a = KL_ATTR_C(y, kl_conv_attr);
        kl_conv_ix c = kl_conv_ix_of(a);
        size_t es = kl_dtype_size(dt), per = (size_t)((c.G * c.Kg + c.O) * c.P) * es;
        /* 1 (one sample per chunk), 2, what a budget of 3 samples picks, the whole batch */
        int64_t ncs[4] = {1, 2, kl_conv_cu_chunk(a, es, 3 * per + per / 2), cc->N};
        CHECK(ncs[2] == (cc->N < 3 ? cc->N : 3));
        for (int k = 0; k < 4; k++) {
            if (k > 0 && ncs[k] == ncs[k - 1]) continue;
            char ccs[128];
            snprintf(ccs, sizeof ccs, "%s nc %lld", cs, (long long)ncs[k]);
            if (dt == KL_F32) conv_emu_float(ccs, a, ncs[k], &ref, ref.y, 2e-5);
            else conv_emu_double(ccs, a, ncs[k], &ref, ref.y, 1e-12);
        }
        printf("  %s %s\n", kl_test_failures == fails ? "ok" : "FAIL", cs);
        free((void *)ref.x), free((void *)ref.w), free((void *)ref.b), free((void *)ref.dy), free((void *)ref.y);
        free((void *)ref.ref_dx), free((void *)ref.ref_dw), free((void *)ref.ref_db);
    }
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* ---- pooling: the CUDA threads vs the CPU ops ---- */

typedef struct {
    const char *name;
    int64_t N, C, H, W;
    kl_pool2d_opts o;
    int max, ties;
} pool_case;

static const pool_case pool_cases[] = {
    {"max_2x2_odd", 2, 3, 7, 9, {{2, 2}, {0, 0}, {0, 0}}, 1, 0}, /* the CPU's vectorised path */
    {"max_2x2_ties", 2, 2, 6, 8, {{2, 2}, {0, 0}, {0, 0}}, 1, 1},
    {"max_3x3_s2_p1", 2, 3, 7, 6, {{3, 3}, {2, 2}, {1, 1}}, 1, 0},
    {"max_3x3_s2_p1_ties", 2, 2, 9, 8, {{3, 3}, {2, 2}, {1, 1}}, 1, 1},
    {"max_3x3_s1_p1", 1, 2, 5, 6, {{3, 3}, {1, 1}, {1, 1}}, 1, 1},
    {"max_nonsquare", 2, 2, 5, 8, {{2, 3}, {1, 2}, {1, 0}}, 1, 0},
    {"max_stride_gt_kernel", 2, 2, 8, 9, {{2, 2}, {3, 3}, {0, 1}}, 1, 0},
    {"max_16x17_idx32", 1, 2, 18, 19, {{16, 17}, {1, 1}, {0, 0}}, 1, 1},
    {"avg_2x2", 2, 3, 6, 5, {{2, 2}, {0, 0}, {0, 0}}, 0, 0},
    {"avg_3x3_s2_p1", 2, 2, 7, 6, {{3, 3}, {2, 2}, {1, 1}}, 0, 0},
    {"avg_nonsquare_overlap", 1, 2, 6, 5, {{3, 2}, {1, 1}, {1, 1}}, 0, 0},
};

#define POOL_EMU(T)                                                                                \
    static void pool_emu_##T(const char *cs, const pool_attr *a, const double *xd, const double *rd, \
                             const double *ref_y, const void *ref_idx, const double *ref_dx, double tol) \
    {                                                                                              \
        int64_t nx = a->N * a->C * a->H * a->W, ny = a->N * a->C * a->OH * a->OW, bad = 0;         \
        T *x = to_##T(xd, nx), *dy = to_##T(rd, ny);                                               \
        T *y = (T *)(void *)nan_buf((size_t)ny * sizeof(T)), *dx = (T *)(void *)nan_buf((size_t)nx * sizeof(T)); \
        uint8_t *i8 = a->idx32 ? NULL : malloc((size_t)ny);                                        \
        int32_t *i32 = a->idx32 ? malloc((size_t)ny * 4) : NULL;                                   \
        double *out = malloc((size_t)(nx > ny ? nx : ny) * sizeof *out);                           \
        for (int64_t i = 0; i < ny; i++) { /* pool_k */                                           \
            int32_t k;                                                                             \
            y[i] = kl_pool_fwd_##T(a, x, i, &k);                                                   \
            if (a->kind != POOL_MAX) continue;                                                     \
            bad += k < 0 || k >= a->kh * a->kw || (!a->idx32 && k > 255);                          \
            if (i32) i32[i] = k;                                                                   \
            else i8[i] = (uint8_t)k;                                                               \
            int64_t want = a->idx32 ? ((const int32_t *)ref_idx)[i] : ((const uint8_t *)ref_idx)[i]; \
            bad += want != k; /* the CPU's saved argmax: same element, ties included */            \
        }                                                                                          \
        for (int64_t i = 0; i < nx; i++) dx[i] = kl_pool_bwd_##T(a, dy, i8, i32, i); /* pool_bwd_k */ \
        if (bad) fprintf(stderr, "  %s: %lld argmax entries differ from the CPU's or are out of range\n", cs, (long long)bad); \
        CHECK(bad == 0);                                                                           \
        back_##T(y, ny, out);                                                                      \
        kl_parity_compare(cs, "y", ref_y, out, ny, a->kind == POOL_MAX ? 0 : tol);                 \
        back_##T(dx, nx, out);                                                                     \
        kl_parity_compare(cs, "dx", ref_dx, out, nx, tol);                                         \
        free(x), free(dy), free(y), free(dx), free(i8), free(i32), free(out);                      \
    }
POOL_EMU(float)
POOL_EMU(double)

static void pool_case_run(const pool_case *pc, kl_dtype dt)
{
    char cs[96];
    snprintf(cs, sizeof cs, "%s/%s", pc->name, kl_dtype_name(dt));
    int fails = kl_test_failures;
    kl_ctx_opts co = {.device = {KL_DEVICE_CPU, 0}, .seed = 78};
    kl_ctx *ctx = NULL;
    kl_graph *g = NULL;
    kl_tensor *x, *y = NULL, *r, *l;
    kl_plan_opts po = {.no_reuse = 1}; /* the forward's aux (argmax) survives the run */
    kl_status s = kl_ctx_new(&co, &ctx);
    if (s == KL_OK) s = kl_graph_new(ctx, &g);
    if (s == KL_OK) s = kl_parity_param(g, "x", dt, 4, (int64_t[]){pc->N, pc->C, pc->H, pc->W}, &x);
    if (s == KL_OK) s = pc->max ? kl_maxpool2d(g, x, &pc->o, &y) : kl_avgpool2d(g, x, &pc->o, &y);
    if (s == KL_OK) s = kl_output(g, y);
    if (s == KL_OK) s = kl_buffer(g, "r", dt, 4, y->ne, &kl_parity_u1, &r);
    if (s == KL_OK) s = kl_mul(g, y, r, &l);
    if (s == KL_OK) s = kl_sum(g, l, 0, NULL, 0, &l);
    if (s == KL_OK) s = kl_backward(g, l);
    if (s == KL_OK) s = kl_graph_plan(g, &po);
    if (s == KL_OK) s = fill_slot(ctx, "x", dt, pc->ties);
    if (s == KL_OK) s = fill_slot(ctx, "r", dt, 0);
    if (s == KL_OK) s = kl_graph_run(g);
    if (s != KL_OK) fprintf(stderr, "  %s: %s\n", cs, kl_last_error());
    CHECK(s == KL_OK);
    if (s == KL_OK) {
        int64_t n;
        const pool_attr *a = KL_ATTR_C(y, pool_attr);
        CHECK(a->idx32 == (pc->o.kernel[0] * pc->o.kernel[1] > 255));
        double *xd = slot_get(ctx, "x", 0, &n), *rd = slot_get(ctx, "r", 0, &n), *yd = tensor_get(y);
        double *dxd = slot_get(ctx, "x", 1, &n);
        const void *idx = g->arena + y->aux_off;
        if (dt == KL_F32) pool_emu_float(cs, a, xd, rd, yd, idx, dxd, 1e-6);
        else pool_emu_double(cs, a, xd, rd, yd, idx, dxd, 1e-14);
        printf("  %s %s\n", kl_test_failures == fails ? "ok" : "FAIL", cs);
        free(xd), free(rd), free(yd), free(dxd);
    }
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* ---- 1-D index math, exhaustively ---- */

static void test_taps(void)
{
    int64_t bad = 0;
    for (int s = 1; s <= 3; s++)
        for (int p = 0; p <= 3; p++)
            for (int d = 1; d <= 3; d++)
                for (int k = 0; k < 5; k++)
                    for (int64_t i = 0; i < 9; i++)
                        for (int64_t o = 0; o < 7; o++) /* tap k of output o reads i <=> output of i at tap k is o */
                            bad += (kl_conv_in_at(o, k, s, p, d, 9) == i) != (kl_conv_out_at(i, k, s, p, d, 7) == o);
    for (int s = 1; s <= 3; s++)
        for (int p = 0; p <= 2; p++)
            for (int k = 1; k <= 5; k++)
                for (int64_t i = 0; i < 11; i++) {
                    int64_t o0, o1;
                    kl_pool_outs(i, s, p, k, 6, &o0, &o1);
                    for (int64_t o = 0; o < 6; o++) {
                        bool in = o * s - p <= i && i < o * s - p + k;
                        bad += in != (o >= o0 && o < o1);
                    }
                }
    if (bad) fprintf(stderr, "  taps: %lld mismatches\n", (long long)bad);
    CHECK(bad == 0);
}

/* chunk size: fits the budget, at least 1, at most N */
static void test_chunk(void)
{
    kl_conv_attr a = {.groups = 2, .N = 10, .C = 4, .H = 8, .W = 8, .O = 6, .KH = 3, .KW = 3, .OH = 6, .OW = 6};
    size_t per = (size_t)((4 * 9 + 6) * 36) * 4;
    CHECK(kl_conv_cu_chunk(&a, 4, 0) == 1);
    CHECK(kl_conv_cu_chunk(&a, 4, per - 1) == 1);
    CHECK(kl_conv_cu_chunk(&a, 4, 4 * per + 3) == 4);
    CHECK(kl_conv_cu_chunk(&a, 4, (size_t)1 << 40) == 10);
    kl_conv_cu_layout l = kl_conv_cu_layout_of(&a, KL_OP_conv2d_bwd_filter, 4, 4);
    CHECK(l.cn >= (size_t)(4 * 9 * 4 * 36) * 4 && l.dbsum - l.cn >= (size_t)(6 * 4 * 36) * 4 && l.bytes == l.dbsum);
    a.has_bias = 1;
    l = kl_conv_cu_layout_of(&a, KL_OP_conv2d_bwd_filter, 4, 4);
    CHECK(l.bytes - l.dbsum >= 6 * sizeof(double) && l.bytes % 256 == 0);
}

int main(void)
{
    test_taps();
    test_chunk();
    for (size_t i = 0; i < sizeof conv_cases / sizeof *conv_cases; i++) {
        conv_case_run(&conv_cases[i], KL_F32);
        conv_case_run(&conv_cases[i], KL_F64);
    }
    for (size_t i = 0; i < sizeof pool_cases / sizeof *pool_cases; i++) {
        pool_case_run(&pool_cases[i], KL_F32);
        pool_case_run(&pool_cases[i], KL_F64);
    }
    return kl_test_done("test_conv_index");
}
