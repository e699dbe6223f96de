/* Gradient checks (double precision, central differences) for the sequence
 * ops: LSTM and GRU layers (every input, state and weight; with and without
 * initial states and biases; through y, h_n and c_n; constant weights so the
 * backward skips work; strided inputs; two stacked layers), attention
 * (causal and not, Tq != Tk, Dv != D, more rows than one query block, a
 * fused-qkv view read in place, a transposed view), RMSNorm and RoPE.
 * Forward values against naive references and error messages are in
 * test_seq_ops.c. */
#include "gradcheck.h"
#include "testutil.h"

#define B(name) static kl_status name(kl_graph *g, kl_tensor **x, void *u, kl_tensor **y)

/* [B, a...] and [B, b...] flattened per sample and joined: [B, a + b (+ c)] */
static kl_status join(kl_graph *g, int n, kl_tensor **ts, kl_tensor **out)
{
    kl_tensor *f[3];
    for (int i = 0; i < n; i++) {
        int64_t d[2] = {kl_tensor_dim(ts[i], 0), -1};
        KL_TRY_T(kl_reshape(g, ts[i], 2, d, &f[i]));
    }
    return kl_concat(g, n, f, 1, out);
}

/* a random constant (a buffer: needs no gradient) */
static kl_status constant(kl_graph *g, const char *name, int nd, int64_t d0, int64_t d1, int64_t d2, kl_tensor **out)
{
    int64_t d[3] = {d0, d1, d2};
    kl_init init = {KL_INIT_UNIFORM, 0.8};
    return kl_buffer(g, name, KL_F64, nd, d, &init, out);
}

/* ---- LSTM: x[0] x, then w_ih, w_hh, b_ih, b_hh, h0, c0 as the case says ---- */

typedef struct {
    int bias, h0, c0; /* which optional inputs are present (in this order after the weights) */
    int out;          /* 0: y, h_n, c_n joined; 1: h_n only; 2: c_n only */
    int whh_const;    /* w_hh is a constant (no gradient) instead of an input */
    int transpose;    /* x[0] is [T, B, I], transposed to [B, T, I] */
} rnn_case;

B(b_lstm)
{
    const rnn_case *c = u;
    kl_tensor *in = x[0], *wih = x[1], *whh = NULL, *bih = NULL, *bhh = NULL, *h0 = NULL, *c0 = NULL;
    int k = 2;
    int64_t H = kl_tensor_dim(wih, 0) / 4;
    if (c->whh_const) KL_TRY_T(constant(g, "w_hh", 2, 4 * H, H, 0, &whh));
    else whh = x[k++];
    if (c->bias) bih = x[k++], bhh = x[k++];
    if (c->h0) h0 = x[k++];
    if (c->c0) c0 = x[k++];
    if (c->transpose) KL_TRY_T(kl_transpose(g, in, 0, 1, &in));
    kl_tensor *ys, *hn, *cn;
    KL_TRY_T(kl_lstm(g, in, h0, c0, wih, whh, bih, bhh, &ys, &hn, &cn));
    if (c->out == 1) return kl_tanh(g, hn, y);
    if (c->out == 2) return kl_tanh(g, cn, y);
    kl_tensor *parts[3] = {ys, hn, cn};
    return join(g, 3, parts, y);
}

B(b_lstm_two_layers) /* x, then (w_ih, w_hh, b_ih, b_hh) per layer; layer 2 starts from layer 1's h_n, c_n */
{
    kl_tensor *y1, *h1, *c1, *y2, *h2, *c2;
    KL_TRY_T(kl_lstm(g, x[0], NULL, NULL, x[1], x[2], x[3], x[4], &y1, &h1, &c1));
    KL_TRY_T(kl_lstm(g, y1, h1, c1, x[5], x[6], NULL, NULL, &y2, &h2, &c2));
    kl_tensor *parts[3] = {y2, h2, c2};
    return join(g, 3, parts, y);
}

/* ---- GRU: x, w_ih, w_hh (unless constant), b_ih, b_hh, h0 ---- */

