/* Memory plan: every intermediate tensor of a graph gets an offset in one
 * arena. Walking the nodes in execution order, a tensor is placed (best fit
 * among freed blocks, else at the end) when its op runs and freed after its
 * last reader (views extend their base's life). Inputs and outputs stay put
 * for the whole run. The plan is kept until the graph changes, so each run
 * replays it with no allocation (what a captured CUDA graph needs). */
#include "core/graph.h"
#include "backends/backend.h"

#include <stdio.h>

typedef struct { size_t off, size; } block;

typedef struct {
    block *free;
    int n, cap;
    size_t end; /* arena high-water mark */
    bool no_reuse;
} allocator;

static size_t align_up(size_t n) { return (n + KL_ALIGN - 1) / KL_ALIGN * KL_ALIGN; }

static kl_status alloc_block(allocator *a, size_t size, size_t *off)
{
    size = align_up(size ? size : 1);
    int best = -1;
    for (int i = 0; !a->no_reuse && i < a->n; i++)
        if (a->free[i].size >= size && (best < 0 || a->free[i].size < a->free[best].size)) best = i;
    if (best >= 0) {
        *off = a->free[best].off;
        a->free[best].off += size;
        a->free[best].size -= size;
        if (a->free[best].size == 0) a->free[best] = a->free[--a->n];
        return KL_OK;
    }
    /* grow from a free block touching the end, if any */
    for (int i = 0; !a->no_reuse && i < a->n; i++)
        if (a->free[i].off + a->free[i].size == a->end) {
            *off = a->free[i].off;
            a->end = *off + size;
            a->free[i] = a->free[--a->n];
            return KL_OK;
        }
    *off = a->end;
    a->end += size;
    return KL_OK;
}

static kl_status free_block(allocator *a, size_t off, size_t size)
{
    if (a->no_reuse) return KL_OK;
    size = align_up(size ? size : 1);
    /* coalesce with neighbours */
    for (int i = 0; i < a->n;) {
        if (a->free[i].off + a->free[i].size == off) {
            off = a->free[i].off;
            size += a->free[i].size;
            a->free[i] = a->free[--a->n];
        } else if (off + size == a->free[i].off) {
            size += a->free[i].size;
            a->free[i] = a->free[--a->n];
        } else {
            i++;
        }
    }
    if (a->n == a->cap) {
        int ncap = a->cap ? 2 * a->cap : 64;
        block *nb = kl_realloc(a->free, (size_t)ncap * sizeof *nb);
        if (!nb) return KL_ENOMEM;
        a->free = nb;
        a->cap = ncap;
    }
    a->free[a->n++] = (block){off, size};
    return KL_OK;
}

static bool in_arena(const kl_tensor *t) { return t->sk == KL_ST_ARENA; }

static size_t block_size(const kl_tensor *t) { return align_up(kl_nbytes(t)) + align_up(t->aux_bytes); }

/* Debug check: no two tensors alive at the same time share bytes. */
static kl_status check_overlaps(const kl_graph *g, const int *def, const int *last)
{
    for (int i = 0; i < g->n_nodes; i++) {
        const kl_tensor *a = g->nodes[i];
        if (!in_arena(a)) continue;
        for (int j = i + 1; j < g->n_nodes; j++) {
            const kl_tensor *b = g->nodes[j];
            if (!in_arena(b)) continue;
            bool live_together = def[i] <= last[j] && def[j] <= last[i];
            bool share = a->off < b->off + block_size(b) && b->off < a->off + block_size(a);
            if (live_together && share)
                return kl_fail(KL_EINTERNAL, "memory plan: '%s' [%zu,+%zu) live %d..%d overlaps '%s' [%zu,+%zu) live %d..%d",
                               a->name, a->off, block_size(a), def[i], last[i], b->name, b->off, block_size(b), def[j],
                               last[j]);
        }
    }
    return KL_OK;
}

/* The run block: each node's per-run values at 16-byte aligned offsets, a
 * host staging copy and one in the backend's memory (kl_op_def.prepare). */
static kl_status plan_run_block(kl_graph *g, size_t *total)
{
    size_t at = 0;
    for (int i = 0; i < g->n_nodes; i++) {
        kl_tensor *t = g->nodes[i];
        if (!t->run_bytes) continue;
        t->run_off = at;
        at += (t->run_bytes + 15) & ~(size_t)15;
    }
    *total = at;
    if (at <= g->run_cap) return KL_OK;
    const kl_backend *be = g->ctx->be;
    kl_free(g->run_host);
    be->free(g->run_dev);
    g->run_host = NULL;
    g->run_dev = NULL;
    g->run_cap = 0;
    void *d = NULL;
    unsigned char *h = kl_calloc(1, at);
    if (!h) return KL_ENOMEM;
    kl_status s = be->alloc(&d, at);
    if (s != KL_OK) {
        kl_free(h);
        return s;
    }
    g->run_host = h;
    g->run_dev = d;
    g->run_cap = at;
    return KL_OK;
}

/* A larger arena for g. Values set into its inputs before the graph was
 * complete (kl_tensor_set plans the graph as it stands) move with them:
 * through the host, so the device never holds both arenas. */
static kl_status grow_arena(kl_graph *g, size_t need)
{
    size_t keep = g->arena ? (g->plan.input_bytes < g->arena_cap ? g->plan.input_bytes : g->arena_cap) : 0;
    void *host = keep ? kl_malloc(keep) : NULL, *p;
    if (keep && !host) return kl_fail(KL_ENOMEM, "graph arena: out of host memory to move %zu bytes of inputs", keep);
    kl_status s = keep ? g->ctx->be->d2h(host, g->arena, keep) : KL_OK;
    g->ctx->be->free(g->arena);
    g->arena = NULL;
    g->arena_cap = 0;
    if (s == KL_OK) s = g->ctx->be->alloc(&p, need);
    if (s == KL_OK) {
        g->arena = p;
        g->arena_cap = need;
        if (keep) s = g->ctx->be->h2d(p, host, keep);
    }
    kl_free(host);
    return s;
}

