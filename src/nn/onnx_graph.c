/* The ONNX graph writer's helpers (onnx_graph.h). */
#include "nn/onnx_graph.h"
#include "core/error.h"

#include <stdio.h>
#include <string.h>

enum { ATTR_FLOAT = 1, ATTR_INT = 2, ATTR_INTS = 7 }; /* AttributeProto.AttributeType */

/* A fresh value name into out (16 bytes). */
void kl_ox_fresh(onnx_w *w, char *out) { snprintf(out, 16, "t%d", ++w->next); }

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

void kl_ox_attr_int(kl_pb *n, const char *name, int64_t v)
{
    kl_pb a = attr_begin(name);
    kl_pb_int(&a, 3, v);
    attr_end(n, &a, ATTR_INT);
}

void kl_ox_attr_float(kl_pb *n, const char *name, float v)
{
    kl_pb a = attr_begin(name);
    kl_pb_float(&a, 2, v);
    attr_end(n, &a, ATTR_FLOAT);
}

void kl_ox_attr_ints(kl_pb *n, const char *name, const int64_t *v, int count)
{
    kl_pb a = attr_begin(name);
    for (int i = 0; i < count; i++) kl_pb_int(&a, 8, v[i]);
    attr_end(n, &a, ATTR_INTS);
}

/* A NodeProto op(in...) -> outs, with attributes already encoded in attrs
 * (may be NULL), appended to the graph. */
