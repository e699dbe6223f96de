/* One LSTM layer, batch first, PyTorch's gate layout (i, f, g, o; cell math
 * in ops/seq.h). Sources and checks: ops/rnn.h.
 *
 * Forward: one GEMM projects all timesteps, A = x W_ih^T [B*T, 4H]; then per
 * step A_t += h_{t-1} W_hh^T (one GEMM) and one elementwise pass adds the
 * biases, applies the gates and writes c_t and h_t = y[:, t]. The aux keeps
 * what the backward needs, so nothing is recomputed: the activated gates
 * [B,T,4H] (A, overwritten in place) and the cell states c [B,T,H].
 * Extras: h_n [B,H] and c_n [B,H] (copies of the last step).
 *
 * lstm_bwd (sources dy, forward node, w_hh, then h0, c0, dh_n, dc_n where
 * present) runs the recurrence backwards: per step one elementwise pass
 * writes the pre-activation gradients dG[:, t] and dc, then one GEMM gives
 * dh_{t-1} = dG_t W_hh. Its primary output is dG [B,T,4H]; extras (as
 * needed) dh0, dc0 and dW_hh = dG^T [h0; y[:, :-1]] (one GEMM over all B*T
 * rows). dx, dW_ih and the biases' gradients follow from dG with existing
 * ops (rnn.c). */
#include "ops/rnn.h"
#include "ops/cpu_kernel.h"
#include "ops/seq.h"
#include "backends/cpu/cpu.h"

static kl_status lstm_shape(kl_tensor *t)
{
    int64_t B, T, NI, H;
    KL_TRY(kl_rnn_check(t, "lstm", &B, &T, &NI, &H));
    int64_t bh[2] = {B, H};
    kl_tensor *e;
    KL_TRY(kl_node_add_extra(t, t->dtype, 2, bh, &e)); /* h_n */
    KL_TRY(kl_node_add_extra(t, t->dtype, 2, bh, &e)); /* c_n */
    t->aux_bytes = (size_t)(B * T * 5 * H) * kl_calc_size(t->dtype);
    return KL_OK;
}

#define LSTM_KERNELS(T_)                                                                           \
    static void lstm_fwd_##T_(const kl_exec *ex, const kl_tensor *t)                               \
    {                                                                                              \
        const kl_rnn_attr *a = KL_ATTR_C(t, kl_rnn_attr);                                          \
        const T_ *x = kl_data(ex, t->src[0]), *wih = kl_data(ex, t->src[1]), *whh = kl_data(ex, t->src[2]); \
        const T_ *bih = kl_rnn_src(ex, t, a->ib_ih), *bhh = kl_rnn_src(ex, t, a->ib_hh);           \
        const T_ *h0 = kl_rnn_src(ex, t, a->ih0), *c0 = kl_rnn_src(ex, t, a->ic0);                 \
        int64_t B = t->ne[0], T = t->ne[1], H = t->ne[2], NI = t->src[0]->ne[2], G4 = 4 * H;       \
        T_ *y = kl_data(ex, t), *A = kl_aux(ex, t), *C = A + B * T * G4;                           \
        kl_rnn_fwd_##T_ u = {.A = A, .S = C, .y = y, .bih = bih, .bhh = bhh, .c0 = c0,             \
                             .hn = kl_data(ex, t->extra[0]), .cn = kl_data(ex, t->extra[1]),       \
                             .B = B, .steps = T, .H = H};                                          \
        kl_gemm_##T_(false, true, B * T, G4, NI, 1, x, NI, wih, NI, 0, A, G4);                     \
        kl_gemm_rep rep; /* h_{t-1} W_hh^T for t >= 1: W_hh packed once */                         \
        kl_gemm_rep_begin(&rep, ex->threads, t->dtype == KL_F32, true, B, G4, H, whh, H, T * H, T * G4, 1); \
        for (int64_t s = 0; s < T; s++) {                                                          \
            if (s) kl_gemm_rep_##T_(&rep, y + (s - 1) * H, A + s * G4);                            \
            else if (h0) kl_gemm_##T_(false, true, B, G4, H, 1, h0, H, whh, H, 1, A, T * G4);      \
            _Pragma("omp parallel for schedule(static) if (B * H >= KL_RNN_PAR_MIN)")              \
            for (int64_t n = 0; n < B * H; n++) kl_lstm_step_##T_(&u, s, n);                       \
        }                                                                                          \
        kl_gemm_rep_end(&rep);                                                                     \
    }                                                                                              \
    static void lstm_bwd_##T_(const kl_exec *ex, const kl_tensor *t)                               \
    {                                                                                              \
        const kl_rnn_bwd_attr *a = KL_ATTR_C(t, kl_rnn_bwd_attr);                                  \
        const kl_tensor *fw = t->src[1];                                                           \
        int64_t B = fw->ne[0], T = fw->ne[1], H = fw->ne[2], G4 = 4 * H;                           \
        const T_ *dy = kl_data(ex, t->src[0]), *y = kl_data(ex, fw), *whh = kl_data(ex, t->src[2]); \
        const T_ *A = kl_aux(ex, fw), *C = A + B * T * G4;                                         \
        const T_ *h0 = kl_rnn_src(ex, t, a->ih0), *c0 = kl_rnn_src(ex, t, a->ic0);                 \
        const T_ *dhn = kl_rnn_src(ex, t, a->idhn), *dcn = kl_rnn_src(ex, t, a->idcn);             \
        T_ *dG = kl_data(ex, t), *dh = kl_scratch(ex, t), *dc = dh + B * H, *hp = dc + B * H;      \
        int e = 0;                                                                                 \
        T_ *dh0 = a->need_dh0 ? kl_data(ex, t->extra[e++]) : NULL;                                 \
        T_ *dc0 = a->need_dc0 ? kl_data(ex, t->extra[e++]) : NULL;                                 \
        T_ *dwhh = a->need_dwhh ? kl_data(ex, t->extra[e++]) : NULL;                               \
        for (int64_t n = 0; n < B * H; n++) {                                                      \
            dh[n] = dhn ? dhn[n] : (T_)0;                                                          \
            dc[n] = dcn ? dcn[n] : (T_)0;                                                          \
        }                                                                                          \
        kl_rnn_bwd_##T_ u = {.dy = dy, .y = y, .A = A, .S = C, .h0 = h0, .c0 = c0, .dG = dG, .dh = dh, \
                             .dc = dc, .B = B, .steps = T, .H = H};                                \
        kl_gemm_rep rep; /* dh_{t-1} = dG_t W_hh: W_hh packed once */                              \
        kl_gemm_rep_begin(&rep, ex->threads, t->dtype == KL_F32, false, B, H, G4, whh, H, T * G4, H, 0); \
        for (int64_t s = T - 1; s >= 0; s--) {                                                     \
            _Pragma("omp parallel for schedule(static) if (B * H >= KL_RNN_PAR_MIN)")              \
            for (int64_t n = 0; n < B * H; n++) kl_lstm_step_bwd_##T_(&u, s, n);                   \
            if (s > 0 || dh0) kl_gemm_rep_##T_(&rep, dG + s * G4, dh);                             \
        }                                                                                          \
        kl_gemm_rep_end(&rep);                                                                     \
        if (dh0) memcpy(dh0, dh, (size_t)(B * H) * sizeof(T_));                                    \
        if (dc0) memcpy(dc0, dc, (size_t)(B * H) * sizeof(T_));                                    \
        if (dwhh) kl_rnn_dwhh_##T_(dG, h0, y, B, T, H, G4, hp, dwhh);                              \
    }
