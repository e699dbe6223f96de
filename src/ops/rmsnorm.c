/* RMSNorm over the last axis: x [..., D] viewed as rows [R, D],
 *   y = x * rstd_r * w,  rstd = 1 / sqrt(mean(x^2) + eps)   (w optional)
 * Forward saves rstd per row in aux ([R] of the dtype).
 * rmsnorm_bwd (sources dy, x, forward node, w?) writes dx (primary output;
 * formula in ops/seq.h) and dw = sum_r dy * x * rstd (extra). Rows run in
 * parallel for y and dx; dw columns are split between threads, each column
 * summed over rows in order by one thread, so results do not depend on the
 * thread count. Row pieces in ops/seq.h (shared with the CUDA kernels). */
#include "ops/ops.h"
#include "ops/attrs.h"
#include "ops/seq.h"
#include "backends/cpu/cpu.h"

#include <math.h>


#define RMS_COLS 256 /* columns per block for the dw sums */

static kl_status rms_shape(kl_tensor *t)
{
    const rms_attr *a = KL_ATTR(t, rms_attr);
    const kl_tensor *x = t->src[t->op == KL_OP_rmsnorm_bwd];
    if (!kl_is_float(x->dtype))
        return kl_fail(KL_EINVAL, "rmsnorm: expected floating-point input, got %s", kl_desc(x));
    if (x->ndim < 1) return kl_fail(KL_EINVAL, "rmsnorm: input must have at least 1 dim, got %s", kl_desc(x));
    int64_t D = x->ne[x->ndim - 1];
    t->dtype = x->dtype;
    t->ndim = x->ndim;
    memcpy(t->ne, x->ne, sizeof t->ne);
    if (t->op == KL_OP_rmsnorm) {
        const kl_tensor *w = a->has_w ? t->src[1] : NULL;
        if (w && (w->dtype != x->dtype || w->ndim != 1 || w->ne[0] != D))
            return kl_fail(KL_EINVAL, "rmsnorm: weight is %s, expected [%lld] %s for input %s (last dim %lld)",
                           kl_desc(w), (long long)D, kl_dtype_name(x->dtype), kl_desc(x), (long long)D);
        t->aux_bytes = (size_t)(kl_numel(x) / D) * kl_calc_size(x->dtype);
        return KL_OK;
    }
    /* CUDA sums dw in row chunks: partials [chunks, D] of double (ops/seq.h) */
    if (a->need_dw && t->g->ctx->backend == KL_BACKEND_CUDA)
        t->scratch_bytes = (size_t)(kl_rms_chunks(kl_numel(x) / D) * D) * sizeof(double);
    const kl_tensor *dy = t->src[0];
    if (!kl_same_shape(dy, x) || dy->dtype != x->dtype)
        return kl_fail(KL_EINTERNAL, "rmsnorm_bwd: dy %s vs x %s", kl_desc(dy), kl_desc(x));
    kl_tensor *e;
    if (a->need_dw) KL_TRY(kl_node_add_extra(t, x->dtype, 1, &x->ne[x->ndim - 1], &e));
    return KL_OK;
}

