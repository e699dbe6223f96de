/* Philox4x32-10 counter-based RNG (Salmon et al., SC'11), the generator
 * cuRAND uses: the same (counter, key) gives the same four words on the CPU
 * and the GPU, so dropout masks and initial weights agree across backends.
 * Known answer: ctr 0, key 0 -> 6627e8d5 e169c58d bc57ac4c 9b00dbd8. */
#ifndef KL_PHILOX_H
#define KL_PHILOX_H

#include <stdint.h>

#ifdef __CUDACC__
#define KL_HD __host__ __device__
#else
#define KL_HD
#endif

typedef struct kl_u32x4 { uint32_t v[4]; } kl_u32x4;

KL_HD static inline kl_u32x4 kl_philox(kl_u32x4 c, uint32_t k0, uint32_t k1)
{
    for (int r = 0; r < 10; r++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c.v[0];
        uint64_t p1 = (uint64_t)0xCD9E8D57u * c.v[2];
        kl_u32x4 n;
        n.v[0] = (uint32_t)(p1 >> 32) ^ c.v[1] ^ k0;
        n.v[1] = (uint32_t)p1;
        n.v[2] = (uint32_t)(p0 >> 32) ^ c.v[3] ^ k1;
        n.v[3] = (uint32_t)p0;
        c = n;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return c;
}

/* The i-th 32-bit word of stream (seed, salt, run): word i lives in counter
 * {i/4, salt, run_lo, run_hi}, lane i%4. */
KL_HD static inline uint32_t kl_philox_word(uint64_t seed, uint32_t salt, uint64_t run, uint64_t i)
{
    kl_u32x4 c = {{(uint32_t)(i >> 2), salt, (uint32_t)run, (uint32_t)(run >> 32)}};
    kl_u32x4 r = kl_philox(c, (uint32_t)seed, (uint32_t)(seed >> 32));
    return r.v[i & 3];
}

/* Uniform in (0, 1): (u + 0.5) * 2^-32, never 0 or 1. */
KL_HD static inline double kl_u32_to_unit(uint32_t u) { return ((double)u + 0.5) * (1.0 / 4294967296.0); }

#endif