void kl_ox_node_n(onnx_w *w, const char *op, const char *const *in, int nin, const char *const *outs, int nout,
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

void kl_ox_node(onnx_w *w, const char *op, const char *const *in, int nin, const char *out, const kl_pb *attrs)
{
    kl_ox_node_n(w, op, in, nin, (const char *const[]){out}, 1, attrs);
}

/* x -> op(x [, b]) into a fresh name, x updated to it */
void kl_ox_unary(onnx_w *w, const char *op, char *x)
{
    char y[16];
    kl_ox_fresh(w, y);
    kl_ox_node(w, op, (const char *const[]){x}, 1, y, NULL);
    strcpy(x, y);
}

/* A TensorProto initializer of n elements of elem_type (4-byte floats or
 * 8-byte int64) from v. */
static void kl_ox_tensor_init(onnx_w *w, const char *name, int elem_type, int nd, const int64_t *dims, const void *v, int64_t n)
{
    kl_pb t = {0};
    for (int d = 0; d < nd; d++) kl_pb_int(&t, 1, dims[d]);
    kl_pb_int(&t, 2, elem_type);
    kl_pb_str(&t, 8, name);
    size_t bytes = (size_t)n * (elem_type == ONNX_INT64 ? 8 : 4);
    if (w->ext && bytes >= KL_OX_EXTERNAL_MIN) { /* external data: location, offset, length; data_location EXTERNAL */
        while (w->ext->n % 64) kl_pb_raw(w->ext, "", 1); /* aligned, for runtimes that map the file */
        char off[24], len[24];
        snprintf(off, sizeof off, "%zu", w->ext->n);
        snprintf(len, sizeof len, "%zu", bytes);
        const char *kv[3][2] = {{"location", w->ext_name}, {"offset", off}, {"length", len}};
        for (int k = 0; k < 3; k++) {
            kl_pb e = {0};
            kl_pb_str(&e, 1, kv[k][0]);
            kl_pb_str(&e, 2, kv[k][1]);
            kl_pb_msg(&t, 13, &e);
            kl_pb_free(&e);
        }
        kl_pb_int(&t, 14, 1);
        kl_pb_raw(w->ext, v, bytes);
    } else {
        kl_pb_bytes(&t, 9, v, bytes); /* raw_data: little-endian, as this host */
    }
    kl_pb_msg(&w->g, 5, &t);
    kl_pb_free(&t);
}
void kl_ox_initializer(onnx_w *w, const char *name, int nd, const int64_t *dims, const float *v, int64_t n)
{
    kl_ox_tensor_init(w, name, ONNX_FLOAT, nd, dims, v, n);
}
/* a 1-D int64 constant (shapes, split sizes, slice bounds) into name (16 bytes) */
void kl_ox_ints_const(onnx_w *w, const int64_t *v, int64_t n, char *name)
{
    snprintf(name, 16, "c%d", ++w->nconst);
    kl_ox_tensor_init(w, name, ONNX_INT64, 1, &n, v, n);
}

/* The ctx's parameter or buffer "<layer>.<what>" as an initializer of that
 * name (into name, 128 bytes). */
/* The ctx's f32 parameter or buffer called name: its values (kl_malloc'd;
 * NULL with w->s set on failure) and dims. */
float *kl_ox_fetch(onnx_w *w, const char *name, int *nd, int64_t *ne, int64_t *n)
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
void kl_ox_param(onnx_w *w, const layer *li, const char *what, char *name)
{
    snprintf(name, 128, "%s.%s", li->name, what);
    int nd;
    int64_t ne[KL_MAX_DIMS], n;
    float *v = kl_ox_fetch(w, name, &nd, ne, &n);
    if (v) kl_ox_initializer(w, name, nd, ne, v, n);
    kl_free(v);
}

/* A scalar constant (shape [], broadcast by the ops) into name (16 bytes). */
static void kl_ox_scalar(onnx_w *w, float v, char *name)
{
    snprintf(name, 16, "c%d", ++w->nconst);
    kl_ox_initializer(w, name, 0, NULL, &v, 1);
}

/* x op= c for a scalar c */
void kl_ox_with_scalar(onnx_w *w, const char *op, char *x, float c)
{
    char k[16], y[16];
    kl_ox_scalar(w, c, k);
    kl_ox_fresh(w, y);
    kl_ox_node(w, op, (const char *const[]){x, k}, 2, y, NULL);
    strcpy(x, y);
}

void kl_ox_binary(onnx_w *w, const char *op, const char *a, const char *b, char *out)
{
    kl_ox_fresh(w, out);
    kl_ox_node(w, op, (const char *const[]){a, b}, 2, out, NULL);
}

/* kiln's GELU: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
void kl_ox_gelu(onnx_w *w, char *x)
{
    char x3[16], t[16], y[16];
    kl_ox_binary(w, "Mul", x, x, x3);
    kl_ox_binary(w, "Mul", x3, x, t);
    strcpy(x3, t);
    kl_ox_with_scalar(w, "Mul", x3, 0.044715f);
    kl_ox_binary(w, "Add", x, x3, t);
    kl_ox_with_scalar(w, "Mul", t, 0.7978845608028654f);
    kl_ox_unary(w, "Tanh", t);
    kl_ox_with_scalar(w, "Add", t, 1.0f);
    kl_ox_binary(w, "Mul", x, t, y);
    kl_ox_with_scalar(w, "Mul", y, 0.5f);
    strcpy(x, y);
}

/* out (a fresh name) = Transpose(in, perm) */
void kl_ox_transpose_to(onnx_w *w, const char *in, const int64_t *perm, int n, char *out)
{
    kl_pb a = {0};
    kl_ox_attr_ints(&a, "perm", perm, n);
    kl_ox_fresh(w, out);
    kl_ox_node(w, "Transpose", (const char *const[]){in}, 1, out, &a);
    kl_pb_free(&a);
}
void kl_ox_transpose(onnx_w *w, char *x, const int64_t *perm, int n)
{
    char y[16];
    kl_ox_transpose_to(w, x, perm, n, y);
    strcpy(x, y);
}

/* x -> Reshape(x, shape) (0: the input's dim) */
void kl_ox_reshape(onnx_w *w, char *x, const int64_t *shape, int n)
{
    char c[16], y[16];
    kl_ox_ints_const(w, shape, n, c);
    kl_ox_binary(w, "Reshape", x, c, y);
    strcpy(x, y);
}

/* x -> x W^T (+ b) for x of any rank: MatMul with W [out, in] transposed
 * by a node, so the initializer keeps the parameter's layout and name */
void kl_ox_matmul_t(onnx_w *w, char *x, const char *wname, const char *bname)
{
    char wt[16], y[16];
    kl_ox_transpose_to(w, wname, (const int64_t[]){1, 0}, 2, wt);
    kl_ox_binary(w, "MatMul", x, wt, y);
    if (bname) {
        char z[16];
        kl_ox_binary(w, "Add", y, bname, z);
        strcpy(y, z);
    }
    strcpy(x, y);
}