#define RMS_KERNELS(T)                                                                             \
    static void rms_fwd_##T(const kl_exec *ex, const kl_tensor *t)                                 \
    {                                                                                              \
        const rms_attr *a = KL_ATTR_C(t, rms_attr);                                                \
        const T *x = kl_data(ex, t->src[0]), *w = a->has_w ? kl_data(ex, t->src[1]) : NULL;        \
        T *y = kl_data(ex, t), *rstd = kl_aux(ex, t);                                              \
        int64_t D = t->ne[t->ndim - 1], R = kl_numel(t) / D;                                       \
        _Pragma("omp parallel for schedule(static) if (R * D > KL_PAR_MIN)")                       \
        for (int64_t r = 0; r < R; r++) {                                                          \
            const T *xr = x + r * D;                                                               \
            T *yr = y + r * D;                                                                     \
            double ss = 0;                                                                         \
            _Pragma("omp simd reduction(+ : ss)")                                                  \
            for (int64_t i = 0; i < D; i++) ss += (double)xr[i] * (double)xr[i];                   \
            T is = kl_rmsnorm_rstd_##T(ss, D, a->eps);                                             \
            rstd[r] = is;                                                                          \
            for (int64_t i = 0; i < D; i++) yr[i] = kl_rmsnorm_y_##T(xr[i], is, w ? w[i] : (T)1);  \
        }                                                                                          \
    }                                                                                              \
    static void rms_bwd_##T(const kl_exec *ex, const kl_tensor *t)                                 \
    {                                                                                              \
        const rms_attr *a = KL_ATTR_C(t, rms_attr);                                                \
        const T *dy = kl_data(ex, t->src[0]), *x = kl_data(ex, t->src[1]);                         \
        const T *rstd = kl_aux(ex, t->src[2]), *w = t->n_src > 3 ? kl_data(ex, t->src[3]) : NULL;  \
        int64_t D = t->ne[t->ndim - 1], R = kl_numel(t) / D;                                       \
        T *dx = kl_data(ex, t), *dw = a->need_dw ? kl_data(ex, t->extra[0]) : NULL;                \
        if (a->need_dx) {                                                                          \
            _Pragma("omp parallel for schedule(static) if (R * D > KL_PAR_MIN)")                   \
            for (int64_t r = 0; r < R; r++) {                                                      \
                const T *xr = x + r * D, *dr = dy + r * D;                                         \
                T *or_ = dx + r * D, is = rstd[r];                                                 \
                double sgx = 0;                                                                    \
                _Pragma("omp simd reduction(+ : sgx)")                                             \
                for (int64_t i = 0; i < D; i++)                                                    \
                    sgx += (double)dr[i] * (w ? (double)w[i] : 1.0) * (double)xr[i];               \
                T mgx = kl_rmsnorm_mgx_##T(sgx, is, D);                                            \
                for (int64_t i = 0; i < D; i++)                                                    \
                    or_[i] = kl_rmsnorm_bwd_##T(xr[i], dr[i] * (w ? w[i] : (T)1), is, mgx);        \
            }                                                                                      \
        }                                                                                          \
        if (!dw) return;                                                                           \
        int64_t nblk = (D + RMS_COLS - 1) / RMS_COLS;                                              \
        _Pragma("omp parallel for schedule(static) if (R * D > KL_PAR_MIN && nblk > 1)")           \
        for (int64_t blk = 0; blk < nblk; blk++) {                                                 \
            int64_t c0 = blk * RMS_COLS, nc = D - c0 < RMS_COLS ? D - c0 : RMS_COLS;               \
            double acc[RMS_COLS] = {0};                                                            \
            for (int64_t r = 0; r < R; r++) {                                                      \
                const T *xr = x + r * D + c0, *dr = dy + r * D + c0;                               \
                double is = (double)rstd[r];                                                       \
                for (int64_t i = 0; i < nc; i++) acc[i] += (double)dr[i] * (double)xr[i] * is;     \
            }                                                                                      \
            for (int64_t i = 0; i < nc; i++) dw[c0 + i] = (T)acc[i];                               \
        }                                                                                          \
    }
KL_FOR_REAL(RMS_KERNELS)

static kl_status rms_cpu(const kl_exec *ex, const kl_tensor *t)
{
    if (t->dtype == KL_F32) rms_fwd_float(ex, t);
    else rms_fwd_double(ex, t);
    return KL_OK;
}

static kl_status rms_bwd_cpu(const kl_exec *ex, const kl_tensor *t)
{
    if (t->dtype == KL_F32) rms_bwd_float(ex, t);
    else rms_bwd_double(ex, t);
    return KL_OK;
}

static kl_status rms_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    rms_attr a = *KL_ATTR(t, rms_attr);
    kl_tensor *x = t->src[0], *w = a.has_w ? t->src[1] : NULL;
    a.need_dx = x->requires_grad;
    a.need_dw = w && w->requires_grad;
    if (!a.need_dx && !a.need_dw) return KL_OK;
    kl_tensor *src[4] = {dy, x, t, w}, *dx;
    KL_TRY(kl_contiguous(g, dy, &src[0]));
    KL_TRY(kl_node_new(g, KL_OP_rmsnorm_bwd, w ? 4 : 3, src, &a, sizeof a, &dx));
    if (a.need_dx) KL_TRY(kl_grad_acc(g, x, dx));
    if (a.need_dw) KL_TRY(kl_grad_acc(g, w, dx->extra[0]));
    return KL_OK;
}

const kl_op_def kl_op_rmsnorm = {
    .name = "rmsnorm", .shape = rms_shape, .backward = rms_backward, .fwd = {[KL_BACKEND_CPU] = rms_cpu}};
const kl_op_def kl_op_rmsnorm_bwd = {
    .name = "rmsnorm_bwd", .shape = rms_shape, .fwd = {[KL_BACKEND_CPU] = rms_bwd_cpu}, .aux_srcs = 1u << 2};

kl_status kl_rmsnorm(kl_graph *g, kl_tensor *x, kl_tensor *weight, double eps, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "rmsnorm: out is NULL");
    *out = NULL;
    KL_TRY(kl_check_args(g, "rmsnorm", 1, &x));
    if (weight) KL_TRY(kl_check_args(g, "rmsnorm", 1, &weight));
    if (!(eps >= 0) || isinf(eps)) return kl_fail(KL_EINVAL, "rmsnorm: eps must be finite and >= 0, got %g", eps);
    rms_attr a = {.eps = eps, .has_w = weight != NULL};
    kl_tensor *src[2] = {x, weight};
    int n = weight ? 2 : 1;
    for (int i = 0; i < n; i++) KL_TRY(kl_contiguous(g, src[i], &src[i]));
    return kl_node_new(g, KL_OP_rmsnorm, n, src, &a, sizeof a, out);
}
