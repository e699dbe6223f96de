/* CUDA kernels of the row ops (src/ops/rows.c) and of the read-back record
 * (src/core/readback.c):
 *   gather_rows   y[r] = src[idx[start + r]]: one thread per 4-byte word of
 *                 a row when rows are whole words, else per byte; a bad
 *                 index is reported (KL_CUERR_GATHER) and its row zeroed,
 *                 a window [start, start + rows) outside idx (KL_CUERR_START)
 *                 zeroes them all
 *   argmax_match  one warp per row finds the first largest logit; matches are
 *                 counted with integer atomics (exact in any order)
 *   record        one thread writes the values, then (after a system fence)
 *                 the record's sequence number, into host-mapped memory */
#include "backends/cuda/cuda_internal.cuh"
#include "core/half.h"

/* ---- gather_rows ---- */

template <typename E>
__global__ void gather_k(const E *src, const int32_t *idx, const int32_t *startp, E *y, int64_t rows, int64_t per_row,
                         int64_t K, int64_t M, kl_cuda_err *err)
{
    int64_t start = *startp;
    if (start < 0 || start > K - rows) { /* as the CPU: the whole window is out, not an index */
        if (blockIdx.x == 0 && threadIdx.x == 0) kl_cu_report(err, KL_CUERR_START, (int)start, start + rows, K);
        KL_CU_FOR(e, rows * per_row) y[e] = (E)0;
        return;
    }
    KL_CU_FOR(e, rows * per_row)
    {
        int64_t r = e / per_row, c = e - r * per_row, at = start + r;
        int64_t j = idx[at];
        if (j < 0 || j >= M) {
            if (c == 0) kl_cu_report(err, KL_CUERR_GATHER, (int)j, at, M);
            y[e] = (E)0;
        } else {
            y[e] = src[j * per_row + c];
        }
    }
}

extern "C" kl_status kl_cuda_gather_rows(const kl_exec *ex, const kl_tensor *t)
{
    const kl_tensor *src = t->src[0], *idx = t->src[1];
    int64_t rows = t->ne[0], row_bytes = (int64_t)(kl_nbytes(t) / (size_t)rows);
    const void *sp = kl_data(ex, src);
    void *yp = kl_data(ex, t);
    bool words = row_bytes % 4 == 0 && (uintptr_t)sp % 4 == 0 && (uintptr_t)yp % 4 == 0;
    int64_t per_row = words ? row_bytes / 4 : row_bytes;
    unsigned nb = kl_cu_blocks(rows * per_row, KL_CU_THREADS);
    const int32_t *ix = (const int32_t *)kl_data(ex, idx), *st = (const int32_t *)kl_data(ex, t->src[2]);
    cudaStream_t s = kl_cu_stream();
    if (words)
        gather_k<uint32_t><<<nb, KL_CU_THREADS, 0, s>>>((const uint32_t *)sp, ix, st, (uint32_t *)yp, rows, per_row,
                                                       idx->ne[0], src->ne[0], kl_cu_err());
    else
        gather_k<uint8_t><<<nb, KL_CU_THREADS, 0, s>>>((const uint8_t *)sp, ix, st, (uint8_t *)yp, rows, per_row,
                                                      idx->ne[0], src->ne[0], kl_cu_err());
    KL_CUDA_LAUNCHED(t, "gather_k");
    return KL_OK;
}

/* ---- argmax_match ---- */

/* The CPU's scan (kl_argmax) finds the first largest value, where a NaN
 * never wins unless it is in column 0 (nothing is > NaN). In parallel: lane
 * l keeps the first largest non-NaN of columns l, l+32, ...; the warp keeps
 * the pair (largest value, then lowest column), an order-free reduction;
 * a NaN in column 0 makes the answer 0. */
template <typename T>
__global__ void match_k(const T *x, const int32_t *lab, int64_t N, int64_t C, int32_t *count)
{
    int lane = threadIdx.x & 31;
    int64_t warp = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5, warps = ((int64_t)gridDim.x * blockDim.x) >> 5;
    for (int64_t r = warp; r < N; r += warps) { /* whole warps iterate together: the shuffles see every lane */
        const T *row = x + r * C;
        int64_t best = -1;
        T bv = 0;
        for (int64_t c = lane; c < C; c += 32) {
            T v = row[c];
            if (v == v && (best < 0 || v > bv)) best = c, bv = v;
        }
        for (int o = 16; o > 0; o >>= 1) {
            int64_t ob = __shfl_xor_sync(0xffffffffu, best, o);
            T ov = __shfl_xor_sync(0xffffffffu, bv, o);
            if (ob >= 0 && (best < 0 || ov > bv || (ov == bv && ob < best))) best = ob, bv = ov;
        }
        if (lane == 0) {
            if (best < 0 || row[0] != row[0]) best = 0;
            if (best == lab[r]) atomicAdd(count, 1);
        }
    }
}

extern "C" kl_status kl_cuda_argmax_match(const kl_exec *ex, const kl_tensor *t)
{
    const kl_tensor *x = t->src[0];
    int64_t N = x->ne[0], C = x->ne[1];
    int32_t *count = (int32_t *)kl_data(ex, t);
    const int32_t *lab = (const int32_t *)kl_data(ex, t->src[1]);
    cudaStream_t s = kl_cu_stream();
    KL_CUDA_CHECK(cudaMemsetAsync(count, 0, sizeof *count, s), "argmax_match", "cudaMemsetAsync");
    unsigned nb = kl_cu_blocks(N * 32, KL_CU_THREADS);
    if (x->dtype == KL_F32) match_k<float><<<nb, KL_CU_THREADS, 0, s>>>((const float *)kl_data(ex, x), lab, N, C, count);
    else match_k<double><<<nb, KL_CU_THREADS, 0, s>>>((const double *)kl_data(ex, x), lab, N, C, count);
    KL_CUDA_LAUNCHED(t, "match_k");
    return KL_OK;
}

/* ---- record (read-back) ---- */

typedef struct { const void *p[KL_RECORD_MAX]; int dt[KL_RECORD_MAX]; int n; } record_srcs;

__global__ void record_k(record_srcs s, kl_record *ring, const record_vals *rv)
{
    kl_record *r = ring + rv->slot;
    for (int i = 0; i < s.n; i++) r->v[i] = kl_load_double(s.p[i], s.dt[i], 0);
    __threadfence_system(); /* the values reach the host before the sequence number */
    *(volatile uint64_t *)&r->seq = rv->seq;
}

extern "C" kl_status kl_cuda_record(const kl_exec *ex, const kl_tensor *t)
{
    record_srcs s;
    memset(&s, 0, sizeof s);
    s.n = t->n_src;
    for (int i = 0; i < t->n_src; i++) {
        s.p[i] = kl_data(ex, t->src[i]);
        s.dt[i] = (int)t->src[i]->dtype;
    }
    record_k<<<1, 1, 0, kl_cu_stream()>>>(s, KL_ATTR_C(t, record_attr)->ring_dev, (const record_vals *)kl_run_vals(ex, t));
    KL_CUDA_LAUNCHED(t, "record_k");
    return KL_OK;
}
