/* Shared parts of the LSTM (lstm.c) and GRU (gru.c) layer ops: the forward
 * node's sources and checks, the builder, and the gradients that follow from
 * the gate-gradient tensors by plain matmuls and sums (rnn.c).
 *
 * Forward node sources: x [B,T,I], w_ih [G*H,I], w_hh [G*H,H], then those
 * present of b_ih [G*H], b_hh [G*H], h0 [B,H], c0 [B,H] (LSTM), at the indices
 * in kl_rnn_attr (-1: absent, i.e. zeros). G = 4 (LSTM) or 3 (GRU). */
#ifndef KL_OPS_RNN_H
#define KL_OPS_RNN_H

#include "ops/ops.h"
#include "ops/attrs.h"

/* Per-step elementwise loops run in parallel from this many units (B * H). */
#define KL_RNN_PAR_MIN 2048

/* kl_rnn_attr (forward node) and kl_rnn_bwd_attr (backward node: sources
 * dy, forward node, w_hh, then those present of h0, c0, dh_n, dc_n at its
 * indices, -1: absent; primary output dG [B,T,G*H]; extras, in this order,
 * those asked of dGh [B,T,G*H] (GRU: the hidden-side pre-activation
 * gradients), dh0, dc0 (LSTM), dW_hh) live in ops/attrs.h (CUDA reads them). */

/* Data of source i of node t for a CPU kernel; NULL when i < 0 (absent). */
static inline void *kl_rnn_src(const kl_exec *ex, const kl_tensor *t, int i)
{
    return i >= 0 ? kl_data(ex, t->src[i]) : NULL;
}

/* Checks a forward node's sources and sets y [B,T,H] (dtype, ndim, ne);
 * op names the op in messages. Outputs B, T, I, H. */
kl_status kl_rnn_check(kl_tensor *t, const char *op, int64_t *B, int64_t *T, int64_t *NI, int64_t *H);

/* Records the forward node (inputs made contiguous); returns y, h_n (and
 * c_n for the LSTM: the node's extras 0 and 1). */
kl_status kl_rnn_build(kl_graph *g, kl_op_id op, int gates, kl_tensor *x, kl_tensor *h0, kl_tensor *c0,
                       kl_tensor *w_ih, kl_tensor *w_hh, kl_tensor *b_ih, kl_tensor *b_hh, kl_tensor **y,
                       kl_tensor **h_n, kl_tensor **c_n);

/* Whether any of x, w_ih, b_ih, b_hh of forward node t needs a gradient. */
bool kl_rnn_needs_input_grads(const kl_tensor *t);

/* From the gradients of the input-side pre-activations dgi [B,T,G*H] and
 * the hidden-side ones dgh (same as dgi for the LSTM): dx = dgi W_ih,
 * dW_ih = dgi^T x, db_ih = sum dgi, db_hh = sum dgh. */
kl_status kl_rnn_input_grads(kl_graph *g, kl_tensor *t, kl_tensor *dgi, kl_tensor *dgh);

/* Shape of a backward node t (kl_rnn_bwd_attr) of forward op fwd_op with G
 * gates: checks dy against the forward node (bad: an op-specific failure of
 * the same check), sets dG and adds the extras asked. op names t's op. */
kl_status kl_rnn_bwd_shape(kl_tensor *t, kl_op_id fwd_op, const char *op, int G, bool bad);

/* Records backward node op of forward node t, with a's need_* set by the
 * caller (this fills the source indices), and accumulates the gradients of
 * h0, c0, w_hh and of the inputs (kl_rnn_input_grads). */
kl_status kl_rnn_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy, kl_op_id op, kl_rnn_bwd_attr a);

/* dW_hh [GH,H] = dG^T [h0; y[:, :-1]] over all B*T rows (dG [B*T,GH]); rows
 * [B*T,H] is scratch for the right factor; h0 may be NULL (zeros). */
#define KL_RNN_DWHH_DECL(T_)                                                                       \
    void kl_rnn_dwhh_##T_(const T_ *dG, const T_ *h0, const T_ *y, int64_t B, int64_t T, int64_t H, \
                          int64_t GH, T_ *rows, T_ *dwhh);
KL_FOR_REAL(KL_RNN_DWHH_DECL)

#endif
