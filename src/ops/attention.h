/* Attention pieces shared by the CPU kernels (ops/attention.c), the CUDA
 * kernels (backends/cuda/attention*.cu) and the CPU test that runs the CUDA
 * kernels' tiling on the host (tests/test_seq_kernels.c).
 *
 * Scores s = scale * q.k; query i sees key j < Tk, and j <= i when causal
 * (top-left aligned). Online softmax (the CUDA forward streams key tiles):
 * per query row a running max m and sum l; a tile with max mt moves m to
 * m' = max(m, mt), scales l and the row's output accumulators by
 * kl_att_rescale(m, m') and adds its probabilities exp(s - m'); at the end
 * out = acc / l and lse = m + log(l) (saved for the backward). The CPU
 * forward sees whole rows: one tile. The backward recomputes
 * p = exp(s - lse) and dS = p (dP - Di) scale with Di = rowsum(dO * O). */
#ifndef KL_OPS_ATTENTION_H
#define KL_OPS_ATTENTION_H

#include "ops/elem.h" /* KL_HD, type-generic exp/log */
#include <stdint.h>

/* Keys [0, end) that query rows [i0, i0 + nq) need. */
KL_HD static inline int64_t kl_att_key_end(int64_t i0, int64_t nq, int64_t Tk, int causal)
{
    return causal && i0 + nq < Tk ? i0 + nq : Tk;
}
/* Whether query i sees key j (j < Tk). */
KL_HD static inline int kl_att_visible(int64_t i, int64_t j, int causal) { return !causal || j <= i; }
/* Element offset of (batch, head) bh of a [B, H, T, D] operand with strides st. */
KL_HD static inline int64_t kl_att_base(const int64_t *st, int64_t H, int64_t bh)
{
    return (bh / H) * st[0] + (bh % H) * st[1];
}
/* First query that sees a key >= j0: where the dK/dV loop over queries starts. */
KL_HD static inline int64_t kl_att_query_begin(int64_t j0, int causal) { return causal ? j0 : 0; }

#define KL_DEF_ATT(T_)                                                                             \
    /* factor for l and the accumulators when the running max goes from m_old to m_new            \
     * (m_old = -inf: nothing seen yet, 0) */                                                      \
    KL_HD static inline T_ kl_att_rescale_##T_(T_ m_old, T_ m_new)                                 \
    {                                                                                              \
        return m_old == m_new ? (T_)1 : kl_exp_##T_(m_old - m_new);                                \
    }                                                                                              \
    /* probability of score s given the row's max (forward) or logsumexp (backward) */             \
    KL_HD static inline T_ kl_att_prob_##T_(T_ s, T_ m) { return kl_exp_##T_(s - m); }             \
    KL_HD static inline T_ kl_att_lse_##T_(T_ m, double l) { return m + (T_)log(l); }              \
    /* score gradient from p, dP = dO . v and Di = rowsum(dO * O) */                               \
    KL_HD static inline T_ kl_att_dscore_##T_(T_ p, T_ dp, T_ di, T_ scale) { return p * (dp - di) * scale; }
KL_DEF_ATT(float)
KL_DEF_ATT(double)

/* CUDA tile geometry. Blocks of KL_ATT_THREADS = 16 x 16 threads, ty = tid / 16,
 * tx = tid % 16 (a half-warp shares ty: row reductions are 16-lane shuffles).
 * A score tile has 16 R rows and 16 R columns (R = KL_ATT_R: 4 for f32, 2 for
 * f64: 64 x 64 and 32 x 32 tiles); thread (ty, tx) holds rows
 * kl_att_tile_row(ty, i) and columns kl_att_tile_row(tx, j), i, j < R.
 * Products stream their depth, and the output columns, in chunks of
 * KL_ATT_DC through shared memory. Output accumulators cover a column chunk
 * z of width wmax (64 or 128, kl_att_wmax; wider heads: more chunks, grid.y):
 * register c < wmax / 16 of thread tx is column kl_att_out_col(z, wmax, c, tx). */
#define KL_ATT_TX 16
#define KL_ATT_THREADS (KL_ATT_TX * KL_ATT_TX)
#define KL_ATT_DC 32
#define KL_ATT_R(es) ((es) == 4 ? 4 : 2)
KL_HD static inline int kl_att_tile_row(int t, int i) { return t + KL_ATT_TX * i; }
KL_HD static inline int64_t kl_att_out_col(int64_t z, int wmax, int c, int tx)
{
    return z * wmax + (c / 2) * KL_ATT_DC + (c % 2) * KL_ATT_TX + tx;
}
KL_HD static inline int kl_att_wmax(int64_t w) { return w <= 64 ? 64 : 128; }

#endif
