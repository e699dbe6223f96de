/* Running a planned graph: resolve storage, call each op's kernel in order. */
#include "core/graph.h"
#include "backends/backend.h"

#include <stdio.h>
#include <stdlib.h>
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
    default: p = ex->arena + b->off; break;
    }
    return p + t->offs * (int64_t)kl_dtype_size(t->dtype);
}

void *kl_aux(const kl_exec *ex, const kl_tensor *t) { return ex->arena + t->aux_off; }
void *kl_scratch(const kl_exec *ex, const kl_tensor *t) { return ex->arena + t->scratch_off; }

kl_status kl_graph_run(kl_graph *g)
{
    if (!g) return kl_fail(KL_EMISUSE, "kl_graph_run: graph is NULL");
    if (!g->plan.valid || g->plan.n_nodes != g->n_nodes) KL_TRY(kl_plan_build(g, NULL));
    kl_ctx *c = g->ctx;
    kl_exec ex = {.g = g, .ctx = c, .arena = g->arena, .threads = c->threads, .run = g->runs};
    c->be->begin_run(c->threads);
    if (!g->prof && g->runs == 0 && getenv("KILN_PROFILE") && atoi(getenv("KILN_PROFILE")) > 0) KL_TRY(kl_graph_profile(g, 1));
    for (int i = 0; i < g->n_nodes; i++) {
        const kl_tensor *t = g->nodes[i];
        kl_kernel_fn fn = kl_backend_kernel(c->backend, t->op);
        if (!fn) {
            if (t->op == KL_OP_input || t->op == KL_OP_param || t->op == KL_OP_extra || t->op == KL_OP_view) continue;
            if (c->backend == KL_BACKEND_CPU)
                return kl_fail(KL_EUNSUPPORTED, "%s '%s' %s: no kernel on cpu", kl_ops[t->op]->name, t->name, kl_desc(t));
            return kl_fail(KL_EUNSUPPORTED, "%s '%s' %s: no kernel on cuda:%d yet (docs/CUDA.md lists the CUDA ops)",
                           kl_ops[t->op]->name, t->name, kl_desc(t), c->device.index);
        }
        struct timespec t0, t1;
        if (g->prof) clock_gettime(CLOCK_MONOTONIC, &t0);
        kl_status s = fn(&ex, t);
        if (g->prof) {
            clock_gettime(CLOCK_MONOTONIC, &t1);
            g->prof[i] += (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        }
        if (s != KL_OK) return kl_fail_prefix(s, "%s '%s'", kl_ops[t->op]->name, t->name);
    }
    g->runs++;
    if (g->prof) g->prof_runs++;
    return KL_OK;
}

kl_status kl_graph_profile(kl_graph *g, int on)
{
    if (!g) return kl_fail(KL_EMISUSE, "kl_graph_profile: graph is NULL");
    kl_free(g->prof);
    g->prof = on ? kl_calloc((size_t)g->n_nodes + 1, sizeof *g->prof) : NULL;
    g->prof_runs = 0;
    return on && !g->prof ? KL_ENOMEM : KL_OK;
}

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
}
