/* kiln ops: each call records one op (or a few) in the graph and returns its
 * result tensor; shapes and dtypes are checked here, so a bad call fails at
 * the call with a message naming the op, shapes and dtypes. Results belong
 * to the graph. Values exist after kl_graph_run.
 *
 *   kl_tensor *h, *logits, *loss;
 *   kl_linear(g, x, w1, b1, KL_ACT_RELU, &h);
 *   kl_linear(g, h, w2, b2, KL_ACT_NONE, &logits);
 *   kl_softmax_cross_entropy(g, logits, labels, &loss);
 */
#ifndef KILN_OPS_H
#define KILN_OPS_H

#include "kiln/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum kl_act {
    KL_ACT_NONE = 0,
    KL_ACT_RELU,
    KL_ACT_GELU,    /* tanh approximation, as PyTorch's gelu(approximate='tanh') */
    KL_ACT_TANH,
    KL_ACT_SIGMOID,
    KL_ACT_COUNT
} kl_act;

/* ---- elementwise ---- */
/* a + b, a - b, a * b, a / b with NumPy broadcasting. */
KL_API kl_status kl_add(kl_graph *g, kl_tensor *a, kl_tensor *b, kl_tensor **out);
KL_API kl_status kl_sub(kl_graph *g, kl_tensor *a, kl_tensor *b, kl_tensor **out);
KL_API kl_status kl_mul(kl_graph *g, kl_tensor *a, kl_tensor *b, kl_tensor **out);
KL_API kl_status kl_div(kl_graph *g, kl_tensor *a, kl_tensor *b, kl_tensor **out);
/* alpha * x */
KL_API kl_status kl_scale(kl_graph *g, kl_tensor *x, double alpha, kl_tensor **out);
/* act(x); KL_ACT_NONE returns x itself. */
KL_API kl_status kl_activation(kl_graph *g, kl_tensor *x, kl_act act, kl_tensor **out);
KL_API kl_status kl_relu(kl_graph *g, kl_tensor *x, kl_tensor **out);
KL_API kl_status kl_gelu(kl_graph *g, kl_tensor *x, kl_tensor **out);
KL_API kl_status kl_tanh(kl_graph *g, kl_tensor *x, kl_tensor **out);
KL_API kl_status kl_sigmoid(kl_graph *g, kl_tensor *x, kl_tensor **out);
/* x * x */
KL_API kl_status kl_square(kl_graph *g, kl_tensor *x, kl_tensor **out);
/* x converted to dtype dt (f32 <-> f16/bf16/f64). */
KL_API kl_status kl_cast(kl_graph *g, kl_tensor *x, kl_dtype dt, kl_tensor **out);

/* ---- reductions ---- */
/* Sum (or mean) over the listed axes (naxes 0: all axes); keepdim keeps them as size 1. */
KL_API kl_status kl_sum(kl_graph *g, kl_tensor *x, int naxes, const int *axes, int keepdim, kl_tensor **out);
KL_API kl_status kl_mean(kl_graph *g, kl_tensor *x, int naxes, const int *axes, int keepdim, kl_tensor **out);

/* ---- linear algebra ---- */
/* a [..., M, K] x b [K, N] or [..., K, N] (batch dims broadcast) -> [..., M, N]. */
KL_API kl_status kl_matmul(kl_graph *g, kl_tensor *a, kl_tensor *b, kl_tensor **out);
/* act(x w^T + bias): x [..., in], w [out, in] (PyTorch layout), bias [out] or NULL. */
KL_API kl_status kl_linear(kl_graph *g, kl_tensor *x, kl_tensor *w, kl_tensor *bias, kl_act act, kl_tensor **out);

/* ---- softmax and losses (over the last axis) ---- */
KL_API kl_status kl_softmax(kl_graph *g, kl_tensor *x, kl_tensor **out);
KL_API kl_status kl_log_softmax(kl_graph *g, kl_tensor *x, kl_tensor **out);
/* mean over rows of -log softmax(logits)[label]; logits [N, C], labels i32 [N]. */
KL_API kl_status kl_softmax_cross_entropy(kl_graph *g, kl_tensor *logits, kl_tensor *labels, kl_tensor **out);
/* mean((pred - target)^2) over all elements; same shapes. */
KL_API kl_status kl_mse(kl_graph *g, kl_tensor *pred, kl_tensor *target, kl_tensor **out);
/* Correct predictions: the number of rows of logits [N, C] whose largest
 * value (the first, on ties) is at labels[n] (i32 [N]); an i32 scalar, no
 * gradient. Lets a training step count accuracy without reading logits. */
