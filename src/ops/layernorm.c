/* Layer normalisation over the last axis: x [..., D] viewed as rows [R, D],
 *   y = (x - mean_r) * rstd_r * gamma + beta,  rstd = 1 / sqrt(biased var + eps)
 * Forward saves mean and rstd per row in aux ([2, R] of the dtype).
 * layernorm_bwd (srcs dy, x, forward node, gamma?) writes dx (primary output;
 * formula in ops/norm.h) and dgamma = sum_r dy * xhat, dbeta = sum_r dy
 * (extras). Rows run in parallel for y and dx; dgamma/dbeta columns are split
 * between threads, each column summed over rows in order by one thread, so
 * results do not depend on the thread count. */
#include "ops/ops.h"
#include "ops/norm.h" /* also ops/sum_chunks.h */
#include "ops/norm_grad.h"
#include "ops/cpu_kernel.h"
#include "backends/cpu/cpu.h"

#include <math.h>

#include "ops/attrs.h" /* the attribute structs */

#define LN_COLS 256 /* columns per block for the dgamma/dbeta sums */

static kl_status check_vec(const kl_tensor *x, const kl_tensor *v, const char *what)
{
    int64_t D = x->ne[x->ndim - 1];
    if (v->dtype != x->dtype || v->ndim != 1 || v->ne[0] != D)
        return kl_fail(KL_EINVAL, "layernorm: %s is %s, expected [%lld] %s for input %s (last dim %lld)", what,
                       kl_desc(v), (long long)D, kl_dtype_name(x->dtype), kl_desc(x), (long long)D);
    return KL_OK;
}

static kl_status ln_shape(kl_tensor *t)
{
    const ln_attr *a = KL_ATTR(t, ln_attr);
    const kl_tensor *x = t->src[0];
    if (!kl_is_float(x->dtype))
        return kl_fail(KL_EINVAL, "layernorm: expected floating-point input, got %s", kl_desc(x));
    if (x->ndim < 1) return kl_fail(KL_EINVAL, "layernorm: input must have at least 1 dim, got %s", kl_desc(x));
    if (a->ig >= 0) KL_TRY(check_vec(x, t->src[a->ig], "gamma"));
    if (a->ib >= 0) KL_TRY(check_vec(x, t->src[a->ib], "beta"));
    t->dtype = x->dtype;
    t->ndim = x->ndim;
    memcpy(t->ne, x->ne, sizeof t->ne);
    t->aux_bytes = 2 * (size_t)(kl_numel(x) / x->ne[x->ndim - 1]) * kl_calc_size(x->dtype);
    return KL_OK;
}

#define LN_KERNELS(T)                                                                              \
    /* one row per iteration; two passes over the row (it is in cache) */                        \
    static void ln_fwd_##T(const kl_exec *ex, const kl_tensor *t)                                  \
    {                                                                                              \
        const ln_attr *a = KL_ATTR_C(t, ln_attr);                                                  \
        const T *x = kl_data(ex, t->src[0]);                                                       \
        const T *gm = a->ig >= 0 ? kl_data(ex, t->src[a->ig]) : NULL;                              \
        const T *bt = a->ib >= 0 ? kl_data(ex, t->src[a->ib]) : NULL;                              \
        T *y = kl_data(ex, t), *mean = kl_aux(ex, t);                                              \
        int64_t D = t->ne[t->ndim - 1], R = kl_numel(t) / D;                                       \
        T *rstd = mean + R;                                                                        \
        _Pragma("omp parallel for schedule(static) if (R * D > KL_PAR_MIN)")                        \
        for (int64_t r = 0; r < R; r++) {                                                          \
            const T *xr = x + r * D;                                                               \
            T *yr = y + r * D;                                                                     \
            double s = 0, v = 0;                                                                   \
            _Pragma("omp simd reduction(+ : s)")                                                   \
            for (int64_t i = 0; i < D; i++) s += (double)xr[i];                                    \
            double mu = s / (double)D;                                                             \
            _Pragma("omp simd reduction(+ : v)")                                                   \
            for (int64_t i = 0; i < D; i++) v += ((double)xr[i] - mu) * ((double)xr[i] - mu);      \
            T m = (T)mu, is = (T)(1.0 / sqrt(v / (double)D + a->eps));                             \
            mean[r] = m;                                                                           \
            rstd[r] = is;                                                                          \
            for (int64_t i = 0; i < D; i++)                                                        \
                yr[i] = kl_norm_fwd_##T(xr[i], m, is, gm ? gm[i] : (T)1, bt ? bt[i] : (T)0);       \
        }                                                                                          \
    }                                                                                              \
    static void ln_bwd_##T(const kl_exec *ex, const kl_tensor *t)                                  \
    {                                                                                              \
        const ln_attr *a = KL_ATTR_C(t, ln_attr);                                                  \
        const kl_tensor *fw = t->src[2];                                                           \
        const T *dy = kl_data(ex, t->src[0]), *x = kl_data(ex, t->src[1]);                         \
        const T *gm = t->n_src > 3 ? kl_data(ex, t->src[3]) : NULL;                                \
        int64_t D = t->ne[t->ndim - 1], R = kl_numel(t) / D;                                       \
        const T *mean = kl_aux(ex, fw), *rstd = mean + R;                                          \
        int e = 0;                                                                                 \
        T *dg = a->need_dg ? kl_data(ex, t->extra[e++]) : NULL;                                    \
        T *db = a->need_db ? kl_data(ex, t->extra[e++]) : NULL;                                    \
        T *dx = kl_data(ex, t);                                                                    \
        if (a->need_dx) {                                                                          \
            _Pragma("omp parallel for schedule(static) if (R * D > KL_PAR_MIN)")                    \
            for (int64_t r = 0; r < R; r++) {                                                      \
                const T *xr = x + r * D, *dr = dy + r * D;                                         \
                T *or_ = dx + r * D, m = mean[r], is = rstd[r];                                    \
                double sg = 0, sgx = 0;                                                            \
                _Pragma("omp simd reduction(+ : sg, sgx)")                                         \
                for (int64_t i = 0; i < D; i++) {                                                  \
                    double gi = (double)dr[i] * (gm ? (double)gm[i] : 1.0);                        \
                    sg += gi;                                                                      \
                    sgx += gi * ((double)xr[i] - (double)m);                                       \
                }                                                                                  \
                T mg = (T)(sg / (double)D), mgx = (T)(sgx * (double)is / (double)D);               \
                kl_norm_bwd_run_##T(xr, dr, gm, 1, m, is, mg, mgx, D, or_);                        \
            }                                                                                      \
        }                                                                                          \
        if (!dg && !db) return;                                                                    \
        int64_t nblk = (D + LN_COLS - 1) / LN_COLS;                                                \
        _Pragma("omp parallel for schedule(static) if (R * D > KL_PAR_MIN && nblk > 1)")           \
        for (int64_t blk = 0; blk < nblk; blk++) {                                                 \
            int64_t c0 = blk * LN_COLS, nc = D - c0 < LN_COLS ? D - c0 : LN_COLS;                  \
            double ag[LN_COLS] = {0}, ab[LN_COLS] = {0};                                           \
            for (int64_t r = 0; r < R; r++) {                                                      \
                const T *xr = x + r * D + c0, *dr = dy + r * D + c0;                               \
                double m = (double)mean[r], is = (double)rstd[r];                                  \
                for (int64_t i = 0; i < nc; i++) {                                                 \
                    ag[i] += (double)dr[i] * ((double)xr[i] - m) * is;                             \
                    ab[i] += (double)dr[i];                                                        \
                }                                                                                  \
            }                                                                                      \
            for (int64_t i = 0; i < nc; i++) {                                                     \
                if (dg) dg[c0 + i] = (T)ag[i];                                                     \
                if (db) db[c0 + i] = (T)ab[i];                                                     \
            }                                                                                      \
        }                                                                                          \
    }
