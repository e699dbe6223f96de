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
 *          pos * base^(-2i/D); the backward is the rotation by -angle.
 * Beyond the cell math: the whole per-unit step of the LSTM/GRU loops
 * (kl_lstm_step_*, ...: unit n = b*H + j at step s, what one CUDA thread
 * does), the table and pair functions of RoPE, the RMSNorm row pieces, and
 * the scratch layouts the CUDA kernels use. The CPU kernels call the same
 * functions, so CPU tests run the GPU's per-thread code. */
#ifndef KL_OPS_SEQ_H
#define KL_OPS_SEQ_H

#include "ops/elem.h" /* KL_HD, type-generic exp/tanh */
#include <stddef.h>
#include <stdint.h>

#define KL_DEF_SEQ_ELEM(T)                                                                         \
    KL_HD static inline T kl_sigm_##T(T x) { return (T)1 / ((T)1 + exp(-x)); }                     \
    /* LSTM unit: pre-activations in, activations out (in place); returns c', sets *h */           \
    KL_HD static inline T kl_lstm_cell_##T(T *i, T *f, T *g, T *o, T c_prev, T *h)                 \
    {                                                                                              \
        *i = kl_sigm_##T(*i);                                                                      \
        *f = kl_sigm_##T(*f);                                                                      \
        *g = kl_tanh_##T(*g);                                                                      \
        *o = kl_sigm_##T(*o);                                                                      \
        T c = *f * c_prev + *i * *g;                                                               \
        *h = *o * kl_tanh_##T(c);                                                                  \
        return c;                                                                                  \
    }                                                                                              \
    /* LSTM unit backward from the saved activations and cell states; dh and dc are the            \
     * total gradients of h' and c' (from later steps and outputs). d[0..3] get the                \
     * gradients of the pre-activations (i, f, g, o); returns dc_prev. */                          \
    KL_HD static inline T kl_lstm_cell_bwd_##T(T i, T f, T g, T o, T c, T c_prev, T dh, T dc,      \
                                               T *di, T *df, T *dg, T *do_)                        \
    {                                                                                              \
        T tc = kl_tanh_##T(c);                                                                     \
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
        *n = kl_tanh_##T(gi_n + *r * gh_n);                                                        \
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

/* n bytes rounded up to 256: scratch carved at 256-byte offsets (cuBLASLt's alignment) */
KL_HD static inline size_t kl_seq_al256(size_t n) { return (n + 255) / 256 * 256; }

/* Scratch of lstm_bwd / gru_bwd on CUDA: dh [B,H] at 0, dc [B,H] (LSTM) at
 * the next 256-byte offset, then at *more_off the rows [h0; y[:, :-1]]
 * [B*T,H] (dW_hh) or, for the GRU without a dGh extra, the step's dGh
 * [B,3H]. Returns the bytes. */
KL_HD static inline size_t kl_rnn_bwd_scratch_cuda(int lstm, int64_t B, int64_t T, int64_t H, size_t es,
                                                   int need_dwhh, int need_dgh, size_t *more_off)
{
    size_t bh = kl_seq_al256((size_t)(B * H) * es), off = lstm ? 2 * bh : bh;
    int64_t more = need_dwhh ? B * T * H : lstm || need_dgh ? 0 : 3 * B * H;
    if (more_off) *more_off = off;
    return off + (size_t)more * es;
}

/* rmsnorm_bwd on CUDA sums dw over row chunks (partials [chunks, D] of
 * double in scratch, then each column's partials in order): chunk count
 * and rows per chunk for R rows. */
#define KL_RMS_CHUNK_ROWS 256
#define KL_RMS_MAX_CHUNKS 1024
KL_HD static inline int64_t kl_rms_chunks(int64_t R)
{
    int64_t c = (R + KL_RMS_CHUNK_ROWS - 1) / KL_RMS_CHUNK_ROWS;
    return c < 1 ? 1 : c > KL_RMS_MAX_CHUNKS ? KL_RMS_MAX_CHUNKS : c;
}
KL_HD static inline int64_t kl_rms_chunk_rows(int64_t R) { return (R + kl_rms_chunks(R) - 1) / kl_rms_chunks(R); }

/* Per-unit steps of the recurrent layers and the other per-element kernels.
 * Forward arguments (ops/lstm.c, ops/gru.c): A [B,T,G*H] input projections
 * in, activated gates out (aux); S [B,T,H] the cell states (LSTM) or
 * W_hn h + b_hn (GRU) (aux); y [B,T,H]; optional (NULL) b_ih, b_hh, h0, c0;
 * gh [B,3H] the GRU step's h_{t-1} W_hh^T (read only when h_{t-1} exists);
 * hn, cn [B,H] written at the last step. */
#define KL_DEF_SEQ_STEPS(T_)                                                                       \
    typedef struct {                                                                               \
        T_ *A, *S, *y;                                                                             \
        const T_ *bih, *bhh, *h0, *c0, *gh;                                                        \
        T_ *hn, *cn;                                                                               \
        int64_t B, steps, H;                                                                       \
    } kl_rnn_fwd_##T_;                                                                             \
    /* Backward: dy, y, A, S as saved; dG [B,T,G*H] out; dh, dc [B,H] the running gradients        \
     * (dh: in, the step's total from later steps; out, the GRU's direct part dh z); GRU:          \
     * dgh + b*ldg the step's hidden-side gradients of sample b. */                                \
    typedef struct {                                                                               \
        const T_ *dy, *y, *A, *S, *h0, *c0;                                                        \
        T_ *dG, *dh, *dc, *dgh;                                                                    \
        int64_t ldg, B, steps, H;                                                                  \
    } kl_rnn_bwd_##T_;                                                                             \
    /* LSTM step s, unit n = b*H + j: A_t += b_ih + b_hh (h W_hh^T is in A already), gates,        \
     * c_t and h_t */                                                                              \
    KL_HD static inline void kl_lstm_step_##T_(const kl_rnn_fwd_##T_ *a, int64_t s, int64_t n)     \
    {                                                                                              \
        int64_t H = a->H, b = n / H, j = n % H, r = b * a->steps + s;                              \
        T_ *gt = a->A + r * 4 * H;                                                                 \
        for (int k = 0; k < 4; k++)                                                                \
            gt[k * H + j] += (a->bih ? a->bih[k * H + j] : (T_)0) + (a->bhh ? a->bhh[k * H + j] : (T_)0); \
        T_ cp = s ? a->S[(r - 1) * H + j] : (a->c0 ? a->c0[n] : (T_)0);                            \
        T_ c = kl_lstm_cell_##T_(&gt[j], &gt[H + j], &gt[2 * H + j], &gt[3 * H + j], cp, &a->y[r * H + j]); \
        a->S[r * H + j] = c;                                                                       \
        if (s == a->steps - 1) a->hn[n] = a->y[r * H + j], a->cn[n] = c;                           \
    }                                                                                              \
    /* GRU step s, unit n: biases, hidden projections, gates, h_t */                               \
    KL_HD static inline void kl_gru_step_##T_(const kl_rnn_fwd_##T_ *a, int64_t s, int64_t n)      \
    {                                                                                              \
        int64_t H = a->H, G3 = 3 * H, b = n / H, j = n % H, r = b * a->steps + s;                  \
        const T_ *hp = s ? a->y + (s - 1) * H : a->h0;                                             \
        int64_t ldh = s ? a->steps * H : H;                                                        \
        T_ *gt = a->A + r * G3, hh[3];                                                             \
        for (int k = 0; k < 3; k++) {                                                              \
            gt[k * H + j] += a->bih ? a->bih[k * H + j] : (T_)0;                                   \
            hh[k] = (hp ? a->gh[b * G3 + k * H + j] : (T_)0) + (a->bhh ? a->bhh[k * H + j] : (T_)0); \
        }                                                                                          \
        a->S[r * H + j] = hh[2];                                                                   \
        a->y[r * H + j] = kl_gru_cell_##T_(gt[j], gt[H + j], gt[2 * H + j], hh[0], hh[1], hh[2],   \
                                           hp ? hp[b * ldh + j] : (T_)0, &gt[j], &gt[H + j], &gt[2 * H + j]); \
        if (s == a->steps - 1) a->hn[n] = a->y[r * H + j];                                         \
    }                                                                                              \
    /* LSTM backward step s, unit n: dG[:, s] and dc (dh_{t-1} follows by a GEMM) */               \
    KL_HD static inline void kl_lstm_step_bwd_##T_(const kl_rnn_bwd_##T_ *a, int64_t s, int64_t n) \
    {                                                                                              \
        int64_t H = a->H, b = n / H, j = n % H, r = b * a->steps + s;                              \
        const T_ *gt = a->A + r * 4 * H;                                                           \
        T_ *dg = a->dG + r * 4 * H;                                                                \
        T_ cp = s ? a->S[(r - 1) * H + j] : (a->c0 ? a->c0[n] : (T_)0);                            \
        a->dc[n] = kl_lstm_cell_bwd_##T_(gt[j], gt[H + j], gt[2 * H + j], gt[3 * H + j], a->S[r * H + j], cp, \
                                         a->dy[r * H + j] + a->dh[n], a->dc[n], &dg[j], &dg[H + j], \
                                         &dg[2 * H + j], &dg[3 * H + j]);                          \
    }                                                                                              \
    /* GRU backward step s, unit n: dG[:, s] (input side), the hidden-side dgh, dh = dh z */       \
    KL_HD static inline void kl_gru_step_bwd_##T_(const kl_rnn_bwd_##T_ *a, int64_t s, int64_t n)  \
    {                                                                                              \
        int64_t H = a->H, G3 = 3 * H, b = n / H, j = n % H, r = b * a->steps + s;                  \
        const T_ *gt = a->A + r * G3;                                                              \
        T_ *di = a->dG + r * G3, *dg = a->dgh + b * a->ldg;                                        \
        T_ hp = s ? a->y[(r - 1) * H + j] : (a->h0 ? a->h0[n] : (T_)0);                            \
        a->dh[n] = kl_gru_cell_bwd_##T_(gt[j], gt[H + j], gt[2 * H + j], a->S[r * H + j], hp,      \
                                        a->dy[r * H + j] + a->dh[n], &di[j], &di[H + j], &di[2 * H + j]); \
        dg[j] = di[j];                                                                             \
        dg[H + j] = di[H + j];                                                                     \
        dg[2 * H + j] = di[2 * H + j] * gt[j];                                                     \
    }                                                                                              \
    /* Element idx of [h0; y[:, :-1]] [B,T,H] (h0 NULL: zeros): the right factor of dW_hh */       \
    KL_HD static inline T_ kl_rnn_prev_h_##T_(const T_ *h0, const T_ *y, int64_t steps, int64_t H, int64_t idx) \
    {                                                                                              \
        int64_t b = idx / (steps * H), rem = idx % (steps * H), s = rem / H, j = rem % H;          \
        return s ? y[(b * steps + s - 1) * H + j] : (h0 ? h0[b * H + j] : (T_)0);                  \
    }                                                                                              \
    /* RoPE table entry idx = p * half + i: cosine and (inverse: minus) sine of the angle,         \
     * computed in double and rounded */                                                           \
    KL_HD static inline void kl_rope_table_##T_(T_ *cs, T_ *sn, int64_t half, int64_t D, double base, int inverse, \
                                                int64_t idx)                                       \
    {                                                                                              \
        double ang = kl_rope_angle((double)(idx / half), idx % half, D, base);                     \
        cs[idx] = (T_)cos(ang);                                                                    \
        sn[idx] = (T_)((inverse ? -1.0 : 1.0) * sin(ang));                                         \
    }                                                                                              \
    /* RoPE pair i of row r of x [rows, 2*half] (position r % steps) */                            \
    KL_HD static inline void kl_rope_at_##T_(const T_ *x, T_ *y, const T_ *cs, const T_ *sn, int64_t steps, \
                                             int64_t half, int64_t r, int64_t i)                   \
    {                                                                                              \
        const T_ *xr = x + r * 2 * half;                                                           \
        T_ *yr = y + r * 2 * half;                                                                 \
        int64_t p = (r % steps) * half + i;                                                        \
        kl_rope_pair_##T_(xr[i], xr[i + half], cs[p], sn[p], &yr[i], &yr[i + half]);               \
    }                                                                                              \
    /* RoPE pair idx = r * half + i: one CUDA thread */                                           \
    KL_HD static inline void kl_rope_idx_##T_(const T_ *x, T_ *y, const T_ *cs, const T_ *sn, int64_t steps, \
                                              int64_t half, int64_t idx)                           \
    {                                                                                              \
        kl_rope_at_##T_(x, y, cs, sn, steps, half, idx / half, idx % half);                        \
    }                                                                                              \
    /* RMSNorm row pieces: rstd from the row's sum of squares (in double); y; the mean of          \
     * g * xhat from sum(dy * w * x) (in double) */                                                \
    KL_HD static inline T_ kl_rmsnorm_rstd_##T_(double ss, int64_t D, double eps)                  \
    {                                                                                              \
        return (T_)(1.0 / sqrt(ss / (double)D + eps));                                             \
    }                                                                                              \
    KL_HD static inline T_ kl_rmsnorm_y_##T_(T_ x, T_ rstd, T_ w) { return x * rstd * w; }         \
    KL_HD static inline T_ kl_rmsnorm_mgx_##T_(double sgx, T_ rstd, int64_t D)                     \
    {                                                                                              \
        return (T_)(sgx * (double)rstd / (double)D);                                               \
    }
KL_DEF_SEQ_STEPS(float)
KL_DEF_SEQ_STEPS(double)

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
