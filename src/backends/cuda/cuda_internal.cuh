/* Internals shared by the CUDA backend's .cu files (CUDA C++, written in C
 * style: no exceptions, no STL, no C++ runtime needed at link time).
 *
 * Kernels are `extern "C" kl_status kl_cuda_<op>(const kl_exec *ex, const
 * kl_tensor *t)`: host functions that launch on kiln's stream (one per
 * process, cudaStreamNonBlocking) and return at once; tensors' pointers
 * (kl_data) are device pointers. Registered in registry.cu. */
#ifndef KL_CUDA_INTERNAL_CUH
#define KL_CUDA_INTERNAL_CUH

#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

#define _Alignas(n) alignas(n) /* core/graph.h is C11 */
extern "C" {
#include "core/graph.h"
#include "backends/backend.h"
}
#undef _Alignas
#include "ops/attrs.h"
#include "backends/cpu/iter.h" /* kl_iter_init: collapses dims on the host */

/* ---- errors ---- */

/* Records "<op>: <kernel> on cuda:<dev> failed: <error>" and returns KL_EDEVICE
 * (KL_EDEVMEM for out-of-memory). */
kl_status kl_cu_fail(cudaError_t e, const char *op, const char *kernel, const char *file, int line);

/* Returns from the calling function when a CUDA call fails. */
#define KL_CUDA_CHECK(call, op, kernel)                                            \
    do {                                                                           \
        cudaError_t kl_cu_e_ = (call);                                             \
        if (kl_cu_e_ != cudaSuccess) return kl_cu_fail(kl_cu_e_, op, kernel, __FILE__, __LINE__); \
    } while (0)

/* After a <<<...>>> launch: a bad configuration shows here (faults inside
 * the kernel show at the next synchronisation). */
#define KL_CUDA_LAUNCHED(t, kernel) KL_CUDA_CHECK(cudaGetLastError(), kl_ops[(t)->op]->name, kernel)

/* "<op>: no CUDA kernel for <tensor>" (KL_EUNSUPPORTED) */
static inline kl_status kl_cu_bad_dtype(const kl_tensor *t)
{
    return kl_fail(KL_EUNSUPPORTED, "%s: no CUDA kernel for %s", kl_ops[t->op]->name, kl_desc(t));
}

/* Data errors found by kernels (a label or index out of range): the first
 * one is recorded in host-mapped memory and reported as KL_EINVAL by the
 * next stream synchronisation (kl_tensor_get, kl_ctx_param_get, sync). */
typedef struct kl_cuda_err {
    int code; /* KL_CUERR_*; 0: none */
    int value;
    long long where, limit;
    /* set by every report; the update skips while it is (optim.cu). The
     * host clears code when it reports, but poison on the stream, so runs
     * issued before the report stay skipped */
    int poison;
} kl_cuda_err;
enum { KL_CUERR_NONE = 0, KL_CUERR_LABEL = 1, KL_CUERR_INDEX = 2, KL_CUERR_GATHER = 3, KL_CUERR_START = 4 };

__device__ __forceinline__ void kl_cu_report(kl_cuda_err *e, int code, int value, long long where, long long limit)
{
    atomicExch(&e->poison, 1);
    if (atomicCAS(&e->code, 0, -1) == 0) {
        e->value = value;
        e->where = where;
        e->limit = limit;
        __threadfence_system();
        atomicExch(&e->code, code);
    }
}

/* ---- the device state (cuda_backend.cu) ---- */

cudaStream_t kl_cu_stream(void);
int kl_cu_device(void);
kl_cuda_err *kl_cu_err(void);          /* device-visible error record */
void *kl_cu_workspace(size_t *bytes);  /* cuBLASLt workspace */
void *kl_cu_lt(void);                  /* cublasLtHandle_t */
int kl_cu_tf32(void);                  /* TF32 allowed for f32 GEMMs (KILN_TF32=0 turns it off) */
/* cuDNN's convolution for conv node t when KILN_CUDA_CONV=cudnn and cuDNN
 * takes it (conv_cudnn.cu): *done = 1, the work issued; else *done = 0 and
 * kiln's kernels (conv.cu) run it. */
extern "C" kl_status kl_cu_cudnn_conv(const kl_exec *ex, const kl_tensor *t, int *done);
#define KL_CU_RED_BLOCKS 1024
double *kl_cu_reduce_buf(void);        /* KL_CU_RED_BLOCKS + 1 doubles of device scratch */

/* ---- launch helpers ---- */

#define KL_CU_THREADS 256

/* Blocks for a grid-stride loop over n items. */
static inline unsigned kl_cu_blocks(int64_t n, int threads)
{
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > 65535 * 64) b = 65535 * 64;
    return (unsigned)b;
}

/* Threads per block for a reduction over len values: a power of two in [32, 256]. */
static inline int kl_cu_red_threads(int64_t len)
{
    int n = 32;
    while (n < 256 && n < len) n *= 2;
    return n;
}

#define KL_CU_FOR(i, n) for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

/* ---- strided N-d iteration: dims collapsed on the host (kl_iter_init),
 * offsets of each operand from the linear index on the device ---- */

