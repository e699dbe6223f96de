/* Elementwise unary ops y = f(x) (relu, gelu, tanh, sigmoid, scale, square)
 * and their gradient op dx = f'(saved) * dy, where saved is y or x
 * (kl_unary_bwd_uses_y). x may be any strided view; y is contiguous. */
#include "core/graph.h"
#include "ops/elem.h"
#include "backends/cpu/cpu.h"
#include "backends/cpu/iter.h"

#include "ops/attrs.h" /* the attribute structs */

static const char *unary_names[KL_UN_COUNT] = {"relu", "gelu", "tanh", "sigmoid", "scale", "square"};

static kl_status unary_shape(kl_tensor *t)
{
    const kl_tensor *x = t->src[0];
    if (!kl_is_float(x->dtype))
        return kl_fail(KL_EINVAL, "%s: expected floating-point input, got %s", unary_names[KL_ATTR(t, unary_attr)->kind],
                       kl_desc(x));
    t->dtype = x->dtype;
    t->ndim = x->ndim;
    memcpy(t->ne, x->ne, sizeof t->ne);
    return KL_OK;
}

static kl_status unary_bwd_shape(kl_tensor *t)
{
    /* same dtype too: the CUDA kernel reads both in t's 16-bit storage */
    if (!kl_same_shape(t->src[0], t->src[1]) || t->src[0]->dtype != t->src[1]->dtype)
        return kl_fail(KL_EINTERNAL, "unary_bwd: dy %s vs saved %s", kl_desc(t->src[0]), kl_desc(t->src[1]));
    return unary_shape(t);
}

/* f applied over a strided x (and saved s for backward) into contiguous y.
 * The kind is switched on outside the loops so each loop inlines its math
 * and vectorises. */
#define UNARY_LOOPS(T, K)                                                                          \
    case K:                                                                                        \
        if (bwd)                                                                                   \
            for (int64_t i = i0; i < i1; i++) yr[i] = kl_unary_grad_##T(K, sr[i * ss2], xr[i * sx], alpha); \
        else if (sx == 1)                                                                          \
            for (int64_t i = i0; i < i1; i++) yr[i] = kl_unary_##T(K, xr[i], alpha);              \
        else                                                                                       \
            for (int64_t i = i0; i < i1; i++) yr[i] = kl_unary_##T(K, xr[i * sx], alpha);         \
        break;
#define UNARY_KERNEL(T)                                                                            \
    static void unary_cpu_##T(const kl_tensor *t, const T *x, const T *s, T *y, int bwd)          \
    {                                                                                              \
        const unary_attr *a = KL_ATTR_C(t, unary_attr);                                            \
        int64_t st[3][8];                                                                          \
        const kl_tensor *xs = t->src[0], *ss = bwd ? t->src[1] : t->src[0];                        \
        for (int d = 0; d < t->ndim; d++) {                                                        \
            st[0][d] = t->st[d];                                                                   \
            st[1][d] = xs->st[d];                                                                  \
            st[2][d] = ss->st[d];                                                                  \
        }                                                                                          \
        kl_iter it;                                                                                \
        kl_iter_init(&it, t->ndim, t->ne, 3, (const int64_t(*)[8])st);                             \
        kl_iter_blocks bl = kl_iter_split(&it);                                                    \
        int64_t sx = kl_iter_inner_st(&it, 1), ss2 = kl_iter_inner_st(&it, 2);                     \
        T alpha = (T)a->alpha;                                                                     \
        int kind = a->kind;                                                                        \
        _Pragma("omp parallel for schedule(static) if (it.rows * it.inner > KL_PAR_MIN)")           \
        for (int64_t w = 0; w < bl.items; w++) {                                                   \
            int64_t o[3], i0, i1;                                                                  \
            kl_iter_item(&it, &bl, w, o, &i0, &i1);                                                \
            T *yr = y + o[0];                                                                      \
            const T *xr = x + o[1], *sr = s + o[2];                                                \
            switch (kind) {                                                                        \
                UNARY_LOOPS(T, KL_UN_RELU)                                                         \
                UNARY_LOOPS(T, KL_UN_GELU)                                                         \
                UNARY_LOOPS(T, KL_UN_TANH)                                                         \
                UNARY_LOOPS(T, KL_UN_SIGMOID)                                                      \
                UNARY_LOOPS(T, KL_UN_SCALE)                                                        \
                UNARY_LOOPS(T, KL_UN_SQUARE)                                                       \
            }                                                                                      \
        }                                                                                          \
    }
