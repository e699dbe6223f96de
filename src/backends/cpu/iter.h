/* Strided N-d iteration for CPU elementwise kernels. The index space is
 * split into rows (all dims but the last, collapsed where every operand is
 * contiguous across them) and an inner loop over the last dim, so the
 * common cases (contiguous, row-broadcast bias, scalar) run as flat loops. */
#ifndef KL_CPU_ITER_H
#define KL_CPU_ITER_H

#include <stdint.h>
#include <string.h>

#define KL_ITER_MAX_OPS 4

typedef struct kl_iter {
    int ndim;
    int nops;
    int64_t ne[8];
    int64_t st[KL_ITER_MAX_OPS][8];
    int64_t rows; /* product of ne[0..ndim-2] */
    int64_t inner; /* ne[ndim-1] */
} kl_iter;

/* ne: shape of the index space; st[k]: operand k's strides over it (0 for
 * broadcast dims). */
static inline void kl_iter_init(kl_iter *it, int ndim, const int64_t *ne, int nops,
                                const int64_t (*st)[8])
{
    it->nops = nops;
    it->ndim = 0;
    /* drop size-1 dims, then merge dim d into d+1 when every operand steps
     * contiguously across them */
    for (int d = 0; d < ndim; d++) {
        if (ne[d] == 1 && ndim > 1) continue;
        int n = it->ndim;
        if (n > 0) {
            int merge = 1;
            for (int k = 0; k < nops; k++)
                if (it->st[k][n - 1] != st[k][d] * ne[d]) merge = 0;
            if (merge) {
                it->ne[n - 1] *= ne[d];
                for (int k = 0; k < nops; k++) it->st[k][n - 1] = st[k][d];
                continue;
            }
        }
        it->ne[n] = ne[d];
        for (int k = 0; k < nops; k++) it->st[k][n] = st[k][d];
        it->ndim++;
    }
    if (it->ndim == 0) {
        it->ndim = 1;
        it->ne[0] = 1;
        for (int k = 0; k < nops; k++) it->st[k][0] = 0;
    }
    it->inner = it->ne[it->ndim - 1];
    it->rows = 1;
    for (int d = 0; d < it->ndim - 1; d++) it->rows *= it->ne[d];
}

/* Element offsets of each operand at the start of row r. */
static inline void kl_iter_row(const kl_iter *it, int64_t r, int64_t *off)
{
    for (int k = 0; k < it->nops; k++) off[k] = 0;
    for (int d = it->ndim - 2; d >= 0; d--) {
        int64_t i = r % it->ne[d];
        r /= it->ne[d];
        for (int k = 0; k < it->nops; k++) off[k] += i * it->st[k][d];
    }
}

/* Work items for a parallel loop: each row is cut into blocks so that a
 * fully collapsed (one-row) tensor still spreads over all threads. Item w
 * covers row w / nblk, elements [b0, b1) of it. */
typedef struct kl_iter_blocks { int64_t nblk, bs, items; } kl_iter_blocks;

static inline kl_iter_blocks kl_iter_split(const kl_iter *it)
{
    kl_iter_blocks b;
    b.bs = it->rows >= 64 || it->inner <= 8192 ? it->inner : 8192;
    if (b.bs < 1) b.bs = 1;
    b.nblk = (it->inner + b.bs - 1) / b.bs;
    if (b.nblk < 1) b.nblk = 1;
    b.items = it->rows * b.nblk;
    return b;
}

static inline void kl_iter_item(const kl_iter *it, const kl_iter_blocks *b, int64_t w, int64_t *off, int64_t *i0,
                                int64_t *i1)
{
    int64_t blk = w % b->nblk;
    kl_iter_row(it, w / b->nblk, off);
    *i0 = blk * b->bs;
    *i1 = *i0 + b->bs < it->inner ? *i0 + b->bs : it->inner;
}

/* Inner stride of operand k. */
static inline int64_t kl_iter_inner_st(const kl_iter *it, int k) { return it->st[k][it->ndim - 1]; }

#endif
