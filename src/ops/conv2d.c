/* 2-D convolution (NCHW, cross-correlation as in PyTorch) with stride,
 * padding, dilation, groups, optional bias and an activation fused into the
 * output pass; and its two gradient ops:
 *   conv2d_bwd_data    dx = col2im(W^T dy)                  (src: dy, w)
 *   conv2d_bwd_filter  dW = sum_n dy_n im2col(x_n)^T, written, not
 *                      accumulated; db = sum dy as its extra output (src: dy, x)
 * Kernels: conv2d_cpu.c; layout and GEMM shapes: conv2d.h. */
#include "ops/conv2d.h"
#include "ops/conv2d_index.h" /* the CUDA kernels' chunks and scratch layout */
#include "ops/ops.h"
#include "ops/elem.h"
#include "backends/cpu/cpu.h"

#include <limits.h>

/* a * b * ... <= lim, all factors positive. */
static bool prod_le(int n, const int64_t *v, int64_t lim)
{
    int64_t p = 1;
    for (int i = 0; i < n; i++)
        if (v[i] > lim / p) return false;
        else p *= v[i];
    return true;
}

size_t kl_conv_cu_budget = KL_CONV_SCRATCH_BUDGET;

/* On the CUDA backend the kernels take the batch in chunks (ops/conv2d_index.h):
 * the chunk size and that scratch replace the CPU's worker slots. */
static void cuda_scratch(kl_tensor *t, kl_conv_attr *a)
{
    if (t->g->ctx->backend != KL_BACKEND_CUDA) return;
    size_t es = kl_calc_size(t->dtype);
    a->cu_nc = kl_conv_cu_chunk(a, es, kl_conv_cu_budget);
    t->scratch_bytes = kl_conv_cu_layout_of(a, t->op, es, a->cu_nc).bytes;
}

/* The node's scratch: kiln's CPU kernel's (kl_conv_scratch), and where
 * oneDNN takes the node, the room its run uses (the operands in its
 * layouts, its scratchpad: kl_dnnl_conv_bytes, at the context's threads),
 * so the memory plan counts it. Room for both: a run at other threads,
 * whose oneDNN primitive may want more, falls back on kiln's kernel. On
 * CUDA the chunk buffers instead. */
static void conv_scratch(kl_tensor *t, kl_conv_attr *a)
{
    t->scratch_bytes = kl_conv_scratch(a, t->op, kl_calc_size(t->dtype));
    if (t->g->ctx->backend == KL_BACKEND_CPU) {
        size_t dn = kl_dnnl_conv_bytes(t, t->g->ctx->threads);
        if (dn > t->scratch_bytes) t->scratch_bytes = dn;
    }
    cuda_scratch(t, a);
}

/* Worker slots for N samples with per-slot bytes, within the scratch budget. */
static int slots_for(int64_t N, size_t per_slot)
{
    int64_t n = N < KL_CONV_MAX_SLOTS ? N : KL_CONV_MAX_SLOTS;
    if (per_slot && (size_t)n * per_slot > KL_CONV_SCRATCH_BUDGET) n = (int64_t)(KL_CONV_SCRATCH_BUDGET / per_slot);
    return n < 1 ? 1 : (int)n;
}

