/* ONNX export of a config-built model (kl_model_export_onnx): one node (or a
 * few; a transformer block is about thirty) per layer, the parameters as initializers under their PyTorch names,
 * written with the protobuf encoder of io/pb.h. Opset 17 (LayerNormalization
 * is there); GELU is kiln's tanh form spelled out in Mul/Add/Tanh, so any
 * runtime of that opset computes what kiln does. Inference only: dropout
 * is left out and batchnorm uses its running statistics. Field numbers are
 * onnx.proto's (ModelProto, GraphProto, NodeProto, AttributeProto,
 * TensorProto, ValueInfoProto, TypeProto). */
#include "nn/model_internal.h"
#include "core/error.h"
#include "io/fileio.h"
#include "io/pb.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#ifndef KILN_VERSION
#define KILN_VERSION "unknown"
#endif
#define ONNX_OPSET 17
#define ONNX_IR 8
#define ONNX_FLOAT 1 /* TensorProto.DataType */
#define ONNX_INT32 6
#define ONNX_INT64 7
enum { ATTR_FLOAT = 1, ATTR_INT = 2, ATTR_INTS = 7 }; /* AttributeProto.AttributeType */

typedef struct {
    kl_pb g;    /* the GraphProto's nodes and initializers so far */
    kl_ctx *ctx;
    int next;   /* value names t1, t2, ... */
    int nconst; /* scalar constants c1, c2, ... */
    kl_status s;
    char seq[16], seq2[16]; /* token models: [T] and [T, T] of the input's length */
    char mask[16];          /* the causal mask [T, T] (0, or -inf above the diagonal); "" until a block needs it */
    int64_t tokens;         /* the model's context */
} onnx_w;

/* A fresh value name into out (16 bytes). */
static void fresh(onnx_w *w, char *out) { snprintf(out, 16, "t%d", ++w->next); }

/* An AttributeProto: its name, then (the callers) its value, then its type. */
static kl_pb attr_begin(const char *name)
{
    kl_pb a = {0};
    kl_pb_str(&a, 1, name);
    return a;
}
static void attr_end(kl_pb *n, kl_pb *a, int type)
{
    kl_pb_int(a, 20, type);
    kl_pb_msg(n, 5, a);
    kl_pb_free(a);
}

static void attr_int(kl_pb *n, const char *name, int64_t v)
{
    kl_pb a = attr_begin(name);
    kl_pb_int(&a, 3, v);
    attr_end(n, &a, ATTR_INT);
}

static void attr_float(kl_pb *n, const char *name, float v)
{
    kl_pb a = attr_begin(name);
    kl_pb_float(&a, 2, v);
    attr_end(n, &a, ATTR_FLOAT);
}

static void attr_ints(kl_pb *n, const char *name, const int64_t *v, int count)
{
    kl_pb a = attr_begin(name);
    for (int i = 0; i < count; i++) kl_pb_int(&a, 8, v[i]);
    attr_end(n, &a, ATTR_INTS);
}

/* A NodeProto op(in...) -> outs, with attributes already encoded in attrs
 * (may be NULL), appended to the graph. */
static void node_n(onnx_w *w, const char *op, const char *const *in, int nin, const char *const *outs, int nout,
                   const kl_pb *attrs)
{
    kl_pb n = {0};
    for (int i = 0; i < nin; i++) kl_pb_str(&n, 1, in[i]);
    for (int i = 0; i < nout; i++) kl_pb_str(&n, 2, outs[i]);
    kl_pb_str(&n, 3, outs[0]); /* node name: its first output's */
    kl_pb_str(&n, 4, op);
    if (attrs) {
        kl_pb_raw(&n, attrs->p, attrs->n);
        if (attrs->oom) n.oom = 1;
    }
    kl_pb_msg(&w->g, 1, &n);
    kl_pb_free(&n);
}

static void node(onnx_w *w, const char *op, const char *const *in, int nin, const char *out, const kl_pb *attrs)
{
    node_n(w, op, in, nin, (const char *const[]){out}, 1, attrs);
}

/* x -> op(x [, b]) into a fresh name, x updated to it */
static void unary(onnx_w *w, const char *op, char *x)
{
    char y[16];
    fresh(w, y);
    node(w, op, (const char *const[]){x}, 1, y, NULL);
    strcpy(x, y);
}