KL_FOR_REAL(LN_KERNELS)

KL_CPU_REAL_KERNEL(ln_cpu, ln_fwd)
KL_CPU_REAL_KERNEL(ln_bwd_cpu, ln_bwd)

/* srcs: dy, x, forward node, gamma (if any); extras dgamma, dbeta as asked */
static kl_status ln_bwd_shape(kl_tensor *t)
{
    const ln_attr *a = KL_ATTR(t, ln_attr);
    const kl_tensor *x = t->src[1];
    KL_TRY(kl_norm_bwd_shape(t, "layernorm_bwd", &x->ne[x->ndim - 1], a->need_dg, a->need_db));
    int64_t D = x->ne[x->ndim - 1], q = kl_ln_dgb_chunks(kl_numel(x) / D);
    if (t->g->ctx->backend == KL_BACKEND_CUDA && q > 1 && (a->need_dg || a->need_db))
        t->scratch_bytes = (size_t)(2 * q * D) * sizeof(double); /* the kernel's row-chunk partials */
    return KL_OK;
}

static kl_status ln_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    ln_attr a = *KL_ATTR(t, ln_attr);
    return kl_norm_backward(g, t, dy, KL_OP_layernorm_bwd, a.ig, a.ib, &a, sizeof a, &a.need_dx, &a.need_dg,
                            &a.need_db);
}

const kl_op_def kl_op_layernorm = {.name = "layernorm",
                                   .shape = ln_shape,
                                   .backward = ln_backward,
                                   .fwd = {[KL_BACKEND_CPU] = ln_cpu},
                                   .half_native = KL_HALF_CUDA};
const kl_op_def kl_op_layernorm_bwd = {
    .name = "layernorm_bwd", .shape = ln_bwd_shape, .fwd = {[KL_BACKEND_CPU] = ln_bwd_cpu}, .half_native = KL_HALF_CUDA,
    .aux_srcs = 1u << 2};

kl_status kl_layernorm(kl_graph *g, kl_tensor *x, kl_tensor *gamma, kl_tensor *beta, double eps, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "layernorm: out is NULL");
    *out = NULL;
    KL_TRY(kl_check_args(g, "layernorm", 1, &x));
    if (!(eps >= 0) || isinf(eps)) return kl_fail(KL_EINVAL, "layernorm: eps must be finite and >= 0, got %g", eps);
    ln_attr a = {.eps = eps, /* as given, 0 too: what configs and ONNX exports say */ .ig = -1, .ib = -1};
    kl_tensor *src[3] = {x};
    int n = 1;
    if (gamma) a.ig = n, src[n++] = gamma;
    if (beta) a.ib = n, src[n++] = beta;
    KL_TRY(kl_check_args(g, "layernorm", n, src));
    for (int i = 0; i < n; i++) KL_TRY(kl_contiguous(g, src[i], &src[i]));
    return kl_node_new(g, KL_OP_layernorm, n, src, &a, sizeof a, out);
}
