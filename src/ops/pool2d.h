/* Window math of max / average pooling, shared by the CPU kernels
 * (ops/pool2d.c) and the CUDA kernels (backends/cuda/pool.cu).
 * tests/test_conv_index.c runs the CUDA threads' functions (kl_pool_fwd_T,
 * kl_pool_bwd_T) on the host over every index against the CPU ops.
 *
 * Layout: x, dx [N, C, H, W]; y, dy and the saved argmax [N, C, OH, OW];
 * plane pl = n*C + c. Output (oh, ow) has the window rows oh*sh - ph +
 * [0, kh) and cols ow*sw - pw + [0, kw), clipped to the image; the argmax
 * is saved as its position i*kw + j in the unclipped window. */
#ifndef KL_OPS_POOL2D_H
#define KL_OPS_POOL2D_H

#include "ops/attrs.h"
#include "core/philox.h" /* KL_HD */

/* Window rows (or cols) k in [*k0, *k1) of output o that lie inside [0, n). */
KL_HD static inline void kl_pool_win(int64_t o, int s, int p, int k, int64_t n, int64_t *k0, int64_t *k1)
{
    int64_t start = o * s - p;
    *k0 = start < 0 ? -start : 0;
    *k1 = start + k > n ? n - start : k;
}

/* Outputs o in [*o0, *o1) (of n_out) whose window [o*s - p, o*s - p + k)
 * contains input row (or col) i; empty when *o0 >= *o1. */
KL_HD static inline void kl_pool_outs(int64_t i, int s, int p, int k, int64_t n_out, int64_t *o0, int64_t *o1)
{
    int64_t lo = i + p - k + 1, hi = (i + p) / s + 1; /* i + p >= 0: plain division floors */
    *o0 = lo > 0 ? (lo + s - 1) / s : 0;
    *o1 = hi < n_out ? hi : n_out;
}

/* Max pooling's rule: v replaces the window's maximum m so far when it is
 * greater, or NaN while m is not (the first NaN wins, where PyTorch keeps the last; ties keep the first
 * maximum). Branch-free, for any floating type. */
#define KL_POOL_TAKES(v, m) (((v) > (m)) | (((v) != (v)) & ((m) == (m))))

#define KL_DEF_POOL(T)                                                                             \
    /* max over output (oh, ow)'s window of plane xp; *k: the argmax i*kw + j. Ties go to the      \
     * first maximum in row-major order; a NaN wins (selects, no branches) */                      \
    KL_HD static inline T kl_pool_max_win_##T(const pool_attr *a, const T *xp, int64_t oh, int64_t ow, \
                                              int32_t *k)                                          \
    {                                                                                              \
        int64_t h0, h1, w0, w1;                                                                    \
        kl_pool_win(oh, a->sh, a->ph, a->kh, a->H, &h0, &h1);                                      \
        kl_pool_win(ow, a->sw, a->pw, a->kw, a->W, &w0, &w1);                                      \
        int64_t xo = (oh * a->sh - a->ph) * a->W + ow * a->sw - a->pw; /* window origin; may be < 0 */ \
        T m = xp[xo + h0 * a->W + w0]; /* windows are never empty (padding <= kernel/2) */         \
        int64_t bk = h0 * a->kw + w0;                                                              \
        for (int64_t i = h0; i < h1; i++)                                                          \
            for (int64_t j = w0; j < w1; j++) {                                                    \
                T v = xp[xo + i * a->W + j];                                                       \
                int take = KL_POOL_TAKES(v, m);                                                    \
                m = take ? v : m;                                                                  \
                bk = take ? i * a->kw + j : bk;                                                    \
            }                                                                                      \
        *k = (int32_t)bk;                                                                          \
        return m;                                                                                  \
    }                                                                                              \
    /* mean over output (oh, ow)'s window of plane xp, padding counted as zeros */                 \
    KL_HD static inline T kl_pool_avg_win_##T(const pool_attr *a, const T *xp, int64_t oh, int64_t ow) \
    {                                                                                              \
        int64_t h0, h1, w0, w1;                                                                    \
        kl_pool_win(oh, a->sh, a->ph, a->kh, a->H, &h0, &h1);                                      \
        kl_pool_win(ow, a->sw, a->pw, a->kw, a->W, &w0, &w1);                                      \
        int64_t xo = (oh * a->sh - a->ph) * a->W + ow * a->sw - a->pw;                             \
        T s = 0;                                                                                   \
        for (int64_t i = h0; i < h1; i++)                                                          \
            for (int64_t j = w0; j < w1; j++) s += xp[xo + i * a->W + j];                          \
        return s * ((T)1 / (T)((int64_t)a->kh * a->kw));                                           \
    }                                                                                              \
    /* forward thread i: output i of [N, C, OH, OW]; *k its argmax (max; 0 for avg) */             \
    KL_HD static inline T kl_pool_fwd_##T(const pool_attr *a, const T *x, int64_t i, int32_t *k)   \
    {                                                                                              \
        int64_t OP = a->OH * a->OW, pl = i / OP, r = i - pl * OP, oh = r / a->OW, ow = r - oh * a->OW; \
        const T *xp = x + pl * a->H * a->W;                                                        \
        *k = 0;                                                                                    \
        return a->kind == POOL_MAX ? kl_pool_max_win_##T(a, xp, oh, ow, k) : kl_pool_avg_win_##T(a, xp, oh, ow); \
    }                                                                                              \
    /* backward thread i: dx element i of [N, C, H, W], gathered (no atomics) from the windows    \
     * holding it, in the CPU scatter's order (oh, then ow): max adds dy where the saved argmax    \
     * (i8, or i32 when idx32) is this element; avg adds dy / (kh*kw) */                           \
    KL_HD static inline T kl_pool_bwd_##T(const pool_attr *a, const T *dy, const uint8_t *i8,      \
                                          const int32_t *i32, int64_t i)                           \
    {                                                                                              \
        int64_t HW = a->H * a->W, pl = i / HW, r = i - pl * HW, ih = r / a->W, iw = r - ih * a->W; \
        int64_t oh0, oh1, ow0, ow1;                                                                \
        kl_pool_outs(ih, a->sh, a->ph, a->kh, a->OH, &oh0, &oh1);                                  \
        kl_pool_outs(iw, a->sw, a->pw, a->kw, a->OW, &ow0, &ow1);                                  \
        const T *g = dy + pl * a->OH * a->OW;                                                      \
        T inv = (T)1 / (T)((int64_t)a->kh * a->kw), s = 0;                                         \
        for (int64_t oh = oh0; oh < oh1; oh++)                                                     \
            for (int64_t ow = ow0; ow < ow1; ow++) {                                               \
                int64_t o = oh * a->OW + ow;                                                       \
                if (a->kind != POOL_MAX) {                                                         \
                    s += g[o] * inv;                                                               \
                    continue;                                                                      \
                }                                                                                  \
                int64_t k = a->idx32 ? (int64_t)i32[pl * a->OH * a->OW + o] : (int64_t)i8[pl * a->OH * a->OW + o]; \
                if (oh * a->sh - a->ph + k / a->kw == ih && ow * a->sw - a->pw + k % a->kw == iw) s += g[o]; \
            }                                                                                      \
        return s;                                                                                  \
    }

KL_DEF_POOL(float)
KL_DEF_POOL(double)

#endif