/* A TensorProto initializer of n elements of elem_type (4-byte floats or
 * 8-byte int64) from v. */
static void tensor_init(onnx_w *w, const char *name, int elem_type, int nd, const int64_t *dims, const void *v, int64_t n)
{
    kl_pb t = {0};
    for (int d = 0; d < nd; d++) kl_pb_int(&t, 1, dims[d]);
    kl_pb_int(&t, 2, elem_type);
    kl_pb_str(&t, 8, name);
    kl_pb_bytes(&t, 9, v, (size_t)n * (elem_type == ONNX_INT64 ? 8 : 4)); /* raw_data: little-endian, as this host */
    kl_pb_msg(&w->g, 5, &t);
    kl_pb_free(&t);
}
static void initializer(onnx_w *w, const char *name, int nd, const int64_t *dims, const float *v, int64_t n)
{
    tensor_init(w, name, ONNX_FLOAT, nd, dims, v, n);
}
/* a 1-D int64 constant (shapes, split sizes, slice bounds) into name (16 bytes) */
static void ints_const(onnx_w *w, const int64_t *v, int64_t n, char *name)
{
    snprintf(name, 16, "c%d", ++w->nconst);
    tensor_init(w, name, ONNX_INT64, 1, &n, v, n);
}

/* The ctx's parameter or buffer "<layer>.<what>" as an initializer of that
 * name (into name, 128 bytes). */
/* The ctx's f32 parameter or buffer called name: its values (kl_malloc'd;
 * NULL with w->s set on failure) and dims. */
static float *fetch(onnx_w *w, const char *name, int *nd, int64_t *ne, int64_t *n)
{
    if (w->s != KL_OK) return NULL;
    int i = kl_ctx_param_find(w->ctx, name);
    const char *nm;
    kl_dtype dt;
    int tr;
    w->s = i < 0 ? kl_fail(KL_EINVAL, "ONNX export: the model's parameter '%s' is not in the checkpoint", name)
                 : kl_ctx_param_info(w->ctx, i, &nm, &dt, nd, ne, &tr);
    if (w->s != KL_OK) return NULL;
    *n = 1;
    for (int d = 0; d < *nd; d++) *n *= ne[d];
    float *v = dt == KL_F32 ? kl_malloc((size_t)*n * sizeof *v) : NULL;
    w->s = dt != KL_F32 ? kl_fail(KL_EINVAL, "ONNX export: parameter '%s' is %s, expected f32", name, kl_dtype_name(dt))
           : !v ? KL_ENOMEM
                : kl_ctx_param_get(w->ctx, i, v, (size_t)*n * sizeof *v);
    if (w->s == KL_OK) return v;
    kl_free(v);
    return NULL;
}

/* The ctx's parameter or buffer "<layer>.<what>" as an initializer of that
 * name (into name, 128 bytes). */
static void param(onnx_w *w, const layer *li, const char *what, char *name)
{
    snprintf(name, 128, "%s.%s", li->name, what);
    int nd;
    int64_t ne[KL_MAX_DIMS], n;
    float *v = fetch(w, name, &nd, ne, &n);
    if (v) initializer(w, name, nd, ne, v, n);
    kl_free(v);
}

/* A scalar constant (shape [], broadcast by the ops) into name (16 bytes). */
static void scalar(onnx_w *w, float v, char *name)
{
    snprintf(name, 16, "c%d", ++w->nconst);
    initializer(w, name, 0, NULL, &v, 1);
}

/* x op= c for a scalar c */
static void with_scalar(onnx_w *w, const char *op, char *x, float c)
{
    char k[16], y[16];
    scalar(w, c, k);
    fresh(w, y);
    node(w, op, (const char *const[]){x, k}, 2, y, NULL);
    strcpy(x, y);
}

static void binary(onnx_w *w, const char *op, const char *a, const char *b, char *out)
{
    fresh(w, out);
    node(w, op, (const char *const[]){a, b}, 2, out, NULL);
}

