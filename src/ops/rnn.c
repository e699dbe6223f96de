/* Shared checks, builder, backward node and input-side gradients of the
 * LSTM and GRU layer ops (see rnn.h). */
#include "ops/rnn.h"
#include "ops/seq.h"
#include "backends/cpu/cpu.h"

#include <limits.h>

static kl_status check_vec(const char *op, const kl_tensor *x, const kl_tensor *v, const char *what, int64_t n)
{
    if (v->ndim != 1 || v->dtype != x->dtype || v->ne[0] != n)
        return kl_fail(KL_EINVAL, "%s: %s must be [%lld] %s, got %s", op, what, (long long)n, kl_dtype_name(x->dtype),
                       kl_desc(v));
    return KL_OK;
}

static kl_status check_state(const char *op, const kl_tensor *x, const kl_tensor *s, const char *what, int64_t H)
{
    if (s->ndim != 2 || s->dtype != x->dtype || s->ne[0] != x->ne[0] || s->ne[1] != H)
        return kl_fail(KL_EINVAL, "%s: %s must be [%lld, %lld] %s (B, H) for input %s, got %s", op, what,
                       (long long)x->ne[0], (long long)H, kl_dtype_name(x->dtype), kl_desc(x), kl_desc(s));
    return KL_OK;
}

kl_status kl_rnn_check(kl_tensor *t, const char *op, int64_t *pB, int64_t *pT, int64_t *pI, int64_t *pH)
{
    const kl_rnn_attr *a = KL_ATTR_C(t, kl_rnn_attr);
    const kl_tensor *x = t->src[0], *wih = t->src[1], *whh = t->src[2];
    int G = a->gates;
    if (!kl_is_float(x->dtype) || x->ndim != 3)
        return kl_fail(KL_EINVAL, "%s: input must be [B, T, I] (batch first) floating-point, got %s", op, kl_desc(x));
    int64_t B = x->ne[0], T = x->ne[1], NI = x->ne[2];
    if (whh->ndim != 2 || whh->dtype != x->dtype || whh->ne[1] > INT_MAX / 8 || whh->ne[0] != G * whh->ne[1])
        return kl_fail(KL_EINVAL, "%s: weight_hh must be [%d*H, H] %s, got %s", op, G, kl_dtype_name(x->dtype),
                       kl_desc(whh));
    int64_t H = whh->ne[1];
    if (wih->ndim != 2 || wih->dtype != x->dtype || wih->ne[0] != G * H || wih->ne[1] != NI)
        return kl_fail(KL_EINVAL,
                       "%s: weight_ih must be [%lld, %lld] %s (%d*H, I) for input %s and weight_hh %s, got %s", op, (long long)(G * H), (long long)NI, kl_dtype_name(x->dtype), G, kl_desc(x), kl_desc(whh),
                       kl_desc(wih));
    if (a->ib_ih >= 0) KL_TRY(check_vec(op, x, t->src[a->ib_ih], "bias_ih", G * H));
    if (a->ib_hh >= 0) KL_TRY(check_vec(op, x, t->src[a->ib_hh], "bias_hh", G * H));
    if (a->ih0 >= 0) KL_TRY(check_state(op, x, t->src[a->ih0], "h0", H));
    if (a->ic0 >= 0) KL_TRY(check_state(op, x, t->src[a->ic0], "c0", H));
    /* BLAS takes int sizes and leading dimensions */
    int64_t v[3] = {B, T, NI > (G + 2) * H ? NI : (G + 2) * H};
    if (!kl_seq_fits(3, v, INT_MAX))
        return kl_fail(KL_EINVAL, "%s: input %s with hidden size %lld is too large (B*T*max(I, %d*H) > %d)", op,
                       kl_desc(x), (long long)H, G + 2, INT_MAX);
    t->dtype = x->dtype;
    t->ndim = 3;
    t->ne[0] = B;
    t->ne[1] = T;
    t->ne[2] = H;
    *pB = B, *pT = T, *pI = NI, *pH = H;
    return KL_OK;
}

