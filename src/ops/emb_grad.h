/* The CUDA embedding gradient's per-thread work (backends/cuda/embedding.cu),
 * shared with the host emulation in tests/test_emb_grad.c. Positions come
 * sorted by row: key[i] (the row; V for a bad index) and pos[i] (ascending
 * within equal keys). The sorted array is cut into pieces of KL_EMB_PIECE;
 * thread (p, d):
 *   kl_emb_piece  walks piece p in order: a run of equal keys that starts
 *                 and ends in the piece is summed from 0 into dw[key, d] (as
 *                 the CPU sums it: bit-equal); the piece's first run, if it
 *                 began in an earlier piece, goes to head[p, d]; its last
 *                 run, if it began here and goes on, to tail[p, d];
 *   kl_emb_join   for a piece whose last run goes on: tail[p] + head[p+1] +
 *                 ... in piece order into dw[key, d].
 * So no thread sums more than KL_EMB_PIECE positions serially but one per
 * piece of a long run (a padding row), and every sum has a fixed order. */
#ifndef KL_OPS_EMB_GRAD_H
#define KL_OPS_EMB_GRAD_H

#include <stdint.h>
#include "core/philox.h" /* KL_HD */

#define KL_EMB_PIECE 64

/* Pieces of P sorted positions. */
KL_HD static inline int64_t kl_emb_pieces(int64_t P) { return (P + KL_EMB_PIECE - 1) / KL_EMB_PIECE; }

#define KL_DEF_EMB_GRAD(T)                                                                         \
    KL_HD static inline void kl_emb_piece_##T(const T *dy, const uint32_t *key, const uint32_t *pos, int64_t P, \
                                              int64_t D, int64_t V, int64_t p, int64_t d, T *dw, T *head, T *tail) \
    {                                                                                              \
        int64_t i = p * KL_EMB_PIECE, i1 = i + KL_EMB_PIECE < P ? i + KL_EMB_PIECE : P;             \
        if (i > 0 && key[i - 1] == key[i]) { /* a run begun in an earlier piece */                 \
            uint32_t v = key[i];                                                                   \
            T s = (T)0;                                                                            \
            for (; i < i1 && key[i] == v; i++) s += dy[(int64_t)pos[i] * D + d];                    \
            head[p * D + d] = s;                                                                   \
        }                                                                                          \
        while (i < i1) {                                                                           \
            uint32_t v = key[i];                                                                   \
            T s = (T)0;                                                                            \
            for (; i < i1 && key[i] == v; i++) s += dy[(int64_t)pos[i] * D + d];                    \
            if (i == i1 && i < P && key[i] == v) tail[p * D + d] = s; /* goes on */                \
            else if (v < (uint64_t)V) dw[(int64_t)v * D + d] = s;                                  \
        }                                                                                          \
    }                                                                                              \
    KL_HD static inline void kl_emb_join_##T(const uint32_t *key, int64_t P, int64_t D, int64_t V, int64_t p, \
                                             int64_t d, const T *head, const T *tail, T *dw)       \
    {                                                                                              \
        int64_t i0 = p * KL_EMB_PIECE, i1 = i0 + KL_EMB_PIECE;                                     \
        if (i1 >= P) return;                                                                       \
        uint32_t v = key[i1 - 1];                                                                  \
        /* the last run goes on, and began in this piece (keys are sorted) */                     \
        if (key[i1] != v || (i0 > 0 && key[i0 - 1] == v) || v >= (uint64_t)V) return;             \
        T s = tail[p * D + d];                                                                     \
        for (int64_t q = p + 1;; q++) {                                                            \
            s += head[q * D + d];                                                                  \
            int64_t e = (q + 1) * KL_EMB_PIECE; /* piece q's end */                                \
            if (e >= P || key[e] != v) break; /* the run ends in piece q */                        \
        }                                                                                          \
        dw[(int64_t)v * D + d] = s;                                                                \
    }
KL_DEF_EMB_GRAD(float)
KL_DEF_EMB_GRAD(double)

#endif
