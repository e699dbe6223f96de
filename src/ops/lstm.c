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
#include "ops/seq.h"
#include "backends/cpu/cpu.h"

typedef struct {
    int ih0, ic0, idhn, idcn;            /* bwd source indices; -1: absent */
    int need_dh0, need_dc0, need_dwhh;   /* extras, in this order */
} lstm_bwd_attr;

static kl_status lstm_shape(kl_tensor *t)
{
    int64_t B, T, NI, H;
    KL_TRY(kl_rnn_check(t, "lstm", &B, &T, &NI, &H));
    int64_t bh[2] = {B, H};
    kl_tensor *e;
    KL_TRY(kl_node_add_extra(t, t->dtype, 2, bh, &e)); /* h_n */
    KL_TRY(kl_node_add_extra(t, t->dtype, 2, bh, &e)); /* c_n */
    t->aux_bytes = (size_t)(B * T * 5 * H) * kl_dtype_size(t->dtype);
    return KL_OK;
}

#define LSTM_KERNELS(T_)                                                                           \
    static void lstm_fwd_##T_(const kl_exec *ex, const kl_tensor *t)                               \
    {                                                                                              \
        const kl_rnn_attr *a = KL_ATTR_C(t, kl_rnn_attr);                                          \
        const T_ *x = kl_data(ex, t->src[0]), *wih = kl_data(ex, t->src[1]), *whh = kl_data(ex, t->src[2]); \
        const T_ *bih = a->ib_ih >= 0 ? kl_data(ex, t->src[a->ib_ih]) : NULL;                      \
        const T_ *bhh = a->ib_hh >= 0 ? kl_data(ex, t->src[a->ib_hh]) : NULL;                      \
        const T_ *h0 = a->ih0 >= 0 ? kl_data(ex, t->src[a->ih0]) : NULL;                           \
        const T_ *c0 = a->ic0 >= 0 ? kl_data(ex, t->src[a->ic0]) : NULL;                           \
        int64_t B = t->ne[0], T = t->ne[1], H = t->ne[2], NI = t->src[0]->ne[2], G4 = 4 * H;       \
        T_ *y = kl_data(ex, t), *A = kl_aux(ex, t), *C = A + B * T * G4;                           \
        T_ *hn = kl_data(ex, t->extra[0]), *cn = kl_data(ex, t->extra[1]);                         \
        kl_gemm_##T_(false, true, B * T, G4, NI, 1, x, NI, wih, NI, 0, A, G4);                     \
        for (int64_t s = 0; s < T; s++) {                                                          \
            const T_ *hp = s ? y + (s - 1) * H : h0;                                               \
            if (hp) kl_gemm_##T_(false, true, B, G4, H, 1, hp, s ? T * H : H, whh, H, 1, A + s * G4, T * G4); \
            _Pragma("omp parallel for schedule(static) if (B * H >= KL_RNN_PAR_MIN)")              \
            for (int64_t n = 0; n < B * H; n++) {                                                  \
                int64_t b = n / H, j = n % H, r = b * T + s;                                       \
                T_ *gt = A + r * G4;                                                               \
                for (int k = 0; k < 4; k++)                                                        \
                    gt[k * H + j] += (bih ? bih[k * H + j] : (T_)0) + (bhh ? bhh[k * H + j] : (T_)0); \
                T_ cp = s ? C[(r - 1) * H + j] : (c0 ? c0[n] : (T_)0);                             \
                C[r * H + j] = kl_lstm_cell_##T_(&gt[j], &gt[H + j], &gt[2 * H + j], &gt[3 * H + j], cp, \
                                                 &y[r * H + j]);                                   \
            }                                                                                      \
        }                                                                                          \
        for (int64_t b = 0; b < B; b++) {                                                          \
            memcpy(hn + b * H, y + (b * T + T - 1) * H, (size_t)H * sizeof(T_));                   \
            memcpy(cn + b * H, C + (b * T + T - 1) * H, (size_t)H * sizeof(T_));                   \
        }                                                                                          \
    }                                                                                              \
    static void lstm_bwd_##T_(const kl_exec *ex, const kl_tensor *t)                               \
    {                                                                                              \
        const lstm_bwd_attr *a = KL_ATTR_C(t, lstm_bwd_attr);                                      \
        const kl_tensor *fw = t->src[1];                                                           \
        int64_t B = fw->ne[0], T = fw->ne[1], H = fw->ne[2], G4 = 4 * H;                           \
        const T_ *dy = kl_data(ex, t->src[0]), *y = kl_data(ex, fw), *whh = kl_data(ex, t->src[2]); \
        const T_ *A = kl_aux(ex, fw), *C = A + B * T * G4;                                         \
        const T_ *h0 = a->ih0 >= 0 ? kl_data(ex, t->src[a->ih0]) : NULL;                           \
        const T_ *c0 = a->ic0 >= 0 ? kl_data(ex, t->src[a->ic0]) : NULL;                           \
        const T_ *dhn = a->idhn >= 0 ? kl_data(ex, t->src[a->idhn]) : NULL;                        \
        const T_ *dcn = a->idcn >= 0 ? kl_data(ex, t->src[a->idcn]) : NULL;                        \
        T_ *dG = kl_data(ex, t), *dh = kl_scratch(ex, t), *dc = dh + B * H, *hp = dc + B * H;      \
        int e = 0;                                                                                 \
        T_ *dh0 = a->need_dh0 ? kl_data(ex, t->extra[e++]) : NULL;                                 \
        T_ *dc0 = a->need_dc0 ? kl_data(ex, t->extra[e++]) : NULL;                                 \
        T_ *dwhh = a->need_dwhh ? kl_data(ex, t->extra[e++]) : NULL;                               \
        for (int64_t n = 0; n < B * H; n++) {                                                      \
            dh[n] = dhn ? dhn[n] : (T_)0;                                                          \
            dc[n] = dcn ? dcn[n] : (T_)0;                                                          \
        }                                                                                          \
        for (int64_t s = T - 1; s >= 0; s--) {                                                     \
            _Pragma("omp parallel for schedule(static) if (B * H >= KL_RNN_PAR_MIN)")              \
            for (int64_t n = 0; n < B * H; n++) {                                                  \
                int64_t b = n / H, j = n % H, r = b * T + s;                                       \
                const T_ *gt = A + r * G4;                                                         \
                T_ *dg = dG + r * G4;                                                              \
                T_ cp = s ? C[(r - 1) * H + j] : (c0 ? c0[n] : (T_)0);                             \
                dc[n] = kl_lstm_cell_bwd_##T_(gt[j], gt[H + j], gt[2 * H + j], gt[3 * H + j], C[r * H + j], cp, \
                                              dy[r * H + j] + dh[n], dc[n], &dg[j], &dg[H + j],    \
                                              &dg[2 * H + j], &dg[3 * H + j]);                     \
            }                                                                                      \
            if (s > 0 || dh0) kl_gemm_##T_(false, false, B, H, G4, 1, dG + s * G4, T * G4, whh, H, 0, dh, H); \
        }                                                                                          \
        if (dh0) memcpy(dh0, dh, (size_t)(B * H) * sizeof(T_));                                    \
        if (dc0) memcpy(dc0, dc, (size_t)(B * H) * sizeof(T_));                                    \
        if (!dwhh) return;                                                                         \
        for (int64_t b = 0; b < B; b++) { /* hp = [h0; y[:, :-1]] per sample */                    \
            T_ *row = hp + b * T * H;                                                              \
            if (h0) memcpy(row, h0 + b * H, (size_t)H * sizeof(T_));                               \
            else memset(row, 0, (size_t)H * sizeof(T_));                                           \
            if (T > 1) memcpy(row + H, y + b * T * H, (size_t)((T - 1) * H) * sizeof(T_));         \
        }                                                                                          \
        kl_gemm_##T_(true, false, G4, H, B * T, 1, dG, G4, hp, H, 0, dwhh, H);                     \
    }
