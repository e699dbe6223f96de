/* Internals of the config-built models shared by model.c (parsing, the
 * image layers, forward dispatch) and model_seq.c (the sequence layers:
 * embedding, pos_embedding, lstm, gru, transformer_block). */
#ifndef KL_NN_MODEL_INTERNAL_H
#define KL_NN_MODEL_INTERNAL_H

#include "nn/model.h"

typedef enum {
    L_LINEAR, L_CONV2D, L_MAXPOOL2D, L_AVGPOOL2D, L_GLOBAL_AVGPOOL, L_BATCHNORM, L_LAYERNORM, L_DROPOUT,
    L_RELU, L_GELU, L_TANH, L_SIGMOID, L_FLATTEN, L_RESIDUAL,
    L_EMBEDDING, L_POS_EMBEDDING, L_LSTM, L_GRU, L_TRANSFORMER_BLOCK, L_COUNT
} layer_kind;

/* "linear", ... by layer_kind; NULL-terminated (the config's type names). */
extern const char *const kl_layer_kind_names[];

typedef struct layer {
    layer_kind kind;
    char name[96];         /* parameter prefix: "layers.3" */
    int in_ndim, out_ndim; /* shapes without the batch dim */
    int64_t in[4], out[4];
    int64_t features;      /* linear / conv out; embedding dim; rnn hidden; block width */
    int kernel[2], stride[2], pad[2], dil[2], groups;
    int bias;
    double p, eps, momentum;
    struct layer *body;    /* residual */
    int n_body;
    int64_t params;
    /* sequence layers */
    int64_t num;           /* embedding rows (vocabulary); positions of pos_embedding */
    int64_t heads, mlp;    /* transformer_block: heads, MLP hidden width */
    int stack;             /* lstm / gru: stacked layers */
    int rope;              /* transformer_block: rotary positions on q and k */
    double std, proj_std;  /* normal init std: embeddings, block weights (proj_std: output projections) */
    int state_at;          /* lstm / gru: index of its first recurrent state (kl_model_state) */
    char tie[112];         /* linear with tie: the embedding weight it uses ("layers.0.weight") */
    kl_dtype calc;         /* the dtype it computes in (kl_model_set_precision): its f32 parameters are cast to it */
} layer;

struct kl_model {
    layer *layers;
    int n;
    int in_ndim;
    int64_t in[4];
    int64_t params;
    int64_t tokens, vocab; /* token models: context length and vocabulary (0 otherwise) */
    int windowed, n_state;
    kl_dtype calc; /* kl_model_set_precision */
};

/* What parsing a layer list needs beyond the layer itself. */
typedef struct parse_ctx {
    int64_t vocab;      /* model.vocab (0: not a token model) */
    int tokens_in;      /* the next layer's input is token ids [T] */
    const layer *embedding; /* the model's embedding layer (for tie) */
    int n_state;        /* recurrent layers (each stacked one) so far */
    int windowed;       /* a layer needs the whole window (attention, positions) */
    int blocks;         /* transformer blocks so far (output projection init) */
} parse_ctx;

/* Parses a sequence layer (kind >= L_EMBEDDING) at li->in; sets li->out and
 * li->params. Errors are located at n. */
kl_status kl_seq_layer_parse(const kl_cfg_node *n, layer *li, parse_ctx *pc);
/* Records a sequence layer's forward on x [B, ...]; st (may be NULL) gets
 * the recurrent states' inputs and outputs. */
kl_status kl_seq_layer_forward(const layer *li, kl_graph *g, kl_tensor *x, int training, kl_model_state *st,
                               kl_tensor **out);

/* Records layers ls[0..n) on x (kl_model_forward over a part of a model;
 * the KV-cache decoder runs the layers between blocks through it). */
kl_status kl_layers_forward(layer *ls, int n, kl_graph *g, kl_tensor *x, int training, kl_model_state *st,
                            kl_tensor **out);
/* A transformer block's sub-modules: layernorm "<layer>.<sub>" on x, and
 * act(x W^T + b) with the block's parameters "<layer>.<sub>.weight|bias". */
kl_status kl_block_ln(const layer *li, kl_graph *g, const char *sub, kl_tensor *x, kl_tensor **out);
kl_status kl_block_linear(const layer *li, kl_graph *g, const char *sub, kl_tensor *x, int64_t out_f, int64_t in_f,
                          double std, kl_act act, kl_tensor **out);

/* Bounds that keep shape and parameter arithmetic far from int64 overflow:
 * values per sample (input and every layer's output) and per layer. */
#define KL_MODEL_MAX_VALUES ((int64_t)1 << 31)
#define KL_MODEL_MAX_PARAMS ((int64_t)1 << 40)
/* A layer's output and parameter count within those bounds (error at n). */
kl_status kl_model_check_size(const kl_cfg_node *n, const layer *li);

/* Token models: model.input / model.vocab into m (and pc); the last layer's
 * output [T, vocab] (or [classes] for other models); linear's `out: vocab`
 * and `tie: true`; GPT-2's depth-scaled init of blocks' output projections. */
kl_status kl_model_parse_input(const kl_cfg_node *model, kl_model *m, parse_ctx *pc);
kl_status kl_model_check_output(const kl_model *m, const kl_cfg_node *seq, int nd, const int64_t *d);
kl_status kl_linear_out(const kl_cfg_node *n, const parse_ctx *pc, int64_t *out);
/* The key giving a layer's output size: alias (out_features, out_channels)
 * or out; both given is an error. */
kl_status kl_layer_out_key(const kl_cfg_node *n, const char *alias, const char **key);
/* A normalisation's eps (default 1e-5), refused below 0 (error at its key). */
kl_status kl_layer_eps(const kl_cfg_node *n, const char *kname, double *eps);
kl_status kl_linear_tie(const kl_cfg_node *n, layer *li, const parse_ctx *pc);
void kl_set_proj_std(layer *ls, int n, int blocks);

/* The parameter "<li->name>.<what>" (created on first use with init, a). */
kl_status kl_layer_param(kl_graph *g, const layer *li, const char *what, int nd, const int64_t *d,
                         kl_init_kind init, double a, kl_tensor **out);

#endif
