/* How many chunks a CUDA kernel sums a long run of n values in (a block
 * each, partials in double in the node's scratch, then added in chunk
 * order): enough blocks to fill the GPU when there are few runs (a CNN's
 * channels), few enough that the partials stay small. Depends on n only,
 * so sums repeat run to run. Shared by the kernels and the ops' shape
 * functions, which size the scratch. */
#ifndef KL_OPS_SUM_CHUNKS_H
#define KL_OPS_SUM_CHUNKS_H

#include <stdint.h>
#include "core/philox.h" /* KL_HD */

KL_HD static inline int64_t kl_sum_chunks(int64_t n)
{
    int64_t q = (n + 4095) / 4096;
    return q < 1 ? 1 : q > 64 ? 64 : q;
}

/* Chunk q of nq over [0, n): [*j0, *j1); the chunks tile [0, n) in order. */
KL_HD static inline void kl_chunk_range(int64_t q, int64_t nq, int64_t n, int64_t *j0, int64_t *j1)
{
    *j0 = q * n / nq;
    *j1 = (q + 1) * n / nq;
}

/* CUDA reduce of nred values into each of nout outputs: the chunks per
 * output, 1 when the single-pass kernels already have the GPU busy (a
 * block per output, or per 32 consecutive outputs: cols) or the runs are
 * short; the node's scratch holds nout * chunks doubles when > 1. */
KL_HD static inline int64_t kl_reduce_chunks(int64_t nout, int64_t nred, int cols)
{
    int64_t blocks = cols ? (nout + 31) / 32 : nout;
    return nred < 4096 || blocks >= 1024 ? 1 : kl_sum_chunks(nred);
}

/* CUDA layernorm dgamma/dbeta over R rows: row chunks (a block each per 32
 * columns; partials [chunks, 2, D] doubles in the node's scratch when > 1),
 * so that long row counts fill the GPU. */
KL_HD static inline int64_t kl_ln_dgb_chunks(int64_t R)
{
    int64_t q = (R + 1023) / 1024;
    return q < 2 ? 1 : q > 64 ? 64 : q;
}

/* The CUDA reduce node t's chunks per output (kl_reduce_chunks; ops/reduce.c),
 * and in *cols (may be NULL) whether its outputs are consecutive in the
 * input, where the column kernels run. One function for the shape fn,
 * which sizes the scratch, and the kernel, which uses it. */
struct kl_tensor;
#ifdef __cplusplus
extern "C"
#endif
int64_t kl_reduce_cuda_chunks(const struct kl_tensor *t, int *cols);

#endif
