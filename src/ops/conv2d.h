/* 2-D convolution internals shared by the op definitions (conv2d.c) and the
 * CPU kernels (conv2d_cpu.c).
 *
 * Layout: x [N, C, H, W], w [O, C/groups, KH, KW], y [N, O, OH, OW]. Per
 * sample n and group g the convolution is one GEMM over the unfolded input
 * (im2col) col [Kg = C/groups*KH*KW, P = OH*OW]:
 *   forward      y_n[g]  = W[g] [Og, Kg] x col_n[g]            (+ bias, act)
 *   bwd_data     dcol    = W[g]^T x dy_n[g];  dx_n = col2im(dcol)
 *   bwd_filter   dW[g]   = sum_n dy_n[g] [Og, P] x col_n[g]^T   (+ db = sum dy)
 * (with a fused activation, dy above is dz = act'(y) * dy, formed per sample).
 * Samples are processed in parallel (one im2col buffer per worker slot, BLAS
 * single-threaded inside); with one slot the GEMMs use BLAS's own threads.
 * The CUDA kernels work on chunks of samples instead (ops/conv2d_index.h). */
#ifndef KL_OPS_CONV2D_H
#define KL_OPS_CONV2D_H

#include "core/graph.h"

#define KL_CONV_MAX_SLOTS 16                       /* parallel workers with own scratch */
#define KL_CONV_SCRATCH_BUDGET ((size_t)256 << 20) /* cap on im2col scratch */

typedef struct kl_conv_attr {
    int sh, sw, ph, pw, dh, dw; /* stride, padding, dilation */
    int groups;
    int act;      /* kl_act fused into the forward output pass (one whose gradient
                   * needs only y); the gradient ops then read y (src[2]) and
                   * form dz = act'(y) * dy per sample themselves */
    int has_bias; /* bwd_filter: also writes db [O] as its extra output */
    int nslots;   /* worker slots, each with its own im2col buffer in scratch */
    int nchunks;  /* bwd_filter: fixed batch chunks, each with its own partial dW */
    int64_t N, C, H, W, O, KH, KW, OH, OW; /* geometry (set by the shape fns) */
    int64_t cu_nc; /* CUDA: samples per chunk (ops/conv2d_index.h; set by the shape fns on CUDA) */
} kl_conv_attr;

/* Per-sample sizes derived from the attributes. */
typedef struct kl_conv_geom {
    int64_t Cg, Og, Kg, P, HW; /* channels per group, Kg = Cg*KH*KW, P = OH*OW */
    int direct;                /* 1x1, stride 1, no padding: col_n is x_n itself */
} kl_conv_geom;

static inline kl_conv_geom kl_conv_geom_of(const kl_conv_attr *a)
{
    kl_conv_geom g;
    g.Cg = a->C / a->groups;
    g.Og = a->O / a->groups;
    g.Kg = g.Cg * a->KH * a->KW;
    g.P = a->OH * a->OW;
    g.HW = a->H * a->W;
    g.direct = a->KH == 1 && a->KW == 1 && a->sh == 1 && a->sw == 1 && a->ph == 0 && a->pw == 0;
    return g;
}

static inline size_t kl_conv_round64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Bytes of one worker slot: an im2col buffer (none for direct 1x1) and, in
 * the gradient ops of a conv with a fused activation, dz_n = act'(y_n) dy_n. */
static inline size_t kl_conv_slot_bytes(const kl_conv_attr *a, int op, size_t dsize)
{
    kl_conv_geom g = kl_conv_geom_of(a);
    size_t n = g.direct ? 0 : kl_conv_round64((size_t)(g.Kg * g.P) * dsize);
    if (op != KL_OP_conv2d && a->act != KL_ACT_NONE) n += kl_conv_round64((size_t)(a->O * g.P) * dsize);
    return n;
}

/* Col row k = (c * KH + kh) * KW + kw of a group's im2col [Cg*KH*KW, P]: its
 * values at output rows [oh0, oh1) and columns [ow0, ow1) come from x_g at
 * xo + oh * sh * W + ow * sw; the rest lie in the padding (zeros). The CPU
 * kernels compute the Kg spans once per run (they cost ~10 integer divisions
 * each, as much as the copy of a small row) and keep them in scratch. */
typedef struct kl_conv_span {
    int64_t oh0, oh1, ow0, ow1, xo;
} kl_conv_span;

/* Offset of the spans in a CPU conv node's scratch: the kernels carve it
 * as nslots worker slots, then (bwd_filter) nchunks partial dW when
 * nchunks > 1, then nchunks*O double bias sums, then the spans. */
static inline size_t kl_conv_spans_off(const kl_conv_attr *a, int op, size_t dsize)
{
    size_t n = (size_t)a->nslots * kl_conv_slot_bytes(a, op, dsize);
    if (op != KL_OP_conv2d_bwd_filter) return n;
    if (a->nchunks > 1) n += (size_t)a->nchunks * kl_conv_round64((size_t)(a->O * kl_conv_geom_of(a).Kg) * dsize);
    if (a->has_bias) n += kl_conv_round64((size_t)a->nchunks * (size_t)a->O * sizeof(double));
    return n;
}

/* Scratch bytes of a CPU conv node (op: KL_OP_conv2d / _bwd_data / _bwd_filter). */
static inline size_t kl_conv_scratch(const kl_conv_attr *a, int op, size_t dsize)
{
    kl_conv_geom g = kl_conv_geom_of(a);
    return kl_conv_spans_off(a, op, dsize) + (g.direct ? 0 : (size_t)g.Kg * sizeof(kl_conv_span));
}

/* f32 convolutions through oneDNN where it is loaded and faster
 * (backends/cpu/conv_dnnl.c): _ok says whether node t goes there; _run runs
 * it (KL_EUNSUPPORTED: oneDNN refused the geometry, run kiln's kernel). */
bool kl_dnnl_conv_ok(const kl_conv_attr *a, const kl_tensor *t);
kl_status kl_dnnl_conv_run(const kl_exec *ex, const kl_tensor *t);
/* -1: oneDNN not loaded (or KILN_CONV=im2col), 0: auto, 1: KILN_CONV=dnnl */
int kl_dnnl_conv_mode(void);
/* Scratch bytes of node t (geometry set) when oneDNN runs it with threads
 * threads: the primitive's layouts' copies of the operands, dz and the
 * scratchpads, from oneDNN's descriptors (its primitive is made here, once
 * per geometry); 0 when oneDNN does not take the node. */
size_t kl_dnnl_conv_bytes(const kl_tensor *t, int threads);

/* Cap on a CUDA conv node's chunk buffers (bytes; KL_CONV_SCRATCH_BUDGET):
 * read by the shape fns when a node is made. Tests lower it to force
 * several chunks. */
extern size_t kl_conv_cu_budget;

/* Internal builder: conv2d with an activation fused into its output pass
 * (KL_ACT_NONE, RELU, TANH or SIGMOID: those whose gradient needs only y). */
kl_status kl_conv2d_act(kl_graph *g, kl_tensor *x, kl_tensor *w, kl_tensor *bias, const kl_conv2d_opts *opts,
                        kl_act act, kl_tensor **out);

/* CPU kernels (conv2d_cpu.c). */
kl_status kl_conv2d_fwd_cpu(const kl_exec *ex, const kl_tensor *t);
kl_status kl_conv2d_bwd_data_cpu(const kl_exec *ex, const kl_tensor *t);
kl_status kl_conv2d_bwd_filter_cpu(const kl_exec *ex, const kl_tensor *t);

#endif