KL_FOR_REAL(UNARY_KERNEL)

static kl_status run(const kl_exec *ex, const kl_tensor *t, int bwd)
{
    const void *x = kl_data(ex, t->src[0]);
    const void *s = kl_data(ex, t->src[bwd ? 1 : 0]);
    if (t->dtype == KL_F32) unary_cpu_float(t, x, s, kl_data(ex, t), bwd);
    else unary_cpu_double(t, x, s, kl_data(ex, t), bwd);
    return KL_OK;
}

static kl_status unary_cpu(const kl_exec *ex, const kl_tensor *t) { return run(ex, t, 0); }
static kl_status unary_bwd_cpu(const kl_exec *ex, const kl_tensor *t) { return run(ex, t, 1); }

kl_status kl_unary_op(kl_graph *g, int kind, double alpha, kl_tensor *x, kl_tensor **out)
{
    unary_attr a = {kind, alpha};
    return kl_node_new(g, KL_OP_unary, 1, &x, &a, sizeof a, out);
}

kl_status kl_fused_act_grad(kl_graph *g, int kind, kl_tensor *dy, kl_tensor *y, kl_tensor **dz)
{
    unary_attr a = {kind, 0};
    kl_tensor *src[2] = {dy, y};
    return kl_node_new(g, KL_OP_unary_bwd, 2, src, &a, sizeof a, dz);
}

static kl_status unary_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    const unary_attr *a = KL_ATTR(t, unary_attr);
    kl_tensor *src[2] = {dy, kl_unary_bwd_uses_y(a->kind) ? t : t->src[0]}, *dx;
    KL_TRY(kl_node_new(g, KL_OP_unary_bwd, 2, src, a, sizeof *a, &dx));
    return kl_grad_acc(g, t->src[0], dx);
}

const kl_op_def kl_op_unary = {
    .name = "unary", .shape = unary_shape, .backward = unary_backward, .fwd = {[KL_BACKEND_CPU] = unary_cpu}, .half_native = KL_HALF_CUDA};
const kl_op_def kl_op_unary_bwd = {.name = "unary_bwd", .shape = unary_bwd_shape, .fwd = {[KL_BACKEND_CPU] = unary_bwd_cpu}, .half_native = KL_HALF_CUDA};

/* ---- public builders ---- */

static kl_status unary_pub(kl_graph *g, int kind, double alpha, kl_tensor *x, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "%s: out is NULL", unary_names[kind]);
    *out = NULL;
    KL_TRY(kl_check_args(g, unary_names[kind], 1, &x));
    return kl_unary_op(g, kind, alpha, x, out);
}

kl_status kl_relu(kl_graph *g, kl_tensor *x, kl_tensor **out) { return unary_pub(g, KL_UN_RELU, 0, x, out); }
kl_status kl_gelu(kl_graph *g, kl_tensor *x, kl_tensor **out) { return unary_pub(g, KL_UN_GELU, 0, x, out); }
kl_status kl_tanh(kl_graph *g, kl_tensor *x, kl_tensor **out) { return unary_pub(g, KL_UN_TANH, 0, x, out); }
kl_status kl_sigmoid(kl_graph *g, kl_tensor *x, kl_tensor **out) { return unary_pub(g, KL_UN_SIGMOID, 0, x, out); }
kl_status kl_square(kl_graph *g, kl_tensor *x, kl_tensor **out) { return unary_pub(g, KL_UN_SQUARE, 0, x, out); }
kl_status kl_scale(kl_graph *g, kl_tensor *x, double alpha, kl_tensor **out)
{
    return unary_pub(g, KL_UN_SCALE, alpha, x, out);
}

kl_status kl_activation(kl_graph *g, kl_tensor *x, kl_act act, kl_tensor **out)
{
    static const int kinds[KL_ACT_COUNT] = {-1, KL_UN_RELU, KL_UN_GELU, KL_UN_TANH, KL_UN_SIGMOID};
    if ((unsigned)act >= KL_ACT_COUNT) return kl_fail(KL_EINVAL, "activation: unknown kind %d", (int)act);
    if (act == KL_ACT_NONE) {
        KL_TRY(kl_check_args(g, "activation", 1, &x));
        *out = x;
        return KL_OK;
    }
    return unary_pub(g, kinds[act], 0, x, out);
}
