/* Reverse-mode autodiff over the recorded graph. kl_backward walks the
 * nodes from the loss back to the start; each op's backward appends the
 * nodes that compute its inputs' gradients (kl_grad_acc sums gradients of
 * tensors used more than once). Finally each parameter's gradient node is
 * bound to the parameter's slot in the ctx's flat gradient buffer, so the
 * gradient is written there directly (a copy only when it cannot be). */
#include "core/graph.h"
#include "ops/ops.h"

kl_status kl_grad_acc(kl_graph *g, kl_tensor *x, kl_tensor *dx)
{
    if (!x->requires_grad || !dx) return KL_OK;
    if (!kl_same_shape(x, dx))
        return kl_fail(KL_EINTERNAL, "gradient of '%s' %s has shape %s", x->name, kl_desc(x), kl_desc(dx));
    if (!x->grad) {
        x->grad = dx;
        return KL_OK;
    }
    return kl_binary_op(g, 0 /* add */, x->grad, dx, &x->grad);
}

/* Makes the gradient of parameter slot land in the ctx's gradient buffer. */
static kl_status bind_grad(kl_graph *g, int slot, kl_tensor *gr)
{
    bool bindable = gr->sk == KL_ST_ARENA && gr->op != KL_OP_input && gr->op != KL_OP_fill && gr->base == gr &&
                    gr->offs == 0 && kl_is_contiguous(gr) && gr->dtype == g->ctx->slots[slot].dtype;
    if (!bindable) {
        kl_tensor *src = gr;
        KL_TRY(kl_node_new(g, KL_OP_copy, 1, &src, NULL, 0, &gr));
    }
    gr->sk = KL_ST_GRAD;
    gr->slot = slot;
    gr->is_output = true;
    return KL_OK;
}

kl_status kl_backward(kl_graph *g, kl_tensor *loss)
{
    KL_TRY(kl_check_args(g, "backward", 1, &loss));
    if (g->has_backward) return kl_fail(KL_EMISUSE, "backward: this graph already has a backward pass");
    if (kl_numel(loss) != 1 || !kl_is_float(loss->dtype))
        return kl_fail(KL_EINVAL, "backward: loss '%s' must be a float scalar, got %s", loss->name, kl_desc(loss));
    if (!loss->requires_grad)
        return kl_fail(KL_EINVAL, "backward: loss '%s' does not depend on any trainable parameter", loss->name);
    kl_ctx *c = g->ctx;
    KL_TRY(kl_ctx_ensure_grads(c));
    kl_tensor **slot_grad = kl_calloc((size_t)c->n_slots + 1, sizeof *slot_grad);
    bool *written = kl_calloc((size_t)c->n_slots + 1, sizeof *written);
    kl_status s = (slot_grad && written) ? KL_OK : KL_ENOMEM;
    for (int i = 0; i < g->n_nodes; i++) g->nodes[i]->grad = NULL;
    loss->is_output = loss->base->is_output = true;
    if (s == KL_OK) s = kl_fill(g, loss->dtype, loss->ndim, loss->ne, 1.0, &loss->grad);
    for (int i = loss->id; i >= 0 && s == KL_OK; i--) {
        kl_tensor *t = g->nodes[i];
        bool any = t->grad != NULL;
        for (int k = 0; k < t->n_extra; k++) any |= t->extra[k]->grad != NULL;
        if (!any || !t->requires_grad) continue;
        if (t->op == KL_OP_param) {
            kl_tensor **sg = &slot_grad[t->slot];
            s = *sg ? kl_binary_op(g, 0, *sg, t->grad, sg) : (*sg = t->grad, KL_OK);
            continue;
        }
        if (!kl_ops[t->op]->backward) {
            if (t->op == KL_OP_extra || t->op == KL_OP_input) continue;
            s = kl_fail(KL_EUNSUPPORTED, "backward: op %s ('%s') has no gradient", kl_ops[t->op]->name, t->name);
            break;
        }
        kl_tensor *dy = t->grad;
        if (!dy) s = kl_fill(g, t->dtype, t->ndim, t->ne, 0.0, &dy); /* only extras carry gradient */
        if (s == KL_OK) s = kl_ops[t->op]->backward(g, t, dy);
        if (s != KL_OK) kl_fail_prefix(s, "backward of %s '%s'", kl_ops[t->op]->name, t->name);
    }
    for (int k = 0; k < c->n_slots && s == KL_OK; k++) {
        if (!slot_grad[k]) continue;
        s = bind_grad(g, k, slot_grad[k]);
        written[k] = true;
    }
    kl_free(slot_grad);
    if (s != KL_OK) {
        kl_free(written);
        return s;
    }
    kl_free(g->grad_written);
    g->grad_written = written;
    g->grad_written_n = c->n_slots;
    g->has_backward = true;
    g->loss = loss;
    return KL_OK;
}

kl_status kl_grad(kl_graph *g, const kl_tensor *t, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "kl_grad: out is NULL");
    *out = NULL;
    kl_tensor *tt = (kl_tensor *)t;
    KL_TRY(kl_check_args(g, "kl_grad", 1, &tt));
    if (!g->has_backward) return kl_fail(KL_EMISUSE, "kl_grad: call kl_backward first");
    *out = t->grad;
    return KL_OK;
}