KL_API kl_status kl_argmax_match(kl_graph *g, kl_tensor *logits, kl_tensor *labels, kl_tensor **out);

/* ---- convolution and pooling (NCHW) ---- */
typedef struct kl_conv2d_opts {
    int stride[2];   /* 0 means 1 */
    int padding[2];
    int dilation[2]; /* 0 means 1 */
    int groups;      /* 0 means 1 */
} kl_conv2d_opts;
/* x [N, C, H, W], w [O, C/groups, KH, KW], bias [O] or NULL. */
KL_API kl_status kl_conv2d(kl_graph *g, kl_tensor *x, kl_tensor *w, kl_tensor *bias,
                           const kl_conv2d_opts *opts, kl_tensor **out);
typedef struct kl_pool2d_opts {
    int kernel[2];
    int stride[2];  /* 0 means kernel */
    int padding[2];
} kl_pool2d_opts;
KL_API kl_status kl_maxpool2d(kl_graph *g, kl_tensor *x, const kl_pool2d_opts *opts, kl_tensor **out);
/* Average over the window; padding counts as zeros (PyTorch count_include_pad). */
KL_API kl_status kl_avgpool2d(kl_graph *g, kl_tensor *x, const kl_pool2d_opts *opts, kl_tensor **out);
/* [N, C, H, W] -> [N, C] */
KL_API kl_status kl_global_avgpool(kl_graph *g, kl_tensor *x, kl_tensor **out);

/* ---- normalisation and regularisation ---- */
typedef struct kl_batchnorm_opts {
    double eps;      /* 0 means 1e-5 (unless exact) */
    double momentum; /* running-stat update weight; 0 means 0.1 (unless exact) */
    int training;    /* 1: batch statistics + running update; 0: running stats */
    int exact;       /* 1: eps and momentum as given, 0 included (momentum 0
                      * keeps the running statistics fixed) */
} kl_batchnorm_opts;
/* x [N, C, ...]; gamma, beta, running_mean, running_var [C]. */
KL_API kl_status kl_batchnorm(kl_graph *g, kl_tensor *x, kl_tensor *gamma, kl_tensor *beta,
                              kl_tensor *running_mean, kl_tensor *running_var,
                              const kl_batchnorm_opts *opts, kl_tensor **out);
/* Normalises over the last axis: (x - mean) / sqrt(var + eps) * gamma + beta;
 * gamma, beta [D] (either may be NULL); eps >= 0, used as given (PyTorch's
 * default is 1e-5). */
KL_API kl_status kl_layernorm(kl_graph *g, kl_tensor *x, kl_tensor *gamma, kl_tensor *beta,
                              double eps, kl_tensor **out);
/* Zeroes each element with probability p and scales the rest by 1/(1-p);
 * the mask is Philox(seed, element, op, run) so CPU and GPU agree. */
KL_API kl_status kl_dropout(kl_graph *g, kl_tensor *x, double p, kl_tensor **out);

/* ---- indexing and shapes ---- */
/* weight [V, D], idx i32 [...] -> [..., D] */
KL_API kl_status kl_embedding(kl_graph *g, kl_tensor *weight, kl_tensor *idx, kl_tensor **out);
/* rows rows of src [M, ...] picked by index: out[r] = src[idx[start + r]],
 * with idx i32 [K] and start an i32 [1] tensor (an input set before each
 * run, so one graph walks a whole epoch). No gradient. An index out of
 * range fails the run (on a GPU: reported at the next synchronisation,
 * that row zeroed). */
KL_API kl_status kl_gather_rows(kl_graph *g, kl_tensor *src, kl_tensor *idx, kl_tensor *start, int64_t rows,
                                kl_tensor **out);
