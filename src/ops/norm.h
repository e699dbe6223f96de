/* Per-element math of batchnorm, layernorm and dropout, shared by the CPU
 * loops and the CUDA kernels (so CPU tests cover the arithmetic).
 *
 * Normalisation is written as an affine map per channel (batchnorm) or per
 * row and column (layernorm): with xhat = (x - mean) * invstd,
 *   forward   y  = xhat * gamma + beta
 *   backward  dx = invstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * gamma
 *             (training; the means are over the normalised set of size M)
 *             dx = g * invstd                                     (eval batchnorm)
 * Dropout keeps element i iff Philox word i of stream (seed, salt, run) is
 * >= threshold = floor(p * 2^32): an integer compare, so every backend
 * draws the same mask bit for bit. */
#ifndef KL_OPS_NORM_H
#define KL_OPS_NORM_H

#include "core/philox.h" /* KL_HD, kl_philox_word */
#include "ops/sum_chunks.h"  /* kl_sum_chunks: CUDA batchnorm */

/* floor(p * 2^32) for p in [0, 1). */
KL_HD static inline uint32_t kl_dropout_threshold(double p) { return (uint32_t)(p * 4294967296.0); }

/* Whether dropout keeps element i (row-major index) of its input. */
KL_HD static inline int kl_dropout_keep(uint64_t seed, uint32_t salt, uint64_t run, uint64_t i, uint32_t threshold)
{
    return kl_philox_word(seed, salt, run, i) >= threshold;
}

#define KL_DEF_NORM_ELEM(T)                                                                        \
    /* y from x with the channel's / row's statistics and affine terms */                        \
    KL_HD static inline T kl_norm_fwd_##T(T x, T mean, T invstd, T gamma, T beta)                 \
    {                                                                                              \
        return (x - mean) * invstd * gamma + beta;                                                 \
    }                                                                                              \
    /* training-mode dx; g = dy * gamma, mg = mean(g), mgx = mean(g * xhat) */                   \
    KL_HD static inline T kl_norm_bwd_##T(T x, T g, T mean, T invstd, T mg, T mgx)                \
    {                                                                                              \
        T xhat = (x - mean) * invstd;                                                              \
        return invstd * (g - mg - xhat * mgx);                                                     \
    }                                                                                              \
    /* training-mode dx of n values sharing mean and invstd (a batchnorm      */                 \
    /* channel's plane, a layernorm row); g_i = dy_i * gamma[i * gs]: gs 0    */                 \
    /* for one gamma, 1 for one per value; gamma NULL: 1 */                                      \
    KL_HD static inline void kl_norm_bwd_run_##T(const T *x, const T *dy, const T *gamma, int64_t gs, \
                                                 T mean, T invstd, T mg, T mgx, int64_t n, T *__restrict__ dx) \
    {                                                                                              \
        for (int64_t i = 0; i < n; i++)                                                            \
            dx[i] = kl_norm_bwd_##T(x[i], dy[i] * (gamma ? gamma[i * gs] : (T)1), mean, invstd, mg, mgx); \
    }
KL_DEF_NORM_ELEM(float)
KL_DEF_NORM_ELEM(double)

#endif
