/* Sum over a set of axes (kept as size 1) times a scale: sum and mean.
 * Each output element is reduced by one thread in f64 (float inputs too), so
 * results do not depend on the thread count. Backward: the gradient
 * broadcast back over the reduced axes, times the scale. */
#include "ops/ops.h"
#include "ops/elem.h"
#include "ops/sum_chunks.h" /* kl_reduce_chunks: the CUDA kernel's scratch */
#include "backends/cpu/cpu.h"
#include "backends/cpu/iter.h"

#include "ops/attrs.h" /* the attribute structs */

int64_t kl_reduce_cuda_chunks(const kl_tensor *t, int *cols)
{
    const kl_tensor *x = t->src[0];
    int64_t ost[1][8] = {{0}}, nout = kl_numel(t);
    for (int d = 0; d < x->ndim; d++) ost[0][d] = x->st[d]; /* t->ne[d] is 1 on reduced axes */
    kl_iter out;
    kl_iter_init(&out, t->ndim, t->ne, 1, (const int64_t(*)[8])ost);
    int c = out.ndim == 1 && out.st[0][0] == 1 && nout >= 32; /* outputs consecutive in x */
    if (cols) *cols = c;
    return nout ? kl_reduce_chunks(nout, kl_numel(x) / nout, c) : 1;
}

static kl_status reduce_shape(kl_tensor *t)
{
    const kl_tensor *x = t->src[0];
    if (!kl_is_float(x->dtype))
        return kl_fail(KL_EINVAL, "sum: expected floating-point input, got %s", kl_desc(x));
    t->dtype = x->dtype;
    t->ndim = x->ndim;
    for (int d = 0; d < x->ndim; d++) t->ne[d] = (KL_ATTR(t, reduce_attr)->mask >> d & 1) ? 1 : x->ne[d];
    if (t->g->ctx->backend == KL_BACKEND_CUDA) {
        int64_t q = kl_reduce_cuda_chunks(t, NULL);
        if (q > 1) t->scratch_bytes = (size_t)(kl_numel(t) * q) * sizeof(double);
    }
    return KL_OK;
}

#define REDUCE_KERNEL(T)                                                                           \
    static void reduce_cpu_##T(const kl_tensor *t, const T *x, T *y)                              \
    {                                                                                              \
        const kl_tensor *xs = t->src[0];                                                           \
        const reduce_attr *a = KL_ATTR_C(t, reduce_attr);                                          \
        int64_t rne[8], rst[1][8];                                                                 \
        int rn = 0;                                                                                \
        for (int d = 0; d < xs->ndim; d++)                                                         \
            if (a->mask >> d & 1) {                                                                \
                rne[rn] = xs->ne[d];                                                               \
                rst[0][rn++] = xs->st[d];                                                          \
            }                                                                                      \
        kl_iter it;                                                                                \
        kl_iter_init(&it, rn, rne, 1, (const int64_t(*)[8])rst);                                   \
        int64_t sx = kl_iter_inner_st(&it, 0), nout = kl_numel(t);                                 \
        _Pragma("omp parallel for schedule(static) if (kl_numel(xs) > KL_PAR_MIN && nout > 1)")     \
        for (int64_t o = 0; o < nout; o++) {                                                       \
            int64_t base = 0, rem = o;                                                             \
            for (int d = t->ndim - 1; d >= 0; d--) {                                               \
                base += (rem % t->ne[d]) * xs->st[d];                                              \
                rem /= t->ne[d];                                                                   \
            }                                                                                      \
            double acc = 0;                                                                        \
            for (int64_t r = 0; r < it.rows; r++) {                                                \
                int64_t off;                                                                       \
                kl_iter_row(&it, r, &off);                                                         \
                const T *xr = x + base + off;                                                      \
                for (int64_t i = 0; i < it.inner; i++) acc += xr[i * sx];                          \
            }                                                                                      \
            y[o] = (T)(acc * a->scale);                                                            \
        }                                                                                          \
    }
KL_FOR_REAL(REDUCE_KERNEL)

/* Sum over the leading axes of a contiguous [R, C] input (bias gradients):
 * rows are streamed in order into per-column accumulators, columns split
 * across threads, so it vectorises and each column's order is fixed. */
#define COLSUM_KERNEL(T)                                                                           \
    static void colsum_##T(const T *x, T *y, int64_t R, int64_t C, double scale)                  \
    {                                                                                              \
        enum { CB = 256 };                                                                         \
        int64_t nb = (C + CB - 1) / CB;                                                            \
        _Pragma("omp parallel for schedule(static) if (R * C > KL_PAR_MIN && nb > 1)")              \
        for (int64_t b = 0; b < nb; b++) {                                                         \
            double acc[CB] = {0};                                                                  \
            int64_t c0 = b * CB, w = C - c0 < CB ? C - c0 : CB;                                    \
            for (int64_t r = 0; r < R; r++) {                                                      \
                const T *xr = x + r * C + c0;                                                      \
                for (int64_t j = 0; j < w; j++) acc[j] += xr[j];                                   \
            }                                                                                      \
            for (int64_t j = 0; j < w; j++) y[c0 + j] = (T)(acc[j] * scale);                       \
        }                                                                                          \
    }
