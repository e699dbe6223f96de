/* Views: reshape, permute/transpose, slice and broadcast-expand. A view has
 * no kernel: it aliases its source's storage with its own shape, strides and
 * offset, so none of these copy (reshape of a non-contiguous tensor copies
 * first). slice_bwd writes a sliced gradient back into a zero tensor. */
#include "ops/ops.h"
#include "backends/cpu/cpu.h"

#include "ops/attrs.h" /* the attribute structs */

static kl_status view_shape(kl_tensor *t)
{
    const kl_tensor *x = t->src[0];
    const view_attr *a = KL_ATTR(t, view_attr);
    t->dtype = x->dtype;
    t->sk = KL_ST_VIEW;
    t->base = x->base;
    t->offs = x->offs;
    switch (a->kind) {
    case VIEW_RESHAPE: /* x is contiguous (the builder made sure) */
        t->ndim = a->ndim;
        memcpy(t->ne, a->ne, sizeof t->ne);
        kl_set_contiguous(t);
        break;
    case VIEW_PERMUTE:
        t->ndim = x->ndim;
        for (int d = 0; d < x->ndim; d++) {
            t->ne[d] = x->ne[a->perm[d]];
            t->st[d] = x->st[a->perm[d]];
        }
        break;
    case VIEW_SLICE:
        t->ndim = x->ndim;
        memcpy(t->ne, x->ne, sizeof t->ne);
        memcpy(t->st, x->st, sizeof t->st);
        t->ne[a->axis] = a->end - a->start;
        t->offs += a->start * x->st[a->axis];
        break;
    case VIEW_EXPAND:
        t->ndim = a->ndim;
        for (int d = 0; d < a->ndim; d++) {
            int ix = d - (a->ndim - x->ndim);
            t->ne[d] = a->ne[d];
            t->st[d] = (ix >= 0 && x->ne[ix] == a->ne[d]) ? x->st[ix] : 0;
        }
        break;
    }
    return KL_OK;
}

static kl_status slice_bwd_shape(kl_tensor *t);

static kl_status view_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    kl_tensor *x = t->src[0], *dx;
    const view_attr *a = KL_ATTR(t, view_attr);
    switch (a->kind) {
    case VIEW_RESHAPE:
        KL_TRY(kl_reshape(g, dy, x->ndim, x->ne, &dx));
        break;
    case VIEW_PERMUTE: {
        int inv[KL_MAX_DIMS];
        for (int d = 0; d < x->ndim; d++) inv[a->perm[d]] = d;
        KL_TRY(kl_permute(g, dy, inv, &dx));
        break;
    }
    case VIEW_SLICE:
        return kl_grad_acc_slice(g, x, dy, a->axis, a->start, a->end);
    default:
        KL_TRY(kl_reduce_to(g, dy, x, &dx));
        break;
    }
    return kl_grad_acc(g, x, dx);
}

const kl_op_def kl_op_view = {.name = "view", .shape = view_shape, .backward = view_backward};

/* ---- slice_bwd: zeros of the source shape with dy in the sliced range ---- */

static kl_status slice_bwd_shape(kl_tensor *t)
{
    const view_attr *a = KL_ATTR(t, view_attr);
    t->dtype = t->src[0]->dtype;
    t->ndim = a->ndim;
    memcpy(t->ne, a->ne, sizeof t->ne);
    return KL_OK;
}

kl_status kl_copy_strided(const kl_exec *ex, const kl_tensor *src, void *dst, const int64_t *dst_st);

static kl_status slice_bwd_cpu(const kl_exec *ex, const kl_tensor *t)
{
    const view_attr *a = KL_ATTR_C(t, view_attr);
    unsigned char *y = kl_data(ex, t);
    memset(y, 0, kl_nbytes(t));
    return kl_copy_strided(ex, t->src[0], y + a->start * t->st[a->axis] * kl_dtype_size(t->dtype), t->st);
}

kl_status kl_slice_grad(kl_graph *g, kl_tensor *x, kl_tensor *dy, int axis, int64_t start, int64_t end, kl_tensor **dx)
{
    view_attr b = {.kind = VIEW_SLICE, .ndim = x->ndim, .axis = axis, .start = start, .end = end};
    memcpy(b.ne, x->ne, sizeof b.ne);
    return kl_node_new(g, KL_OP_slice_bwd, 1, &dy, &b, sizeof b, dx);
}

static kl_status slice_bwd_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    const view_attr *a = KL_ATTR(t, view_attr);
    kl_tensor *dx;
    KL_TRY(kl_slice(g, dy, a->axis, a->start, a->end, &dx));
    return kl_grad_acc(g, t->src[0], dx);
}

const kl_op_def kl_op_slice_bwd = {.name = "slice_bwd",
                                   .shape = slice_bwd_shape,
                                   .backward = slice_bwd_backward,
                                   .fwd = {[KL_BACKEND_CPU] = slice_bwd_cpu},
                                   .half_native = KL_HALF_ALL};

/* ---- builders ---- */

static kl_status view_new(kl_graph *g, kl_tensor *x, const view_attr *a, kl_tensor **out)
{
    return kl_node_new(g, KL_OP_view, 1, &x, a, sizeof *a, out);
}

