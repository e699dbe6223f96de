/* Graph building: nodes, inputs, parameters, tensor access. */
#include "core/graph.h"
#include "backends/backend.h"

#include <stdio.h>

kl_status kl_graph_new(kl_ctx *ctx, kl_graph **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "kl_graph_new: out is NULL");
    *out = NULL;
    if (!ctx) return kl_fail(KL_EMISUSE, "kl_graph_new: ctx is NULL");
    kl_graph *g = kl_calloc(1, sizeof *g);
    if (!g) return KL_ENOMEM;
    g->ctx = ctx;
    g->capture = 1;
    ctx->n_graphs++;
    *out = g;
    return KL_OK;
}

void kl_graph_free(kl_graph *g)
{
    if (!g) return;
    /* work still queued may write the read-back rings (pinned host memory)
     * or read the arena: let it finish first (always: g->runs, which the
     * user may set back, does not say whether anything was issued). A
     * failed sync (a device fault) must not replace the message that led here */
    char keep[2048];
    snprintf(keep, sizeof keep, "%s", kl_last_error());
    if (g->ctx->be->sync() != KL_OK) kl_error_restore(keep);
    for (int i = 0; i < g->n_nodes; i++) {
        if (kl_ops[g->nodes[i]->op]->release) kl_ops[g->nodes[i]->op]->release(g->nodes[i]);
        kl_free(g->nodes[i]);
    }
    kl_free(g->nodes);
    kl_free(g->grad_written);
    kl_free(g->prof);
    kl_readback_free_all(g);
    if (g->captured) g->ctx->be->capture_free(g->captured);
    kl_free(g->run_host);
    g->ctx->be->free(g->run_dev);
    g->ctx->be->free(g->arena);
    kl_ctx *ctx = g->ctx;
    kl_free(g);
    if (--ctx->n_graphs == 0 && ctx->closing) kl_ctx_free(ctx);
}

kl_status kl_check_args(kl_graph *g, const char *op, int n, kl_tensor *const *ts)
{
    if (!g) return kl_fail(KL_EMISUSE, "%s: graph is NULL", op);
    for (int i = 0; i < n; i++) {
        if (!ts[i]) return kl_fail(KL_EMISUSE, "%s: input %d is NULL", op, i);
        if (ts[i]->g != g) return kl_fail(KL_EMISUSE, "%s: input %d ('%s') belongs to another graph", op, i, ts[i]->name);
    }
    return KL_OK;
}

static kl_status push_node(kl_graph *g, kl_tensor *t)
{
    if (g->n_nodes == g->cap_nodes) {
        int ncap = g->cap_nodes ? 2 * g->cap_nodes : 64;
        kl_tensor **nn = kl_realloc(g->nodes, (size_t)ncap * sizeof *nn);
        if (!nn) return KL_ENOMEM;
        g->nodes = nn;
        g->cap_nodes = ncap;
    }
    t->id = g->n_nodes;
    g->nodes[g->n_nodes++] = t;
    g->plan.valid = false;
    kl_free(g->prof); /* per-node times no longer line up */
    g->prof = NULL;
    return KL_OK;
}

kl_status kl_node_new(kl_graph *g, kl_op_id op, int n_src, kl_tensor *const *src, const void *attr,
                      size_t attr_size, kl_tensor **out)
{
    *out = NULL;
    KL_TRY(kl_check_args(g, kl_ops[op]->name, n_src, src));
    if (n_src > KL_MAX_SRC) return kl_fail(KL_EINVAL, "%s: %d inputs, at most %d", kl_ops[op]->name, n_src, KL_MAX_SRC);
    if (attr_size > KL_ATTR_BYTES) return kl_fail(KL_EINTERNAL, "%s: attributes too large", kl_ops[op]->name);
    kl_tensor *t = kl_calloc(1, sizeof *t);
    if (!t) return KL_ENOMEM;
    t->g = g;
    t->op = op;
    t->n_src = n_src;
    t->base = t;
    t->slot = -1;
    for (int i = 0; i < n_src; i++) {
        t->src[i] = src[i];
        t->requires_grad |= src[i]->requires_grad;
    }
    if (attr_size) memcpy(t->attr, attr, attr_size);
    kl_status s = kl_ops[op]->shape ? kl_ops[op]->shape(t) : KL_OK;
    if (s == KL_OK && t->sk != KL_ST_VIEW && t->sk != KL_ST_NONE) kl_set_contiguous(t);
    if (s == KL_OK && t->ndim > KL_MAX_DIMS) s = kl_fail(KL_EINVAL, "%s: result has %d dims, at most %d", kl_ops[op]->name, t->ndim, KL_MAX_DIMS);
    if (s == KL_OK) s = push_node(g, t);
    if (s != KL_OK) {
        for (int i = 0; i < t->n_extra; i++) kl_free(t->extra[i]);
        kl_free(t);
        return s;
    }
    if (kl_ops[op]->retain) kl_ops[op]->retain(t); /* in the graph now: released with it */
    /* extras follow their producer in execution order */
    for (int i = 0; i < t->n_extra; i++) {
        s = push_node(g, t->extra[i]);
        if (s != KL_OK) return s; /* graph keeps what it has; freed with it */
    }
    if (!kl_is_float(t->dtype)) t->requires_grad = false;
    snprintf(t->name, sizeof t->name, "%s#%d", kl_ops[op]->name, t->id);
    *out = t;
    return KL_OK;
}

