/* The CUDA embedding gradient's per-thread work (ops/emb_grad.h), run on
 * the host (CI has no GPU): positions sorted by row as CUB's stable sort
 * leaves them, every (piece, column) thread of emb_piece_k, then every one
 * of emb_join_k, into NaN-filled head/tail sums (a read of anything not
 * written shows). dW must equal the CPU's: each row's positions summed in
 * order (bit for bit for rows within one piece, else within rounding), bad
 * indices dropped, rows no position names zero. Index patterns: one row
 * everywhere, runs of exactly one, two and three pieces, a run ending on a
 * piece edge, alternating rows, a long padding run among random rows, bad
 * indices sorted last; sizes around the piece length. */
#include "testutil.h"
#include "host_emu.h"
#include "ops/emb_grad.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint32_t g_rng = 12345;
static uint32_t rnd(void)
{
    g_rng = g_rng * 1664525u + 1013904223u;
    return g_rng >> 8;
}

/* Stable counting sort of keys in [0, V] (V: a bad index), as CUB leaves them. */
static void sort_keys(const uint32_t *k, int64_t P, int64_t V, uint32_t *key, uint32_t *pos)
{
    int64_t *count = calloc((size_t)V + 2, sizeof *count);
    for (int64_t p = 0; p < P; p++) count[k[p] + 1]++;
    for (int64_t v = 0; v <= V; v++) count[v + 1] += count[v];
    for (int64_t p = 0; p < P; p++) {
        int64_t at = count[k[p]]++;
        key[at] = k[p];
        pos[at] = (uint32_t)p;
    }
    free(count);
}

static int64_t g_exact_rows; /* one-piece rows checked bit for bit */

#define EMU_CASE(T)                                                                                \
    static void run_##T(const char *cs, const uint32_t *k, int64_t P, int64_t V, int64_t D, double tol) \
    {                                                                                              \
        T *dy = malloc((size_t)(P * D) * sizeof(T)), *dw = calloc((size_t)(V * D), sizeof(T));      \
        double *ref = calloc((size_t)(V * D), sizeof(double));                                    \
        uint32_t *key = malloc((size_t)P * sizeof *key), *pos = malloc((size_t)P * sizeof *pos);   \
        int64_t np = kl_emb_pieces(P);                                                             \
        T *head = kl_emu_nan((size_t)(np * D) * sizeof(T)), *tail = kl_emu_nan((size_t)(np * D) * sizeof(T)); \
        for (int64_t i = 0; i < P * D; i++) dy[i] = (T)((double)(rnd() % 2001) / 1000.0 - 1.0 + 1e-3); \
        for (int64_t p = 0; p < P; p++)                                                            \
            if (k[p] < V)                                                                          \
                for (int64_t d = 0; d < D; d++) ref[k[p] * D + d] += (double)dy[p * D + d];        \
        sort_keys(k, P, V, key, pos);                                                              \
        for (int64_t e = 0; e < np * D; e++) kl_emb_piece_##T(dy, key, pos, P, D, V, e / D, e % D, dw, head, tail); \
        for (int64_t e = 0; e < np * D; e++) kl_emb_join_##T(key, P, D, V, e / D, e % D, head, tail, dw); \
        double worst = 0, big = 1e-30;                                                             \
        for (int64_t i = 0; i < V * D; i++) big = fmax(big, fabs(ref[i]));                         \
        for (int64_t i = 0; i < V * D; i++) /* NaN: an unwritten head/tail sum was read */         \
            worst = isnan((double)dw[i]) ? INFINITY : fmax(worst, fabs((double)dw[i] - ref[i]) / big); \
        if (!(worst <= tol)) fprintf(stderr, "  %s: dW off by %.3g (relative to the largest)\n", cs, worst); \
        CHECK(worst <= tol);                                                                       \
        /* a row whose sorted run lies in one piece: bit-equal to the CPU's T sum in position order */ \
        T *cpu = calloc((size_t)(V * D), sizeof(T));                                               \
        for (int64_t p = 0; p < P; p++)                                                            \
            if (k[p] < V)                                                                          \
                for (int64_t d = 0; d < D; d++) cpu[k[p] * D + d] += dy[p * D + d];                \
        int64_t exact = 0, off = 0;                                                                \
        for (int64_t i = 0, j; i < P; i = j) {                                                     \
            for (j = i; j < P && key[j] == key[i]; j++) {}                                         \
            if (key[i] >= V || i / KL_EMB_PIECE != (j - 1) / KL_EMB_PIECE) continue;               \
            exact++;                                                                               \
            off += memcmp(&dw[key[i] * D], &cpu[key[i] * D], (size_t)D * sizeof(T)) != 0;         \
        }                                                                                          \
        if (off) fprintf(stderr, "  %s: %lld of %lld one-piece rows differ from the CPU's sums\n", cs, \
                         (long long)off, (long long)exact);                                        \
        CHECK(off == 0);                                                                           \
        g_exact_rows += exact;                                                                     \
        free(cpu);                                                                                 \
        free(dy), free(dw), free(ref), free(key), free(pos), free(head), free(tail);               \
    }
EMU_CASE(float)
EMU_CASE(double)

enum { PAT_ONE_ROW, PAT_RUNS, PAT_ALTERNATE, PAT_PADDING, PAT_COUNT };
static const char *pat_names[PAT_COUNT] = {"one row", "runs of 1-3 pieces", "alternating", "padding + random"};

/* Keys of pattern pat over P positions and V rows (V itself: a bad index). */
static void make_keys(int pat, int64_t P, int64_t V, uint32_t *k)
{
    for (int64_t p = 0; p < P; p++) {
        switch (pat) {
        case PAT_ONE_ROW: k[p] = 3; break;
        case PAT_RUNS: { /* the sorted runs: 64, 128, 1, 192, 63, 65, ... positions */
            static const int len[] = {KL_EMB_PIECE, 2 * KL_EMB_PIECE, 1, 3 * KL_EMB_PIECE, KL_EMB_PIECE - 1, KL_EMB_PIECE + 1};
            int64_t at = p, r = 0;
            while (at >= len[r % 6]) at -= len[r % 6], r++;
            k[p] = (uint32_t)(r % V);
            break;
        }
        case PAT_ALTERNATE: k[p] = (uint32_t)(p % 2); break;
        default: k[p] = rnd() % 3 ? 0 : rnd() % 9 == 0 ? (uint32_t)V : 1 + rnd() % (uint32_t)(V - 1); break;
        }
    }
}

int main(void)
{
    static const int64_t sizes[] = {1, 63, 64, 65, 200, 1000, 5000};
    for (int pat = 0; pat < PAT_COUNT; pat++)
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
            int64_t P = sizes[si], V = pat == PAT_RUNS ? 40 : 17, D = 3;
            uint32_t *k = malloc((size_t)P * sizeof *k);
            make_keys(pat, P, V, k);
            /* shuffle so the sort has work: positions of one row stay ascending after it */
            for (int64_t i = P - 1; i > 0 && pat != PAT_RUNS; i--) {
                int64_t j = rnd() % (uint32_t)(i + 1);
                uint32_t t = k[i];
                k[i] = k[j], k[j] = t;
            }
            char cs[96];
            snprintf(cs, sizeof cs, "%s, P %lld", pat_names[pat], (long long)P);
            run_float(cs, k, P, V, D, 1e-5);
            run_double(cs, k, P, V, D, 1e-13);
            free(k);
        }
    CHECK(g_exact_rows > 100); /* the bit-equality check saw real cases */
    return kl_test_done("test_emb_grad");
}
