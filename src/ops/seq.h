/* Per-element math of the sequence ops (LSTM and GRU cells, RMSNorm, rotary
 * embeddings), shared by the CPU loops and the CUDA kernels so CPU tests
 * cover the arithmetic. Gate layouts follow PyTorch:
 *   LSTM  pre = x W_ih^T + b_ih + h W_hh^T + b_hh, chunks (i, f, g, o):
 *         i, f, o = sigmoid;  g = tanh;  c' = f c + i g;  h' = o tanh(c')
 *   GRU   gi = x W_ih^T + b_ih, gh = h W_hh^T + b_hh, chunks (r, z, n):
 *         r = sigmoid(gi_r + gh_r); z = sigmoid(gi_z + gh_z)
 *         n = tanh(gi_n + r * gh_n);  h' = (1 - z) n + z h
 * RMSNorm  y = x * rstd * w, rstd = 1 / sqrt(mean(x^2) + eps)
 * RoPE     GPT-NeoX pairs (x[i], x[i + D/2]) rotated by angle
 *          pos * base^(-2i/D); the backward is the rotation by -angle. */
#ifndef KL_OPS_SEQ_H
#define KL_OPS_SEQ_H

#include "ops/elem.h" /* KL_HD, type-generic exp/tanh */

#define KL_DEF_SEQ_ELEM(T)                                                                         \
    KL_HD static inline T kl_sigm_##T(T x) { return (T)1 / ((T)1 + exp(-x)); }                     \
    /* LSTM unit: pre-activations in, activations out (in place); returns c', sets *h */           \
    KL_HD static inline T kl_lstm_cell_##T(T *i, T *f, T *g, T *o, T c_prev, T *h)                 \
    {                                                                                              \
        *i = kl_sigm_##T(*i);                                                                      \
        *f = kl_sigm_##T(*f);                                                                      \
        *g = tanh(*g);                                                                             \
        *o = kl_sigm_##T(*o);                                                                      \
        T c = *f * c_prev + *i * *g;                                                               \
        *h = *o * tanh(c);                                                                         \
        return c;                                                                                  \
    }                                                                                              \
    /* LSTM unit backward from the saved activations and cell states; dh and dc are the            \
     * total gradients of h' and c' (from later steps and outputs). d[0..3] get the                \
     * gradients of the pre-activations (i, f, g, o); returns dc_prev. */                          \
    KL_HD static inline T kl_lstm_cell_bwd_##T(T i, T f, T g, T o, T c, T c_prev, T dh, T dc,      \
                                               T *di, T *df, T *dg, T *do_)                        \
    {                                                                                              \
        T tc = tanh(c);                                                                            \
        dc += dh * o * ((T)1 - tc * tc);                                                           \
        *do_ = dh * tc * o * ((T)1 - o);                                                           \
        *di = dc * g * i * ((T)1 - i);                                                             \
        *dg = dc * i * ((T)1 - g * g);                                                             \
        *df = dc * c_prev * f * ((T)1 - f);                                                        \
        return dc * f;                                                                             \
    }                                                                                              \
    /* GRU unit: gi_* input projections (with b_ih), gh_* hidden projections (with b_hh);          \
     * writes the activations r, z, n; returns h' */                                               \
    KL_HD static inline T kl_gru_cell_##T(T gi_r, T gi_z, T gi_n, T gh_r, T gh_z, T gh_n, T h_prev, \
                                          T *r, T *z, T *n)                                        \
    {                                                                                              \
        *r = kl_sigm_##T(gi_r + gh_r);                                                             \
        *z = kl_sigm_##T(gi_z + gh_z);                                                             \
        *n = tanh(gi_n + *r * gh_n);                                                               \
        return ((T)1 - *z) * *n + *z * h_prev;                                                     \
    }                                                                                              \
    /* GRU unit backward: gradients of the pre-activations dr, dz, dn (the input-side ones;        \
     * the hidden-side n gradient is dn * r); returns the direct part dh * z of dh_prev. */        \
    KL_HD static inline T kl_gru_cell_bwd_##T(T r, T z, T n, T gh_n, T h_prev, T dh, T *dr, T *dz, T *dn) \
    {                                                                                              \
        T dnp = dh * ((T)1 - z) * ((T)1 - n * n);                                                  \
        *dn = dnp;                                                                                 \
        *dr = dnp * gh_n * r * ((T)1 - r);                                                         \
        *dz = dh * (h_prev - n) * z * ((T)1 - z);                                                  \
        return dh * z;                                                                             \
    }                                                                                              \
    /* RMSNorm dx; g = dy * w, xhat = x * rstd, mgx = mean(g * xhat) over the row */               \
    KL_HD static inline T kl_rmsnorm_bwd_##T(T x, T g, T rstd, T mgx) { return rstd * (g - x * rstd * mgx); } \
    /* RoPE: rotates the pair (a, b) by the angle with cosine c and sine s */                      \
    KL_HD static inline void kl_rope_pair_##T(T a, T b, T c, T s, T *ya, T *yb)                    \
    {                                                                                              \
        *ya = a * c - b * s;                                                                       \
        *yb = b * c + a * s;                                                                       \
    }
KL_DEF_SEQ_ELEM(float)
KL_DEF_SEQ_ELEM(double)

/* RoPE angle of position pos, pair i of head size D (in double on every backend). */
KL_HD static inline double kl_rope_angle(double pos, int64_t i, int64_t D, double base)
{
    return pos * pow(base, -2.0 * (double)i / (double)D);
}

#ifndef __CUDACC__
#include <stdbool.h>
#include <stdint.h>
/* Whether v[0] * ... * v[n-1] <= lim (all positive): sizes that BLAS (int) takes. */
static inline bool kl_seq_fits(int n, const int64_t *v, int64_t lim)
{
    int64_t p = 1;
    for (int k = 0; k < n; k++) {
        if (v[k] <= 0 || v[k] > lim / p) return false;
        p *= v[k];
    }
    return true;
}
#endif

#endif
