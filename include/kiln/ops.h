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
    double eps;      /* 0 means 1e-5 */
    double momentum; /* running-stat update weight; 0 means 0.1 */
    int training;    /* 1: batch statistics + running update; 0: running stats */
} kl_batchnorm_opts;
/* x [N, C, ...]; gamma, beta, running_mean, running_var [C]. */
KL_API kl_status kl_batchnorm(kl_graph *g, kl_tensor *x, kl_tensor *gamma, kl_tensor *beta,
                              kl_tensor *running_mean, kl_tensor *running_var,
                              const kl_batchnorm_opts *opts, kl_tensor **out);
/* Normalises over the last axis; gamma, beta [D] (either may be NULL). */
KL_API kl_status kl_layernorm(kl_graph *g, kl_tensor *x, kl_tensor *gamma, kl_tensor *beta,
                              double eps, kl_tensor **out);
/* Zeroes each element with probability p and scales the rest by 1/(1-p);
 * the mask is Philox(seed, element, op, run) so CPU and GPU agree. */
KL_API kl_status kl_dropout(kl_graph *g, kl_tensor *x, double p, kl_tensor **out);

/* ---- indexing and shapes ---- */
/* weight [V, D], idx i32 [...] -> [..., D] */
KL_API kl_status kl_embedding(kl_graph *g, kl_tensor *weight, kl_tensor *idx, kl_tensor **out);
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

#ifdef __cplusplus
}
#endif
#endif