B(b_gru)
{
    const rnn_case *c = u;
    kl_tensor *in = x[0], *wih = x[1], *whh = NULL, *bih = NULL, *bhh = NULL, *h0 = NULL;
    int k = 2;
    int64_t H = kl_tensor_dim(wih, 0) / 3;
    if (c->whh_const) KL_TRY_T(constant(g, "w_hh", 2, 3 * H, H, 0, &whh));
    else whh = x[k++];
    if (c->bias == 1) bih = x[k++];
    if (c->bias) bhh = x[k++]; /* bias 2: b_hh only */
    if (c->h0) h0 = x[k++];
    if (c->transpose) KL_TRY_T(kl_transpose(g, in, 0, 1, &in));
    kl_tensor *ys, *hn;
    KL_TRY_T(kl_gru(g, in, h0, wih, whh, bih, bhh, &ys, &hn));
    if (c->out) return kl_tanh(g, hn, y);
    kl_tensor *parts[2] = {ys, hn};
    return join(g, 2, parts, y);
}

B(b_gru_const_x) /* x a constant: only the weights and h0 get gradients */
{
    kl_tensor *in, *ys, *hn;
    KL_TRY_T(constant(g, "x", 3, 2, 3, 3, &in));
    KL_TRY_T(kl_gru(g, in, x[3], x[0], x[1], NULL, x[2], &ys, &hn));
    kl_tensor *parts[2] = {ys, hn};
    return join(g, 2, parts, y);
}

/* ---- attention ---- */

B(b_att) { return kl_attention(g, x[0], x[1], x[2], *(const int *)u, y); }
B(b_att_fused) /* a [B, T, H, 3D] projection viewed as q, k, v [B, H, T, D] without copies */
{
    int perm[4] = {0, 2, 1, 3};
    kl_tensor *p[3], *t;
    int64_t D = kl_tensor_dim(x[0], 3) / 3;
    KL_TRY_T(kl_permute(g, x[0], perm, &t));
    for (int i = 0; i < 3; i++) KL_TRY_T(kl_slice(g, t, 3, i * D, (i + 1) * D, &p[i]));
    return kl_attention(g, p[0], p[1], p[2], *(const int *)u, y);
}
B(b_att_transposed) /* q given as [B, H, D, T] and transposed: not readable in place */
{
    kl_tensor *q;
    KL_TRY_T(kl_transpose(g, x[0], 2, 3, &q));
    return kl_attention(g, q, x[1], x[2], 1, y);
}

/* ---- RMSNorm and RoPE ---- */

B(b_rms) { return kl_rmsnorm(g, x[0], x[1], 1e-4, y); }
B(b_rms_plain) { return kl_rmsnorm(g, x[0], NULL, 0, y); }
B(b_rms_strided)
{
    kl_tensor *t;
    KL_TRY_T(kl_transpose(g, x[0], 0, 1, &t));
    return kl_rmsnorm(g, t, x[1], 1e-3, y);
}
B(b_rope) { return kl_rope(g, x[0], *(const double *)u, y); }
B(b_rope_strided_twice) /* a transposed [B, H, D, T] input, rotated twice */
{
    kl_tensor *t;
    KL_TRY_T(kl_transpose(g, x[0], 2, 3, &t));
    KL_TRY_T(kl_rope(g, t, 0, &t));
    KL_TRY_T(kl_tanh(g, t, &t));
    return kl_rope(g, t, 100, y);
}
B(b_rope_attention) /* the usual pairing: rotated q and k */
{
    kl_tensor *q, *k;
    KL_TRY_T(kl_rope(g, x[0], 0, &q));
    KL_TRY_T(kl_rope(g, x[1], 0, &k));
    return kl_attention(g, q, k, x[2], 1, y);
}

typedef struct { const char *name; gc_build fn; void *user; int n; gc_input in[8]; } gc_case;