kl_status kl_node_add_extra(kl_tensor *t, kl_dtype dt, int ndim, const int64_t *ne, kl_tensor **out)
{
    if (t->n_extra == KL_MAX_EXTRA) return kl_fail(KL_EINTERNAL, "%s: too many outputs", kl_ops[t->op]->name);
    kl_tensor *e = kl_calloc(1, sizeof *e);
    if (!e) return KL_ENOMEM;
    e->g = t->g;
    e->op = KL_OP_extra;
    e->n_src = 1;
    e->src[0] = t;
    e->base = e;
    e->slot = -1;
    e->dtype = dt;
    e->ndim = ndim;
    memcpy(e->ne, ne, (size_t)ndim * sizeof *ne);
    kl_set_contiguous(e);
    e->requires_grad = t->requires_grad && kl_is_float(dt);
    snprintf(e->name, sizeof e->name, "%s.out%d", kl_ops[t->op]->name, t->n_extra + 1);
    t->extra[t->n_extra++] = e;
    *out = e;
    return KL_OK;
}

static kl_status check_dims(const char *what, const char *name, kl_dtype dt, int ndim, const int64_t *dims)
{
    if (!name || !*name) return kl_fail(KL_EINVAL, "%s: name is empty", what);
    if (ndim < 0 || ndim > KL_MAX_DIMS)
        return kl_fail(KL_EINVAL, "%s '%s': %d dims, expected 0..%d", what, name, ndim, KL_MAX_DIMS);
    if (ndim && !dims) return kl_fail(KL_EMISUSE, "%s '%s': dims is NULL", what, name);
    if (!kl_dtype_size(dt) || dt == KL_I64) return kl_fail(KL_EINVAL, "%s '%s': unsupported dtype %d", what, name, (int)dt);
    for (int i = 0; i < ndim; i++)
        if (dims[i] <= 0) {
            char sh[128];
            return kl_fail(KL_EINVAL, "%s '%s': dim %d is %lld in %s; dims must be positive", what, name, i,
                           (long long)dims[i], kl_shape_str(sh, sizeof sh, ndim, dims));
        }
    size_t bytes;
    if (!kl_shape_bytes(dt, ndim, dims, &bytes)) {
        char sh[128];
        return kl_fail(KL_EINVAL, "%s '%s': %s %s is too large (over 2^62 bytes)", what, name,
                       kl_shape_str(sh, sizeof sh, ndim, dims), kl_dtype_name(dt));
    }
    return KL_OK;
}

static kl_status leaf(kl_graph *g, kl_op_id op, const char *name, kl_dtype dt, int ndim, const int64_t *dims,
                      kl_tensor **out)
{
    kl_tensor *t = kl_calloc(1, sizeof *t);
    if (!t) return KL_ENOMEM;
    t->g = g;
    t->op = op;
    t->dtype = dt;
    t->ndim = ndim;
    if (ndim) memcpy(t->ne, dims, (size_t)ndim * sizeof *dims); /* a scalar may pass dims NULL */
    kl_set_contiguous(t);
    t->base = t;
    t->slot = -1;
    snprintf(t->name, sizeof t->name, "%s", name);
    kl_status s = push_node(g, t);
    if (s != KL_OK) {
        kl_free(t);
        return s;
    }
    *out = t;
    return KL_OK;
}

kl_status kl_input(kl_graph *g, const char *name, kl_dtype dt, int ndim, const int64_t *dims, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "kl_input: out is NULL");
    *out = NULL;
    if (!g) return kl_fail(KL_EMISUSE, "kl_input: graph is NULL");
    KL_TRY(check_dims("input", name, dt, ndim, dims));
    KL_TRY(leaf(g, KL_OP_input, name, dt, ndim, dims, out));
    (*out)->is_output = true; /* the caller writes it before the run: keep it whole */
    return KL_OK;
}

