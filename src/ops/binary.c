/* Broadcasting elementwise a (+ - * /) b. Inputs may be strided views;
 * broadcast dims get stride 0, so bias adds and scalar ops are plain loops.
 * Gradients are reduced back over the broadcast axes (kl_reduce_to). */
#include "ops/ops.h"
#include "ops/elem.h"
#include "backends/cpu/cpu.h"
#include "backends/cpu/iter.h"

#include "ops/attrs.h" /* the attribute structs */

static const char *binary_names[KL_BIN_COUNT] = {"add", "sub", "mul", "div"};

static kl_status binary_shape(kl_tensor *t)
{
    const kl_tensor *a = t->src[0], *b = t->src[1];
    const char *name = binary_names[KL_ATTR(t, binary_attr)->kind];
    if (a->dtype != b->dtype || !kl_is_float(a->dtype))
        return kl_fail(KL_EINVAL, "%s: dtypes must match and be floating-point: %s, %s", name, kl_desc(a), kl_desc(b));
    int n = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int i = 0; i < n; i++) {
        int ia = i - (n - a->ndim), ib = i - (n - b->ndim);
        int64_t da = ia >= 0 ? a->ne[ia] : 1, db = ib >= 0 ? b->ne[ib] : 1;
        if (da != db && da != 1 && db != 1)
            return kl_fail(KL_EINVAL, "%s: shapes do not broadcast: %s vs %s (dim %d: %lld vs %lld)", name, kl_desc(a),
                           kl_desc(b), i, (long long)da, (long long)db);
        t->ne[i] = da > db ? da : db;
    }
    t->ndim = n;
    t->dtype = a->dtype;
    return KL_OK;
}

/* x's strides over the broadcast shape of t (0 where x is broadcast). */
static void bcast_strides(const kl_tensor *t, const kl_tensor *x, int64_t *st)
{
    for (int i = 0; i < t->ndim; i++) {
        int ix = i - (t->ndim - x->ndim);
        st[i] = (ix >= 0 && x->ne[ix] == t->ne[i]) ? x->st[ix] : 0;
    }
}

#define BINARY_KERNEL(T)                                                                           \
    static void binary_cpu_##T(const kl_tensor *t, const T *a, const T *b, T *y)                  \
    {                                                                                              \
        int64_t st[3][8];                                                                          \
        memcpy(st[0], t->st, sizeof st[0]);                                                        \
        bcast_strides(t, t->src[0], st[1]);                                                        \
        bcast_strides(t, t->src[1], st[2]);                                                        \
        kl_iter it;                                                                                \
        kl_iter_init(&it, t->ndim, t->ne, 3, (const int64_t(*)[8])st);                             \
        int64_t sa = kl_iter_inner_st(&it, 1), sb = kl_iter_inner_st(&it, 2);                      \
        int kind = KL_ATTR_C(t, binary_attr)->kind;                                                \
        kl_iter_blocks bl = kl_iter_split(&it);                                                    \
        _Pragma("omp parallel for schedule(static) if (it.rows * it.inner > KL_PAR_MIN)")           \
        for (int64_t w = 0; w < bl.items; w++) {                                                   \
            int64_t o[3], i0, i1;                                                                  \
            kl_iter_item(&it, &bl, w, o, &i0, &i1);                                                \
            T *yr = y + o[0];                                                                      \
            const T *ar = a + o[1], *br = b + o[2];                                                \
            if (sa == 1 && sb == 1 && kind == KL_BIN_ADD)                                          \
                for (int64_t i = i0; i < i1; i++) yr[i] = ar[i] + br[i];                           \
            else if (sa == 1 && sb == 1 && kind == KL_BIN_MUL)                                     \
                for (int64_t i = i0; i < i1; i++) yr[i] = ar[i] * br[i];                           \
            else                                                                                   \
                for (int64_t i = i0; i < i1; i++) yr[i] = kl_binary_##T(kind, ar[i * sa], br[i * sb]); \
        }                                                                                          \
    }
KL_FOR_REAL(BINARY_KERNEL)

