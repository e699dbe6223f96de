/* KV-cache decoding of transformer language models: one graph, built once,
 * takes a single token, its position and every block's cached keys and
 * values, and gives the next token's logits and that token's key and value
 * rows, which the decoder appends to its host-side cache. A token costs one
 * token's forward plus attention over the cache: O(T), not a forward over
 * the whole window.
 *
 *   kl_kv_decoder *d;
 *   kl_kv_decoder_new(model, ctx, &d);     // creates the parameters by name
 *   kl_checkpoint_load(dir, ctx, ...);     // fills them
 *   for (i = 0; i < n; i++) kl_kv_decoder_feed(d, toks[i], logits);
 *   // logits: the next token's, as kl_model_forward on toks[0..n) gives
 *   kl_kv_decoder_free(d);
 *
 * Token i sits at position i (learned positions, RoPE), so the cache holds at
 * most kl_model_tokens(m) tokens; past that a caller re-runs the window. */
#ifndef KL_NN_MODEL_KV_H
#define KL_NN_MODEL_KV_H

#include "nn/model.h"

typedef struct kl_kv_decoder kl_kv_decoder;

/* Builds the decode graph of token model m in ctx (parameters shared by name
 * with m's other graphs). KL_EUNSUPPORTED for models it cannot decode token
 * by token (recurrent layers, or blocks / positions inside residuals); *out
 * NULL on failure. */
kl_status kl_kv_decoder_new(kl_model *m, kl_ctx *ctx, kl_kv_decoder **out);
/* NULL: no-op. */
void kl_kv_decoder_free(kl_kv_decoder *d);
/* Tokens cached so far, and the most it holds (the model's context T). */
int64_t kl_kv_decoder_len(const kl_kv_decoder *d);
int64_t kl_kv_decoder_capacity(const kl_kv_decoder *d);
/* Empties the cache. */
void kl_kv_decoder_reset(kl_kv_decoder *d);
/* Appends token tok at position len and writes the next token's logits
 * (kl_model_vocab floats) to logits. KL_EINVAL when the cache is full;
 * a graph error (token out of range) leaves the cache as it was. */
kl_status kl_kv_decoder_feed(kl_kv_decoder *d, int32_t tok, float *logits);

#endif