kl_status kl_external(kl_graph *g, const char *name, kl_dtype dt, int ndim, const int64_t *dims, void *data,
                      kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "kl_external: out is NULL");
    *out = NULL;
    if (!g) return kl_fail(KL_EMISUSE, "kl_external: graph is NULL");
    KL_TRY(check_dims("external", name, dt, ndim, dims));
    if (!data) return kl_fail(KL_EMISUSE, "external '%s': data is NULL", name);
    if ((uintptr_t)data % kl_dtype_size(dt))
        return kl_fail(KL_EINVAL, "external '%s': data %p is not aligned to its %s elements", name, data, kl_dtype_name(dt));
    KL_TRY(leaf(g, KL_OP_input, name, dt, ndim, dims, out)); /* no kernel, not in the arena */
    (*out)->sk = KL_ST_EXTERNAL;
    (*out)->ext = data;
    (*out)->is_output = true;
    return KL_OK;
}

static kl_status param_or_buffer(kl_graph *g, const char *name, kl_dtype dt, int ndim, const int64_t *dims,
                                 const kl_init *init, bool trainable, kl_tensor **out)
{
    const char *what = trainable ? "param" : "buffer";
    if (!out) return kl_fail(KL_EMISUSE, "kl_%s: out is NULL", what);
    *out = NULL;
    if (!g) return kl_fail(KL_EMISUSE, "kl_%s: graph is NULL", what);
    KL_TRY(check_dims(what, name, dt, ndim, dims));
    kl_ctx *c = g->ctx;
    int slot = kl_ctx_param_find(c, name);
    if (slot >= 0) {
        kl_param_slot *s = &c->slots[slot];
        bool same = s->dtype == dt && s->ndim == ndim && s->trainable == trainable;
        for (int i = 0; same && i < ndim; i++) same = s->ne[i] == dims[i];
        if (!same) {
            char a[128], b[128];
            return kl_fail(KL_EINVAL, "%s '%s': exists as %s %s %s, asked for %s %s %s", what, name,
                           s->trainable ? "param" : "buffer", kl_shape_str(a, sizeof a, s->ndim, s->ne),
                           kl_dtype_name(s->dtype), what, kl_shape_str(b, sizeof b, ndim, dims), kl_dtype_name(dt));
        }
    } else {
        KL_TRY(kl_ctx_slot_new(c, name, dt, ndim, dims, trainable, init, &slot));
    }
    KL_TRY(leaf(g, KL_OP_param, name, dt, ndim, dims, out));
    (*out)->sk = trainable ? KL_ST_PARAM : KL_ST_BUFFER;
    (*out)->slot = slot;
    (*out)->requires_grad = trainable;
    return KL_OK;
}

kl_status kl_param(kl_graph *g, const char *name, kl_dtype dt, int ndim, const int64_t *dims, const kl_init *init,
                   kl_tensor **out)
{
    return param_or_buffer(g, name, dt, ndim, dims, init, true, out);
}

kl_status kl_buffer(kl_graph *g, const char *name, kl_dtype dt, int ndim, const int64_t *dims, const kl_init *init,
                    kl_tensor **out)
{
    return param_or_buffer(g, name, dt, ndim, dims, init, false, out);
}

kl_status kl_output(kl_graph *g, kl_tensor *t)
{
    KL_TRY(kl_check_args(g, "kl_output", 1, &t));
    t->is_output = true;
    t->base->is_output = true;
    g->plan.valid = false;
    return KL_OK;
}

kl_status kl_fill(kl_graph *g, kl_dtype dt, int ndim, const int64_t *ne, double value, kl_tensor **out)
{
    struct { kl_dtype dt; int ndim; int64_t ne[KL_MAX_DIMS]; double v; } a = {dt, ndim, {0}, value};
    memcpy(a.ne, ne, (size_t)ndim * sizeof *ne);
    return kl_node_new(g, KL_OP_fill, 0, NULL, &a, sizeof a, out);
}

/* ---- tensor access ---- */

static kl_status storage_ptr(const kl_tensor *t, bool writing, unsigned char **p)
{
    kl_graph *g = t->g;
    const kl_tensor *b = t->base;
    if (!kl_is_contiguous(t))
        return kl_fail(KL_EINVAL, "tensor '%s' %s is a strided view; use kl_contiguous first", t->name, kl_desc(t));
    size_t es = kl_dtype_size(t->dtype);
    switch (b->sk) {
    case KL_ST_PARAM:
    case KL_ST_BUFFER:
        *p = kl_slot_data(g->ctx, b->slot) + t->offs * es;
        return KL_OK;
    case KL_ST_GRAD:
        if (writing) break;
        *p = kl_slot_grad(g->ctx, b->slot) + t->offs * es;
        return KL_OK;
    case KL_ST_EXTERNAL:
        *p = (unsigned char *)b->ext + t->offs * es;
        return KL_OK;
    case KL_ST_ARENA:
        if (writing && b->op != KL_OP_input) break;
        if (!g->plan.valid || !g->arena)
            return kl_fail(KL_EMISUSE, "tensor '%s': the graph has not been planned yet (call kl_graph_plan or kl_graph_run)", t->name);
        if (!writing && !b->is_output && !g->plan.no_reuse)
            return kl_fail(KL_EMISUSE, "tensor '%s' is an intermediate whose memory is reused; mark it with kl_output() before running", t->name);
        /* an input holds what kl_tensor_set wrote (kept across plans); the
         * rest of the arena only what a run of this plan computed */
        if (!writing && b->op != KL_OP_input && g->ran_plan != g->plan.id)
            return kl_fail(KL_EMISUSE, "tensor '%s': the graph has not run since it was planned (call kl_graph_run first)", t->name);
        *p = g->arena + b->off + t->offs * es;
        return KL_OK;
    default:
        break;
    }
    return kl_fail(KL_EINVAL, "tensor '%s' (%s) cannot be %s", t->name, kl_ops[t->op]->name,
                   writing ? "set: only inputs, parameters and buffers can" : "read");
}