/* kiln's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
static void gelu(onnx_w *w, char *x)
{
    char x3[16], t[16], y[16];
    binary(w, "Mul", x, x, x3);
    binary(w, "Mul", x3, x, t);
    strcpy(x3, t);
    with_scalar(w, "Mul", x3, 0.044715f);
    binary(w, "Add", x, x3, t);
    with_scalar(w, "Mul", t, 0.7978845608028654f);
    unary(w, "Tanh", t);
    with_scalar(w, "Add", t, 1.0f);
    binary(w, "Mul", x, t, y);
    with_scalar(w, "Mul", y, 0.5f);
    strcpy(x, y);
}

/* out (a fresh name) = Transpose(in, perm) */
static void transpose_to(onnx_w *w, const char *in, const int64_t *perm, int n, char *out)
{
    kl_pb a = {0};
    attr_ints(&a, "perm", perm, n);
    fresh(w, out);
    node(w, "Transpose", (const char *const[]){in}, 1, out, &a);
    kl_pb_free(&a);
}
static void transpose(onnx_w *w, char *x, const int64_t *perm, int n)
{
    char y[16];
    transpose_to(w, x, perm, n, y);
    strcpy(x, y);
}

/* x -> Reshape(x, shape) (0: the input's dim) */
static void reshape(onnx_w *w, char *x, const int64_t *shape, int n)
{
    char c[16], y[16];
    ints_const(w, shape, n, c);
    binary(w, "Reshape", x, c, y);
    strcpy(x, y);
}

/* x -> x W^T (+ b) for x of any rank: MatMul with W [out, in] transposed
 * by a node, so the initializer keeps the parameter's layout and name */
static void matmul_t(onnx_w *w, char *x, const char *wname, const char *bname)
{
    char wt[16], y[16];
    transpose_to(w, wname, (const int64_t[]){1, 0}, 2, wt);
    binary(w, "MatMul", x, wt, y);
    if (bname) {
        char z[16];
        binary(w, "Add", y, bname, z);
        strcpy(y, z);
    }
    strcpy(x, y);
}

static void window_attrs(kl_pb *a, const layer *li, int dilation)
{
    int64_t k[2] = {li->kernel[0], li->kernel[1]}, st[2] = {li->stride[0], li->stride[1]};
    int64_t pads[4] = {li->pad[0], li->pad[1], li->pad[0], li->pad[1]}, dil[2] = {li->dil[0], li->dil[1]};
    attr_ints(a, "kernel_shape", k, 2);
    attr_ints(a, "strides", st, 2);
    attr_ints(a, "pads", pads, 4);
    if (dilation) attr_ints(a, "dilations", dil, 2);
}

static void layers_out(onnx_w *w, const layer *ls, int n, char *x);

/* out = x[..., :T] of a [rows, ...] initializer along axes (1 or 2 of them),
 * T the input's length */
static void slice_to_len(onnx_w *w, const char *x, int naxes, char *out)
{
    char st[16], ax[16];
    ints_const(w, (const int64_t[]){0, 0}, naxes, st);
    ints_const(w, (const int64_t[]){0, 1}, naxes, ax);
    fresh(w, out);
    node(w, "Slice", (const char *const[]){x, st, naxes == 1 ? w->seq : w->seq2, ax}, 4, out, NULL);
}

/* "<layer>.<sub>.<what>" as an initializer (into name) */
static void sub_param(onnx_w *w, const layer *li, const char *sub, const char *what, char *name)
{
    char nm[64];
    snprintf(nm, sizeof nm, "%s.%s", sub, what);
    param(w, li, nm, name);
}

static void sub_linear(onnx_w *w, const layer *li, const char *sub, char *x)
{
    char p[2][128];
    sub_param(w, li, sub, "weight", p[0]);
    if (li->bias) sub_param(w, li, sub, "bias", p[1]);
    matmul_t(w, x, p[0], li->bias ? p[1] : NULL);
}

static void sub_ln(onnx_w *w, const layer *li, const char *sub, const char *x, char *out)
{
    char p[2][128];
    kl_pb a = {0};
    sub_param(w, li, sub, "weight", p[0]);
    sub_param(w, li, sub, "bias", p[1]);
    attr_int(&a, "axis", -1);
    attr_float(&a, "epsilon", (float)li->eps);
    fresh(w, out);
    node(w, "LayerNormalization", (const char *const[]){x, p[0], p[1]}, 3, out, &a);
    kl_pb_free(&a);
}

