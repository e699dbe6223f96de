/* Placeholder op entries until their implementations land (a helper is
 * replacing this file with src/ops/batchnorm.c, layernorm.c, dropout.c,
 * embedding.c and concat.c). */
#include "ops/ops.h"
const kl_op_def kl_op_batchnorm = {.name = "batchnorm"};
const kl_op_def kl_op_batchnorm_bwd = {.name = "batchnorm_bwd"};
const kl_op_def kl_op_layernorm = {.name = "layernorm"};
const kl_op_def kl_op_layernorm_bwd = {.name = "layernorm_bwd"};
const kl_op_def kl_op_dropout = {.name = "dropout"};
const kl_op_def kl_op_embedding = {.name = "embedding"};
const kl_op_def kl_op_embedding_bwd = {.name = "embedding_bwd"};
const kl_op_def kl_op_concat = {.name = "concat"};
kl_status kl_batchnorm(kl_graph *g, kl_tensor *x, kl_tensor *ga, kl_tensor *be, kl_tensor *rm, kl_tensor *rv, const kl_batchnorm_opts *o, kl_tensor **out) { return kl_fail(KL_EUNSUPPORTED, "batchnorm: not implemented yet"); }
kl_status kl_layernorm(kl_graph *g, kl_tensor *x, kl_tensor *ga, kl_tensor *be, double eps, kl_tensor **out) { return kl_fail(KL_EUNSUPPORTED, "layernorm: not implemented yet"); }
kl_status kl_dropout(kl_graph *g, kl_tensor *x, double p, kl_tensor **out) { return kl_fail(KL_EUNSUPPORTED, "dropout: not implemented yet"); }
kl_status kl_embedding(kl_graph *g, kl_tensor *w, kl_tensor *idx, kl_tensor **out) { return kl_fail(KL_EUNSUPPORTED, "embedding: not implemented yet"); }
kl_status kl_concat(kl_graph *g, int n, kl_tensor *const *xs, int axis, kl_tensor **out) { return kl_fail(KL_EUNSUPPORTED, "concat: not implemented yet"); }