kl_status kl_tensor_set(kl_tensor *t, const void *src, size_t bytes)
{
    if (!t || !src) return kl_fail(KL_EMISUSE, "kl_tensor_set: %s is NULL", t ? "src" : "tensor");
    if (bytes != kl_nbytes(t))
        return kl_fail(KL_EINVAL, "kl_tensor_set: tensor '%s' %s holds %zu bytes, got %zu", t->name, kl_desc(t),
                       kl_nbytes(t), bytes);
    if (t->base->sk == KL_ST_ARENA && !t->g->plan.valid) KL_TRY(kl_graph_plan(t->g, NULL));
    unsigned char *p;
    KL_TRY(storage_ptr(t, true, &p));
    return t->g->ctx->be->h2d(p, src, bytes);
}

kl_status kl_tensor_get(const kl_tensor *t, void *dst, size_t bytes)
{
    if (!t || !dst) return kl_fail(KL_EMISUSE, "kl_tensor_get: %s is NULL", t ? "dst" : "tensor");
    if (bytes != kl_nbytes(t))
        return kl_fail(KL_EINVAL, "kl_tensor_get: tensor '%s' %s holds %zu bytes, got %zu", t->name, kl_desc(t),
                       kl_nbytes(t), bytes);
    unsigned char *p;
    KL_TRY(storage_ptr(t, false, &p));
    return t->g->ctx->be->d2h(dst, p, bytes);
}

int kl_tensor_ndim(const kl_tensor *t) { return t ? t->ndim : 0; }
int64_t kl_tensor_numel(const kl_tensor *t) { return t ? kl_numel(t) : 0; }
kl_dtype kl_tensor_dtype(const kl_tensor *t) { return t ? t->dtype : KL_F32; }
const char *kl_tensor_name(const kl_tensor *t) { return t ? t->name : ""; }

int64_t kl_tensor_dim(const kl_tensor *t, int axis)
{
    if (!t) return 0;
    int a = axis < 0 ? axis + t->ndim : axis;
    return a >= 0 && a < t->ndim ? t->ne[a] : 0;
}

kl_status kl_tensor_set_name(kl_tensor *t, const char *name)
{
    if (!t || !name) return kl_fail(KL_EMISUSE, "kl_tensor_set_name: null argument");
    snprintf(t->name, sizeof t->name, "%s", name);
    return KL_OK;
}

kl_status kl_graph_stats_get(const kl_graph *g, kl_graph_stats *out)
{
    if (!g || !out) return kl_fail(KL_EMISUSE, "kl_graph_stats_get: null argument");
    *out = (kl_graph_stats){.nodes = g->n_nodes,
                            .arena_bytes = g->plan.arena_bytes,
                            .tensor_bytes = g->plan.tensor_bytes,
                            .param_bytes = g->ctx->params_bytes,
                            .runs = g->runs};
    return KL_OK;
}

kl_status kl_graph_set_runs(kl_graph *g, uint64_t runs)
{
    if (!g) return kl_fail(KL_EMISUSE, "kl_graph_set_runs: graph is NULL");
    g->runs = runs;
    return KL_OK;
}

void kl_graph_print(const kl_graph *g, void *file)
{
    if (!g) return; /* as kl_graph_profile_print */
    FILE *f = file ? file : stdout;
    static const char *sk[] = {"arena", "view", "param", "buffer", "grad", "extern", "none"};
    for (int i = 0; i < g->n_nodes; i++) {
        const kl_tensor *t = g->nodes[i];
        fprintf(f, "%4d %-16s %-22s %-6s", i, kl_ops[t->op]->name, kl_desc(t), sk[t->sk]);
        if (t->sk == KL_ST_ARENA && g->plan.valid) fprintf(f, " @%zu", t->off);
        fprintf(f, " <-");
        for (int j = 0; j < t->n_src; j++) fprintf(f, " %d", t->src[j]->id);
        fprintf(f, "  %s\n", t->name);
    }
}