kl_status kl_reshape(kl_graph *g, kl_tensor *x, int ndim, const int64_t *dims, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "reshape: out is NULL");
    *out = NULL;
    KL_TRY(kl_check_args(g, "reshape", 1, &x));
    if (ndim < 0 || ndim > KL_MAX_DIMS || (ndim && !dims))
        return kl_fail(KL_EINVAL, "reshape: bad target rank %d for %s", ndim, kl_desc(x));
    view_attr a = {.kind = VIEW_RESHAPE, .ndim = ndim};
    int64_t known = 1;
    int infer = -1;
    for (int d = 0; d < ndim; d++) {
        if (dims[d] == -1 && infer < 0) infer = d;
        else if (dims[d] <= 0) return kl_fail(KL_EINVAL, "reshape: bad target dim %d = %lld for %s", d, (long long)dims[d], kl_desc(x));
        else if (__builtin_mul_overflow(known, dims[d], &known) || known > kl_numel(x)) goto mismatch; /* a wrapped product could match */
        a.ne[d] = dims[d];
    }
    if (infer >= 0) {
        if (known == 0 || kl_numel(x) % known) goto mismatch;
        a.ne[infer] = kl_numel(x) / known;
        known *= a.ne[infer];
    }
    if (known != kl_numel(x)) goto mismatch;
    bool same = ndim == x->ndim;
    for (int d = 0; same && d < ndim; d++) same = a.ne[d] == x->ne[d];
    if (same) {
        *out = x;
        return KL_OK;
    }
    if (!kl_is_contiguous(x)) KL_TRY(kl_contiguous(g, x, &x));
    return view_new(g, x, &a, out);
mismatch:;
    char sh[128];
    return kl_fail(KL_EINVAL, "reshape: cannot view %s (%lld elements) as %s", kl_desc(x), (long long)kl_numel(x),
                   kl_shape_str(sh, sizeof sh, ndim, dims));
}

kl_status kl_permute(kl_graph *g, kl_tensor *x, const int *perm, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "permute: out is NULL");
    *out = NULL;
    KL_TRY(kl_check_args(g, "permute", 1, &x));
    if (!perm) return kl_fail(KL_EMISUSE, "permute: perm is NULL");
    view_attr a = {.kind = VIEW_PERMUTE};
    unsigned seen = 0;
    for (int d = 0; d < x->ndim; d++) {
        if (perm[d] < 0 || perm[d] >= x->ndim || (seen >> perm[d] & 1))
            return kl_fail(KL_EINVAL, "permute: perm is not a permutation of 0..%d for %s (entry %d = %d)",
                           x->ndim - 1, kl_desc(x), d, perm[d]);
        seen |= 1u << perm[d];
        a.perm[d] = perm[d];
    }
    return view_new(g, x, &a, out);
}

kl_status kl_transpose(kl_graph *g, kl_tensor *x, int axis0, int axis1, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "transpose: out is NULL");
    *out = NULL;
    KL_TRY(kl_check_args(g, "transpose", 1, &x));
    int a0, a1, perm[KL_MAX_DIMS];
    KL_TRY(kl_axis("transpose", x, axis0, &a0));
    KL_TRY(kl_axis("transpose", x, axis1, &a1));
    for (int d = 0; d < x->ndim; d++) perm[d] = d;
    perm[a0] = a1;
    perm[a1] = a0;
    return kl_permute(g, x, perm, out);
}

kl_status kl_slice(kl_graph *g, kl_tensor *x, int axis, int64_t start, int64_t end, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "slice: out is NULL");
    *out = NULL;
    KL_TRY(kl_check_args(g, "slice", 1, &x));
    int a;
    KL_TRY(kl_axis("slice", x, axis, &a));
    if (start < 0 || end > x->ne[a] || start >= end)
        return kl_fail(KL_EINVAL, "slice: range [%lld,%lld) is empty or outside axis %d of %s", (long long)start,
                       (long long)end, axis, kl_desc(x));
    view_attr at = {.kind = VIEW_SLICE, .axis = a, .start = start, .end = end};
    return view_new(g, x, &at, out);
}

kl_status kl_split(kl_graph *g, kl_tensor *x, int axis, int n, const int64_t *sizes, kl_tensor **outs)
{
    if (!outs || !sizes || n <= 0) return kl_fail(KL_EMISUSE, "split: outs/sizes NULL or n = %d", n);
    KL_TRY(kl_check_args(g, "split", 1, &x));
    int a;
    KL_TRY(kl_axis("split", x, axis, &a));
    int64_t total = 0;
    for (int i = 0; i < n; i++)
        if (sizes[i] <= 0 || __builtin_add_overflow(total, sizes[i], &total) || total > x->ne[a])
            return kl_fail(KL_EINVAL, "split: size %d is %lld; sizes must be > 0 and add up to axis %d of %s (%lld)", i,
                           (long long)sizes[i], axis, kl_desc(x), (long long)x->ne[a]);
    if (total != x->ne[a])
        return kl_fail(KL_EINVAL, "split: sizes add up to %lld, axis %d of %s has %lld", (long long)total, axis,
                       kl_desc(x), (long long)x->ne[a]);
    int64_t at = 0;
    for (int i = 0; i < n; i++) {
        KL_TRY(kl_slice(g, x, a, at, at + sizes[i], &outs[i]));
        at += sizes[i];
    }
    return KL_OK;
}

kl_status kl_expand(kl_graph *g, kl_tensor *x, int ndim, const int64_t *ne, kl_tensor **out)
{
    view_attr a = {.kind = VIEW_EXPAND, .ndim = ndim};
    memcpy(a.ne, ne, (size_t)ndim * sizeof *ne);
    return view_new(g, x, &a, out);
}
