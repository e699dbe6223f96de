/* Softmax and log-softmax over the last axis, and the fused softmax +
 * cross-entropy loss with integer labels.
 *   softmax:     y = exp(x - max) / sum(exp(x - max))
 *   backward:    dx = y * (dy - sum(dy * y))            (softmax)
 *                dx = dy - exp(y) * sum(dy)             (log-softmax, y = log p)
 *   softmax_ce:  loss = mean_n(logsumexp(x_n) - x_n[label_n]); forward saves
 *                nothing: the backward op recomputes p from the logits,
 *                dx = (p - onehot(label)) * dloss / N (as llm.c does). */
#include "ops/ops.h"
#include "backends/cpu/cpu.h"

#include <math.h>

#include "ops/attrs.h" /* the attribute structs */

static kl_status softmax_shape(kl_tensor *t)
{
    const kl_tensor *x = t->src[0];
    const char *name = KL_ATTR(t, softmax_attr)->log ? "log_softmax" : "softmax";
    if (!kl_is_float(x->dtype))
        return kl_fail(KL_EINVAL, "%s: expected floating-point input, got %s", name, kl_desc(x));
    if (x->ndim < 1) return kl_fail(KL_EINVAL, "%s: input must have at least 1 dim, got %s", name, kl_desc(x));
    if (t->op == KL_OP_softmax_bwd && !kl_same_shape(t->src[0], t->src[1]))
        return kl_fail(KL_EINTERNAL, "softmax_bwd: %s vs %s", kl_desc(t->src[0]), kl_desc(t->src[1]));
    t->dtype = x->dtype;
    t->ndim = x->ndim;
    memcpy(t->ne, x->ne, sizeof t->ne);
    return KL_OK;
}

