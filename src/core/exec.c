/* Running a planned graph: resolve storage, call each op's kernel in order. */
#include "core/graph.h"
#include "backends/backend.h"

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
    kl_backend_cpu.begin_run(c->threads);
    for (int i = 0; i < g->n_nodes; i++) {
        const kl_tensor *t = g->nodes[i];
        kl_kernel_fn fn = kl_ops[t->op]->fwd[c->backend];
        if (!fn) {
            if (t->op == KL_OP_input || t->op == KL_OP_param || t->op == KL_OP_extra || t->op == KL_OP_view) continue;
            return kl_fail(KL_EUNSUPPORTED, "%s '%s' %s: no kernel on %s", kl_ops[t->op]->name, t->name, kl_desc(t),
                           c->backend == KL_BACKEND_CPU ? "cpu" : "cuda");
        }
        kl_status s = fn(&ex, t);
        if (s != KL_OK) return kl_fail_prefix(s, "%s '%s'", kl_ops[t->op]->name, t->name);
    }
    g->runs++;
    return KL_OK;
}