kl_status kl_rnn_build(kl_graph *g, kl_op_id op, int gates, kl_tensor *x, kl_tensor *h0, kl_tensor *c0,
                       kl_tensor *w_ih, kl_tensor *w_hh, kl_tensor *b_ih, kl_tensor *b_hh, kl_tensor **y,
                       kl_tensor **h_n, kl_tensor **c_n)
{
    const char *name = kl_ops[op]->name;
    if (!y) return kl_fail(KL_EMISUSE, "%s: y (the output pointer) is NULL", name);
    *y = NULL;
    if (h_n) *h_n = NULL;
    if (c_n) *c_n = NULL;
    kl_tensor *src[7] = {x, w_ih, w_hh};
    /* named here: kl_check_args would say "input 1", which in the public
     * signature is h0 (that one may be NULL) */
    static const char *const required[3] = {"x", "w_ih", "w_hh"};
    for (int i = 0; i < 3; i++)
        if (!src[i]) return kl_fail(KL_EMISUSE, "%s: %s is NULL", name, required[i]);
    KL_TRY(kl_check_args(g, name, 3, src));
    kl_rnn_attr a = {.gates = gates, .ib_ih = -1, .ib_hh = -1, .ih0 = -1, .ic0 = -1};
    int n = 3;
    if (b_ih) a.ib_ih = n, src[n++] = b_ih;
    if (b_hh) a.ib_hh = n, src[n++] = b_hh;
    if (h0) a.ih0 = n, src[n++] = h0;
    if (c0) a.ic0 = n, src[n++] = c0;
    KL_TRY(kl_check_args(g, name, n, src));
    for (int i = 0; i < n; i++) KL_TRY(kl_contiguous(g, src[i], &src[i]));
    kl_tensor *t;
    KL_TRY(kl_node_new(g, op, n, src, &a, sizeof a, &t));
    *y = t;
    if (h_n) *h_n = t->extra[0];
    if (c_n && t->n_extra > 1) *c_n = t->extra[1];
    return KL_OK;
}

bool kl_rnn_needs_input_grads(const kl_tensor *t)
{
    const kl_rnn_attr *a = KL_ATTR_C(t, kl_rnn_attr);
    return t->src[0]->requires_grad || t->src[1]->requires_grad ||
           (a->ib_ih >= 0 && t->src[a->ib_ih]->requires_grad) || (a->ib_hh >= 0 && t->src[a->ib_hh]->requires_grad);
}

kl_status kl_rnn_input_grads(kl_graph *g, kl_tensor *t, kl_tensor *dgi, kl_tensor *dgh)
{
    const kl_rnn_attr *a = KL_ATTR_C(t, kl_rnn_attr);
    kl_tensor *x = t->src[0], *wih = t->src[1], *d;
    kl_tensor *bih = a->ib_ih >= 0 ? t->src[a->ib_ih] : NULL, *bhh = a->ib_hh >= 0 ? t->src[a->ib_hh] : NULL;
    if (x->requires_grad) { /* dx [B,T,I] = dgi [B,T,GH] W_ih [GH,I]: one GEMM */
        KL_TRY(kl_matmul_op(g, dgi, wih, NULL, KL_ACT_NONE, &d));
        KL_TRY(kl_grad_acc(g, x, d));
    }
    if (wih->requires_grad) { /* dW_ih [GH,I] = dgi^T x over all B*T rows */
        int64_t gd[2] = {-1, wih->ne[0]}, xd[2] = {-1, x->ne[2]};
        kl_tensor *g2, *x2, *gt;
        KL_TRY(kl_reshape(g, dgi, 2, gd, &g2));
        KL_TRY(kl_reshape(g, x, 2, xd, &x2));
        KL_TRY(kl_transpose(g, g2, 0, 1, &gt));
        KL_TRY(kl_matmul_op(g, gt, x2, NULL, KL_ACT_NONE, &d));
        KL_TRY(kl_grad_acc(g, wih, d));
    }
    int ax[2] = {0, 1};
    kl_tensor *dbi = NULL, *dbh = NULL;
    if (bih && bih->requires_grad) {
        KL_TRY(kl_sum(g, dgi, 2, ax, 0, &dbi));
        KL_TRY(kl_grad_acc(g, bih, dbi));
    }
    if (bhh && bhh->requires_grad) {
        if (dgh == dgi && dbi) dbh = dbi; /* LSTM: both biases get the same gradient; sum once */
        else KL_TRY(kl_sum(g, dgh, 2, ax, 0, &dbh));
        KL_TRY(kl_grad_acc(g, bhh, dbh));
    }
    return KL_OK;
}

