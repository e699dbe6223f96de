/* Row ops without gradients, for training loops that never leave the device:
 *   gather_rows   y[r] = src[idx[start + r]], r < rows: a batch of a dataset
 *                 kept in device memory, in the epoch's order idx, at the
 *                 offset start (an input set before each run)
 *   argmax_match  the number of rows n of logits whose first largest value
 *                 is at labels[n]: accuracy without reading logits back */
#include "ops/ops.h"
#include "ops/elem.h"
#include "ops/attrs.h"

static kl_status gather_shape(kl_tensor *t)
{
    const kl_tensor *src = t->src[0], *idx = t->src[1], *start = t->src[2];
    int64_t rows = KL_ATTR_C(t, gather_attr)->rows;
    if (src->ndim < 1 || !kl_is_contiguous(src))
        return kl_fail(KL_EINVAL, "gather_rows: source must be a contiguous tensor [M, ...], got %s", kl_desc(src));
    if (idx->dtype != KL_I32 || idx->ndim != 1 || !kl_is_contiguous(idx))
        return kl_fail(KL_EINVAL, "gather_rows: indices must be i32 [K], got %s", kl_desc(idx));
    if (start->dtype != KL_I32 || kl_numel(start) != 1)
        return kl_fail(KL_EINVAL, "gather_rows: start must be one i32 value, got %s", kl_desc(start));
    if (rows < 1 || rows > idx->ne[0])
        return kl_fail(KL_EINVAL, "gather_rows: %lld rows from %lld indices %s", (long long)rows, (long long)idx->ne[0],
                       kl_desc(idx));
    t->dtype = src->dtype;
    t->ndim = src->ndim;
    memcpy(t->ne, src->ne, sizeof t->ne);
    t->ne[0] = rows;
    return KL_OK;
}

static kl_status gather_cpu(const kl_exec *ex, const kl_tensor *t)
{
    const kl_tensor *src = t->src[0], *idx = t->src[1];
    const int32_t *ix = kl_data(ex, idx), start = *(const int32_t *)kl_data(ex, t->src[2]);
    int64_t rows = t->ne[0], K = idx->ne[0], M = src->ne[0];
    size_t row = kl_nbytes(t) / (size_t)rows;
    if (start < 0 || start > K - rows)
        return kl_fail(KL_EINVAL, "gather_rows: rows [%d, %lld) are not within the %lld indices", start,
                       (long long)start + rows, (long long)K);
    for (int64_t r = 0; r < rows; r++)
        if (ix[start + r] < 0 || ix[start + r] >= M)
            return kl_fail(KL_EINVAL, "gather_rows: index %d at position %lld out of range [0,%lld) of %s", ix[start + r],
                           (long long)start + r, (long long)M, kl_desc(src));
    const unsigned char *s = kl_data(ex, src);
    unsigned char *y = kl_data(ex, t);
    for (int64_t r = 0; r < rows; r++) memcpy(y + (size_t)r * row, s + (size_t)ix[start + r] * row, row);
    return KL_OK;
}

const kl_op_def kl_op_gather_rows = {.name = "gather_rows", .shape = gather_shape, .fwd = {[KL_BACKEND_CPU] = gather_cpu}, .half_native = KL_HALF_ALL};

kl_status kl_gather_rows(kl_graph *g, kl_tensor *src, kl_tensor *idx, kl_tensor *start, int64_t rows, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "gather_rows: out is NULL");
    *out = NULL;
    kl_tensor *s[3] = {src, idx, start};
    KL_TRY(kl_check_args(g, "gather_rows", 3, s));
    gather_attr a = {rows};
    return kl_node_new(g, KL_OP_gather_rows, 3, s, &a, sizeof a, out);
}

static kl_status match_shape(kl_tensor *t)
{
    const kl_tensor *x = t->src[0], *y = t->src[1];
    if (!kl_is_float(x->dtype) || x->ndim != 2)
        return kl_fail(KL_EINVAL, "argmax_match: logits must be [N, C] floating-point, got %s", kl_desc(x));
    if (y->dtype != KL_I32 || y->ndim != 1 || y->ne[0] != x->ne[0])
        return kl_fail(KL_EINVAL, "argmax_match: labels must be i32 [%lld], got %s", (long long)x->ne[0], kl_desc(y));
    t->dtype = KL_I32;
    t->ndim = 0;
    return KL_OK;
}

static kl_status match_cpu(const kl_exec *ex, const kl_tensor *t)
{
    const kl_tensor *x = t->src[0];
    const int32_t *lab = kl_data(ex, t->src[1]);
    int64_t N = x->ne[0], C = x->ne[1];
    int32_t n = 0;
    for (int64_t r = 0; r < N; r++) {
        int64_t best = x->dtype == KL_F32 ? kl_argmax_float((const float *)kl_data(ex, x) + r * C, C)
                                          : kl_argmax_double((const double *)kl_data(ex, x) + r * C, C);
        n += best == lab[r];
    }
    *(int32_t *)kl_data(ex, t) = n;
    return KL_OK;
}

const kl_op_def kl_op_argmax_match = {.name = "argmax_match", .shape = match_shape, .fwd = {[KL_BACKEND_CPU] = match_cpu}};

kl_status kl_argmax_match(kl_graph *g, kl_tensor *logits, kl_tensor *labels, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "argmax_match: out is NULL");
    *out = NULL;
    kl_tensor *s[2] = {logits, labels};
    KL_TRY(kl_check_args(g, "argmax_match", 2, s));
    KL_TRY(kl_contiguous(g, logits, &s[0]));
    KL_TRY(kl_contiguous(g, labels, &s[1]));
    return kl_node_new(g, KL_OP_argmax_match, 2, s, NULL, 0, out);
}
