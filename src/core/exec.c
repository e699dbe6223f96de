/* Running a planned graph: resolve storage, call each op's kernel in order. */
#include "core/graph.h"
#include "backends/backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const kl_op_def *const kl_ops[KL_OP_COUNT] = {
#define KL_OP(name) &kl_op_##name,
#include "ops/ops.def"
#undef KL_OP
};

/* Storage-less ops: their values live elsewhere or are written by another op. */
#define NO_KERNEL(op) const kl_op_def kl_op_##op = {.name = #op}
NO_KERNEL(input);
NO_KERNEL(param);
NO_KERNEL(extra);

#ifdef KILN_HAVE_CUDA
/* CUDA kernels by op, for ops whose kl_op_def has none (src/backends/cuda/registry.cu). */
extern const kl_kernel_fn kl_cuda_kernels[KL_OP_COUNT];
#endif

kl_kernel_fn kl_backend_kernel(kl_backend_id b, kl_op_id op)
{
    if ((unsigned)b >= KL_BACKEND_COUNT || (unsigned)op >= KL_OP_COUNT) return NULL;
    kl_kernel_fn fn = kl_ops[op]->fwd[b];
#ifdef KILN_HAVE_CUDA
    if (!fn && b == KL_BACKEND_CUDA) fn = kl_cuda_kernels[op];
#endif
    return fn;
}

void *kl_data(const kl_exec *ex, const kl_tensor *t)
{
    const kl_tensor *b = t->base;
    unsigned char *p;
    switch (b->sk) {
    case KL_ST_PARAM:
    case KL_ST_BUFFER: p = kl_slot_data(ex->ctx, b->slot); break;
    case KL_ST_GRAD: p = kl_slot_grad(ex->ctx, b->slot); break;
    case KL_ST_EXTERNAL: p = b->ext; break;
    default: p = ex->arena + b->off; break;
    }
    return p + t->offs * (int64_t)kl_dtype_size(t->dtype);
}

void *kl_aux(const kl_exec *ex, const kl_tensor *t) { return ex->arena + t->aux_off; }
void *kl_scratch(const kl_exec *ex, const kl_tensor *t) { return ex->arena + t->scratch_off; }

void *kl_run_vals(const kl_exec *ex, const kl_tensor *t) { return ex->run_vals + t->run_off; }

static kl_status no_kernel(const kl_ctx *c, const kl_tensor *t)
{
    if (c->backend == KL_BACKEND_CPU)
        return kl_fail(KL_EUNSUPPORTED, "%s '%s' %s: no kernel on cpu", kl_ops[t->op]->name, t->name, kl_desc(t));
    return kl_fail(KL_EUNSUPPORTED, "%s '%s' %s: no kernel on cuda:%d yet (docs/CUDA.md lists the CUDA ops)",
                   kl_ops[t->op]->name, t->name, kl_desc(t), c->device.index);
}

static bool storage_only(kl_op_id op)
{
    return op == KL_OP_input || op == KL_OP_param || op == KL_OP_extra || op == KL_OP_view;
}

static double seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Issues every node's kernel in order (on CUDA: launches them, or records
 * them into the graph being captured). While profiling, each node is timed:
 * by the backend's timer (CUDA events) or by the host clock. */
static kl_status issue_nodes(kl_graph *g, const kl_exec *ex)
{
    kl_ctx *c = g->ctx;
    const kl_backend *be = c->be;
    bool timed = g->prof && be->timer_mark;
    double t0 = 0;
    if (timed) KL_TRY(be->timer_mark(0));
    for (int i = 0; i < g->n_nodes; i++) {
        const kl_tensor *t = g->nodes[i];
        g->issued = i;
        kl_kernel_fn fn = kl_backend_kernel(c->backend, t->op);
        if (!fn) {
            if (!storage_only(t->op)) return no_kernel(c, t);
            if (timed) KL_TRY(be->timer_mark(i + 1));
            continue;
        }
        if (g->prof && !timed) t0 = seconds();
        if (be->range_push) be->range_push(t->name); /* Nsight Systems shows each op by name */
        kl_status s = kl_widen_needed(c->backend, t) ? kl_widen_run(ex, t, fn) : fn(ex, t);
        if (be->range_pop) be->range_pop();
        if (s != KL_OK) return kl_fail_prefix(s, "%s '%s'", kl_ops[t->op]->name, t->name);
        if (timed) KL_TRY(be->timer_mark(i + 1));
        else if (g->prof) g->prof[i] += seconds() - t0;
    }
    g->issued = g->n_nodes;
    if (!timed) return KL_OK;
    double *iv = kl_calloc((size_t)g->n_nodes + 1, sizeof *iv);
    if (!iv) return KL_ENOMEM;
    kl_status s = be->timer_read(g->n_nodes + 1, iv);
    for (int i = 0; s == KL_OK && i < g->n_nodes; i++) g->prof[i] += iv[i];
    kl_free(iv);
    return s;
}