/* dst's gate block k = src's block order[k] (blocks of H rows of cols each) */
static void gates(float *dst, const float *src, const int *order, int G, int64_t H, int64_t cols)
{
    for (int k = 0; k < G; k++) memcpy(dst + k * H * cols, src + order[k] * H * cols, (size_t)(H * cols) * sizeof *dst);
}

/* nn.LSTM / nn.GRU (stacked) as one ONNX LSTM / GRU node per layer,
 * time-major between a Transpose in and out (onnxruntime runs layout 0
 * only). The gates are reordered from PyTorch's (i f g o;
 * r z n) to ONNX's (i o f c; z r h) into initializers "<layer>.onnx.W_l<k>",
 * R and B; GRU's linear_before_reset = 1 is PyTorch's form of the candidate. */
static void rnn_out(onnx_w *w, const layer *li, char *x)
{
    static const int lstm_order[4] = {0, 3, 1, 2}, gru_order[3] = {1, 0, 2};
    int lstm = li->kind == L_LSTM, G = lstm ? 4 : 3;
    int64_t H = li->features;
    transpose(w, x, (const int64_t[]){1, 0, 2}, 3); /* [T, B, I] */
    for (int l = 0; l < li->stack && w->s == KL_OK; l++) {
        int64_t I = l ? H : li->in[1], nd3[3] = {1, G * H, I}, nr3[3] = {1, G * H, H}, nb2[2] = {1, 2 * G * H};
        char nm[4][160], y[16];
        const char *what[4] = {"weight_ih", "weight_hh", "bias_ih", "bias_hh"};
        float *v[4] = {NULL}, *t[3];
        int nd;
        int64_t ne[KL_MAX_DIMS], n;
        for (int k = 0; k < (li->bias ? 4 : 2); k++) {
            snprintf(nm[k], sizeof nm[k], "%s.%s_l%d", li->name, what[k], l);
            v[k] = fetch(w, nm[k], &nd, ne, &n);
        }
        t[0] = kl_malloc((size_t)(G * H * I) * sizeof(float));
        t[1] = kl_malloc((size_t)(G * H * H) * sizeof(float));
        t[2] = kl_calloc((size_t)(2 * G * H), sizeof(float)); /* no bias: zeros */
        if (w->s == KL_OK && (!t[0] || !t[1] || !t[2])) w->s = KL_ENOMEM;
        if (w->s == KL_OK) {
            const int *ord = lstm ? lstm_order : gru_order;
            gates(t[0], v[0], ord, G, H, I);
            gates(t[1], v[1], ord, G, H, H);
            if (li->bias) {
                gates(t[2], v[2], ord, G, H, 1);
                gates(t[2] + G * H, v[3], ord, G, H, 1);
            }
            const char *kind[3] = {"W", "R", "B"};
            for (int k = 0; k < 3; k++) snprintf(nm[k], sizeof nm[k], "%s.onnx.%s_l%d", li->name, kind[k], l);
            initializer(w, nm[0], 3, nd3, t[0], G * H * I);
            initializer(w, nm[1], 3, nr3, t[1], G * H * H);
            initializer(w, nm[2], 2, nb2, t[2], 2 * G * H);
            kl_pb a = {0};
            attr_int(&a, "hidden_size", H);
            if (!lstm) attr_int(&a, "linear_before_reset", 1);
            fresh(w, y);
            node(w, lstm ? "LSTM" : "GRU", (const char *const[]){x, nm[0], nm[1], nm[2]}, 4, y, &a);
            kl_pb_free(&a);
            strcpy(x, y);
            reshape(w, x, (const int64_t[]){0, -1, H}, 3); /* Y [T, 1, B, H] -> [T, B, H] */
        }
        for (int k = 0; k < 4; k++) kl_free(v[k]);
        for (int k = 0; k < 3; k++) kl_free(t[k]);
    }
    transpose(w, x, (const int64_t[]){1, 0, 2}, 3); /* [B, T, H] */
}