kl_status kl_rnn_bwd_shape(kl_tensor *t, kl_op_id fwd_op, const char *op, int G, bool bad)
{
    const kl_rnn_bwd_attr *a = KL_ATTR_C(t, kl_rnn_bwd_attr);
    const kl_tensor *dy = t->src[0], *fw = t->src[1];
    if (fw->op != fwd_op || !kl_same_shape(dy, fw) || dy->dtype != fw->dtype || bad)
        return kl_fail(KL_EINTERNAL, "%s: dy %s vs forward %s", op, kl_desc(dy), kl_desc(fw));
    int64_t B = fw->ne[0], T = fw->ne[1], H = fw->ne[2], bh[2] = {B, H}, wd[2] = {G * H, H};
    t->dtype = fw->dtype;
    t->ndim = 3;
    t->ne[0] = B, t->ne[1] = T, t->ne[2] = G * H;
    kl_tensor *e;
    if (a->need_dgh) KL_TRY(kl_node_add_extra(t, t->dtype, 3, t->ne, &e));
    if (a->need_dh0) KL_TRY(kl_node_add_extra(t, t->dtype, 2, bh, &e));
    if (a->need_dc0) KL_TRY(kl_node_add_extra(t, t->dtype, 2, bh, &e));
    if (a->need_dwhh) KL_TRY(kl_node_add_extra(t, t->dtype, 2, wd, &e));
    return KL_OK;
}

kl_status kl_rnn_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy, kl_op_id op, kl_rnn_bwd_attr a)
{
    const kl_rnn_attr *fa = KL_ATTR_C(t, kl_rnn_attr);
    kl_tensor *h0 = fa->ih0 >= 0 ? t->src[fa->ih0] : NULL, *c0 = fa->ic0 >= 0 ? t->src[fa->ic0] : NULL;
    kl_tensor *dhn = t->extra[0]->grad, *dcn = fa->gates == 4 ? t->extra[1]->grad : NULL, *dG;
    a.ih0 = a.ic0 = a.idhn = a.idcn = -1;
    bool need_in = kl_rnn_needs_input_grads(t);
    if (!need_in && !a.need_dh0 && !a.need_dc0 && !a.need_dwhh) return KL_OK;
    kl_tensor *src[7] = {dy, t, t->src[2]};
    int n = 3;
    KL_TRY(kl_contiguous(g, dy, &src[0]));
    if (h0) a.ih0 = n, src[n++] = h0;
    if (c0) a.ic0 = n, src[n++] = c0;
    if (dhn) a.idhn = n, src[n++] = dhn;
    if (dcn) a.idcn = n, src[n++] = dcn;
    for (int i = 3; i < n; i++) KL_TRY(kl_contiguous(g, src[i], &src[i]));
    KL_TRY(kl_node_new(g, op, n, src, &a, sizeof a, &dG));
    int e = 0;
    /* no dGh extra: the LSTM's hidden-side gradients are dG itself; the GRU needs none */
    kl_tensor *dGh = a.need_dgh ? dG->extra[e++] : fa->gates == 4 ? dG : NULL;
    if (a.need_dh0) KL_TRY(kl_grad_acc(g, h0, dG->extra[e++]));
    if (a.need_dc0) KL_TRY(kl_grad_acc(g, c0, dG->extra[e++]));
    if (a.need_dwhh) KL_TRY(kl_grad_acc(g, t->src[2], dG->extra[e++]));
    return need_in ? kl_rnn_input_grads(g, t, dG, dGh) : KL_OK;
}

#define RNN_DWHH(T_)                                                                               \
    void kl_rnn_dwhh_##T_(const T_ *dG, const T_ *h0, const T_ *y, int64_t B, int64_t T, int64_t H, \
                          int64_t GH, T_ *rows, T_ *dwhh)                                          \
    {                                                                                              \
        _Pragma("omp parallel for schedule(static) if (B * T * H > KL_PAR_MIN)")                   \
        for (int64_t i = 0; i < B * T * H; i++) rows[i] = kl_rnn_prev_h_##T_(h0, y, T, H, i);       \
        kl_gemm_##T_(true, false, GH, H, B * T, 1, dG, GH, rows, H, 0, dwhh, H);                   \
    }
KL_FOR_REAL(RNN_DWHH)
