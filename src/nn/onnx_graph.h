/* The ONNX graph writer shared by the model exporter's files (model_onnx.c:
 * the export and the image layers; model_onnx_seq.c: embeddings, positions,
 * transformer blocks, LSTM/GRU). Values are named t1, t2, ... (16-byte
 * buffers); a helper given x updates it to its output's name. Errors stay
 * in w->s: once set, helpers still append (harmlessly) and the export
 * returns it. */
#ifndef KL_NN_ONNX_GRAPH_H
#define KL_NN_ONNX_GRAPH_H

#include "nn/model_internal.h"
#include "io/pb.h"

#define ONNX_FLOAT 1 /* TensorProto.DataType */
#define ONNX_INT32 6
#define ONNX_INT64 7
#define KL_OX_ROPE_MAX 16 /* distinct rotary head sizes in one model */
#define KL_OX_EXTERNAL_MIN 1024 /* with external data, initializers of this many bytes or more go there */

typedef struct kl_ox {
    kl_pb g;    /* the GraphProto's nodes and initializers so far */
    kl_ctx *ctx;
    int next;   /* value names t1, t2, ... */
    int nconst; /* scalar constants c1, c2, ... */
    kl_status s;
    char seq[16], seq2[16]; /* token models: [T] and [T, T] of the input's length */
    char mask[16];          /* the causal mask [T, T] (0, or -inf above the diagonal); "" until a block needs it */
    int64_t tokens;         /* the model's context */
    kl_pb *ext;             /* external data (NULL: none): the large initializers' bytes, for the file ext_name */
    const char *ext_name;
    /* rotary tables [T, hd/2] sliced to the input's length, per head size
     * (blocks may differ); made when first needed */
    int n_rope;
    int64_t rope_hd[KL_OX_ROPE_MAX];
    char cos[KL_OX_ROPE_MAX][16], sin[KL_OX_ROPE_MAX][16];
} onnx_w;

/* a fresh value name into out (16 bytes) */
void kl_ox_fresh(onnx_w *w, char *out);
/* attributes, appended to an attribute list being built for a node */
void kl_ox_attr_int(kl_pb *n, const char *name, int64_t v);
void kl_ox_attr_float(kl_pb *n, const char *name, float v);
void kl_ox_attr_ints(kl_pb *n, const char *name, const int64_t *v, int count);
/* a node op(in...) -> outs (attrs: encoded attributes, may be NULL) */
void kl_ox_node_n(onnx_w *w, const char *op, const char *const *in, int nin, const char *const *outs, int nout,
                  const kl_pb *attrs);
void kl_ox_node(onnx_w *w, const char *op, const char *const *in, int nin, const char *out, const kl_pb *attrs);
/* x = op(x); out = op(a, b) (fresh); x = x op c for a scalar c */
void kl_ox_unary(onnx_w *w, const char *op, char *x);
void kl_ox_binary(onnx_w *w, const char *op, const char *a, const char *b, char *out);
void kl_ox_with_scalar(onnx_w *w, const char *op, char *x, float c);
/* initializers: f32 [dims] from v; a 1-D int64 constant (name: 16 bytes) */
void kl_ox_initializer(onnx_w *w, const char *name, int nd, const int64_t *dims, const float *v, int64_t n);
void kl_ox_ints_const(onnx_w *w, const int64_t *v, int64_t n, char *name);
/* the ctx's f32 parameter called name (kl_malloc'd; NULL with w->s set) */
float *kl_ox_fetch(onnx_w *w, const char *name, int *nd, int64_t *ne, int64_t *n);
/* "<layer>.<what>" as an initializer of that name (into name, 128 bytes) */
void kl_ox_param(onnx_w *w, const layer *li, const char *what, char *name);
/* kiln's tanh GELU on x */
void kl_ox_gelu(onnx_w *w, char *x);
void kl_ox_transpose_to(onnx_w *w, const char *in, const int64_t *perm, int n, char *out);
void kl_ox_transpose(onnx_w *w, char *x, const int64_t *perm, int n);
/* Reshape (0: the input's dim) */
void kl_ox_reshape(onnx_w *w, char *x, const int64_t *shape, int n);
/* x W^T (+ b), W [out, in] transposed by a node (bname may be NULL) */
void kl_ox_matmul_t(onnx_w *w, char *x, const char *wname, const char *bname);

/* model_onnx_seq.c: out = x[:T] (naxes 1) or [:T, :T] (2), T the input's length */
void kl_ox_slice_to_len(onnx_w *w, const char *x, int naxes, char *out);
void kl_ox_block_out(onnx_w *w, const layer *li, char *x);
void kl_ox_rnn_out(onnx_w *w, const layer *li, char *x);

#endif