/* The pre-norm GPT block of nn/model_seq.c: x + proj(attn(ln_1(x))), then
 * x + mlp(ln_2(x)); causal attention written out (MatMul, the mask, Softmax,
 * MatMul) with kiln's scale 1/sqrt(head size). */
static void block_out(onnx_w *w, const layer *li, char *x)
{
    if (li->rope) {
        w->s = kl_fail(KL_EUNSUPPORTED, "ONNX export: layer '%s' (transformer_block) uses rotary positions (rope), "
                       "which do not export yet", li->name);
        return;
    }
    int64_t D = li->features, H = li->heads, hd = D / H, T = w->tokens;
    if (!w->mask[0]) {
        float *m = kl_malloc((size_t)(T * T) * sizeof *m);
        if (!m) {
            w->s = KL_ENOMEM;
            return;
        }
        for (int64_t i = 0; i < T; i++)
            for (int64_t j = 0; j < T; j++) m[i * T + j] = j <= i ? 0.0f : -INFINITY;
        initializer(w, "causal_mask", 2, (const int64_t[]){T, T}, m, T * T);
        kl_free(m);
        slice_to_len(w, "causal_mask", 2, w->mask);
    }
    char h[16], qkv[16], q[16], k[16], v[16], sc[16], t[16], c[16];
    sub_ln(w, li, "ln_1", x, h);
    sub_linear(w, li, "attn.c_attn", h);
    reshape(w, h, (const int64_t[]){0, 0, 3 * H, hd}, 4);                    /* [B, T, 3H, hd] */
    transpose_to(w, h, (const int64_t[]){0, 2, 1, 3}, 4, qkv);               /* [B, 3H, T, hd] */
    ints_const(w, (const int64_t[]){H, H, H}, 3, c);
    kl_pb a = {0};
    attr_int(&a, "axis", 1);
    fresh(w, q), fresh(w, k), fresh(w, v);
    node_n(w, "Split", (const char *const[]){qkv, c}, 2, (const char *const[]){q, k, v}, 3, &a);
    kl_pb_free(&a);
    transpose(w, k, (const int64_t[]){0, 1, 3, 2}, 4);                       /* k^T */
    binary(w, "MatMul", q, k, sc);
    with_scalar(w, "Mul", sc, (float)(1.0 / sqrt((double)hd)));
    binary(w, "Add", sc, w->mask, t);
    attr_int(&a, "axis", -1);
    fresh(w, sc);
    node(w, "Softmax", (const char *const[]){t}, 1, sc, &a);
    kl_pb_free(&a);
    binary(w, "MatMul", sc, v, t);                                           /* [B, H, T, hd] */
    transpose(w, t, (const int64_t[]){0, 2, 1, 3}, 4);
    reshape(w, t, (const int64_t[]){0, 0, D}, 3);
    sub_linear(w, li, "attn.c_proj", t);
    binary(w, "Add", x, t, h);
    strcpy(x, h);
    sub_ln(w, li, "ln_2", x, h);
    sub_linear(w, li, "mlp.c_fc", h);
    gelu(w, h);
    sub_linear(w, li, "mlp.c_proj", h);
    binary(w, "Add", x, h, t);
    strcpy(x, t);
}

