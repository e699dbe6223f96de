/* The CUDA pooling kernels' arithmetic, run on the host (CI has no GPU):
 * the forward thread (kl_pool_fwd_T, ops/pool2d.h) over every output
 * against the CPU's output and its saved argmax (read from its aux; ties
 * included, on the CPU's vectorised 2x2 path too), the backward gather
 * (kl_pool_bwd_T) over every dx element against the CPU's scatter: max and
 * average, overlapping windows, padding, stride > kernel, a window > 255
 * elements (i32 argmax), NaN inputs (the first NaN wins on every path), f32
 * and f64. Also the window ranges exhaustively. */
#include "kiln/kiln.h"
#include "testutil.h"
#include "cuda_parity.h" /* kl_parity_compare */
#include "host_emu.h"
#include "core/graph.h"  /* node attributes, the arena (saved argmax) */
#include "ops/pool2d.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- pooling: the CUDA threads vs the CPU ops ---- */

typedef struct {
    const char *name;
    int64_t N, C, H, W;
    kl_pool2d_opts o;
    int max, ties; /* ties: kl_emu_fill's (2: with NaNs) */
} pool_case;

/* NaN positions of the CUDA thread's y equal the CPU's (then zeroed in both,
 * for the numeric comparison); returns how many there were */
static int64_t nan_match(const char *cs, double *ref, double *out, int64_t n)
{
    int64_t nans = 0, bad = 0;
    for (int64_t i = 0; i < n; i++) {
        bool a = isnan(ref[i]), b = isnan(out[i]);
        nans += a, bad += a != b;
        if (a || b) ref[i] = out[i] = 0;
    }
    if (bad) fprintf(stderr, "  %s: %lld outputs NaN on one side only\n", cs, (long long)bad);
    CHECK(bad == 0);
    return nans;
}

static const pool_case pool_cases[] = {
    {"max_2x2_odd", 2, 3, 7, 9, {{2, 2}, {0, 0}, {0, 0}}, 1, 0}, /* the CPU's vectorised path */
    {"max_2x2_ties", 2, 2, 6, 8, {{2, 2}, {0, 0}, {0, 0}}, 1, 1},
    {"max_2x2_nan", 2, 3, 8, 10, {{2, 2}, {0, 0}, {0, 0}}, 1, 2}, /* the first NaN wins, as on the general path */
    {"max_3x3_s2_p1", 2, 3, 7, 6, {{3, 3}, {2, 2}, {1, 1}}, 1, 0},
    {"max_3x3_s2_p1_nan", 2, 2, 9, 8, {{3, 3}, {2, 2}, {1, 1}}, 1, 2},
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
    KL_EMU_CONVERT(T)                                                                              \
    static void pool_emu_##T(const char *cs, const pool_attr *a, const double *xd, const double *rd, \
                             double *ref_y, const void *ref_idx, const double *ref_dx, double tol, int nan) \
    {                                                                                              \
        int64_t nx = a->N * a->C * a->H * a->W, ny = a->N * a->C * a->OH * a->OW, bad = 0;         \
        T *x = to_##T(xd, nx), *dy = to_##T(rd, ny);                                               \
        T *y = (T *)kl_emu_nan((size_t)ny * sizeof(T)), *dx = (T *)kl_emu_nan((size_t)nx * sizeof(T)); \
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
        int64_t nans = nan_match(cs, ref_y, out, ny);                                              \
        CHECK(nan ? nans > 0 && nans < ny : nans == 0); /* NaNs given are NaNs out */              \
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
    if (s == KL_OK) s = kl_emu_fill(ctx, "x", dt, pc->ties);
    if (s == KL_OK) s = kl_emu_fill(ctx, "r", dt, 0);
    if (s == KL_OK) s = kl_graph_run(g);
    if (s != KL_OK) fprintf(stderr, "  %s: %s\n", cs, kl_last_error());
    CHECK(s == KL_OK);
    if (s == KL_OK) {
        int64_t n;
        const pool_attr *a = KL_ATTR_C(y, pool_attr);
        CHECK(a->idx32 == (pc->o.kernel[0] * pc->o.kernel[1] > 255));
        double *xd = kl_emu_slot(ctx, "x", 0, &n), *rd = kl_emu_slot(ctx, "r", 0, &n), *yd = kl_emu_tensor(y);
        double *dxd = kl_emu_slot(ctx, "x", 1, &n);
        const void *idx = g->arena + y->aux_off;
        if (dt == KL_F32) pool_emu_float(cs, a, xd, rd, yd, idx, dxd, 1e-6, pc->ties == 2);
        else pool_emu_double(cs, a, xd, rd, yd, idx, dxd, 1e-14, pc->ties == 2);
        printf("  %s %s\n", kl_test_failures == fails ? "ok" : "FAIL", cs);
        free(xd), free(rd), free(yd), free(dxd);
    }
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* kl_pool_outs: exactly the windows holding input i */
static void test_outs(void)
{
    int64_t bad = 0;
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
    if (bad) fprintf(stderr, "  pool windows: %lld mismatches\n", (long long)bad);
    CHECK(bad == 0);
}

int main(void)
{
    test_outs();
    for (size_t i = 0; i < sizeof pool_cases / sizeof *pool_cases; i++) {
        pool_case_run(&pool_cases[i], KL_F32);
        pool_case_run(&pool_cases[i], KL_F64);
    }
    return kl_test_done("test_pool_index");
}
