/* Seeded Fisher-Yates shuffle: a pure function of (n, seed, epoch). */
#include "kiln/data.h"
#include "core/error.h"

/* splitmix64 (Steele, Lea, Flood 2014): one add and a mix per draw. */
static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Uniform in [0, bound) without modulo bias: reject the low remainder. */
static uint64_t uniform(uint64_t *state, uint64_t bound)
{
    uint64_t threshold = -bound % bound; /* 2^64 mod bound */
    for (;;) {
        uint64_t r = splitmix64(state);
        if (r >= threshold) return r % bound;
    }
}

kl_status kl_shuffle_indices(int64_t *idx, int64_t n, uint64_t seed, uint64_t epoch)
{
    /* a status, not void, so that a NULL idx is refused instead of written */
    if (n < 0) return kl_fail(KL_EINVAL, "kl_shuffle_indices: n is %lld, must be >= 0", (long long)n);
    if (!idx && n) return kl_fail(KL_EMISUSE, "kl_shuffle_indices: idx is NULL");
    /* Mix seed and epoch through one splitmix step each so that nearby
     * (seed, epoch) pairs start far apart in the stream. */
    uint64_t a = seed, b = epoch ^ 0x6A09E667F3BCC909ull;
    uint64_t state = splitmix64(&a) ^ (splitmix64(&b) * 0xD1342543DE82EF95ull);
    for (int64_t i = 0; i < n; i++) idx[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)uniform(&state, (uint64_t)i + 1);
        int64_t t = idx[i];
        idx[i] = idx[j];
        idx[j] = t;
    }
    return KL_OK;
}
