/* ONNX export of a config-built model (kl_model_export_onnx): one node (or a
 * few) per layer, the parameters as initializers under their PyTorch names,
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

#include <stdio.h>
#include <string.h>

#ifndef KILN_VERSION
#define KILN_VERSION "unknown"
#endif
#define ONNX_OPSET 17
#define ONNX_IR 8
#define ONNX_FLOAT 1 /* TensorProto.DataType */
enum { ATTR_FLOAT = 1, ATTR_INT = 2, ATTR_INTS = 7 }; /* AttributeProto.AttributeType */

typedef struct {
    kl_pb g;    /* the GraphProto's nodes and initializers so far */
    kl_ctx *ctx;
    int next;   /* value names t1, t2, ... */
    int nconst; /* scalar constants c1, c2, ... */
    kl_status s;
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

/* A NodeProto op(in...) -> out, with attributes already encoded in attrs
 * (may be NULL), appended to the graph. */
static void node(onnx_w *w, const char *op, const char *const *in, int nin, const char *out, const kl_pb *attrs)
{
    kl_pb n = {0};
    for (int i = 0; i < nin; i++) kl_pb_str(&n, 1, in[i]);
    kl_pb_str(&n, 2, out);
    kl_pb_str(&n, 3, out); /* node name: its output's */
    kl_pb_str(&n, 4, op);
    if (attrs) {
        kl_pb_raw(&n, attrs->p, attrs->n);
        if (attrs->oom) n.oom = 1;
    }
    kl_pb_msg(&w->g, 1, &n);
    kl_pb_free(&n);
}

/* x -> op(x [, b]) into a fresh name, x updated to it */
static void unary(onnx_w *w, const char *op, char *x)
{
    char y[16];
    fresh(w, y);
    node(w, op, (const char *const[]){x}, 1, y, NULL);
    strcpy(x, y);
}

static void initializer(onnx_w *w, const char *name, int nd, const int64_t *dims, const float *v, int64_t n)
{
    kl_pb t = {0};
    for (int d = 0; d < nd; d++) kl_pb_int(&t, 1, dims[d]);
    kl_pb_int(&t, 2, ONNX_FLOAT);
    kl_pb_str(&t, 8, name);
    kl_pb_bytes(&t, 9, v, (size_t)n * sizeof(float)); /* raw_data: little-endian, as this host */
    kl_pb_msg(&w->g, 5, &t);
    kl_pb_free(&t);
}

/* The ctx's parameter or buffer "<layer>.<what>" as an initializer of that
 * name (into name, 128 bytes). */
static void param(onnx_w *w, const layer *li, const char *what, char *name)
{
    snprintf(name, 128, "%s.%s", li->name, what);
    if (w->s != KL_OK) return;
    int i = kl_ctx_param_find(w->ctx, name);
    const char *nm;
    kl_dtype dt;
    int nd, tr;
    int64_t ne[KL_MAX_DIMS], n = 1;
    w->s = i < 0 ? kl_fail(KL_EINVAL, "ONNX export: the model's parameter '%s' is not in the checkpoint", name)
                 : kl_ctx_param_info(w->ctx, i, &nm, &dt, &nd, ne, &tr);
    if (w->s != KL_OK) return;
    for (int d = 0; d < nd; d++) n *= ne[d];
    float *v = dt == KL_F32 ? kl_malloc((size_t)n * sizeof *v) : NULL;
    w->s = dt != KL_F32 ? kl_fail(KL_EINVAL, "ONNX export: parameter '%s' is %s, expected f32", name, kl_dtype_name(dt))
           : !v ? KL_ENOMEM
                : kl_ctx_param_get(w->ctx, i, v, (size_t)n * sizeof *v);
    if (w->s == KL_OK) initializer(w, name, nd, ne, v, n);
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

/* Layer li on value x (x updated to its output). */
static void layer_out(onnx_w *w, const layer *li, char *x)
{
    char p[3][128], y[16];
    kl_pb a = {0};
    switch (li->kind) {
    case L_LINEAR:
        if (li->in_ndim != 1 || li->tie[0]) {
            w->s = kl_fail(KL_EUNSUPPORTED, "ONNX export: layer '%s' (linear) %s; only linear layers on flat "
                           "features export", li->name, li->tie[0] ? "shares its weight with an embedding" :
                           "takes more than one dim per sample");
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
    case L_RESIDUAL: {
        char in[16], sum[16];
        strcpy(in, x);
        layers_out(w, li->body, li->n_body, x);
        binary(w, "Add", in, x, sum);
        strcpy(x, sum);
        return;
    }
    default:
        w->s = kl_fail(KL_EUNSUPPORTED, "ONNX export: layer '%s' (%s) does not export yet (feed-forward and "
                       "convolutional layers do)", li->name, kl_layer_kind_names[li->kind]);
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

/* A ValueInfoProto: name, float tensor [batch, dims...] with a symbolic batch. */
static void value_info(kl_pb *g, int field, const char *name, int nd, const int64_t *dims)
{
    kl_pb vi = {0}, ty = {0}, tt = {0}, sh = {0}, d = {0};
    kl_pb_str(&d, 2, "batch"); /* dim_param */
    kl_pb_msg(&sh, 1, &d);
    for (int i = 0; i < nd; i++) {
        kl_pb_free(&d);
        kl_pb_int(&d, 1, dims[i]); /* dim_value */
        kl_pb_msg(&sh, 1, &d);
    }
    kl_pb_int(&tt, 1, ONNX_FLOAT);
    kl_pb_msg(&tt, 2, &sh);
    kl_pb_msg(&ty, 1, &tt); /* TypeProto.tensor_type */
    kl_pb_str(&vi, 1, name);
    kl_pb_msg(&vi, 2, &ty);
    kl_pb_msg(g, field, &vi);
    kl_pb_free(&vi), kl_pb_free(&ty), kl_pb_free(&tt), kl_pb_free(&sh), kl_pb_free(&d);
}

kl_status kl_model_export_onnx(const kl_model *m, kl_ctx *ctx, const kl_onnx_opts *o, const char *path)
{
    if (!m || !ctx || !path) return kl_fail(KL_EMISUSE, "kl_model_export_onnx: %s is NULL", !m ? "model" : !ctx ? "ctx" : "path");
    if (m->tokens) return kl_fail(KL_EUNSUPPORTED, "ONNX export: token models (embeddings, recurrent and attention "
                                  "layers) do not export yet; feed-forward and convolutional models do");
    onnx_w w = {.ctx = ctx};
    char x[16] = "input";
    if (o && o->normalize) { /* the model takes raw samples, as kiln predict does */
        with_scalar(&w, "Sub", x, (float)o->mean);
        with_scalar(&w, "Div", x, (float)(o->std ? o->std : 1));
    }
    layers_out(&w, m->layers, m->n, x);
    kl_pb graph = {0}, model = {0}, opset = {0};
    if (w.s == KL_OK) {
        node(&w, "Identity", (const char *const[]){x}, 1, "logits", NULL);
        kl_pb_raw(&graph, w.g.p, w.g.n);
        kl_pb_str(&graph, 2, "kiln");
        value_info(&graph, 11, "input", m->in_ndim, m->in);
        int64_t out = kl_model_outputs(m);
        value_info(&graph, 12, "logits", 1, &out);
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