KL_API kl_status kl_concat(kl_graph *g, int n, kl_tensor *const *xs, int axis, kl_tensor **out);
/* Splits along axis into n parts of the given sizes (views, no copy). */
KL_API kl_status kl_split(kl_graph *g, kl_tensor *x, int axis, int n, const int64_t *sizes, kl_tensor **outs);
/* Views (no copy where the layout allows). One dim of reshape may be -1. */
KL_API kl_status kl_reshape(kl_graph *g, kl_tensor *x, int ndim, const int64_t *dims, kl_tensor **out);
KL_API kl_status kl_permute(kl_graph *g, kl_tensor *x, const int *perm, kl_tensor **out);
KL_API kl_status kl_transpose(kl_graph *g, kl_tensor *x, int axis0, int axis1, kl_tensor **out);
/* x[..., start:end, ...] along axis (end exclusive). */
KL_API kl_status kl_slice(kl_graph *g, kl_tensor *x, int axis, int64_t start, int64_t end, kl_tensor **out);
/* A contiguous copy of x (x itself if already contiguous). */
KL_API kl_status kl_contiguous(kl_graph *g, kl_tensor *x, kl_tensor **out);

/* ---- sequence ----
 * Recurrent layers are one layer each, batch first; stack layers by feeding
 * y to the next call. Weights use PyTorch's layout, so nn.LSTM / nn.GRU
 * state_dicts (weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0) load as is:
 *   LSTM  w_ih [4H, I], w_hh [4H, H], b_ih, b_hh [4H]; row blocks of H in the
 *         gate order i, f, g, o:
 *           i, f, o = sigmoid(x W_ih^T + b_ih + h W_hh^T + b_hh) (their blocks)
 *           g = tanh(same, g block);  c' = f c + i g;  h' = o tanh(c')
 *   GRU   w_ih [3H, I], w_hh [3H, H], b_ih, b_hh [3H]; gate order r, z, n:
 *           r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
 *           z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
 *           n = tanh(W_in x + b_in + r * (W_hn h + b_hn));  h' = (1 - z) n + z h
 *
 *   kl_tensor *y, *h_n, *c_n, *y2;
 *   kl_lstm(g, x, NULL, NULL, w_ih0, w_hh0, b_ih0, b_hh0, &y, NULL, NULL);
 *   kl_lstm(g, y, NULL, NULL, w_ih1, w_hh1, b_ih1, b_hh1, &y2, &h_n, &c_n);
 */
/* LSTM layer: x [B, T, I] -> y [B, T, H] (every step's h), h_n, c_n [B, H]
 * (last step). h0, c0 [B, H], b_ih, b_hh: each may be NULL (zeros).
 * Results belong to g; h_n and c_n may be NULL when not wanted. */
KL_API kl_status kl_lstm(kl_graph *g, kl_tensor *x, kl_tensor *h0, kl_tensor *c0, kl_tensor *w_ih,
                         kl_tensor *w_hh, kl_tensor *b_ih, kl_tensor *b_hh, kl_tensor **y,
                         kl_tensor **h_n, kl_tensor **c_n);
/* GRU layer: x [B, T, I] -> y [B, T, H], h_n [B, H]; h0, b_ih, b_hh may be NULL.
 * Results belong to g; h_n may be NULL when not wanted. */
KL_API kl_status kl_gru(kl_graph *g, kl_tensor *x, kl_tensor *h0, kl_tensor *w_ih, kl_tensor *w_hh,
                        kl_tensor *b_ih, kl_tensor *b_hh, kl_tensor **y, kl_tensor **h_n);
/* Scaled dot-product attention softmax(q k^T / sqrt(D)) v per batch and head:
 * q [B, H, Tq, D], k [B, H, Tk, D], v [B, H, Tk, Dv] -> [B, H, Tq, Dv]. causal:
 * query i sees keys j <= i (PyTorch's is_causal). Any strides (a permuted
 * view of a fused qkv projection is read in place). Memory: O(Tq) saved,
 * never the Tq x Tk matrix. Result belongs to g. */
KL_API kl_status kl_attention(kl_graph *g, kl_tensor *q, kl_tensor *k, kl_tensor *v, int causal,
                              kl_tensor **out);
/* RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * weight; weight [D]
 * or NULL; eps >= 0, used as given. Result belongs to g. */
KL_API kl_status kl_rmsnorm(kl_graph *g, kl_tensor *x, kl_tensor *weight, double eps, kl_tensor **out);
/* Rotary position embedding, GPT-NeoX style: x [..., T, D] (D even; position
 * = index along axis -2), pairs (x[i], x[i + D/2]) rotated by angle
 * pos * base^(-2i/D); base 0 means 10000. Result belongs to g. */
KL_API kl_status kl_rope(kl_graph *g, kl_tensor *x, double base, kl_tensor **out);

#ifdef __cplusplus
}
#endif
#endif
