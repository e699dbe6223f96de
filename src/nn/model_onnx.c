/* ONNX export of a config-built model (kl_model_export_onnx): one node (or a
 * few; a transformer block is about thirty) per layer, the parameters as
 * initializers under their PyTorch names, through the graph writer of
 * onnx_graph.h (the sequence layers: model_onnx_seq.c) and the protobuf
 * encoder of io/pb.h. Opset 17 (LayerNormalization
 * is there); GELU is kiln's tanh form spelled out in Mul/Add/Tanh, so any
 * runtime of that opset computes what kiln does. Inference only: dropout
 * is left out and batchnorm uses its running statistics. Field numbers are
 * onnx.proto's (ModelProto, GraphProto, NodeProto, AttributeProto,
 * TensorProto, ValueInfoProto, TypeProto). */
#include "nn/onnx_graph.h"
#include "core/error.h"
#include "io/fileio.h"

#include <stdio.h>
#include <string.h>

#ifndef KILN_VERSION
#define KILN_VERSION "unknown"
#endif
#define ONNX_OPSET 17
#define ONNX_IR 8

static void window_attrs(kl_pb *a, const layer *li, int dilation)
{
    int64_t k[2] = {li->kernel[0], li->kernel[1]}, st[2] = {li->stride[0], li->stride[1]};
    int64_t pads[4] = {li->pad[0], li->pad[1], li->pad[0], li->pad[1]}, dil[2] = {li->dil[0], li->dil[1]};
    kl_ox_attr_ints(a, "kernel_shape", k, 2);
    kl_ox_attr_ints(a, "strides", st, 2);
    kl_ox_attr_ints(a, "pads", pads, 4);
    if (dilation) kl_ox_attr_ints(a, "dilations", dil, 2);
}

static void layers_out(onnx_w *w, const layer *ls, int n, char *x);

