/* The graph side of the backward shared by batchnorm and layernorm (their
 * per-element math: ops/norm.h). Their bwd nodes have sources dy, x, the
 * forward node and gamma (if any); the primary output dx is shaped like x,
 * the extras dgamma and dbeta (as asked) like gamma. */
#ifndef KL_OPS_NORM_GRAD_H
#define KL_OPS_NORM_GRAD_H

#include "ops/ops.h"

/* Shape of bwd node t (op names it in messages): checks dy against x, sets
 * dx and adds the extras [n] that need_dg, need_db ask for. */
kl_status kl_norm_bwd_shape(kl_tensor *t, const char *op, const int64_t *n, int need_dg, int need_db);

/* Records bwd node op for forward node t (x its source 0, gamma and beta at
 * ig, ib; -1: absent) and accumulates the gradients of those that need one.
 * attr (size bytes) is a copy of t's attrs; this sets its need_dx, need_dg,
 * need_db through the pointers into it. Nothing is recorded if none needs one. */
kl_status kl_norm_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy, kl_op_id op, int ig, int ib, const void *attr,
                           size_t size, int *need_dx, int *need_dg, int *need_db);

#endif
