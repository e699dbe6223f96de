/* A conv's bias gradient on CUDA, shared by kiln's kernels (conv.cu, dz in
 * the cn layout [O, m*P]) and cuDNN's path (conv_cudnn.cu, dz NCHW):
 *   db[o] = sum over samples n < m and pixels p < P of dz[n*sn + o*so + p]
 * in double, in a fixed order: a block per (chunk, channel) of the m*P
 * values (kl_sum_chunks) into part [O, nq], then a thread per channel adds
 * its chunks in order, plus sum[o] unless this is the first batch chunk;
 * the last batch chunk writes db, the others keep the total in sum. */
#ifndef KL_CUDA_CONV_DB_CUH
#define KL_CUDA_CONV_DB_CUH

#include "backends/cuda/cuda_internal.cuh"
#include "ops/sum_chunks.h"
#include "ops/conv2d_index.h" /* kl_conv_db_src */

template <typename T>
__global__ void conv_db_part_k(const T *dz, int64_t O, int64_t len, int64_t P, int64_t sn, int64_t so, int64_t nq,
                               double *part)
{
    for (int64_t o = blockIdx.y; o < O; o += gridDim.y) {
        int64_t j0, j1;
        kl_chunk_range(blockIdx.x, nq, len, &j0, &j1);
        double acc = 0;
        for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) acc += (double)dz[kl_conv_db_src(j, o, P, sn, so)];
        acc = kl_cu_block_reduce<double, 0>(acc);
        if (threadIdx.x == 0) part[o * nq + blockIdx.x] = acc;
    }
}

template <typename T>
__global__ void conv_db_sum_k(const double *part, int64_t O, int64_t nq, double *sum, int first, T *db)
{
    KL_CU_FOR(o, O)
    {
        double v = kl_cu_sum_parts(first ? 0.0 : sum[o], part + o * nq, nq, 1);
        if (db) db[o] = (T)v;
        else sum[o] = v;
    }
}

/* dbsum: the layout's region (kl_conv_cu_layout.dbsum): sum [O], then the partials */
template <typename T>
static kl_status kl_cu_conv_db(const kl_tensor *t, const T *dz, int64_t O, int64_t m, int64_t P, int64_t sn,
                               int64_t so, double *dbsum, int first, T *db, cudaStream_t s)
{
    int64_t len = m * P, nq = kl_sum_chunks(len);
    double *part = dbsum + O;
    dim3 grid((unsigned)nq, (unsigned)(O < 65535 ? O : 65535));
    conv_db_part_k<T><<<grid, kl_cu_red_threads(len / nq), 0, s>>>(dz, O, len, P, sn, so, nq, part);
    KL_CUDA_LAUNCHED(t, "conv_db_part_k");
    conv_db_sum_k<T><<<kl_cu_blocks(O, KL_CU_THREADS), KL_CU_THREADS, 0, s>>>(part, O, nq, dbsum, first, db);
    KL_CUDA_LAUNCHED(t, "conv_db_sum_k");
    return KL_OK;
}

#endif