/* What a captured graph depends on besides the plan: where the storage is. */
static uint64_t storage_key(const kl_graph *g)
{
    const kl_ctx *c = g->ctx;
    uintptr_t v[] = {(uintptr_t)g->arena, (uintptr_t)c->params, (uintptr_t)c->grads, (uintptr_t)c->buffers,
                     (uintptr_t)g->run_dev, (uintptr_t)c->params_bytes, (uintptr_t)c->buffers_bytes,
                     (uintptr_t)g->plan.id, (uintptr_t)c->storage_gen};
    uint64_t h = 1469598103934665603ull; /* FNV-1a over the words */
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) h = (h ^ (uint64_t)v[i]) * 1099511628211ull;
    return h;
}

static void drop_capture(kl_graph *g)
{
    if (g->captured) g->ctx->be->capture_free(g->captured);
    g->captured = NULL;
}

/* Captures the run's kernels as one graph and launches it. When capturing
 * fails (an op that cannot be captured, or a kernel's own error), the run
 * is issued eagerly instead: a kernel's error then shows as it would have,
 * and a graph that only cannot be captured runs eagerly from then on
 * (slower, never wrong), with a note saying why. */
static kl_status capture_and_launch(kl_graph *g, const kl_exec *ex)
{
    const kl_backend *be = g->ctx->be;
    drop_capture(g);
    kl_status s = be->capture_begin();
    bool began = s == KL_OK; /* a capture that cannot start runs eagerly too */
    if (began) s = issue_nodes(g, ex);
    char why[512];
    snprintf(why, sizeof why, "%s", s != KL_OK ? kl_last_error() : "");
    void *exec = NULL;
    kl_status e = began ? be->capture_end(&exec) : s;
    if (s == KL_OK && e == KL_OK) {
        g->captured = exec;
        g->captured_key = storage_key(g);
        g->issued = 0; /* recorded, not run: a failed launch ran nothing */
        return be->capture_launch(exec);
    }
    if (exec) be->capture_free(exec);
    if (s == KL_OK) snprintf(why, sizeof why, "%s", kl_last_error());
    g->capture_failed = 1;
    KL_TRY(issue_nodes(g, ex));
    fprintf(stderr, "kiln: note: this graph (%d ops) runs without CUDA graph capture: %s\n", g->n_nodes, why);
    return KL_OK;
}

static bool capture_wanted(const kl_graph *g)
{
    if (!g->capture || g->capture_failed || g->prof || !g->ctx->be->capture_begin) return false;
    const char *e = getenv("KILN_CUDA_GRAPH");
    return !(e && !strcmp(e, "0"));
}

static kl_status graph_run(kl_graph *g)
{
    if (!g->plan.valid || g->plan.n_nodes != g->n_nodes) KL_TRY(kl_plan_build(g, NULL));
    kl_ctx *c = g->ctx;
    kl_exec ex = {.g = g, .ctx = c, .arena = g->arena, .threads = c->threads, .run = g->runs, .run_vals = g->run_dev};
    if (!g->env_read) { /* the graph's first run here (its run count may start above 0: a resumed run) */
        g->env_read = 1;
        if (!g->prof && getenv("KILN_PROFILE") && atoi(getenv("KILN_PROFILE")) > 0) KL_TRY(kl_graph_profile(g, 1));
    }
    KL_TRY(kl_readback_reserve(g)); /* every ring has room for this run's record */
    /* per-run values: written on the host, one copy to the device */
    for (int i = 0; i < g->n_nodes; i++) {
        const kl_tensor *t = g->nodes[i];
        kl_status (*prep)(const kl_exec *, const kl_tensor *, void *) = kl_ops[t->op]->prepare;
        if (!prep) continue;
        kl_status s = prep(&ex, t, g->run_host + t->run_off);
        if (s != KL_OK) return kl_fail_prefix(s, "%s '%s'", kl_ops[t->op]->name, t->name);
    }
    if (g->plan.run_bytes) KL_TRY(c->be->h2d(g->run_dev, g->run_host, g->plan.run_bytes));
    kl_status s;
    uint64_t key = storage_key(g);
    g->issued = 0;
    if (!capture_wanted(g)) {
        drop_capture(g);
        s = issue_nodes(g, &ex);
    } else if (g->captured && g->captured_key == key) {
        s = c->be->capture_launch(g->captured);
    } else if (g->eager_key != key) {
        /* the first run of each plan and storage is eager: lazy library
         * set-up (GEMM plans, cuDNN descriptors) happens outside capture */
        drop_capture(g);
        s = issue_nodes(g, &ex);
    } else {
        s = capture_and_launch(g, &ex);
    }
    if (s != KL_OK) {
        for (int i = g->issued; i < g->n_nodes; i++) { /* the nodes the error kept from running */
            const kl_tensor *t = g->nodes[i];
            if (kl_ops[t->op]->failed) kl_ops[t->op]->failed(&ex, t, g->run_host + t->run_off);
        }
        return s;
    }
    if (!g->captured) g->eager_key = key;
    g->runs++;
    g->ran_plan = g->plan.id;
    if (g->prof) g->prof_runs++;
    return KL_OK;
}

