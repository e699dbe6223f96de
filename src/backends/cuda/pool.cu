/* pool2d and pool2d_bwd on CUDA (NCHW, floor mode), as the CPU ops in
 * ops/pool2d.c, with the same window math (ops/pool2d.h):
 *   max:  y = max over the window (padding ignored); the argmax's position
 *         i*kw + j in the window is saved in the forward node's aux, u8 (i32
 *         when the window has > 255 elements: a->idx32). Ties go to the first
 *         maximum; a NaN wins.
 *   avg:  y = sum over the window / (kh*kw) (padding counts as zeros).
 *   bwd:  dx written (not accumulated): each dx element gathers dy from every
 *         window holding it (max: where the saved argmax is that element;
 *         avg: dy / (kh*kw)), in the CPU's order, so overlapping windows need
 *         no atomics and sums are deterministic.
 * src: pool2d {x}; pool2d_bwd {dy, forward node} (max) or {dy} (avg).
 * tests/test_conv_index.c runs kl_pool_fwd_T / kl_pool_bwd_T (the threads'
 * bodies) on the host against the CPU ops. */
#include "backends/cuda/cuda_internal.cuh"
#include "ops/pool2d.h"

static __device__ __forceinline__ float fwd_at(const pool_attr *a, const float *x, int64_t i, int32_t *k) { return kl_pool_fwd_float(a, x, i, k); }
static __device__ __forceinline__ double fwd_at(const pool_attr *a, const double *x, int64_t i, int32_t *k) { return kl_pool_fwd_double(a, x, i, k); }
static __device__ __forceinline__ float bwd_at(const pool_attr *a, const float *dy, const uint8_t *i8, const int32_t *i32, int64_t i) { return kl_pool_bwd_float(a, dy, i8, i32, i); }
static __device__ __forceinline__ double bwd_at(const pool_attr *a, const double *dy, const uint8_t *i8, const int32_t *i32, int64_t i) { return kl_pool_bwd_double(a, dy, i8, i32, i); }

/* thread per output, in NCHW order; max also writes the argmax (i8 or i32, the other NULL) */
template <typename T> __global__ void pool_k(pool_attr a, const T *x, T *y, uint8_t *i8, int32_t *i32)
{
    KL_CU_FOR(i, a.N * a.C * a.OH * a.OW)
    {
        int32_t k;
        y[i] = fwd_at(&a, x, i, &k);
        if (i32) i32[i] = k;
        else if (i8) i8[i] = (uint8_t)k;
    }
}

/* thread per dx element, in NCHW order */
template <typename T> __global__ void pool_bwd_k(pool_attr a, const T *dy, const uint8_t *i8, const int32_t *i32, T *dx)
{
    KL_CU_FOR(i, a.N * a.C * a.H * a.W) dx[i] = bwd_at(&a, dy, i8, i32, i);
}

template <typename T> static kl_status pool_fwd(const kl_exec *ex, const kl_tensor *t)
{
    const pool_attr *a = KL_ATTR_C(t, pool_attr);
    void *idx = a->kind == POOL_MAX ? kl_aux(ex, t) : NULL;
    uint8_t *i8 = idx && !a->idx32 ? (uint8_t *)idx : NULL;
    int32_t *i32 = idx && a->idx32 ? (int32_t *)idx : NULL;
    pool_k<T><<<kl_cu_blocks(kl_numel(t), KL_CU_THREADS), KL_CU_THREADS, 0, kl_cu_stream()>>>(
        *a, (const T *)kl_data(ex, t->src[0]), (T *)kl_data(ex, t), i8, i32);
    KL_CUDA_LAUNCHED(t, "pool_k");
    return KL_OK;
}

template <typename T> static kl_status pool_bwd(const kl_exec *ex, const kl_tensor *t)
{
    const pool_attr *a = KL_ATTR_C(t, pool_attr);
    const void *idx = a->kind == POOL_MAX ? kl_aux(ex, t->src[1]) : NULL;
    const uint8_t *i8 = idx && !a->idx32 ? (const uint8_t *)idx : NULL;
    const int32_t *i32 = idx && a->idx32 ? (const int32_t *)idx : NULL;
    pool_bwd_k<T><<<kl_cu_blocks(kl_numel(t), KL_CU_THREADS), KL_CU_THREADS, 0, kl_cu_stream()>>>(
        *a, (const T *)kl_data(ex, t->src[0]), i8, i32, (T *)kl_data(ex, t));
    KL_CUDA_LAUNCHED(t, "pool_bwd_k");
    return KL_OK;
}


#define DISPATCH(fn) \
    (t->dtype == KL_F32 ? fn<float>(ex, t) : t->dtype == KL_F64 ? fn<double>(ex, t) : kl_cu_bad_dtype(t))

extern "C" kl_status kl_cuda_pool2d(const kl_exec *ex, const kl_tensor *t) { return DISPATCH(pool_fwd); }
extern "C" kl_status kl_cuda_pool2d_bwd(const kl_exec *ex, const kl_tensor *t) { return DISPATCH(pool_bwd); }