#define KL_CU_MAX_OPS 3
typedef struct kl_cu_iter {
    int ndim;
    int64_t n; /* elements */
    int64_t ne[8];
    int64_t st[KL_CU_MAX_OPS][8];
} kl_cu_iter;

static inline kl_cu_iter kl_cu_iter_make(int ndim, const int64_t *ne, int nops, const int64_t (*st)[8])
{
    kl_iter it;
    kl_iter_init(&it, ndim, ne, nops, st);
    kl_cu_iter c;
    memset(&c, 0, sizeof c);
    c.ndim = it.ndim;
    c.n = it.rows * it.inner;
    for (int d = 0; d < it.ndim; d++) {
        c.ne[d] = it.ne[d];
        for (int k = 0; k < nops; k++) c.st[k][d] = it.st[k][d];
    }
    return c;
}

template <int NOPS>
__device__ __forceinline__ void kl_cu_offsets(const kl_cu_iter &it, int64_t i, int64_t *off)
{
#pragma unroll
    for (int k = 0; k < NOPS; k++) off[k] = 0;
    if (it.ndim == 1) {
#pragma unroll
        for (int k = 0; k < NOPS; k++) off[k] = i * it.st[k][0];
        return;
    }
    for (int d = it.ndim - 1; d >= 0; d--) {
        int64_t q = i / it.ne[d], r = i - q * it.ne[d];
        i = q;
#pragma unroll
        for (int k = 0; k < NOPS; k++) off[k] += r * it.st[k][d];
    }
}

/* ---- block and warp reductions (fixed order: deterministic) ---- */

/* init + part[0] + part[stride] + ... + part[(n - 1) * stride], added in
 * that order: the chunk partials of a long sum (ops/sum_chunks.h) */
static __device__ __forceinline__ double kl_cu_sum_parts(double init, const double *part, int64_t n, int64_t stride)
{
    for (int64_t q = 0; q < n; q++) init += part[q * stride];
    return init;
}

template <typename T> __device__ __forceinline__ T kl_cu_warp_sum(T v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <typename T> __device__ __forceinline__ T kl_cu_warp_max(T v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        T w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v;
}

/* Sum (MAX = 0) or max (MAX = 1) of v over the block, returned to every
 * thread. blockDim.x is a multiple of 32; every thread must call it. */
template <typename T, int MAX> __device__ T kl_cu_block_reduce(T v)
{
    __shared__ T part[32];
    __shared__ T result;
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = MAX ? kl_cu_warp_max(v) : kl_cu_warp_sum(v);
    __syncthreads(); /* a previous call's readers are done with part and result */
    if (lane == 0) part[w] = v;
    __syncthreads();
    if (w == 0) {
        T u = lane < nw ? part[lane] : part[0];
        if (!MAX && lane >= nw) u = (T)0;
        u = MAX ? kl_cu_warp_max(u) : kl_cu_warp_sum(u);
        if (lane == 0) result = u;
    }
    __syncthreads();
    return result;
}

/* ---- shared host helpers ---- */

/* One GEMM, or a strided batch of them, on cuBLASLt (matmul.cu), row-major:
 *   y[M, N] (ld ldy) = a[M, K] @ b[K, N] (+ bias[N]) (ReLU) + beta * y
 * ta / tb: the operand is stored transposed (a as [K, M] with ld lda, b as
 * [N, K] with ld ldb). batch > 1: matrix i at a + i*sa, b + i*sb, y + i*sy
 * (element strides; 0 shares one matrix). bias and relu ride on the
 * epilogue (not for f64). f32 uses TF32 unless KILN_TF32=0; bf16 and f16
 * accumulate in f32. Plans are cached
 * per shape, layout and alignment (the heuristic runs at the first call). */
typedef struct kl_cu_gemm {
    kl_dtype dt; /* f32, f64, bf16 or f16 (a, b, y and bias alike) */
    int64_t M, N, K;
    const void *a;
    int64_t lda;
    int ta;
    const void *b;
    int64_t ldb;
    int tb;
    void *y;
    int64_t ldy;
    int64_t batch, sa, sb, sy;
    const void *bias;
    int relu;
    double beta; /* 0: overwrite y; 1: accumulate */
} kl_cu_gemm;
/* t names the op in messages. */
extern "C" kl_status kl_cu_gemm_run(const kl_tensor *t, const kl_cu_gemm *g);


/* Copies a strided src (ne, src_st) into dst laid out with dst_st; any dtype
 * (by element size). elementwise.cu */
kl_status kl_cu_copy_strided(const kl_tensor *t, int ndim, const int64_t *ne, size_t es, const void *src,
                             const int64_t *src_st, void *dst, const int64_t *dst_st);
/* y[r, j] = act(y[r, j] + bias[j]) over rows x n (bias may be NULL, kind -1:
 * no activation); any float dtype by t->dtype. elementwise.cu */
kl_status kl_cu_bias_act(const kl_tensor *t, void *y, const void *bias, int64_t rows, int64_t n, int kind);

#endif