static kl_status binary_cpu(const kl_exec *ex, const kl_tensor *t)
{
    const void *a = kl_data(ex, t->src[0]), *b = kl_data(ex, t->src[1]);
    if (t->dtype == KL_F32) binary_cpu_float(t, a, b, kl_data(ex, t));
    else binary_cpu_double(t, a, b, kl_data(ex, t));
    return KL_OK;
}

kl_status kl_binary_op(kl_graph *g, int kind, kl_tensor *a, kl_tensor *b, kl_tensor **out)
{
    binary_attr at = {kind};
    kl_tensor *src[2] = {a, b};
    return kl_node_new(g, KL_OP_binary, 2, src, &at, sizeof at, out);
}

static kl_status acc_reduced(kl_graph *g, kl_tensor *x, kl_tensor *d)
{
    if (!x->requires_grad) return KL_OK;
    kl_tensor *r;
    KL_TRY(kl_reduce_to(g, d, x, &r));
    return kl_grad_acc(g, x, r);
}

static kl_status binary_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    kl_tensor *a = t->src[0], *b = t->src[1], *d;
    switch (KL_ATTR(t, binary_attr)->kind) {
    case KL_BIN_ADD:
        KL_TRY(acc_reduced(g, a, dy));
        return acc_reduced(g, b, dy);
    case KL_BIN_SUB:
        KL_TRY(acc_reduced(g, a, dy));
        if (!b->requires_grad) return KL_OK;
        KL_TRY(kl_unary_op(g, KL_UN_SCALE, -1, dy, &d));
        return acc_reduced(g, b, d);
    case KL_BIN_MUL:
        if (a->requires_grad) {
            KL_TRY(kl_binary_op(g, KL_BIN_MUL, dy, b, &d));
            KL_TRY(acc_reduced(g, a, d));
        }
        if (!b->requires_grad) return KL_OK;
        KL_TRY(kl_binary_op(g, KL_BIN_MUL, dy, a, &d));
        return acc_reduced(g, b, d);
    default: /* y = a / b: da = dy / b, db = -dy * y / b */
        if (a->requires_grad) {
            KL_TRY(kl_binary_op(g, KL_BIN_DIV, dy, b, &d));
            KL_TRY(acc_reduced(g, a, d));
        }
        if (!b->requires_grad) return KL_OK;
        KL_TRY(kl_binary_op(g, KL_BIN_MUL, dy, t, &d));
        KL_TRY(kl_binary_op(g, KL_BIN_DIV, d, b, &d));
        KL_TRY(kl_unary_op(g, KL_UN_SCALE, -1, d, &d));
        return acc_reduced(g, b, d);
    }
}

const kl_op_def kl_op_binary = {
    .name = "binary", .shape = binary_shape, .backward = binary_backward, .fwd = {[KL_BACKEND_CPU] = binary_cpu}, .half_native = KL_HALF_CUDA};

static kl_status binary_pub(kl_graph *g, int kind, kl_tensor *a, kl_tensor *b, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "%s: out is NULL", binary_names[kind]);
    *out = NULL;
    kl_tensor *ab[2] = {a, b};
    KL_TRY(kl_check_args(g, binary_names[kind], 2, ab));
    return kl_binary_op(g, kind, a, b, out);
}

kl_status kl_add(kl_graph *g, kl_tensor *a, kl_tensor *b, kl_tensor **out) { return binary_pub(g, KL_BIN_ADD, a, b, out); }
kl_status kl_sub(kl_graph *g, kl_tensor *a, kl_tensor *b, kl_tensor **out) { return binary_pub(g, KL_BIN_SUB, a, b, out); }
kl_status kl_mul(kl_graph *g, kl_tensor *a, kl_tensor *b, kl_tensor **out) { return binary_pub(g, KL_BIN_MUL, a, b, out); }
kl_status kl_div(kl_graph *g, kl_tensor *a, kl_tensor *b, kl_tensor **out) { return binary_pub(g, KL_BIN_DIV, a, b, out); }
