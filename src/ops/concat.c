/* Concatenation along an axis: y = [x_0 | x_1 | ...] (contiguous). Inputs
 * may be strided views; each is copied into its slab of y. Any dtype.
 * Backward: input k's gradient is the view dy[..., start_k:end_k, ...].
 * More inputs than a node holds are concatenated in groups, then the groups. */
#include "ops/ops.h"
#include "backends/cpu/cpu.h"

#include "ops/attrs.h" /* the attribute structs */

kl_status kl_copy_strided(const kl_exec *ex, const kl_tensor *src, void *dst, const int64_t *dst_st); /* copy.c */

/* Inputs agree in dtype, rank and every dim but axis (first is index base). */
static kl_status concat_check(int n, kl_tensor *const *xs, int axis, int base)
{
    const kl_tensor *x0 = xs[0];
    for (int k = 1; k < n; k++) {
        const kl_tensor *x = xs[k];
        if (x->dtype != x0->dtype)
            return kl_fail(KL_EINVAL, "concat: input %d %s has dtype %s, input %d %s has %s", base + k, kl_desc(x),
                           kl_dtype_name(x->dtype), base, kl_desc(x0), kl_dtype_name(x0->dtype));
        if (x->ndim != x0->ndim)
            return kl_fail(KL_EINVAL, "concat: input %d %s has %d dims, input %d %s has %d", base + k, kl_desc(x),
                           x->ndim, base, kl_desc(x0), x0->ndim);
        for (int d = 0; d < x0->ndim; d++)
            if (d != axis && x->ne[d] != x0->ne[d])
                return kl_fail(KL_EINVAL, "concat: input %d %s differs from input %d %s in dim %d (only axis %d may differ)",
                               base + k, kl_desc(x), base, kl_desc(x0), d, axis);
    }
    return KL_OK;
}

static kl_status concat_shape(kl_tensor *t)
{
    int axis = KL_ATTR(t, concat_attr)->axis;
    KL_TRY(concat_check(t->n_src, t->src, axis, 0));
    const kl_tensor *x0 = t->src[0];
    t->dtype = x0->dtype;
    t->ndim = x0->ndim;
    memcpy(t->ne, x0->ne, sizeof t->ne);
    for (int k = 1; k < t->n_src; k++) t->ne[axis] += t->src[k]->ne[axis];
    return KL_OK;
}

static kl_status concat_cpu(const kl_exec *ex, const kl_tensor *t)
{
    int axis = KL_ATTR_C(t, concat_attr)->axis;
    unsigned char *y = kl_data(ex, t);
    size_t es = kl_dtype_size(t->dtype);
    int64_t at = 0;
    for (int k = 0; k < t->n_src; k++) {
        KL_TRY(kl_copy_strided(ex, t->src[k], y + (size_t)(at * t->st[axis]) * es, t->st));
        at += t->src[k]->ne[axis];
    }
    return KL_OK;
}

static kl_status concat_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    int axis = KL_ATTR(t, concat_attr)->axis;
    int64_t at = 0;
    for (int k = 0; k < t->n_src; k++) {
        kl_tensor *x = t->src[k], *dx;
        int64_t len = x->ne[axis];
        if (x->requires_grad) {
            KL_TRY(kl_slice(g, dy, axis, at, at + len, &dx));
            KL_TRY(kl_grad_acc(g, x, dx));
        }
        at += len;
    }
    return KL_OK;
}

const kl_op_def kl_op_concat = {
    .name = "concat", .shape = concat_shape, .backward = concat_backward, .fwd = {[KL_BACKEND_CPU] = concat_cpu}, .half_native = KL_HALF_ALL};

kl_status kl_concat(kl_graph *g, int n, kl_tensor *const *xs, int axis, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "concat: out is NULL");
    *out = NULL;
    if (n <= 0 || !xs) return kl_fail(KL_EMISUSE, "concat: needs at least one input (n = %d, xs %s)", n, xs ? "set" : "NULL");
    KL_TRY(kl_check_args(g, "concat", n, xs));
    int a;
    KL_TRY(kl_axis("concat", xs[0], axis, &a));
    KL_TRY(concat_check(n, xs, a, 0));
    if (n == 1) return kl_contiguous(g, xs[0], out);
    concat_attr at = {a};
    if (n <= KL_MAX_SRC) return kl_node_new(g, KL_OP_concat, n, xs, &at, sizeof at, out);
    /* groups of KL_MAX_SRC, then the concat of the groups */
    kl_tensor *parts[KL_MAX_SRC];
    int np = 0, per = (n + KL_MAX_SRC - 1) / KL_MAX_SRC;
    for (int i = 0; i < n; i += per) {
        int m = n - i < per ? n - i : per;
        KL_TRY(kl_concat(g, m, xs + i, a, &parts[np++]));
    }
    return kl_concat(g, np, parts, a, out);
}
