/* The CUDA convolution kernels' arithmetic, run on the host (CI has no
 * GPU). Every kernel's per-thread function (ops/conv2d_index.h) runs over
 * all its indices; the GEMMs run exactly as kl_conv_gemm_of hands them to
 * cuBLASLt (emulated in double, with leading dimensions, strides and extents
 * checked against the buffers); the chunk loop of conv.cu runs with several
 * chunk sizes (a short last chunk included) in scratch carved as
 * kl_conv_cu_layout_of says, NaN-filled so that a read of anything not
 * written first shows; db's partials and running sums as conv_db.cuh makes
 * them (chunks of each channel, added in order). Results are
 * compared with the CPU ops' forward and backward on random inputs (never
 * zero), f32 and f64: odd sizes, stride 2, padding (also wider than the
 * kernel), dilation, groups, depthwise, 1x1, stride > kernel, each fused
 * activation, with and without bias. Also: the 1-D tap inverses
 * exhaustively and the chunk-size choice. */
#include "kiln/kiln.h"
#include "testutil.h"
#include "cuda_parity.h" /* kl_parity_compare */
#include "host_emu.h"
#include "core/graph.h"  /* node attributes */
#include "ops/conv2d_index.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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
    KL_EMU_CONVERT(T)                                                                              \
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
        T *y = (T *)kl_emu_nan((size_t)ny * sizeof(T)), *dx = (T *)kl_emu_nan((size_t)nx * sizeof(T)); \
        T *dw = (T *)kl_emu_nan((size_t)nw * sizeof(T)), *db = (T *)kl_emu_nan((size_t)c.O * sizeof(T)); \
        int64_t nmax = nx > ny ? nx : ny;                                                          \
        double *out = malloc((size_t)(nmax > nw ? nmax : nw) * sizeof *out);                       \
        int64_t oob = 0; /* source indices past x or dy */                                         \
        static const int ops[3] = {KL_OP_conv2d, KL_OP_conv2d_bwd_data, KL_OP_conv2d_bwd_filter};  \
        for (int oi = 0; oi < 3; oi++) {                                                           \
            int op = ops[oi];                                                                      \
            a.has_bias = op == KL_OP_conv2d_bwd_filter && b;                                       \
            kl_conv_cu_layout L = kl_conv_cu_layout_of(&a, op, sizeof(T), nc);                     \
            CHECK(L.col % 256 == 0 && L.cn % 256 == 0 && L.dbsum % 256 == 0 && L.bytes >= L.dbsum); \
            unsigned char *s = (unsigned char *)kl_emu_nan(L.bytes);                                                   \
            T *col = (T *)(void *)(s + L.col), *cn = (T *)(void *)(s + L.cn);                      \
            double *dbsum = (double *)(void *)(s + L.dbsum);                                       \
            int64_t ncol = (int64_t)((L.cn - L.col) / sizeof(T)), ncn = (int64_t)((L.dbsum - L.cn) / sizeof(T)); \
            if (a.has_bias) CHECK((int64_t)((L.bytes - L.dbsum) / sizeof(double)) >= c.O * (1 + kl_sum_chunks(nc * c.P))); \
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
                    if (b) { /* conv_db.cuh: partials per (chunk, channel), then in order */      \
                        int64_t nq = kl_sum_chunks(mp);                                            \
                        double *part = dbsum + c.O;                                                \
                        CHECK((unsigned char *)(part + c.O * nq) <= s + L.bytes);                  \
                        for (int64_t o = 0; o < c.O; o++)                                          \
                            for (int64_t q2 = 0; q2 < nq; q2++) {                                  \
                                int64_t j0, j1;                                                    \
                                kl_chunk_range(q2, nq, mp, &j0, &j1);                              \
                                double acc = 0;                                                    \
                                for (int64_t j = j0; j < j1; j++) {                                \
                                    int64_t src = kl_conv_db_src(j, o, c.P, c.P, mp);              \
                                    oob += src >= c.O * mp;                                        \
                                    acc += (double)cn[src];                                        \
                                }                                                                  \
                                part[o * nq + q2] = acc;                                           \
                            }                                                                      \
                        for (int64_t o = 0; o < c.O; o++) {                                        \
                            double v = n0 == 0 ? 0.0 : dbsum[o];                                   \
                            for (int64_t q2 = 0; q2 < nq; q2++) v += part[o * nq + q2];            \
                            if (n0 + m == c.N) db[o] = (T)v;                                       \
                            else dbsum[o] = v;                                                     \
                        }                                                                          \
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
    /* 9 * 32 * 32 values per channel: db in three unequal chunks (kl_sum_chunks) */
    {"long_channels_db", 9, 3, 32, 32, 4, 3, 3, OPTS(1, 1, 1, 1, 1, 1, 1), 1, KL_ACT_RELU},
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
    if (s == KL_OK) s = kl_emu_fill(ctx, "x", dt, 0);
    if (s == KL_OK) s = kl_emu_fill(ctx, "w", dt, 0);
    if (s == KL_OK && b) s = kl_emu_fill(ctx, "b", dt, 0);
    if (s == KL_OK) s = kl_emu_fill(ctx, "r", dt, 0);
    if (s == KL_OK) s = kl_graph_run(g);
    if (s != KL_OK) fprintf(stderr, "  %s: %s\n", cs, kl_last_error());
    CHECK(s == KL_OK);
    if (s == KL_OK) {
        int64_t n;
        conv_ref ref = {kl_emu_slot(ctx, "x", 0, &n), kl_emu_slot(ctx, "w", 0, &n), b ? kl_emu_slot(ctx, "b", 0, &n) : NULL,
                        kl_emu_slot(ctx, "r", 0, &n), kl_emu_tensor(y), kl_emu_slot(ctx, "x", 1, &n), kl_emu_slot(ctx, "w", 1, &n),
                        b ? kl_emu_slot(ctx, "b", 1, &n) : NULL};
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
    return kl_test_done("test_conv_index");
}
