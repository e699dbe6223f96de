/* Models described by a config: a sequence of layers (with residual blocks),
 * shapes inferred from the input shape, parameters named as PyTorch names
 * an nn.Sequential's ("layers.0.weight"), so its state_dict loads directly.
 * docs/CONFIG.md lists every layer and key.
 *
 *   model:
 *     input: [1, 28, 28]
 *     layers:
 *       - {type: conv2d, out: 32, kernel: 3, padding: 1}
 *       - {type: relu}
 *       ...
 *
 * Language models take token ids: `input: {tokens: T}` with `vocab: V` (or
 * auto), per sample [T] -> embedding [T, D] -> ... -> linear [T, V]:
 *
 *   model:
 *     input: {tokens: 256}
 *     vocab: auto
 *     layers:
 *       - {type: embedding, dim: 128}
 *       - {type: lstm, hidden: 512, layers: 2}
 *       - {type: linear, out: vocab}
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

/* Input shape without the batch dim ([T] for token models), and output
 * features (classes; the vocabulary for token models). */
int kl_model_input_ndim(const kl_model *m);
const int64_t *kl_model_input_shape(const kl_model *m);
int64_t kl_model_outputs(const kl_model *m);
/* Token models: the context length T (0 for models of f32 samples) and the
 * vocabulary size (model.vocab; `auto` reads as 256 until kiln train sets it
 * from the corpus). Their input x is i32 [B, T] and the output [B, T, V]. */
int64_t kl_model_tokens(const kl_model *m);
int64_t kl_model_vocab(const kl_model *m);
/* 1 if some layer needs the whole window (attention, learned positions), so
 * generation re-runs the window; 0 if tokens can be fed one at a time with
 * the recurrent states carried (kl_model_forward_state). */
int kl_model_windowed(const kl_model *m);
/* Recurrent states: one per lstm / gru layer (stacked layers count each). */
int kl_model_state_count(const kl_model *m);
/* Trainable parameter count (known after the first kl_model_forward). */
int64_t kl_model_param_count(const kl_model *m);

/* Records the model's forward pass on x [B, input...] into g; creates (or
 * reuses, by name) its parameters in g's ctx. training selects batch
 * statistics and dropout. Token models also take x [B, T'] with T' <= T
 * (causal layers give the same outputs for the first T' positions). */
kl_status kl_model_forward(kl_model *m, kl_graph *g, kl_tensor *x, int training, kl_tensor **out);

/* Recurrent states of a forward graph: inputs h_in / c_in [B, hidden] (the
 * state before the first step; c_in NULL for GRU layers) and outputs h_out /
 * c_out (after the last step; kept readable). */
#define KL_MODEL_MAX_STATE 64
typedef struct kl_model_state {
    int n;
    int64_t hidden[KL_MODEL_MAX_STATE];
    kl_tensor *h_in[KL_MODEL_MAX_STATE], *c_in[KL_MODEL_MAX_STATE];
    kl_tensor *h_out[KL_MODEL_MAX_STATE], *c_out[KL_MODEL_MAX_STATE];
} kl_model_state;

/* kl_model_forward (not training) of a token model on x i32 [B, T'] with
 * T' <= T, creating the state inputs "state.h.<i>" / "state.c.<i>" in g and
 * filling *st; for step-by-step generation (T' = 1). KL_EINVAL for more than
 * KL_MODEL_MAX_STATE states. */
kl_status kl_model_forward_state(kl_model *m, kl_graph *g, kl_tensor *x, kl_model_state *st, kl_tensor **out);

/* Mixed precision: the dtype the layers compute in, f32 (the default),
 * bf16 or f16. Parameters stay f32 (the optimizer updates them there) and
 * each layer casts them to calc where it uses them; kl_model_forward casts
 * a float input to calc and returns the output cast back to f32, so the
 * loss and metrics are f32; batchnorm keeps f32 running statistics. f16
 * needs loss scaling (kl_optim_opts.loss_scale) so gradients do not underflow.
 * Affects graphs recorded afterwards; kl_model_forward_state refuses a
 * model not in f32. */
kl_status kl_model_set_precision(kl_model *m, kl_dtype calc);
kl_dtype kl_model_precision(const kl_model *m);

/* ONNX export (nn/model_onnx.c): m with ctx's weights as an ONNX model
 * (opset 17) at path, written atomically, input "input" [batch, input
 * shape...], output "logits" [batch, outputs]; with normalize, the model
 * first does (x - mean) / std, so it takes raw samples as kiln predict
 * does; token models take int32 ids [batch, seq] and give [batch, seq,
 * vocab]. Every layer type exports. */
typedef struct kl_onnx_opts {
    int normalize;
    double mean, std;
    /* 1: initializers of 1 KiB or more go to PATH.data beside the model
     * (ONNX external data, which onnx.load and onnxruntime read from the
     * model's folder); 0: only for a model past protobuf's 2 GiB */
    int external;
} kl_onnx_opts;
kl_status kl_model_export_onnx(const kl_model *m, kl_ctx *ctx, const kl_onnx_opts *o, const char *path);

/* One line per layer with output shapes and parameter counts. */
void kl_model_summary(const kl_model *m, void *file /* FILE* */);

#endif
