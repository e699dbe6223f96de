/* Column sums on CUDA, shared by reduce's column kernel (reduce_softmax.cu:
 * outputs consecutive in x, a bias gradient), batchnorm's statistics with
 * S == 1 and layernorm's dgamma/dbeta (norm.cu): for each of ncols
 * consecutive columns, one or two sums of per-element terms over chunk q
 * of nrows rows, in double, in a fixed order.
 *
 * col_sums_k<ROWS>, launched with blocks of dim3(32, ROWS) and grid (column
 * blocks, nq): block (x, q) takes 32 columns (grid-stride) and rows
 * [r0, r1) of chunk q (kl_chunk_range); thread (tx, ty) sums rows r0 + ty,
 * r0 + ty + ROWS, ... of column c0 + tx in order, so each warp reads 32
 * consecutive values of a row; then thread (tx, 0) adds the column's ROWS
 * partials in order through shared memory. The order depends on the shape
 * only: results repeat run to run.
 *
 * The term struct (a kernel argument, by value) supplies, for a column
 * c < ncols:
 *   enum { NV = 1 or 2 }: sums per column;
 *   double col(int64_t c): a value read once per column (batchnorm's
 *     shift or mean; 0 where unused), handed to add;
 *   void add(int64_t r, int64_t c, int64_t ncols, double cv, double *acc):
 *     acc[0..NV) += the terms of row r, column c;
 *   void put(int64_t c, int64_t q, int64_t ncols, int64_t nq, const double *sum):
 *     the column's sums over chunk q: the output, or a partial for a later
 *     kernel to add in chunk order.
 * ncols (batchnorm's C, layernorm's D) comes from the kernel rather than
 * a copy in the term: one register fewer (bn_cols' f32 backward: 40, not
 * 44). */
#ifndef KL_CUDA_COL_SUMS_CUH
#define KL_CUDA_COL_SUMS_CUH

#include "backends/cuda/cuda_internal.cuh"
#include "ops/sum_chunks.h"

/* the bound: blocks of 32 * ROWS threads, so ptxas keeps layernorm's 1024
 * (ROWS 32) within the registers of an SM */
template <int ROWS, typename Term>
__global__ void __launch_bounds__(32 * ROWS) col_sums_k(Term t, int64_t ncols, int64_t nrows, int64_t nq)
{
    __shared__ double ph[Term::NV][ROWS][33];
    int tx = threadIdx.x, ty = threadIdx.y;
    int64_t q = blockIdx.y, r0, r1;
    kl_chunk_range(q, nq, nrows, &r0, &r1);
    for (int64_t c0 = (int64_t)blockIdx.x * 32; c0 < ncols; c0 += (int64_t)gridDim.x * 32) {
        int64_t c = c0 + tx;
        double acc[Term::NV];
#pragma unroll
        for (int v = 0; v < Term::NV; v++) acc[v] = 0;
        if (c < ncols) {
            double cv = t.col(c);
            for (int64_t r = r0 + ty; r < r1; r += ROWS) t.add(r, c, ncols, cv, acc);
        }
#pragma unroll
        for (int v = 0; v < Term::NV; v++) ph[v][ty][tx] = acc[v];
        __syncthreads();
        if (ty == 0 && c < ncols) {
            double sum[Term::NV];
#pragma unroll
            for (int v = 0; v < Term::NV; v++) sum[v] = 0;
            for (int k = 0; k < ROWS; k++)
#pragma unroll
                for (int v = 0; v < Term::NV; v++) sum[v] += ph[v][k][tx];
            t.put(c, q, ncols, nq, sum);
        }
        __syncthreads(); /* ph is rewritten for the next 32 columns */
    }
}

#endif