/* rows of length C; inputs contiguous (builders make them so) */
#define SOFTMAX_KERNELS(T)                                                                         \
    static void softmax_rows_##T(const T *x, T *y, int64_t rows, int64_t C, int is_log)              \
    {                                                                                              \
        _Pragma("omp parallel for schedule(static) if (rows * C > KL_PAR_MIN)")                     \
        for (int64_t r = 0; r < rows; r++) {                                                       \
            const T *xr = x + r * C;                                                               \
            T *yr = y + r * C, mx = xr[0];                                                         \
            for (int64_t i = 1; i < C; i++) mx = xr[i] > mx ? xr[i] : mx;                          \
            double s = 0;                                                                          \
            for (int64_t i = 0; i < C; i++) s += exp((double)(xr[i] - mx));                        \
            if (is_log) {                                                                             \
                T ls = (T)log(s);                                                                  \
                for (int64_t i = 0; i < C; i++) yr[i] = xr[i] - mx - ls;                           \
            } else {                                                                               \
                for (int64_t i = 0; i < C; i++) yr[i] = (T)(exp((double)(xr[i] - mx)) / s);        \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
    static void softmax_bwd_rows_##T(const T *dy, const T *y, T *dx, int64_t rows, int64_t C, int is_log) \
    {                                                                                              \
        _Pragma("omp parallel for schedule(static) if (rows * C > KL_PAR_MIN)")                     \
        for (int64_t r = 0; r < rows; r++) {                                                       \
            const T *dr = dy + r * C, *yr = y + r * C;                                             \
            T *xr = dx + r * C;                                                                    \
            double s = 0;                                                                          \
            for (int64_t i = 0; i < C; i++) s += is_log ? (double)dr[i] : (double)dr[i] * yr[i];      \
            for (int64_t i = 0; i < C; i++)                                                        \
                xr[i] = is_log ? (T)(dr[i] - exp((double)yr[i]) * s) : (T)(yr[i] * (dr[i] - s));      \
        }                                                                                          \
    }
KL_FOR_REAL(SOFTMAX_KERNELS)

static kl_status softmax_cpu(const kl_exec *ex, const kl_tensor *t)
{
    int64_t C = t->ne[t->ndim - 1], rows = kl_numel(t) / C;
    int log = KL_ATTR_C(t, softmax_attr)->log;
    if (t->dtype == KL_F32) softmax_rows_float(kl_data(ex, t->src[0]), kl_data(ex, t), rows, C, log);
    else softmax_rows_double(kl_data(ex, t->src[0]), kl_data(ex, t), rows, C, log);
    return KL_OK;
}

static kl_status softmax_bwd_cpu(const kl_exec *ex, const kl_tensor *t)
{
    int64_t C = t->ne[t->ndim - 1], rows = kl_numel(t) / C;
    int log = KL_ATTR_C(t, softmax_attr)->log;
    if (t->dtype == KL_F32)
        softmax_bwd_rows_float(kl_data(ex, t->src[0]), kl_data(ex, t->src[1]), kl_data(ex, t), rows, C, log);
    else
        softmax_bwd_rows_double(kl_data(ex, t->src[0]), kl_data(ex, t->src[1]), kl_data(ex, t), rows, C, log);
    return KL_OK;
}

static kl_status softmax_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    kl_tensor *src[2] = {dy, t}, *dx;
    if (!kl_is_contiguous(dy)) KL_TRY(kl_contiguous(g, dy, &src[0]));
    KL_TRY(kl_node_new(g, KL_OP_softmax_bwd, 2, src, t->attr, sizeof(softmax_attr), &dx));
    return kl_grad_acc(g, t->src[0], dx);
}

const kl_op_def kl_op_softmax = {
    .name = "softmax", .shape = softmax_shape, .backward = softmax_backward, .fwd = {[KL_BACKEND_CPU] = softmax_cpu}};
const kl_op_def kl_op_softmax_bwd = {
    .name = "softmax_bwd", .shape = softmax_shape, .fwd = {[KL_BACKEND_CPU] = softmax_bwd_cpu}};

static kl_status softmax_pub(kl_graph *g, kl_tensor *x, int log, kl_tensor **out)
{
    const char *name = log ? "log_softmax" : "softmax";
    if (!out) return kl_fail(KL_EMISUSE, "%s: out is NULL", name);
    *out = NULL;
    KL_TRY(kl_check_args(g, name, 1, &x));
    KL_TRY(kl_contiguous(g, x, &x));
    softmax_attr a = {log};
    return kl_node_new(g, KL_OP_softmax, 1, &x, &a, sizeof a, out);
}

kl_status kl_softmax(kl_graph *g, kl_tensor *x, kl_tensor **out) { return softmax_pub(g, x, 0, out); }
kl_status kl_log_softmax(kl_graph *g, kl_tensor *x, kl_tensor **out) { return softmax_pub(g, x, 1, out); }

/* ---- fused softmax cross-entropy ---- */

static kl_status ce_shape(kl_tensor *t)
{
    const kl_tensor *x = t->src[0], *y = t->src[1];
    if (!kl_is_float(x->dtype) || x->ndim != 2)
        return kl_fail(KL_EINVAL, "softmax_cross_entropy: logits must be [N, C] floating-point, got %s", kl_desc(x));
    if (y->dtype != KL_I32 || y->ndim != 1 || y->ne[0] != x->ne[0])
        return kl_fail(KL_EINVAL, "softmax_cross_entropy: labels must be i32 [%lld], got %s", (long long)x->ne[0],
                       kl_desc(y));
    t->dtype = x->dtype;
    if (t->op == KL_OP_softmax_ce_bwd) {
        t->ndim = 2;
        memcpy(t->ne, x->ne, sizeof t->ne);
    } else {
        t->ndim = 0;
    }
    return KL_OK;
}

/* Checks labels; the loss (fwd) or dx (bwd, scaled by dloss / N). */
#define CE_KERNEL(T)                                                                               \
    static kl_status ce_##T(const kl_tensor *t, const T *x, const int32_t *lab, const T *dl, T *out) \
    {                                                                                              \
        int64_t N = t->src[0]->ne[0], C = t->src[0]->ne[1];                                        \
        for (int64_t n = 0; n < N; n++)                                                            \
            if (lab[n] < 0 || lab[n] >= C)                                                         \
                return kl_fail(KL_EINVAL, "softmax_cross_entropy: label %d of row %lld out of range [0,%lld)", \
                               lab[n], (long long)n, (long long)C);                                \
        double total = 0, scale = dl ? (double)dl[0] / (double)N : 0;                              \
        _Pragma("omp parallel for schedule(static) reduction(+ : total) if (N * C > KL_PAR_MIN)")   \
        for (int64_t n = 0; n < N; n++) {                                                          \
            const T *xr = x + n * C;                                                               \
            T mx = xr[0];                                                                          \
            for (int64_t i = 1; i < C; i++) mx = xr[i] > mx ? xr[i] : mx;                          \
            double s = 0;                                                                          \
            for (int64_t i = 0; i < C; i++) s += exp((double)(xr[i] - mx));                        \
            if (!dl) {                                                                             \
                total += log(s) + (double)mx - (double)xr[lab[n]];                                 \
                continue;                                                                          \
            }                                                                                      \
            T *dr = out + n * C;                                                                   \
            for (int64_t i = 0; i < C; i++)                                                        \
                dr[i] = (T)((exp((double)(xr[i] - mx)) / s - (i == lab[n])) * scale);             \
        }                                                                                          \
        if (!dl) out[0] = (T)(total / (double)N);                                                  \
        return KL_OK;                                                                              \
    }
KL_FOR_REAL(CE_KERNEL)

static kl_status ce_cpu(const kl_exec *ex, const kl_tensor *t)
{
    const void *x = kl_data(ex, t->src[0]), *dl = t->op == KL_OP_softmax_ce_bwd ? kl_data(ex, t->src[2]) : NULL;
    const int32_t *lab = kl_data(ex, t->src[1]);
    if (t->dtype == KL_F32) return ce_float(t, x, lab, dl, kl_data(ex, t));
    return ce_double(t, x, lab, dl, kl_data(ex, t));
}

static kl_status ce_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    kl_tensor *src[3] = {t->src[0], t->src[1], dy}, *dx;
    KL_TRY(kl_node_new(g, KL_OP_softmax_ce_bwd, 3, src, NULL, 0, &dx));
    return kl_grad_acc(g, t->src[0], dx);
}

const kl_op_def kl_op_softmax_ce = {
    .name = "softmax_ce", .shape = ce_shape, .backward = ce_backward, .fwd = {[KL_BACKEND_CPU] = ce_cpu}};
const kl_op_def kl_op_softmax_ce_bwd = {.name = "softmax_ce_bwd", .shape = ce_shape, .fwd = {[KL_BACKEND_CPU] = ce_cpu}};

kl_status kl_softmax_cross_entropy(kl_graph *g, kl_tensor *logits, kl_tensor *labels, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "softmax_cross_entropy: out is NULL");
    *out = NULL;
    kl_tensor *src[2] = {logits, labels};
    KL_TRY(kl_check_args(g, "softmax_cross_entropy", 2, src));
    KL_TRY(kl_contiguous(g, logits, &src[0]));
    KL_TRY(kl_contiguous(g, labels, &src[1])); /* kernels read labels densely (an expanded view would not be) */
    return kl_node_new(g, KL_OP_softmax_ce, 2, src, NULL, 0, out);
}

/* MSE is composed from existing ops: mean(square(pred - target)). */
kl_status kl_mse(kl_graph *g, kl_tensor *pred, kl_tensor *target, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "mse: out is NULL");
    *out = NULL;
    kl_tensor *src[2] = {pred, target}, *d;
    KL_TRY(kl_check_args(g, "mse", 2, src));
    if (!kl_same_shape(pred, target) || pred->dtype != target->dtype)
        return kl_fail(KL_EINVAL, "mse: pred %s and target %s must have the same shape and dtype", kl_desc(pred),
                       kl_desc(target));
    KL_TRY(kl_sub(g, pred, target, &d));
    KL_TRY(kl_square(g, d, &d));
    return kl_mean(g, d, 0, NULL, 0, out);
}