KL_FOR_REAL(LSTM_KERNELS)

KL_CPU_REAL_KERNEL(lstm_cpu, lstm_fwd)
KL_CPU_REAL_KERNEL(lstm_bwd_cpu, lstm_bwd)

static kl_status lstm_bwd_shape(kl_tensor *t)
{
    const kl_rnn_bwd_attr *a = KL_ATTR_C(t, kl_rnn_bwd_attr);
    KL_TRY(kl_rnn_bwd_shape(t, KL_OP_lstm, "lstm_bwd", 4, false));
    int64_t B = t->ne[0], T = t->ne[1], H = t->ne[2] / 4;
    size_t es = kl_calc_size(t->dtype), rows = a->need_dwhh ? (size_t)(B * T * H) * es : 0;
    /* dh, dc [B,H], then [h0; y[:, :-1]] [B,T,H] for dW_hh; CUDA: at 256-byte offsets (GEMM operands) */
    if (t->g->ctx->backend == KL_BACKEND_CUDA) t->scratch_bytes = kl_rnn_bwd_scratch_cuda(1, B, T, H, es, a->need_dwhh, 0, NULL);
    else t->scratch_bytes = (size_t)(2 * B * H) * es + rows;
    return KL_OK;
}

static kl_status lstm_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    const kl_rnn_attr *fa = KL_ATTR_C(t, kl_rnn_attr);
    kl_tensor *h0 = fa->ih0 >= 0 ? t->src[fa->ih0] : NULL, *c0 = fa->ic0 >= 0 ? t->src[fa->ic0] : NULL;
    kl_rnn_bwd_attr a = {.need_dh0 = h0 && h0->requires_grad, .need_dc0 = c0 && c0->requires_grad,
                         .need_dwhh = t->src[2]->requires_grad};
    return kl_rnn_backward(g, t, dy, KL_OP_lstm_bwd, a);
}

const kl_op_def kl_op_lstm = {
    .name = "lstm", .shape = lstm_shape, .backward = lstm_backward, .fwd = {[KL_BACKEND_CPU] = lstm_cpu}};
const kl_op_def kl_op_lstm_bwd = {
    .name = "lstm_bwd", .shape = lstm_bwd_shape, .fwd = {[KL_BACKEND_CPU] = lstm_bwd_cpu}};

kl_status kl_lstm(kl_graph *g, kl_tensor *x, kl_tensor *h0, kl_tensor *c0, kl_tensor *w_ih, kl_tensor *w_hh,
                  kl_tensor *b_ih, kl_tensor *b_hh, kl_tensor **y, kl_tensor **h_n, kl_tensor **c_n)
{
    return kl_rnn_build(g, KL_OP_lstm, 4, x, h0, c0, w_ih, w_hh, b_ih, b_hh, y, h_n, c_n);
}