int main(void)
{
    /* bias, h0, c0, out, whh_const, transpose */
    static rnn_case full = {1, 1, 1, 0, 0, 0}, bare = {0, 0, 0, 0, 0, 0}, hn_only = {1, 1, 1, 1, 0, 0},
                    cn_only = {1, 0, 1, 2, 0, 0}, const_whh = {1, 1, 1, 0, 1, 0}, strided = {1, 1, 0, 0, 0, 1},
                    h0_only = {0, 1, 0, 0, 0, 0}, g_full = {1, 1, 0, 0, 0, 0}, g_hn = {1, 1, 0, 1, 0, 0},
                    g_const = {2, 1, 0, 0, 1, 0}, g_const_nob = {0, 1, 0, 0, 1, 0}, g_strided = {1, 0, 0, 0, 0, 1};
    static int causal = 1, plain = 0;
    static double base0 = 0, base_small = 50;
    const gc_case cases[] = {
        /* LSTM: x [B,T,I], w_ih [4H,I], w_hh [4H,H], b [4H], h0/c0 [B,H]; B 2, I 3, H 4 */
        {"lstm_full", b_lstm, &full, 7,
         {GC_IN(2, 3, 3), GC_IN(16, 3), GC_IN(16, 4), GC_IN(16), GC_IN(16), GC_IN(2, 4), GC_IN(2, 4)}},
        {"lstm_T5_full", b_lstm, &full, 7,
         {GC_IN(2, 5, 3), GC_IN(16, 3), GC_IN(16, 4), GC_IN(16), GC_IN(16), GC_IN(2, 4), GC_IN(2, 4)}},
        {"lstm_no_state_no_bias", b_lstm, &bare, 3, {GC_IN(2, 4, 3), GC_IN(16, 3), GC_IN(16, 4)}},
        {"lstm_h0_only", b_lstm, &h0_only, 4, {GC_IN(2, 3, 3), GC_IN(16, 3), GC_IN(16, 4), GC_IN(2, 4)}},
        {"lstm_T1", b_lstm, &full, 7,
         {GC_IN(2, 1, 3), GC_IN(16, 3), GC_IN(16, 4), GC_IN(16), GC_IN(16), GC_IN(2, 4), GC_IN(2, 4)}},
        {"lstm_h_n_only", b_lstm, &hn_only, 7,
         {GC_IN(2, 4, 3), GC_IN(16, 3), GC_IN(16, 4), GC_IN(16), GC_IN(16), GC_IN(2, 4), GC_IN(2, 4)}},
        {"lstm_c_n_only", b_lstm, &cn_only, 6,
         {GC_IN(2, 3, 3), GC_IN(16, 3), GC_IN(16, 4), GC_IN(16), GC_IN(16), GC_IN(2, 4)}},
        {"lstm_const_w_hh", b_lstm, &const_whh, 6,
         {GC_IN(2, 3, 3), GC_IN(16, 3), GC_IN(16), GC_IN(16), GC_IN(2, 4), GC_IN(2, 4)}},
        {"lstm_transposed_x", b_lstm, &strided, 6,
         {GC_IN(5, 2, 3), GC_IN(16, 3), GC_IN(16, 4), GC_IN(16), GC_IN(16), GC_IN(2, 4)}},
        {"lstm_B1_H1", b_lstm, &full, 7,
         {GC_IN(1, 3, 2), GC_IN(4, 2), GC_IN(4, 1), GC_IN(4), GC_IN(4), GC_IN(1, 1), GC_IN(1, 1)}},
        {"lstm_two_layers", b_lstm_two_layers, NULL, 7,
         {GC_IN(2, 3, 3), GC_IN(16, 3), GC_IN(16, 4), GC_IN(16), GC_IN(16), GC_IN(16, 4), GC_IN(16, 4)}},
        /* GRU: w [3H, .] */
        {"gru_full", b_gru, &g_full, 6,
         {GC_IN(2, 3, 3), GC_IN(12, 3), GC_IN(12, 4), GC_IN(12), GC_IN(12), GC_IN(2, 4)}},
        {"gru_T5_full", b_gru, &g_full, 6,
         {GC_IN(2, 5, 3), GC_IN(12, 3), GC_IN(12, 4), GC_IN(12), GC_IN(12), GC_IN(2, 4)}},
        {"gru_no_state_no_bias", b_gru, &bare, 3, {GC_IN(2, 4, 3), GC_IN(12, 3), GC_IN(12, 4)}},
        {"gru_T1", b_gru, &g_full, 6, {GC_IN(2, 1, 3), GC_IN(12, 3), GC_IN(12, 4), GC_IN(12), GC_IN(12), GC_IN(2, 4)}},
        {"gru_h_n_only", b_gru, &g_hn, 6,
         {GC_IN(2, 4, 3), GC_IN(12, 3), GC_IN(12, 4), GC_IN(12), GC_IN(12), GC_IN(2, 4)}},
        {"gru_const_w_hh_b_hh_only", b_gru, &g_const, 4, {GC_IN(2, 3, 3), GC_IN(12, 3), GC_IN(12), GC_IN(2, 4)}},
        {"gru_const_w_hh_no_bias", b_gru, &g_const_nob, 3, {GC_IN(2, 3, 3), GC_IN(12, 3), GC_IN(2, 4)}},
        {"gru_transposed_x", b_gru, &g_strided, 5, {GC_IN(4, 2, 3), GC_IN(12, 3), GC_IN(12, 4), GC_IN(12), GC_IN(12)}},
        {"gru_const_x", b_gru_const_x, NULL, 4, {GC_IN(12, 3), GC_IN(12, 4), GC_IN(12), GC_IN(2, 4)}},
        /* attention q, k, v [B, H, T, D] */
        {"attention", b_att, &plain, 3, {GC_IN(2, 2, 5, 4), GC_IN(2, 2, 5, 4), GC_IN(2, 2, 5, 4)}},
        {"attention_causal", b_att, &causal, 3, {GC_IN(2, 2, 5, 4), GC_IN(2, 2, 5, 4), GC_IN(2, 2, 5, 4)}},
        {"attention_tq3_tk5_dv3", b_att, &plain, 3, {GC_IN(2, 1, 3, 4), GC_IN(2, 1, 5, 4), GC_IN(2, 1, 5, 3)}},
        {"attention_causal_tq5_tk3", b_att, &causal, 3, {GC_IN(1, 2, 5, 2), GC_IN(1, 2, 3, 2), GC_IN(1, 2, 3, 3)}},
        {"attention_causal_tq3_tk6", b_att, &causal, 3, {GC_IN(1, 2, 3, 2), GC_IN(1, 2, 6, 2), GC_IN(1, 2, 6, 2)}},
        {"attention_causal_70_rows", b_att, &causal, 3, {GC_IN(1, 1, 70, 2), GC_IN(1, 1, 70, 2), GC_IN(1, 1, 70, 2)}},
        {"attention_70_rows", b_att, &plain, 3, {GC_IN(1, 1, 70, 2), GC_IN(1, 1, 67, 2), GC_IN(1, 1, 67, 1)}},
        {"attention_T1", b_att, &causal, 3, {GC_IN(2, 3, 1, 4), GC_IN(2, 3, 1, 4), GC_IN(2, 3, 1, 4)}},
        {"attention_fused_qkv_view", b_att_fused, &plain, 1, {GC_IN(2, 5, 2, 12)}},
        {"attention_fused_qkv_causal", b_att_fused, &causal, 1, {GC_IN(1, 6, 3, 6)}},
        {"attention_transposed_q", b_att_transposed, NULL, 3,
         {GC_IN(2, 2, 4, 5), GC_IN(2, 2, 5, 4), GC_IN(2, 2, 5, 4)}},
        {"attention_after_rope", b_rope_attention, NULL, 3, {GC_IN(2, 2, 5, 4), GC_IN(2, 2, 5, 4), GC_IN(2, 2, 5, 4)}},
        /* RMSNorm */
        {"rmsnorm_weight", b_rms, NULL, 2, {GC_IN(4, 7), GC_IN(7)}},
        {"rmsnorm_3d", b_rms, NULL, 2, {GC_IN(2, 3, 5), GC_IN(5)}},
        {"rmsnorm_plain", b_rms_plain, NULL, 1, {GC_IN(3, 6)}},
        {"rmsnorm_1d", b_rms, NULL, 2, {GC_IN(9), GC_IN(9)}},
        {"rmsnorm_strided", b_rms_strided, NULL, 2, {GC_IN(5, 4), GC_IN(5)}},
        {"rmsnorm_wide", b_rms, NULL, 2, {GC_IN(2, 300), GC_IN(300)}},
        /* RoPE */
        {"rope_bhtd", b_rope, &base0, 1, {GC_IN(2, 2, 5, 4)}},
        {"rope_2d_base50", b_rope, &base_small, 1, {GC_IN(7, 6)}},
        {"rope_D2", b_rope, &base0, 1, {GC_IN(2, 3, 2)}},
        {"rope_strided_twice", b_rope_strided_twice, NULL, 1, {GC_IN(2, 2, 4, 3)}},
    };
    int n = (int)(sizeof cases / sizeof cases[0]);
    for (int i = 0; i < n; i++) {
        int bad = gradcheck(cases[i].name, cases[i].n, cases[i].in, cases[i].fn, cases[i].user);
        printf("%-30s %s\n", cases[i].name, bad ? "FAIL" : "ok");
    }
    return kl_test_done("test_gradcheck_seq");
}
