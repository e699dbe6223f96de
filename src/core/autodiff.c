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

/* A slice's gradient waiting for its source's backward (kl_grad_acc_slice). */
typedef struct kl_grad_piece {
    kl_tensor *dy;
    int axis;
    int64_t start, end;
    struct kl_grad_piece *next;
} kl_grad_piece;

kl_status kl_grad_acc_slice(kl_graph *g, kl_tensor *x, kl_tensor *dy, int axis, int64_t start, int64_t end)
{
    (void)g;
    if (!x->requires_grad || !dy) return KL_OK;
    kl_grad_piece *p = kl_malloc(sizeof *p);
    if (!p) return KL_ENOMEM;
    *p = (kl_grad_piece){dy, axis, start, end, x->pieces};
    x->pieces = p;
    return KL_OK;
}

static void free_pieces(kl_tensor *x)
{
    for (kl_grad_piece *p = x->pieces, *n; p; p = n) {
        n = p->next;
        kl_free(p);
    }
    x->pieces = NULL;
}

/* Sorts x's pieces by start; whether they lie along one axis without overlap. */
static bool pieces_tile(kl_tensor *x)
{
    kl_grad_piece *sorted = NULL;
    for (kl_grad_piece *p = x->pieces, *n; p; p = n) { /* insertion sort: a few pieces */
        n = p->next;
        kl_grad_piece **at = &sorted;
        while (*at && (*at)->start < p->start) at = &(*at)->next;
        p->next = *at;
        *at = p;
    }
    x->pieces = sorted;
    for (kl_grad_piece *p = sorted; p && p->next; p = p->next)
        if (p->next->axis != p->axis || p->end > p->next->start) return false;
    return sorted && sorted->next;
}

/* x's slices' gradients into its gradient, before x's backward: pieces
 * tiling an axis (the gaps zeros) as one concat, others one by one. */
static kl_status settle_pieces(kl_graph *g, kl_tensor *x)
{
    if (!x->pieces) return KL_OK;
    kl_status s = KL_OK;
    kl_tensor *dx = NULL;
    if (pieces_tile(x)) {
        int axis = x->pieces->axis, n = 0, cap = 1;
        for (kl_grad_piece *p = x->pieces; p; p = p->next) cap += 2;
        kl_tensor **parts = kl_malloc((size_t)cap * sizeof *parts);
        if (!parts) s = KL_ENOMEM;
        int64_t at = 0, ne[KL_MAX_DIMS];
        memcpy(ne, x->ne, sizeof ne);
        for (kl_grad_piece *p = x->pieces; s == KL_OK; p = p->next) {
            int64_t to = p ? p->start : x->ne[axis];
            if (to > at) { /* a gap no slice covers */
                ne[axis] = to - at;
                s = kl_fill(g, p ? p->dy->dtype : parts[0]->dtype, x->ndim, ne, 0.0, &parts[n++]);
            }
            if (!p || s != KL_OK) break;
            parts[n++] = p->dy;
            at = p->end;
        }
        if (s == KL_OK) s = kl_concat(g, n, parts, axis, &dx);
        kl_free(parts);
        if (s == KL_OK) s = kl_grad_acc(g, x, dx);
    } else {
        for (kl_grad_piece *p = x->pieces; p && s == KL_OK; p = p->next) {
            s = kl_slice_grad(g, x, p->dy, p->axis, p->start, p->end, &dx);
            if (s == KL_OK) s = kl_grad_acc(g, x, dx);
        }
    }
    free_pieces(x);
    return s;
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
    for (int i = 0; i < g->n_nodes; i++) g->nodes[i]->grad = NULL, g->nodes[i]->pieces = NULL;
    loss->is_output = loss->base->is_output = true;
    if (s == KL_OK) s = kl_fill(g, loss->dtype, loss->ndim, loss->ne, 1.0, &loss->grad);
    for (int i = loss->id; i >= 0 && s == KL_OK; i--) {
        kl_tensor *t = g->nodes[i];
        s = settle_pieces(g, t);
        if (s != KL_OK) break;
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
    for (int i = 0; i < g->n_nodes; i++) free_pieces(g->nodes[i]); /* left by an error */
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