kl_status kl_graph_run(kl_graph *g)
{
    if (!g) return kl_fail(KL_EMISUSE, "kl_graph_run: graph is NULL");
    const kl_backend *be = g->ctx->be;
    be->begin_run(g->ctx->threads);
    kl_status s = graph_run(g);
    if (be->end_run) be->end_run();
    return s;
}

kl_status kl_graph_set_capture(kl_graph *g, int on)
{
    if (!g) return kl_fail(KL_EMISUSE, "kl_graph_set_capture: graph is NULL");
    g->capture = on != 0;
    if (!on) drop_capture(g);
    return KL_OK;
}

int kl_graph_captured(const kl_graph *g) { return g && g->captured != NULL; }

kl_status kl_graph_profile(kl_graph *g, int on)
{
    if (!g) return kl_fail(KL_EMISUSE, "kl_graph_profile: graph is NULL");
    kl_free(g->prof);
    g->prof = on ? kl_calloc((size_t)g->n_nodes + 1, sizeof *g->prof) : NULL;
    g->prof_runs = 0;
    return on && !g->prof ? KL_ENOMEM : KL_OK;
}

enum { KL_PROFILE_TOP = 8 }; /* nodes listed by kl_graph_profile_print */

void kl_graph_profile_print(const kl_graph *g, void *file)
{
    FILE *f = file ? file : stderr;
    if (!g || !g->prof) return;
    double by_op[KL_OP_COUNT] = {0}, total = 0;
    int count[KL_OP_COUNT] = {0};
    for (int i = 0; i < g->n_nodes; i++) {
        by_op[g->nodes[i]->op] += g->prof[i];
        count[g->nodes[i]->op]++;
        total += g->prof[i];
    }
    double runs = (double)g->prof_runs;
    fprintf(f, "profile over %llu runs: %.3f ms per run\n", (unsigned long long)g->prof_runs,
            runs ? 1e3 * total / runs : 0.0);
    for (;;) {
        int best = -1;
        for (int k = 0; k < KL_OP_COUNT; k++)
            if (by_op[k] > 0 && (best < 0 || by_op[k] > by_op[best])) best = k;
        if (best < 0) break;
        fprintf(f, "  %-18s %4d nodes %9.3f ms/run %5.1f%%\n", kl_ops[best]->name, count[best],
                runs ? 1e3 * by_op[best] / runs : 0.0, 100 * by_op[best] / (total > 0 ? total : 1));
        by_op[best] = 0;
    }
    /* the slowest single nodes, with their output shapes and names (layers) */
    int top[KL_PROFILE_TOP], ntop = 0;
    for (int r = 0; r < KL_PROFILE_TOP; r++) {
        int best = -1;
        for (int i = 0; i < g->n_nodes; i++) {
            bool taken = false;
            for (int j = 0; j < ntop; j++) taken |= top[j] == i;
            if (!taken && g->prof[i] > 0 && (best < 0 || g->prof[i] > g->prof[best])) best = i;
        }
        if (best < 0) break;
        top[ntop++] = best;
    }
    if (ntop) fprintf(f, "  slowest nodes:\n");
    for (int j = 0; j < ntop; j++) {
        const kl_tensor *t = g->nodes[top[j]];
        char shape[96];
        int n = 0;
        for (int d = 0; d < t->ndim && n < (int)sizeof shape - 24; d++)
            n += snprintf(shape + n, sizeof shape - (size_t)n, d ? "x%lld" : "%lld", (long long)t->ne[d]);
        if (!t->ndim) snprintf(shape, sizeof shape, "scalar");
        fprintf(f, "    #%-4d %-18s %-16s %9.3f ms/run %5.1f%%  %s\n", top[j], kl_ops[t->op]->name, shape,
                runs ? 1e3 * g->prof[top[j]] / runs : 0.0, 100 * g->prof[top[j]] / (total > 0 ? total : 1),
                t->name);
    }
}
