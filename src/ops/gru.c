/* One GRU layer, batch first, PyTorch's gate layout (r, z, n) and its
 * n = tanh(W_in x + b_in + r * (W_hn h + b_hn)) (cell math in ops/seq.h).
 * Sources and checks: ops/rnn.h.
 *
 * Forward: one GEMM projects all timesteps, A = x W_ih^T [B*T, 3H]; per step
 * one GEMM gives gh = h_{t-1} W_hh^T [B, 3H] (scratch) and one elementwise
 * pass adds the biases, applies the gates and writes h_t = y[:, t]. The aux
 * keeps the activated gates r, z, n [B,T,3H] (A, overwritten in place) and
 * W_hn h + b_hn [B,T,H], so the backward recomputes nothing. Extra: h_n.
 *
 * gru_bwd (sources dy, forward node, w_hh, then h0, dh_n where present) runs
 * the recurrence backwards: per step one elementwise pass writes the
 * input-side pre-activation gradients dGi[:, t] = (dr, dz, dn) and the
 * hidden-side ones dGh[:, t] = (dr, dz, r dn), then one GEMM adds
 * dGh_t W_hh to dh_{t-1} = z dh_t. Primary output dGi [B,T,3H]; extras (as
 * needed) dGh [B,T,3H] (for db_hh and dW_hh; else a per-step scratch), dh0
 * and dW_hh = dGh^T [h0; y[:, :-1]]. dx, dW_ih, db_ih, db_hh: rnn.c. */
#include "ops/rnn.h"
#include "ops/cpu_kernel.h"
#include "ops/seq.h"
#include "backends/cpu/cpu.h"

static kl_status gru_shape(kl_tensor *t)
{
    int64_t B, T, NI, H;
    KL_TRY(kl_rnn_check(t, "gru", &B, &T, &NI, &H));
    int64_t bh[2] = {B, H};
    kl_tensor *e;
    KL_TRY(kl_node_add_extra(t, t->dtype, 2, bh, &e)); /* h_n */
    size_t es = kl_calc_size(t->dtype);
    t->aux_bytes = (size_t)(B * T * 4 * H) * es;
    t->scratch_bytes = (size_t)(B * 3 * H) * es;
    return KL_OK;
}

#define GRU_KERNELS(T_)                                                                            \
    static void gru_fwd_##T_(const kl_exec *ex, const kl_tensor *t)                                \
    {                                                                                              \
        const kl_rnn_attr *a = KL_ATTR_C(t, kl_rnn_attr);                                          \
        const T_ *x = kl_data(ex, t->src[0]), *wih = kl_data(ex, t->src[1]), *whh = kl_data(ex, t->src[2]); \
        const T_ *bih = kl_rnn_src(ex, t, a->ib_ih), *bhh = kl_rnn_src(ex, t, a->ib_hh);           \
        const T_ *h0 = kl_rnn_src(ex, t, a->ih0);                                                  \
        int64_t B = t->ne[0], T = t->ne[1], H = t->ne[2], NI = t->src[0]->ne[2], G3 = 3 * H;       \
        T_ *y = kl_data(ex, t), *A = kl_aux(ex, t), *HN = A + B * T * G3, *gh = kl_scratch(ex, t); \
        kl_rnn_fwd_##T_ u = {.A = A, .S = HN, .y = y, .bih = bih, .bhh = bhh, .h0 = h0, .gh = gh,  \
                             .hn = kl_data(ex, t->extra[0]), .B = B, .steps = T, .H = H};          \
        kl_gemm_##T_(false, true, B * T, G3, NI, 1, x, NI, wih, NI, 0, A, G3);                     \
        kl_gemm_rep rep; /* h_{t-1} W_hh^T for t >= 1: W_hh packed once */                         \
        kl_gemm_rep_begin(&rep, ex->threads, t->dtype == KL_F32, true, B, G3, H, whh, H, T * H, G3, 0); \
        for (int64_t s = 0; s < T; s++) {                                                          \
            if (s) kl_gemm_rep_##T_(&rep, y + (s - 1) * H, gh);                                    \
            else if (h0) kl_gemm_##T_(false, true, B, G3, H, 1, h0, H, whh, H, 0, gh, G3);         \
            _Pragma("omp parallel for schedule(static) if (B * H >= KL_RNN_PAR_MIN)")              \
            for (int64_t n = 0; n < B * H; n++) kl_gru_step_##T_(&u, s, n);                        \
        }                                                                                          \
        kl_gemm_rep_end(&rep);                                                                     \
    }                                                                                              \
    static void gru_bwd_##T_(const kl_exec *ex, const kl_tensor *t)                                \
    {                                                                                              \
        const kl_rnn_bwd_attr *a = KL_ATTR_C(t, kl_rnn_bwd_attr);                                  \
        const kl_tensor *fw = t->src[1];                                                           \
        int64_t B = fw->ne[0], T = fw->ne[1], H = fw->ne[2], G3 = 3 * H;                           \
        const T_ *dy = kl_data(ex, t->src[0]), *y = kl_data(ex, fw), *whh = kl_data(ex, t->src[2]); \
        const T_ *A = kl_aux(ex, fw), *HN = A + B * T * G3;                                        \
        const T_ *h0 = kl_rnn_src(ex, t, a->ih0), *dhn = kl_rnn_src(ex, t, a->idhn);               \
        T_ *dGi = kl_data(ex, t), *dh = kl_scratch(ex, t), *more = dh + B * H;                     \
        int e = 0;                                                                                 \
        T_ *dGh = a->need_dgh ? kl_data(ex, t->extra[e++]) : NULL;                                 \
        T_ *dh0 = a->need_dh0 ? kl_data(ex, t->extra[e++]) : NULL;                                 \
        T_ *dwhh = a->need_dwhh ? kl_data(ex, t->extra[e++]) : NULL;                               \
        int64_t ldg = dGh ? T * G3 : G3; /* dGh rows of one step: the extra, or scratch */         \
        for (int64_t n = 0; n < B * H; n++) dh[n] = dhn ? dhn[n] : (T_)0;                          \
        kl_rnn_bwd_##T_ u = {.dy = dy, .y = y, .A = A, .S = HN, .h0 = h0, .dG = dGi, .dh = dh,     \
                             .ldg = ldg, .B = B, .steps = T, .H = H};                              \
        kl_gemm_rep rep; /* dh_{t-1} += dG^h_t W_hh: W_hh packed once */                           \
        kl_gemm_rep_begin(&rep, ex->threads, t->dtype == KL_F32, false, B, H, G3, whh, H, ldg, H, 1); \
        for (int64_t s = T - 1; s >= 0; s--) {                                                     \
            T_ *ght = dGh ? dGh + s * G3 : more;                                                   \
            u.dgh = ght;                                                                           \
            _Pragma("omp parallel for schedule(static) if (B * H >= KL_RNN_PAR_MIN)")              \
            for (int64_t n = 0; n < B * H; n++) kl_gru_step_bwd_##T_(&u, s, n);                    \
            if (s > 0 || dh0) kl_gemm_rep_##T_(&rep, ght, dh);                                     \
        }                                                                                          \
        kl_gemm_rep_end(&rep);                                                                     \
        if (dh0) memcpy(dh0, dh, (size_t)(B * H) * sizeof(T_));                                    \
        if (dwhh) kl_rnn_dwhh_##T_(dGh, h0, y, B, T, H, G3, more, dwhh);                           \
    }