static kl_status conv2d_shape(kl_tensor *t)
{
    kl_conv_attr *a = KL_ATTR(t, kl_conv_attr);
    const kl_tensor *x = t->src[0], *w = t->src[1], *b = t->n_src > 2 ? t->src[2] : NULL;
    if (!kl_is_float(x->dtype))
        return kl_fail(KL_EINVAL, "conv2d: expected floating-point input, got %s", kl_desc(x));
    if (x->ndim != 4) return kl_fail(KL_EINVAL, "conv2d: input must be 4-D [N, C, H, W], got %s", kl_desc(x));
    if (w->ndim != 4 || w->dtype != x->dtype)
        return kl_fail(KL_EINVAL, "conv2d: weight must be 4-D [O, C/groups, KH, KW] %s like the input %s, got %s",
                       kl_dtype_name(x->dtype), kl_desc(x), kl_desc(w));
    if (a->sh < 1 || a->sw < 1 || a->dh < 1 || a->dw < 1 || a->ph < 0 || a->pw < 0)
        return kl_fail(KL_EINVAL, "conv2d: stride %dx%d and dilation %dx%d must be >= 1 and padding %dx%d >= 0",
                       a->sh, a->sw, a->dh, a->dw, a->ph, a->pw);
    int64_t C = x->ne[1], O = w->ne[0];
    if (a->groups < 1 || C % a->groups || O % a->groups)
        return kl_fail(KL_EINVAL,
                       "conv2d: groups %d must be >= 1 and divide both the input channels of %s and the output "
                       "channels of weight %s",
                       a->groups, kl_desc(x), kl_desc(w));
    if (w->ne[1] * a->groups != C)
        return kl_fail(KL_EINVAL, "conv2d: input %s has %lld channels, weight %s expects %lld (groups %d)", kl_desc(x),
                       (long long)C, kl_desc(w), (long long)(w->ne[1] * a->groups), a->groups);
    if (b && (b->ndim != 1 || b->ne[0] != O || b->dtype != x->dtype))
        return kl_fail(KL_EINVAL, "conv2d: bias must be [%lld] %s for weight %s, got %s", (long long)O,
                       kl_dtype_name(x->dtype), kl_desc(w), kl_desc(b));
    int64_t OH = kl_window_out(x->ne[2], a->ph, a->dh, w->ne[2], a->sh);
    int64_t OW = kl_window_out(x->ne[3], a->pw, a->dw, w->ne[3], a->sw);
    if (OH <= 0 || OW <= 0)
        return kl_fail(KL_EINVAL,
                       "conv2d: output size %lldx%lld <= 0: input %s (HxW %lldx%lld) with kernel %lldx%lld, padding "
                       "%dx%d, dilation %dx%d, stride %dx%d",
                       (long long)OH, (long long)OW, kl_desc(x), (long long)x->ne[2], (long long)x->ne[3],
                       (long long)w->ne[2], (long long)w->ne[3], a->ph, a->pw, a->dh, a->dw, a->sh, a->sw);
    /* BLAS takes int sizes; scratch and output byte counts must fit too */
    int64_t out[4] = {x->ne[0], O, OH, OW}, p2[2] = {OH, OW}, k3[3] = {w->ne[1], w->ne[2], w->ne[3]};
    bool fits = O <= INT_MAX && prod_le(4, out, INT64_MAX / 8) && prod_le(2, p2, INT_MAX) && prod_le(3, k3, INT_MAX);
    if (fits) {
        int64_t col[2] = {k3[0] * k3[1] * k3[2], OH * OW}, wn[2] = {O, col[0]};
        fits = prod_le(2, col, INT64_MAX / 8 / KL_CONV_MAX_SLOTS) && prod_le(2, wn, INT64_MAX / 8 / KL_CONV_MAX_SLOTS);
    }
    if (!fits)
        return kl_fail(KL_EINVAL, "conv2d: sizes too large: input %s, weight %s, output %lldx%lld", kl_desc(x),
                       kl_desc(w), (long long)OH, (long long)OW);
    a->N = x->ne[0], a->C = C, a->H = x->ne[2], a->W = x->ne[3];
    a->O = O, a->KH = w->ne[2], a->KW = w->ne[3], a->OH = OH, a->OW = OW;
    kl_conv_geom g = kl_conv_geom_of(a);
    size_t ds = kl_calc_size(x->dtype);
    a->nslots = slots_for(a->N, g.direct ? 0 : kl_conv_round64((size_t)(g.Kg * g.P) * ds));
    a->nchunks = slots_for(a->N, kl_conv_round64((size_t)(O * g.Kg) * ds));
    t->dtype = x->dtype;
    t->ndim = 4;
    memcpy(t->ne, out, sizeof out);
    conv_scratch(t, a);
    return KL_OK;
}

/* Gradient ops: the attributes come from the forward node (geometry set). */
static kl_status conv2d_bwd_shape(kl_tensor *t)
{
    kl_conv_attr *a = KL_ATTR(t, kl_conv_attr);
    const kl_tensor *dy = t->src[0], *s = t->src[1];
    bool data = t->op == KL_OP_conv2d_bwd_data;
    if (dy->ndim != 4 || dy->ne[0] != a->N || dy->ne[1] != a->O || dy->ne[2] != a->OH || dy->ne[3] != a->OW ||
        dy->dtype != s->dtype || !kl_is_contiguous(dy) || !kl_is_contiguous(s))
        return kl_fail(KL_EINTERNAL, "%s: dy %s does not match [%lld,%lld,%lld,%lld] (other input %s)",
                       kl_ops[t->op]->name, kl_desc(dy), (long long)a->N, (long long)a->O, (long long)a->OH,
                       (long long)a->OW, kl_desc(s));
    if (a->act != KL_ACT_NONE && (t->n_src < 3 || !kl_same_shape(t->src[2], dy) || t->src[2]->dtype != dy->dtype))
        return kl_fail(KL_EINTERNAL, "%s: fused activation needs y like dy %s", kl_ops[t->op]->name, kl_desc(dy));
    int64_t dx[4] = {a->N, a->C, a->H, a->W}, dw[4] = {a->O, a->C / a->groups, a->KH, a->KW};
    t->dtype = dy->dtype;
    t->ndim = 4;
    memcpy(t->ne, data ? dx : dw, sizeof dx);
    conv_scratch(t, a);
    if (!data && a->has_bias) {
        kl_tensor *db;
        KL_TRY(kl_node_add_extra(t, t->dtype, 1, &a->O, &db));
    }
    return KL_OK;
}