KL_FOR_REAL(COLSUM_KERNEL)

/* The reduced axes are exactly the leading k of a contiguous input. */
static bool leading_axes(const kl_tensor *t, int64_t *R, int64_t *C)
{
    const kl_tensor *x = t->src[0];
    unsigned mask = KL_ATTR_C(t, reduce_attr)->mask;
    int k = 0;
    while (k < x->ndim && (mask >> k & 1)) k++;
    if (k == 0 || k == x->ndim || (mask >> k) || !kl_is_contiguous(x)) return false;
    *R = 1;
    for (int d = 0; d < k; d++) *R *= x->ne[d];
    *C = kl_numel(x) / *R;
    return true;
}

static kl_status reduce_cpu(const kl_exec *ex, const kl_tensor *t)
{
    int64_t R, C;
    double scale = KL_ATTR_C(t, reduce_attr)->scale;
    if (leading_axes(t, &R, &C)) {
        if (t->dtype == KL_F32) colsum_float(kl_data(ex, t->src[0]), kl_data(ex, t), R, C, scale);
        else colsum_double(kl_data(ex, t->src[0]), kl_data(ex, t), R, C, scale);
        return KL_OK;
    }
    if (t->dtype == KL_F32) reduce_cpu_float(t, kl_data(ex, t->src[0]), kl_data(ex, t));
    else reduce_cpu_double(t, kl_data(ex, t->src[0]), kl_data(ex, t));
    return KL_OK;
}

static kl_status reduce_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    kl_tensor *x = t->src[0], *e, *dx;
    KL_TRY(kl_expand(g, dy, x->ndim, x->ne, &e));
    KL_TRY(kl_unary_op(g, KL_UN_SCALE, KL_ATTR(t, reduce_attr)->scale, e, &dx));
    return kl_grad_acc(g, x, dx);
}

const kl_op_def kl_op_reduce = {
    .name = "reduce", .shape = reduce_shape, .backward = reduce_backward, .fwd = {[KL_BACKEND_CPU] = reduce_cpu},
    .half_native = KL_HALF_CUDA};

kl_status kl_reduce_op(kl_graph *g, kl_tensor *x, unsigned mask, double scale, kl_tensor **out)
{
    reduce_attr a = {mask, scale};
    return kl_node_new(g, KL_OP_reduce, 1, &x, &a, sizeof a, out);
}

kl_status kl_reduce_to(kl_graph *g, kl_tensor *dy, const kl_tensor *x, kl_tensor **out)
{
    unsigned mask = 0;
    int lead = dy->ndim - x->ndim;
    for (int d = 0; d < dy->ndim; d++)
        if (d < lead || (x->ne[d - lead] == 1 && dy->ne[d] != 1)) mask |= 1u << d;
    if (!mask && dy->ndim == x->ndim) {
        *out = dy;
        return KL_OK;
    }
    kl_tensor *r = dy;
    if (mask) KL_TRY(kl_reduce_op(g, dy, mask, 1.0, &r));
    return kl_reshape(g, r, x->ndim, x->ne, out);
}

static kl_status sum_or_mean(kl_graph *g, kl_tensor *x, int naxes, const int *axes, int keepdim, bool mean,
                             kl_tensor **out)
{
    const char *name = mean ? "mean" : "sum";
    if (!out) return kl_fail(KL_EMISUSE, "%s: out is NULL", name);
    *out = NULL;
    KL_TRY(kl_check_args(g, name, 1, &x));
    if (naxes < 0 || (naxes > 0 && !axes)) return kl_fail(KL_EINVAL, "%s: bad axes list (%d axes)", name, naxes);
    unsigned mask = 0;
    for (int i = 0; i < naxes; i++) {
        int a;
        KL_TRY(kl_axis(name, x, axes[i], &a));
        if (mask >> a & 1) return kl_fail(KL_EINVAL, "%s: axis %d listed twice for %s", name, axes[i], kl_desc(x));
        mask |= 1u << a;
    }
    if (naxes == 0) mask = (1u << x->ndim) - 1;
    int64_t n = 1, kept[KL_MAX_DIMS];
    int nk = 0;
    for (int d = 0; d < x->ndim; d++) {
        if (mask >> d & 1) n *= x->ne[d];
        else kept[nk++] = x->ne[d];
    }
    kl_tensor *r;
    KL_TRY(kl_reduce_op(g, x, mask, mean ? 1.0 / (double)n : 1.0, &r));
    if (keepdim) {
        *out = r;
        return KL_OK;
    }
    return kl_reshape(g, r, nk, kept, out);
}

kl_status kl_sum(kl_graph *g, kl_tensor *x, int naxes, const int *axes, int keepdim, kl_tensor **out)
{
    return sum_or_mean(g, x, naxes, axes, keepdim, false, out);
}

kl_status kl_mean(kl_graph *g, kl_tensor *x, int naxes, const int *axes, int keepdim, kl_tensor **out)
{
    return sum_or_mean(g, x, naxes, axes, keepdim, true, out);
}