/* Layer li on value x (x updated to its output). */
static void layer_out(onnx_w *w, const layer *li, char *x)
{
    char p[3][128], y[16];
    kl_pb a = {0};
    switch (li->kind) {
    case L_LINEAR:
        if (li->in_ndim != 1 || li->tie[0]) { /* on [B, T, F], or tied to an embedding's (exported already) */
            if (!li->tie[0]) kl_ox_param(w, li, "weight", p[0]);
            if (li->bias) kl_ox_param(w, li, "bias", p[1]);
            kl_ox_matmul_t(w, x, li->tie[0] ? li->tie : p[0], li->bias ? p[1] : NULL);
            return;
        }
        kl_ox_param(w, li, "weight", p[0]);
        if (li->bias) kl_ox_param(w, li, "bias", p[1]);
        kl_ox_attr_int(&a, "transB", 1);
        kl_ox_fresh(w, y);
        kl_ox_node(w, "Gemm", (const char *const[]){x, p[0], p[1]}, li->bias ? 3 : 2, y, &a);
        break;
    case L_CONV2D:
        kl_ox_param(w, li, "weight", p[0]);
        if (li->bias) kl_ox_param(w, li, "bias", p[1]);
        window_attrs(&a, li, 1);
        kl_ox_attr_int(&a, "group", li->groups);
        kl_ox_fresh(w, y);
        kl_ox_node(w, "Conv", (const char *const[]){x, p[0], p[1]}, li->bias ? 3 : 2, y, &a);
        break;
    case L_MAXPOOL2D:
    case L_AVGPOOL2D:
        window_attrs(&a, li, 0);
        if (li->kind == L_AVGPOOL2D) kl_ox_attr_int(&a, "count_include_pad", 1); /* kiln divides by KH*KW, as PyTorch */
        kl_ox_fresh(w, y);
        kl_ox_node(w, li->kind == L_MAXPOOL2D ? "MaxPool" : "AveragePool", (const char *const[]){x}, 1, y, &a);
        break;
    case L_GLOBAL_AVGPOOL:
        kl_ox_unary(w, "GlobalAveragePool", x);
        if (li->out_ndim == 1) kl_ox_unary(w, "Flatten", x); /* kiln's [B, C] */
        return;
    case L_BATCHNORM:
        kl_ox_param(w, li, "weight", p[0]);
        kl_ox_param(w, li, "bias", p[1]);
        kl_ox_param(w, li, "running_mean", p[2]);
        {
            char rv[128];
            kl_ox_param(w, li, "running_var", rv);
            kl_ox_attr_float(&a, "epsilon", (float)li->eps);
            kl_ox_fresh(w, y);
            kl_ox_node(w, "BatchNormalization", (const char *const[]){x, p[0], p[1], p[2], rv}, 5, y, &a);
        }
        break;
    case L_LAYERNORM:
        kl_ox_param(w, li, "weight", p[0]);
        if (li->bias) kl_ox_param(w, li, "bias", p[1]);
        kl_ox_attr_int(&a, "axis", -1);
        kl_ox_attr_float(&a, "epsilon", (float)li->eps);
        kl_ox_fresh(w, y);
        kl_ox_node(w, "LayerNormalization", (const char *const[]){x, p[0], p[1]}, li->bias ? 3 : 2, y, &a);
        break;
    case L_DROPOUT: return; /* identity at inference */
    case L_RELU: kl_ox_unary(w, "Relu", x); return;
    case L_TANH: kl_ox_unary(w, "Tanh", x); return;
    case L_SIGMOID: kl_ox_unary(w, "Sigmoid", x); return;
    case L_GELU: kl_ox_gelu(w, x); return;
    case L_FLATTEN:
        kl_ox_attr_int(&a, "axis", 1);
        kl_ox_fresh(w, y);
        kl_ox_node(w, "Flatten", (const char *const[]){x}, 1, y, &a);
        break;
    case L_EMBEDDING:
        kl_ox_param(w, li, "weight", p[0]);
        kl_ox_binary(w, "Gather", p[0], x, y);
        break;
    case L_POS_EMBEDDING:
        kl_ox_param(w, li, "weight", p[0]);
        {
            char ps[16];
            kl_ox_slice_to_len(w, p[0], 1, ps);
            kl_ox_binary(w, "Add", x, ps, y);
        }
        break;
    case L_TRANSFORMER_BLOCK: kl_ox_block_out(w, li, x); return;
    case L_LSTM:
    case L_GRU: kl_ox_rnn_out(w, li, x); return;
    case L_RESIDUAL: {
        char in[16], sum[16];
        strcpy(in, x);
        layers_out(w, li->body, li->n_body, x);
        kl_ox_binary(w, "Add", in, x, sum);
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

/* Sequence models: w->seq = [T] and w->seq2 = [T, T] of the input's length
 * T (its axis 1: [batch, seq] tokens or [batch, T, D] samples). */
static void seq_len(onnx_w *w)
{
    char shp[16], st[16], en[16], ax[16];
    kl_ox_fresh(w, shp);
    kl_ox_node(w, "Shape", (const char *const[]){"input"}, 1, shp, NULL);
    kl_ox_ints_const(w, (const int64_t[]){1}, 1, st);
    kl_ox_ints_const(w, (const int64_t[]){2}, 1, en);
    kl_ox_ints_const(w, (const int64_t[]){0}, 1, ax);
    kl_ox_fresh(w, w->seq);
    kl_ox_node(w, "Slice", (const char *const[]){shp, st, en, ax}, 4, w->seq, NULL);
    kl_pb a = {0};
    kl_ox_attr_int(&a, "axis", 0);
    kl_ox_fresh(w, w->seq2);
    kl_ox_node(w, "Concat", (const char *const[]){w->seq, w->seq}, 2, w->seq2, &a);
    kl_pb_free(&a);
}

/* protobuf parses messages up to 2^31 - 1 bytes; past it (less a margin
 * for the nodes) the initializers go to external data */
#define ONNX_PROTO_MAX 2147483647LL
#define ONNX_INLINE_MAX (ONNX_PROTO_MAX - (64LL << 20))

/* The bytes of the model's initializers, near enough: its f32 parameters
 * and buffers and, with attention, the causal mask. */
static int64_t weight_bytes(const kl_model *m, kl_ctx *ctx, int64_t T)
{
    int64_t b = m->windowed ? 4 * T * T : 0;
    for (int i = 0; i < kl_ctx_param_count(ctx); i++) {
        const char *nm;
        kl_dtype dt;
        int nd, tr;
        int64_t ne[KL_MAX_DIMS], n = 1;
        if (kl_ctx_param_info(ctx, i, &nm, &dt, &nd, ne, &tr) != KL_OK) continue;
        for (int d = 0; d < nd; d++) n *= ne[d];
        b += 4 * n;
    }
    return b;
}

/* Encodes the model: the GraphProto's nodes and initializers in w->g (and
 * with w->ext the large initializers' bytes there), the rest of the file in
 * head (ModelProto up to the graph's length), tail (the graph's name and
 * inputs and outputs) and end (the opset), so the file is head, w->g, tail,
 * end without copying the weights. */
static kl_status encode(const kl_model *m, const kl_onnx_opts *o, onnx_w *w, kl_pb *head, kl_pb *tail, kl_pb *end)
{
    char x[16] = "input";
    if (w->tokens) seq_len(w);
    if (!m->tokens && o && o->normalize) { /* the model takes raw samples, as kiln predict does */
        kl_ox_with_scalar(w, "Sub", x, (float)o->mean);
        kl_ox_with_scalar(w, "Div", x, (float)(o->std ? o->std : 1));
    }
    layers_out(w, m->layers, m->n, x);
    if (w->s != KL_OK) return w->s;
    kl_ox_node(w, "Identity", (const char *const[]){x}, 1, "logits", NULL);
    kl_pb_str(tail, 2, "kiln");
    int64_t out = kl_model_outputs(m);
    static const char *const sym[2] = {"batch", "seq"};
    if (m->tokens) { /* ids i32 [batch, seq] -> logits [batch, seq, vocab] */
        value_info(tail, 11, "input", ONNX_INT32, 2, sym, 0, NULL);
        value_info(tail, 12, "logits", ONNX_FLOAT, 2, sym, 1, &out);
    } else {
        value_info(tail, 11, "input", ONNX_FLOAT, 1, sym, m->in_ndim, m->in);
        value_info(tail, 12, "logits", ONNX_FLOAT, 1, sym, 1, &out);
    }
    kl_pb_int(head, 1, ONNX_IR);
    kl_pb_str(head, 2, "kiln");
    kl_pb_str(head, 3, KILN_VERSION);
    kl_pb_tag(head, 7, 2); /* graph: length-delimited */
    kl_pb_varint(head, w->g.n + tail->n);
    kl_pb opset = {0};
    kl_pb_str(&opset, 1, "");
    kl_pb_int(&opset, 2, ONNX_OPSET);
    kl_pb_msg(end, 8, &opset);
    kl_pb_free(&opset);
    if (w->g.oom || head->oom || tail->oom || end->oom || (w->ext && w->ext->oom))
        return w->s = kl_fail(KL_ENOMEM, "ONNX export: out of memory encoding the model");
    return KL_OK;
}

kl_status kl_model_export_onnx(const kl_model *m, kl_ctx *ctx, const kl_onnx_opts *o, const char *path)
{
    if (!m || !ctx || !path) return kl_fail(KL_EMISUSE, "kl_model_export_onnx: %s is NULL", !m ? "model" : !ctx ? "ctx" : "path");
    /* positions and attention need the length: a token model's context, or
     * the T of a [T, D] input */
    int64_t T = m->tokens ? m->tokens : m->windowed && m->in_ndim == 2 ? m->in[0] : 0;
    if (m->windowed && !T)
        return kl_fail(KL_EUNSUPPORTED, "ONNX export: the model's positions or attention need [T, D] samples or tokens, "
                       "got input of %d dimensions", m->in_ndim);
    char data_path[4200], data_name[256];
    snprintf(data_path, sizeof data_path, "%s.data", path);
    const char *base = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    snprintf(data_name, sizeof data_name, "%.250s.data", base); /* relative to the model's folder */
    int64_t wb = weight_bytes(m, ctx, T);
    int external = (o && o->external) || wb > ONNX_INLINE_MAX;
    kl_status s;
    for (;;) {
        kl_pb ext = {0}, head = {0}, tail = {0}, end = {0};
        onnx_w w = {.ctx = ctx, .tokens = T, .ext = external ? &ext : NULL, .ext_name = data_name};
        /* the weights' room at once (+ alignment or the nodes) */
        kl_pb_reserve(external ? &ext : &w.g, (size_t)wb + (64 << 10) * (size_t)(kl_ctx_param_count(ctx) + 16));
        s = encode(m, o, &w, &head, &tail, &end);
        int64_t bytes = (int64_t)(head.n + w.g.n + tail.n + end.n);
        int again = s == KL_OK && !external && bytes > ONNX_PROTO_MAX; /* the estimate fell short */
        if (s == KL_OK && !again && external && bytes > ONNX_PROTO_MAX)
            s = kl_fail(KL_EUNSUPPORTED, "ONNX export: the model's graph alone is %lld bytes, past protobuf's 2 GiB",
                        (long long)bytes);
        if (s == KL_OK && !again) {
            /* both files written before either is renamed in, so a failed
             * export leaves an old model and its data as they were */
            kl_staged_file f[2];
            int nf = 0;
            const void *dc[1] = {ext.p};
            size_t dn[1] = {ext.n};
            if (external && (s = kl_file_stage(&f[nf], data_path, dc, dn, 1)) == KL_OK) nf++;
            const void *chunks[4] = {head.p, w.g.p, tail.p, end.p};
            size_t sizes[4] = {head.n, w.g.n, tail.n, end.n};
            if (s == KL_OK && (s = kl_file_stage(&f[nf], path, chunks, sizes, 4)) == KL_OK) nf++;
            if (s == KL_OK) s = kl_files_publish(f, nf);
            else if (nf) kl_file_discard(&f[0]);
        }
        kl_pb_free(&w.g), kl_pb_free(&ext), kl_pb_free(&head), kl_pb_free(&tail), kl_pb_free(&end);
        if (!again) break;
        external = 1;
    }
    return s;
}
