/* Graph side of the batchnorm / layernorm backward (see norm_grad.h). */
#include "ops/norm_grad.h"

kl_status kl_norm_bwd_shape(kl_tensor *t, const char *op, const int64_t *n, int need_dg, int need_db)
{
    const kl_tensor *dy = t->src[0], *x = t->src[1];
    if (!kl_same_shape(dy, x) || dy->dtype != x->dtype)
        return kl_fail(KL_EINTERNAL, "%s: dy %s vs x %s", op, kl_desc(dy), kl_desc(x));
    t->dtype = x->dtype;
    t->ndim = x->ndim;
    memcpy(t->ne, x->ne, sizeof t->ne);
    kl_tensor *e;
    if (need_dg) KL_TRY(kl_node_add_extra(t, x->dtype, 1, n, &e));
    if (need_db) KL_TRY(kl_node_add_extra(t, x->dtype, 1, n, &e));
    return KL_OK;
}

kl_status kl_norm_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy, kl_op_id op, int ig, int ib, const void *attr,
                           size_t size, int *need_dx, int *need_dg, int *need_db)
{
    kl_tensor *x = t->src[0], *gm = ig >= 0 ? t->src[ig] : NULL, *bt = ib >= 0 ? t->src[ib] : NULL;
    *need_dx = x->requires_grad;
    *need_dg = gm && gm->requires_grad;
    *need_db = bt && bt->requires_grad;
    if (!*need_dx && !*need_dg && !*need_db) return KL_OK;
    kl_tensor *src[4] = {dy, x, t, gm}, *dx;
    KL_TRY(kl_contiguous(g, dy, &src[0]));
    KL_TRY(kl_node_new(g, op, gm ? 4 : 3, src, attr, size, &dx));
    int e = 0;
    if (*need_dx) KL_TRY(kl_grad_acc(g, x, dx));
    if (*need_dg) KL_TRY(kl_grad_acc(g, gm, dx->extra[e++]));
    if (*need_db) KL_TRY(kl_grad_acc(g, bt, dx->extra[e++]));
    return KL_OK;
}
