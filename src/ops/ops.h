/* Internal op builders that ops use to express other ops' gradients. */
#ifndef KL_OPS_OPS_H
#define KL_OPS_OPS_H

#include "core/graph.h"

#include <stdint.h>

/* Positions of a sliding window (conv2d; pooling with dil 1):
 * floor((in + 2 pad - dil (k - 1) - 1) / stride) + 1, without overflow;
 * <= 0 when the kernel does not fit. Shared by the ops' shape checks and
 * the model config's, so both refuse the same geometries. */
static inline int64_t kl_window_out(int64_t in, int pad, int dil, int64_t k, int stride)
{
    int64_t span = in + 2 * (int64_t)pad;
    if (k - 1 > (INT64_MAX / 4) / dil) return 0;
    int64_t num = span - (int64_t)dil * (k - 1) - 1;
    return num >= 0 ? num / stride + 1 : -((-num + stride - 1) / stride) + 1;
}

kl_status kl_unary_op(kl_graph *g, int kind, double alpha, kl_tensor *x, kl_tensor **out);
/* The gradient through an activation fused into op y (matmul, conv2d,
 * batchnorm): *dz = act'(y) dy, a unary_bwd node reading y; kind is a
 * KL_UN_* kind whose gradient comes from the output (relu, tanh, sigmoid). */
kl_status kl_fused_act_grad(kl_graph *g, int kind, kl_tensor *dy, kl_tensor *y, kl_tensor **dz);
kl_status kl_binary_op(kl_graph *g, int kind, kl_tensor *a, kl_tensor *b, kl_tensor **out);
/* Sum over axes in mask (bit d = axis d), keeping them as size 1, times scale. */
kl_status kl_reduce_op(kl_graph *g, kl_tensor *x, unsigned mask, double scale, kl_tensor **out);
/* x viewed with shape ne broadcast (stride 0 on expanded dims); x's dims
 * right-aligned with ne as in NumPy. */
kl_status kl_expand(kl_graph *g, kl_tensor *x, int ndim, const int64_t *ne, kl_tensor **out);
/* matmul with optional bias and fused activation (relu, tanh, sigmoid). */
kl_status kl_matmul_op(kl_graph *g, kl_tensor *a, kl_tensor *b, kl_tensor *bias, kl_act act, kl_tensor **out);

/* kl_batchnorm with an activation fused into its output pass (relu, tanh or
 * sigmoid; KL_ACT_NONE: plain); the backward forms dz = act'(y) dy (a
 * unary_bwd node), then batchnorm's own backward on dz. */
struct kl_batchnorm_opts;
kl_status kl_batchnorm_act(kl_graph *g, kl_tensor *x, kl_tensor *gamma, kl_tensor *beta, kl_tensor *running_mean,
                           kl_tensor *running_var, const struct kl_batchnorm_opts *opts, kl_act act, kl_tensor **out);

#endif
