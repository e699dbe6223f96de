/* Models described by a config: a sequence of layers (with residual blocks),
 * shapes inferred from the input shape, parameters named as PyTorch names
 * an nn.Sequential's ("layers.0.weight"), so its state_dict loads directly.
 *
 *   model:
 *     input: [1, 28, 28]
 *     layers:
 *       - {type: conv2d, out: 32, kernel: 3, padding: 1}
 *       - {type: relu}
 *       ...
 */
#ifndef KL_NN_MODEL_H
#define KL_NN_MODEL_H

#include "kiln/kiln.h"
#include "io/config.h"

typedef struct kl_model kl_model;

/* Parses the `model` map, checks every layer and infers every shape; errors
 * name the file, line and layer ("cnn.yaml:12:5: model.layers[7]: linear:
 * in_features 3136 does not match inferred input 1568"). */
kl_status kl_model_from_cfg(const kl_cfg_node *model, kl_model **out);
void kl_model_free(kl_model *m);

/* Input shape without the batch dim, and output features. */
int kl_model_input_ndim(const kl_model *m);
const int64_t *kl_model_input_shape(const kl_model *m);
int64_t kl_model_outputs(const kl_model *m);
/* Trainable parameter count (known after the first kl_model_forward). */
int64_t kl_model_param_count(const kl_model *m);

/* Records the model's forward pass on x [B, input...] into g; creates (or
 * reuses, by name) its parameters in g's ctx. training selects batch
 * statistics and dropout. */
kl_status kl_model_forward(kl_model *m, kl_graph *g, kl_tensor *x, int training, kl_tensor **out);

/* One line per layer with output shapes and parameter counts. */
void kl_model_summary(const kl_model *m, void *file /* FILE* */);

#endif