/* Layer li on value x (x updated to its output). */
static void layer_out(onnx_w *w, const layer *li, char *x)
{
    char p[3][128], y[16];
    kl_pb a = {0};
    switch (li->kind) {
    case L_LINEAR:
        if (li->in_ndim != 1 || li->tie[0]) { /* on [B, T, F], or tied to an embedding's (exported already) */
            if (!li->tie[0]) param(w, li, "weight", p[0]);
            if (li->bias) param(w, li, "bias", p[1]);
            matmul_t(w, x, li->tie[0] ? li->tie : p[0], li->bias ? p[1] : NULL);
            return;
        }
        param(w, li, "weight", p[0]);
        if (li->bias) param(w, li, "bias", p[1]);
        attr_int(&a, "transB", 1);
        fresh(w, y);
        node(w, "Gemm", (const char *const[]){x, p[0], p[1]}, li->bias ? 3 : 2, y, &a);
        break;
    case L_CONV2D:
        param(w, li, "weight", p[0]);
        if (li->bias) param(w, li, "bias", p[1]);
        window_attrs(&a, li, 1);
        attr_int(&a, "group", li->groups);
        fresh(w, y);
        node(w, "Conv", (const char *const[]){x, p[0], p[1]}, li->bias ? 3 : 2, y, &a);
        break;
    case L_MAXPOOL2D:
    case L_AVGPOOL2D:
        window_attrs(&a, li, 0);
        if (li->kind == L_AVGPOOL2D) attr_int(&a, "count_include_pad", 1); /* kiln divides by KH*KW, as PyTorch */
        fresh(w, y);
        node(w, li->kind == L_MAXPOOL2D ? "MaxPool" : "AveragePool", (const char *const[]){x}, 1, y, &a);
        break;
    case L_GLOBAL_AVGPOOL:
        unary(w, "GlobalAveragePool", x);
        if (li->out_ndim == 1) unary(w, "Flatten", x); /* kiln's [B, C] */
        return;
    case L_BATCHNORM:
        param(w, li, "weight", p[0]);
        param(w, li, "bias", p[1]);
        param(w, li, "running_mean", p[2]);
        {
            char rv[128];
            param(w, li, "running_var", rv);
            attr_float(&a, "epsilon", (float)li->eps);
            fresh(w, y);
            node(w, "BatchNormalization", (const char *const[]){x, p[0], p[1], p[2], rv}, 5, y, &a);
        }
        break;
    case L_LAYERNORM:
        param(w, li, "weight", p[0]);
        param(w, li, "bias", p[1]);
        attr_int(&a, "axis", -1);
        attr_float(&a, "epsilon", (float)li->eps);
        fresh(w, y);
        node(w, "LayerNormalization", (const char *const[]){x, p[0], p[1]}, 3, y, &a);
        break;
    case L_DROPOUT: return; /* identity at inference */
    case L_RELU: unary(w, "Relu", x); return;
    case L_TANH: unary(w, "Tanh", x); return;
    case L_SIGMOID: unary(w, "Sigmoid", x); return;
    case L_GELU: gelu(w, x); return;
    case L_FLATTEN:
        attr_int(&a, "axis", 1);
        fresh(w, y);
        node(w, "Flatten", (const char *const[]){x}, 1, y, &a);
        break;
    case L_EMBEDDING:
        param(w, li, "weight", p[0]);
        binary(w, "Gather", p[0], x, y);
        break;
    case L_POS_EMBEDDING:
        param(w, li, "weight", p[0]);
        {
            char ps[16];
            slice_to_len(w, p[0], 1, ps);
            binary(w, "Add", x, ps, y);
        }
        break;
    case L_TRANSFORMER_BLOCK: block_out(w, li, x); return;
    case L_LSTM:
    case L_GRU: rnn_out(w, li, x); return;
    case L_RESIDUAL: {
        char in[16], sum[16];
        strcpy(in, x);
        layers_out(w, li->body, li->n_body, x);
        binary(w, "Add", in, x, sum);
        strcpy(x, sum);
        return;
    }
    default:
        w->s = kl_fail(KL_EUNSUPPORTED, "ONNX export: layer '%s' (%s) does not export yet", li->name,
                       kl_layer_kind_names[li->kind]);
        return;
    }
    if (a.oom) w->g.oom = 1;
    kl_pb_free(&a);
    strcpy(x, y);
}

static void layers_out(onnx_w *w, const layer *ls, int n, char *x)
{
    for (int i = 0; i < n && w->s == KL_OK; i++) layer_out(w, &ls[i], x);
}

/* A ValueInfoProto: name, a tensor of elem_type [sym..., dims...]: nsym
 * symbolic dims (batch, seq) then fixed ones. */
