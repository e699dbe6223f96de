/* Internal op builders that ops use to express other ops' gradients. */
#ifndef KL_OPS_OPS_H
#define KL_OPS_OPS_H

#include "core/graph.h"

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
