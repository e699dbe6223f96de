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

/* CUDA reduce of nred values into each of nout outputs: the chunks per
 * output, 1 when a block per output (or per 32 columns) already has the
 * GPU busy or the runs are short; the node's scratch holds nout * chunks
 * doubles when > 1. */
KL_HD static inline int64_t kl_reduce_chunks(int64_t nout, int64_t nred)
{
    return nred < 8192 || nout >= 2048 ? 1 : kl_sum_chunks(nred);
}

#endif
