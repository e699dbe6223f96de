/* Placeholder op entries until their implementations land (a helper is
 * replacing this file with src/ops/conv2d.c and src/ops/pool2d.c). */
#include "ops/ops.h"
const kl_op_def kl_op_conv2d = {.name = "conv2d"};
const kl_op_def kl_op_conv2d_bwd_data = {.name = "conv2d_bwd_data"};
const kl_op_def kl_op_conv2d_bwd_filter = {.name = "conv2d_bwd_filter"};
const kl_op_def kl_op_pool2d = {.name = "pool2d"};
const kl_op_def kl_op_pool2d_bwd = {.name = "pool2d_bwd"};
kl_status kl_conv2d(kl_graph *g, kl_tensor *x, kl_tensor *w, kl_tensor *b, const kl_conv2d_opts *o, kl_tensor **out) { return kl_fail(KL_EUNSUPPORTED, "conv2d: not implemented yet"); }
kl_status kl_maxpool2d(kl_graph *g, kl_tensor *x, const kl_pool2d_opts *o, kl_tensor **out) { return kl_fail(KL_EUNSUPPORTED, "maxpool2d: not implemented yet"); }
kl_status kl_avgpool2d(kl_graph *g, kl_tensor *x, const kl_pool2d_opts *o, kl_tensor **out) { return kl_fail(KL_EUNSUPPORTED, "avgpool2d: not implemented yet"); }
kl_status kl_global_avgpool(kl_graph *g, kl_tensor *x, kl_tensor **out) { return kl_fail(KL_EUNSUPPORTED, "global_avgpool: not implemented yet"); }
