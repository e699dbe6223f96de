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

/* Per-step elementwise loops run in parallel from this many units (B * H). */
#define KL_RNN_PAR_MIN 2048

typedef struct {
    int gates;                     /* G */
    int ib_ih, ib_hh, ih0, ic0;    /* source indices; -1: absent */
} kl_rnn_attr;

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

#endif