static kl_status conv2d_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    const kl_conv_attr *a = KL_ATTR(t, kl_conv_attr);
    kl_tensor *x = t->src[0], *w = t->src[1], *b = t->n_src > 2 ? t->src[2] : NULL, *d;
    bool bias_grad = b && b->requires_grad, fused = a->act != KL_ACT_NONE;
    int nsrc = fused ? 3 : 2; /* a fused activation's gradient is formed inside the gradient ops from y */
    KL_TRY(kl_contiguous(g, dy, &dy));
    kl_conv_attr ba = *a;
    if (x->requires_grad) {
        kl_tensor *src[3] = {dy, w, t};
        ba.has_bias = 0;
        KL_TRY(kl_node_new(g, KL_OP_conv2d_bwd_data, nsrc, src, &ba, sizeof ba, &d));
        KL_TRY(kl_grad_acc(g, x, d));
    }
    if (w->requires_grad) {
        kl_tensor *src[3] = {dy, x, t};
        ba.has_bias = bias_grad;
        KL_TRY(kl_node_new(g, KL_OP_conv2d_bwd_filter, nsrc, src, &ba, sizeof ba, &d));
        KL_TRY(kl_grad_acc(g, w, d));
        if (bias_grad) KL_TRY(kl_grad_acc(g, b, d->extra[0]));
    } else if (bias_grad) {
        int axes[3] = {0, 2, 3};
        if (fused) KL_TRY(kl_fused_act_grad(g, kl_act_unary(a->act), dy, t, &dy));
        KL_TRY(kl_sum(g, dy, 3, axes, 0, &d));
        KL_TRY(kl_grad_acc(g, b, d));
    }
    return KL_OK;
}

const kl_op_def kl_op_conv2d = {.name = "conv2d",
                                 .shape = conv2d_shape,
                                 .backward = conv2d_backward,
                                 .fwd = {[KL_BACKEND_CPU] = kl_conv2d_fwd_cpu}};
const kl_op_def kl_op_conv2d_bwd_data = {
    .name = "conv2d_bwd_data", .shape = conv2d_bwd_shape, .fwd = {[KL_BACKEND_CPU] = kl_conv2d_bwd_data_cpu}};
const kl_op_def kl_op_conv2d_bwd_filter = {
    .name = "conv2d_bwd_filter", .shape = conv2d_bwd_shape, .fwd = {[KL_BACKEND_CPU] = kl_conv2d_bwd_filter_cpu}};

static int or_default(int v, int def) { return v == 0 ? def : v; }

kl_status kl_conv2d_act(kl_graph *g, kl_tensor *x, kl_tensor *w, kl_tensor *bias, const kl_conv2d_opts *opts,
                        kl_act act, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "conv2d: out is NULL");
    *out = NULL;
    kl_tensor *src[3] = {x, w, bias};
    KL_TRY(kl_check_args(g, "conv2d", bias ? 3 : 2, src));
    if (act != KL_ACT_NONE && act != KL_ACT_RELU && act != KL_ACT_TANH && act != KL_ACT_SIGMOID)
        return kl_fail(KL_EINVAL, "conv2d: activation %d cannot be fused (none, relu, tanh or sigmoid)", (int)act);
    kl_conv2d_opts o;
    memset(&o, 0, sizeof o);
    if (opts) o = *opts;
    kl_conv_attr a = {.sh = or_default(o.stride[0], 1), .sw = or_default(o.stride[1], 1), .ph = o.padding[0],
                      .pw = o.padding[1], .dh = or_default(o.dilation[0], 1), .dw = or_default(o.dilation[1], 1),
                      .groups = or_default(o.groups, 1), .act = act};
    /* the kernels read x, w (and dy) as dense NCHW / OIHW */
    KL_TRY(kl_contiguous(g, x, &src[0]));
    KL_TRY(kl_contiguous(g, w, &src[1]));
    if (bias) KL_TRY(kl_contiguous(g, bias, &src[2]));
    return kl_node_new(g, KL_OP_conv2d, bias ? 3 : 2, src, &a, sizeof a, out);
}

kl_status kl_conv2d(kl_graph *g, kl_tensor *x, kl_tensor *w, kl_tensor *bias, const kl_conv2d_opts *opts,
                    kl_tensor **out)
{
    return kl_conv2d_act(g, x, w, bias, opts, KL_ACT_NONE, out);
}