KL_FOR_REAL(GRU_KERNELS)

KL_CPU_REAL_KERNEL(gru_cpu, gru_fwd)
KL_CPU_REAL_KERNEL(gru_bwd_cpu, gru_bwd)

static kl_status gru_bwd_shape(kl_tensor *t)
{
    const kl_rnn_bwd_attr *a = KL_ATTR_C(t, kl_rnn_bwd_attr);
    KL_TRY(kl_rnn_bwd_shape(t, KL_OP_gru, "gru_bwd", 3, a->need_dwhh && !a->need_dgh));
    int64_t B = t->ne[0], T = t->ne[1], H = t->ne[2] / 3;
    /* dh [B,H], then the step's dGh [B,3H] (no dGh extra) or [h0; y[:, :-1]] (for dW_hh) */
    int64_t more = a->need_dwhh ? B * T * H : a->need_dgh ? 0 : B * 3 * H;
    size_t es = kl_calc_size(t->dtype);
    if (t->g->ctx->backend == KL_BACKEND_CUDA) /* the second part at a 256-byte offset (a GEMM operand) */
        t->scratch_bytes = kl_rnn_bwd_scratch_cuda(0, B, T, H, es, a->need_dwhh, a->need_dgh, NULL);
    else t->scratch_bytes = (size_t)(B * H + more) * es;
    return KL_OK;
}

static kl_status gru_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    const kl_rnn_attr *fa = KL_ATTR_C(t, kl_rnn_attr);
    kl_tensor *h0 = fa->ih0 >= 0 ? t->src[fa->ih0] : NULL, *bhh = fa->ib_hh >= 0 ? t->src[fa->ib_hh] : NULL;
    kl_rnn_bwd_attr a = {.need_dh0 = h0 && h0->requires_grad, .need_dwhh = t->src[2]->requires_grad};
    a.need_dgh = a.need_dwhh || (bhh && bhh->requires_grad);
    return kl_rnn_backward(g, t, dy, KL_OP_gru_bwd, a);
}

const kl_op_def kl_op_gru = {
    .name = "gru", .shape = gru_shape, .backward = gru_backward, .fwd = {[KL_BACKEND_CPU] = gru_cpu}};
const kl_op_def kl_op_gru_bwd = {
    .name = "gru_bwd", .shape = gru_bwd_shape, .fwd = {[KL_BACKEND_CPU] = gru_bwd_cpu}};

kl_status kl_gru(kl_graph *g, kl_tensor *x, kl_tensor *h0, kl_tensor *w_ih, kl_tensor *w_hh, kl_tensor *b_ih,
                 kl_tensor *b_hh, kl_tensor **y, kl_tensor **h_n)
{
    return kl_rnn_build(g, KL_OP_gru, 3, x, h0, NULL, w_ih, w_hh, b_ih, b_hh, y, h_n, NULL);
}