KL_FOR_REAL(LSTM_KERNELS)

static kl_status lstm_cpu(const kl_exec *ex, const kl_tensor *t)
{
    if (t->dtype == KL_F32) lstm_fwd_float(ex, t);
    else lstm_fwd_double(ex, t);
    return KL_OK;
}

static kl_status lstm_bwd_cpu(const kl_exec *ex, const kl_tensor *t)
{
    if (t->dtype == KL_F32) lstm_bwd_float(ex, t);
    else lstm_bwd_double(ex, t);
    return KL_OK;
}

static kl_status lstm_bwd_shape(kl_tensor *t)
{
    const lstm_bwd_attr *a = KL_ATTR_C(t, lstm_bwd_attr);
    const kl_tensor *dy = t->src[0], *fw = t->src[1];
    if (fw->op != KL_OP_lstm || !kl_same_shape(dy, fw) || dy->dtype != fw->dtype)
        return kl_fail(KL_EINTERNAL, "lstm_bwd: dy %s vs forward %s", kl_desc(dy), kl_desc(fw));
    int64_t B = fw->ne[0], T = fw->ne[1], H = fw->ne[2], bh[2] = {B, H}, wd[2] = {4 * H, H};
    t->dtype = fw->dtype;
    t->ndim = 3;
    t->ne[0] = B, t->ne[1] = T, t->ne[2] = 4 * H;
    kl_tensor *e;
    if (a->need_dh0) KL_TRY(kl_node_add_extra(t, t->dtype, 2, bh, &e));
    if (a->need_dc0) KL_TRY(kl_node_add_extra(t, t->dtype, 2, bh, &e));
    if (a->need_dwhh) KL_TRY(kl_node_add_extra(t, t->dtype, 2, wd, &e));
    t->scratch_bytes = (size_t)(2 * B * H + (a->need_dwhh ? B * T * H : 0)) * kl_dtype_size(t->dtype);
    return KL_OK;
}

static kl_status lstm_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    const kl_rnn_attr *fa = KL_ATTR_C(t, kl_rnn_attr);
    kl_tensor *h0 = fa->ih0 >= 0 ? t->src[fa->ih0] : NULL, *c0 = fa->ic0 >= 0 ? t->src[fa->ic0] : NULL;
    kl_tensor *dhn = t->extra[0]->grad, *dcn = t->extra[1]->grad, *dG;
    lstm_bwd_attr a = {.ih0 = -1, .ic0 = -1, .idhn = -1, .idcn = -1, .need_dh0 = h0 && h0->requires_grad,
                       .need_dc0 = c0 && c0->requires_grad, .need_dwhh = t->src[2]->requires_grad};
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
    KL_TRY(kl_node_new(g, KL_OP_lstm_bwd, n, src, &a, sizeof a, &dG));
    int e = 0;
    if (a.need_dh0) KL_TRY(kl_grad_acc(g, h0, dG->extra[e++]));
    if (a.need_dc0) KL_TRY(kl_grad_acc(g, c0, dG->extra[e++]));
    if (a.need_dwhh) KL_TRY(kl_grad_acc(g, t->src[2], dG->extra[e++]));
    return need_in ? kl_rnn_input_grads(g, t, dG, dG) : KL_OK;
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