static void value_info(kl_pb *g, int field, const char *name, int elem_type, int nsym, const char *const *sym, int nd,
                       const int64_t *dims)
{
    kl_pb vi = {0}, ty = {0}, tt = {0}, sh = {0}, d = {0};
    for (int i = 0; i < nsym + nd; i++) {
        kl_pb_free(&d);
        if (i < nsym) kl_pb_str(&d, 2, sym[i]); /* dim_param */
        else kl_pb_int(&d, 1, dims[i - nsym]);   /* dim_value */
        kl_pb_msg(&sh, 1, &d);
    }
    kl_pb_int(&tt, 1, elem_type);
    kl_pb_msg(&tt, 2, &sh);
    kl_pb_msg(&ty, 1, &tt); /* TypeProto.tensor_type */
    kl_pb_str(&vi, 1, name);
    kl_pb_msg(&vi, 2, &ty);
    kl_pb_msg(g, field, &vi);
    kl_pb_free(&vi), kl_pb_free(&ty), kl_pb_free(&tt), kl_pb_free(&sh), kl_pb_free(&d);
}

/* Token models: w->seq = [T] and w->seq2 = [T, T] of the input's length T. */
static void seq_len(onnx_w *w)
{
    char shp[16], st[16], en[16], ax[16];
    fresh(w, shp);
    node(w, "Shape", (const char *const[]){"input"}, 1, shp, NULL);
    ints_const(w, (const int64_t[]){1}, 1, st);
    ints_const(w, (const int64_t[]){2}, 1, en);
    ints_const(w, (const int64_t[]){0}, 1, ax);
    fresh(w, w->seq);
    node(w, "Slice", (const char *const[]){shp, st, en, ax}, 4, w->seq, NULL);
    kl_pb a = {0};
    attr_int(&a, "axis", 0);
    fresh(w, w->seq2);
    node(w, "Concat", (const char *const[]){w->seq, w->seq}, 2, w->seq2, &a);
    kl_pb_free(&a);
}

kl_status kl_model_export_onnx(const kl_model *m, kl_ctx *ctx, const kl_onnx_opts *o, const char *path)
{
    if (!m || !ctx || !path) return kl_fail(KL_EMISUSE, "kl_model_export_onnx: %s is NULL", !m ? "model" : !ctx ? "ctx" : "path");
    onnx_w w = {.ctx = ctx, .tokens = m->tokens};
    char x[16] = "input";
    if (m->tokens) seq_len(&w);
    else if (o && o->normalize) { /* the model takes raw samples, as kiln predict does */
        with_scalar(&w, "Sub", x, (float)o->mean);
        with_scalar(&w, "Div", x, (float)(o->std ? o->std : 1));
    }
    layers_out(&w, m->layers, m->n, x);
    kl_pb graph = {0}, model = {0}, opset = {0};
    if (w.s == KL_OK) {
        node(&w, "Identity", (const char *const[]){x}, 1, "logits", NULL);
        kl_pb_raw(&graph, w.g.p, w.g.n);
        kl_pb_str(&graph, 2, "kiln");
        int64_t out = kl_model_outputs(m);
        static const char *const sym[2] = {"batch", "seq"};
        if (m->tokens) { /* ids i32 [batch, seq] -> logits [batch, seq, vocab] */
            value_info(&graph, 11, "input", ONNX_INT32, 2, sym, 0, NULL);
            value_info(&graph, 12, "logits", ONNX_FLOAT, 2, sym, 1, &out);
        } else {
            value_info(&graph, 11, "input", ONNX_FLOAT, 1, sym, m->in_ndim, m->in);
            value_info(&graph, 12, "logits", ONNX_FLOAT, 1, sym, 1, &out);
        }
        kl_pb_int(&model, 1, ONNX_IR);
        kl_pb_str(&model, 2, "kiln");
        kl_pb_str(&model, 3, KILN_VERSION);
        kl_pb_msg(&model, 7, &graph);
        kl_pb_str(&opset, 1, "");
        kl_pb_int(&opset, 2, ONNX_OPSET);
        kl_pb_msg(&model, 8, &opset);
        if (w.g.oom || graph.oom || model.oom) w.s = kl_fail(KL_ENOMEM, "ONNX export: out of memory encoding the model");
    }
    if (w.s == KL_OK) {
        const void *chunks[1] = {model.p};
        size_t sizes[1] = {model.n};
        w.s = kl_write_file_atomic(path, chunks, sizes, 1);
    }
    kl_pb_free(&w.g), kl_pb_free(&graph), kl_pb_free(&model), kl_pb_free(&opset);
    return w.s;
}