kl_status kl_plan_build(kl_graph *g, const kl_plan_opts *opts)
{
    int n = g->n_nodes;
    int *def = kl_calloc((size_t)n + 1, sizeof *def), *last = kl_calloc((size_t)n + 1, sizeof *last);
    allocator a = {.no_reuse = opts && opts->no_reuse};
    kl_status s = (def && last) ? KL_OK : KL_ENOMEM;
    size_t total = 0;
    for (int i = 0; i < n && s == KL_OK; i++) {
        kl_tensor *t = g->nodes[i];
        def[i] = t->op == KL_OP_extra ? t->src[0]->id : (t->op == KL_OP_input ? -1 : i);
        last[i] = (t->is_output || t->op == KL_OP_input) ? n : i;
        for (int k = 0; k < t->n_src; k++) {
            kl_tensor *b = t->src[k]->base;
            if (last[b->id] < i) last[b->id] = i;
            if (last[t->src[k]->id] < i) last[t->src[k]->id] = i;
        }
    }
    /* a view keeps its base alive until the view's last reader */
    for (int i = n - 1; i >= 0 && s == KL_OK; i--) {
        kl_tensor *t = g->nodes[i];
        if (t->sk == KL_ST_VIEW && last[t->base->id] < last[i]) last[t->base->id] = last[i];
    }
    /* inputs first, in node order: a replan after more nodes (or inputs)
     * were added keeps the earlier inputs' offsets, so their values stay */
    for (int i = 0; i < n && s == KL_OK; i++)
        if (g->nodes[i]->op == KL_OP_input && in_arena(g->nodes[i])) {
            s = alloc_block(&a, block_size(g->nodes[i]), &g->nodes[i]->off);
            total += block_size(g->nodes[i]);
        }
    size_t input_bytes = a.end;
    for (int i = 0; i < n && s == KL_OK; i++) {
        kl_tensor *t = g->nodes[i];
        if (t->op == KL_OP_input) continue;
        /* a node and its extra outputs are placed when the node runs */
        kl_tensor *defs[1 + KL_MAX_EXTRA] = {t};
        int nd = t->op == KL_OP_extra ? 0 : 1;
        for (int k = 0; nd && k < t->n_extra; k++) defs[nd++] = t->extra[k];
        for (int k = 0; k < nd && s == KL_OK; k++) {
            if (!in_arena(defs[k])) continue;
            s = alloc_block(&a, block_size(defs[k]), &defs[k]->off);
            defs[k]->aux_off = defs[k]->off + align_up(kl_nbytes(defs[k]));
            total += block_size(defs[k]);
        }
        /* the kernel's scratch, then the f32 copies of 16-bit tensors (widen.c) */
        size_t wide = kl_widen_bytes(g->ctx->backend, t);
        size_t sb = wide ? align_up(t->scratch_bytes) + wide : t->scratch_bytes;
        if (s == KL_OK && sb) {
            s = alloc_block(&a, sb, &t->scratch_off);
            total += align_up(sb);
            if (s == KL_OK) s = free_block(&a, t->scratch_off, sb);
        }
        /* free what this node read last (and itself if nothing reads it) */
        for (int k = -1; k < t->n_src + nd && s == KL_OK; k++) {
            kl_tensor *u = k < 0 ? t : (k < t->n_src ? t->src[k]->base : defs[k - t->n_src]);
            if (in_arena(u) && last[u->id] == i && u->op != KL_OP_input) {
                s = free_block(&a, u->off, block_size(u));
                last[u->id] = -2; /* freed once */
            }
        }
    }
    if (s == KL_OK && opts && opts->check) {
        /* recompute lifetimes (the loop above marked freed ones) */
        for (int i = 0; i < n; i++) last[i] = (g->nodes[i]->is_output || g->nodes[i]->op == KL_OP_input) ? n : def[i] < 0 ? 0 : def[i];
        for (int i = 0; i < n; i++)
            for (int k = 0; k < g->nodes[i]->n_src; k++) {
                int b = g->nodes[i]->src[k]->base->id;
                if (last[b] < i) last[b] = i;
            }
        for (int i = n - 1; i >= 0; i--)
            if (g->nodes[i]->sk == KL_ST_VIEW && last[g->nodes[i]->base->id] < last[i]) last[g->nodes[i]->base->id] = last[i];
        s = check_overlaps(g, def, last);
    }
    bool measure = opts && opts->measure;
    if (s == KL_OK && !measure) {
        size_t need = a.end ? a.end : KL_ALIGN;
        if (need > g->arena_cap) s = grow_arena(g, need);
    }
    size_t run_bytes = 0;
    if (s == KL_OK && !measure) s = plan_run_block(g, &run_bytes);
    if (s == KL_OK) {
        static uint64_t plans; /* ids differ across graphs, so a captured graph never matches a stale plan */
        g->plan = (kl_plan){.valid = !measure, .n_nodes = n, .no_reuse = a.no_reuse, .arena_bytes = a.end,
                            .tensor_bytes = total, .input_bytes = input_bytes, .run_bytes = run_bytes, .id = __atomic_add_fetch(&plans, 1, __ATOMIC_RELAXED)};
    }
    kl_free(a.free);
    kl_free(def);
    kl_free(last);
    return s;
}

kl_status kl_graph_plan(kl_graph *g, const kl_plan_opts *opts)
{
    if (!g) return kl_fail(KL_EMISUSE, "kl_graph_plan: graph is NULL");
    return kl_plan_build(g, opts);
}
