/* Elementwise CUDA kernels: fill, copy, cast, unary (+ bwd), binary,
 * dropout, concat, slice_bwd. The per-element math is
 * the CPU's (ops/elem.h, ops/norm.h, core/half.h); strided operands are
 * walked with dims collapsed on the host (kl_cu_iter). fill, unary, binary,
 * dropout and matmul's bias/activation pass take f16/bf16 storage
 * (storage.cuh), computing in f32. */
#include "backends/cuda/cuda_internal.cuh"
#include "backends/cuda/storage.cuh"
#include "ops/elem.h"
#include "ops/norm.h"
#include "core/half.h"

static __device__ __forceinline__ float un(int k, float x, float a) { return kl_unary_float(k, x, a); }
static __device__ __forceinline__ double un(int k, double x, double a) { return kl_unary_double(k, x, a); }
static __device__ __forceinline__ float un_grad(int k, float s, float dy, float a) { return kl_unary_grad_float(k, s, dy, a); }
static __device__ __forceinline__ double un_grad(int k, double s, double dy, double a) { return kl_unary_grad_double(k, s, dy, a); }
static __device__ __forceinline__ float bin(int k, float a, float b) { return kl_binary_float(k, a, b); }
static __device__ __forceinline__ double bin(int k, double a, double b) { return kl_binary_double(k, a, b); }


/* ---- fill ---- */

template <typename T> __global__ void fill_k(T *y, int64_t n, T v)
{
    KL_CU_FOR(i, n) y[i] = v;
}

static uint16_t half_bits(kl_dtype dt, double v)
{
    return dt == KL_BF16 ? kl_f32_to_bf16((float)v) : kl_f32_to_f16((float)v);
}

extern "C" kl_status kl_cuda_fill(const kl_exec *ex, const kl_tensor *t)
{
    double v = KL_ATTR_C(t, fill_attr)->v;
    int64_t n = kl_numel(t);
    void *y = kl_data(ex, t);
    unsigned nb = kl_cu_blocks(n, KL_CU_THREADS);
    cudaStream_t s = kl_cu_stream();
    switch (t->dtype) {
    case KL_F32: fill_k<float><<<nb, KL_CU_THREADS, 0, s>>>((float *)y, n, (float)v); break;
    case KL_F64: fill_k<double><<<nb, KL_CU_THREADS, 0, s>>>((double *)y, n, v); break;
    case KL_I32: fill_k<int32_t><<<nb, KL_CU_THREADS, 0, s>>>((int32_t *)y, n, (int32_t)v); break;
    case KL_F16:
    case KL_BF16: fill_k<uint16_t><<<nb, KL_CU_THREADS, 0, s>>>((uint16_t *)y, n, half_bits(t->dtype, v)); break;
    default: return kl_cu_bad_dtype(t);
    }
    KL_CUDA_LAUNCHED(t, "fill_k");
    return KL_OK;
}

/* ---- strided copy (copy, concat, slice_bwd) ---- */

template <typename E> __global__ void copy_k(kl_cu_iter it, const E *x, E *y)
{
    KL_CU_FOR(i, it.n)
    {
        int64_t o[2];
        kl_cu_offsets<2>(it, i, o);
        y[o[0]] = x[o[1]];
    }
}

kl_status kl_cu_copy_strided(const kl_tensor *t, int ndim, const int64_t *ne, size_t es, const void *src,
                             const int64_t *src_st, void *dst, const int64_t *dst_st)
{
    int64_t st[2][8];
    memset(st, 0, sizeof st);
    memcpy(st[0], dst_st, (size_t)ndim * sizeof *dst_st);
    memcpy(st[1], src_st, (size_t)ndim * sizeof *src_st);
    kl_cu_iter it = kl_cu_iter_make(ndim, ne, 2, (const int64_t(*)[8])st);
    cudaStream_t s = kl_cu_stream();
    if (it.ndim == 1 && it.st[0][0] == 1 && it.st[1][0] == 1) {
        KL_CUDA_CHECK(cudaMemcpyAsync(dst, src, (size_t)it.n * es, cudaMemcpyDeviceToDevice, s), kl_ops[t->op]->name,
                      "cudaMemcpyAsync");
        return KL_OK;
    }
    unsigned nb = kl_cu_blocks(it.n, KL_CU_THREADS);
    switch (es) {
    case 1: copy_k<uint8_t><<<nb, KL_CU_THREADS, 0, s>>>(it, (const uint8_t *)src, (uint8_t *)dst); break;
    case 2: copy_k<uint16_t><<<nb, KL_CU_THREADS, 0, s>>>(it, (const uint16_t *)src, (uint16_t *)dst); break;
    case 4: copy_k<uint32_t><<<nb, KL_CU_THREADS, 0, s>>>(it, (const uint32_t *)src, (uint32_t *)dst); break;
    case 8: copy_k<uint64_t><<<nb, KL_CU_THREADS, 0, s>>>(it, (const uint64_t *)src, (uint64_t *)dst); break;
    default: return kl_fail(KL_EUNSUPPORTED, "%s: no CUDA copy for %zu-byte elements", kl_ops[t->op]->name, es);
    }
    KL_CUDA_LAUNCHED(t, "copy_k");
    return KL_OK;
}

extern "C" kl_status kl_cuda_copy(const kl_exec *ex, const kl_tensor *t)
{
    const kl_tensor *x = t->src[0];
    return kl_cu_copy_strided(t, x->ndim, x->ne, kl_dtype_size(x->dtype), kl_data(ex, x), x->st, kl_data(ex, t), t->st);
}

extern "C" kl_status kl_cuda_concat(const kl_exec *ex, const kl_tensor *t)
{
    int axis = KL_ATTR_C(t, concat_attr)->axis;
    unsigned char *y = (unsigned char *)kl_data(ex, t);
    size_t es = kl_dtype_size(t->dtype);
    int64_t at = 0;
    for (int k = 0; k < t->n_src; k++) {
        const kl_tensor *x = t->src[k];
        KL_TRY(kl_cu_copy_strided(t, x->ndim, x->ne, es, kl_data(ex, x), x->st, y + (size_t)(at * t->st[axis]) * es, t->st));
        at += x->ne[axis];
    }
    return KL_OK;
}

extern "C" kl_status kl_cuda_slice_bwd(const kl_exec *ex, const kl_tensor *t)
{
    const view_attr *a = KL_ATTR_C(t, view_attr);
    const kl_tensor *dy = t->src[0];
    unsigned char *y = (unsigned char *)kl_data(ex, t);
    size_t es = kl_dtype_size(t->dtype);
    KL_CUDA_CHECK(cudaMemsetAsync(y, 0, kl_nbytes(t), kl_cu_stream()), "slice_bwd", "cudaMemsetAsync");
    return kl_cu_copy_strided(t, dy->ndim, dy->ne, es, kl_data(ex, dy), dy->st, y + (size_t)(a->start * t->st[a->axis]) * es,
                              t->st);
}

/* ---- cast ---- */

static __device__ void cast_store(void *p, int dt, int64_t i, double v)
{
    switch (dt) {
    case KL_F32: ((float *)p)[i] = (float)v; break;
    case KL_F64: ((double *)p)[i] = v; break;
    case KL_F16: ((uint16_t *)p)[i] = kl_f32_to_f16((float)v); break;
    default: ((uint16_t *)p)[i] = kl_f32_to_bf16((float)v); break;
    }
}

__global__ void cast_k(kl_cu_iter it, const void *x, int xdt, void *y, int ydt)
{
    KL_CU_FOR(i, it.n)
    {
        int64_t o[2];
        kl_cu_offsets<2>(it, i, o);
        cast_store(y, ydt, o[0], kl_load_double(x, xdt, o[1]));
    }
}

extern "C" kl_status kl_cuda_cast(const kl_exec *ex, const kl_tensor *t)
{
    const kl_tensor *x = t->src[0];
    int64_t st[2][8];
    memcpy(st[0], t->st, sizeof st[0]);
    memcpy(st[1], x->st, sizeof st[1]);
    kl_cu_iter it = kl_cu_iter_make(t->ndim, t->ne, 2, (const int64_t(*)[8])st);
    cast_k<<<kl_cu_blocks(it.n, KL_CU_THREADS), KL_CU_THREADS, 0, kl_cu_stream()>>>(it, kl_data(ex, x), (int)x->dtype,
                                                                                   kl_data(ex, t), (int)t->dtype);
    KL_CUDA_LAUNCHED(t, "cast_k");
    return KL_OK;
}

/* ---- unary, unary_bwd ---- */

/* fwd: y = f(x); bwd: y = f'(s) * x with x = dy, s = the saved y or x */
template <typename S>
__global__ void unary_k(kl_cu_iter it, const S *x, const S *s, S *y, int kind, typename kl_cu_calc<S>::T alpha, int bwd)
{
    KL_CU_FOR(i, it.n)
    {
        int64_t o[3];
        kl_cu_offsets<3>(it, i, o);
        typename kl_cu_calc<S>::T v = kl_cu_load(x, o[1]);
        kl_cu_store(y, o[0], bwd ? un_grad(kind, kl_cu_load(s, o[2]), v, alpha) : un(kind, v, alpha));
    }
}

static kl_status unary_run(const kl_exec *ex, const kl_tensor *t, int bwd)
{
    const unary_attr *a = KL_ATTR_C(t, unary_attr);
    const kl_tensor *xs = t->src[0], *ss = bwd ? t->src[1] : t->src[0];
    int64_t st[3][8];
    memset(st, 0, sizeof st);
    for (int d = 0; d < t->ndim; d++) {
        st[0][d] = t->st[d];
        st[1][d] = xs->st[d];
        st[2][d] = ss->st[d];
    }
    kl_cu_iter it = kl_cu_iter_make(t->ndim, t->ne, 3, (const int64_t(*)[8])st);
    unsigned nb = kl_cu_blocks(it.n, KL_CU_THREADS);
    cudaStream_t s = kl_cu_stream();
    KL_CU_FLOAT_SWITCH(t->dtype, return kl_cu_bad_dtype(t),
        unary_k<S><<<nb, KL_CU_THREADS, 0, s>>>(it, (const S *)kl_data(ex, xs), (const S *)kl_data(ex, ss), (S *)kl_data(ex, t),
                                               a->kind, (typename kl_cu_calc<S>::T)a->alpha, bwd))
    KL_CUDA_LAUNCHED(t, "unary_k");
    return KL_OK;
}

extern "C" kl_status kl_cuda_unary(const kl_exec *ex, const kl_tensor *t) { return unary_run(ex, t, 0); }
extern "C" kl_status kl_cuda_unary_bwd(const kl_exec *ex, const kl_tensor *t) { return unary_run(ex, t, 1); }

/* matmul's bias and activation when cuBLASLt's epilogue cannot do them */
template <typename S> __global__ void bias_act_k(S *y, const S *bias, int64_t rows, int64_t n, int kind)
{
    typedef typename kl_cu_calc<S>::T T;
    KL_CU_FOR(i, rows * n)
    {
        T v = kl_cu_load(y, i);
        if (bias) v += kl_cu_load(bias, i % n);
        kl_cu_store(y, i, kind >= 0 ? un(kind, v, (T)0) : v);
    }
}

kl_status kl_cu_bias_act(const kl_tensor *t, void *y, const void *bias, int64_t rows, int64_t n, int kind)
{
    unsigned nb = kl_cu_blocks(rows * n, KL_CU_THREADS);
    cudaStream_t s = kl_cu_stream();
    KL_CU_FLOAT_SWITCH(t->dtype, return kl_cu_bad_dtype(t),
        bias_act_k<S><<<nb, KL_CU_THREADS, 0, s>>>((S *)y, (const S *)bias, rows, n, kind))
    KL_CUDA_LAUNCHED(t, "bias_act_k");
    return KL_OK;
}

/* ---- binary (broadcasting) ---- */

template <typename S> __global__ void binary_k(kl_cu_iter it, const S *a, const S *b, S *y, int kind)
{
    KL_CU_FOR(i, it.n)
    {
        int64_t o[3];
        kl_cu_offsets<3>(it, i, o);
        kl_cu_store(y, o[0], bin(kind, kl_cu_load(a, o[1]), kl_cu_load(b, o[2])));
    }
}

/* x's strides over the broadcast shape of t (0 where x is broadcast) */
static void bcast_strides(const kl_tensor *t, const kl_tensor *x, int64_t *st)
{
    for (int i = 0; i < t->ndim; i++) {
        int ix = i - (t->ndim - x->ndim);
        st[i] = (ix >= 0 && x->ne[ix] == t->ne[i]) ? x->st[ix] : 0;
    }
}

extern "C" kl_status kl_cuda_binary(const kl_exec *ex, const kl_tensor *t)
{
    int64_t st[3][8];
    memset(st, 0, sizeof st);
    memcpy(st[0], t->st, sizeof st[0]);
    bcast_strides(t, t->src[0], st[1]);
    bcast_strides(t, t->src[1], st[2]);
    kl_cu_iter it = kl_cu_iter_make(t->ndim, t->ne, 3, (const int64_t(*)[8])st);
    int kind = KL_ATTR_C(t, binary_attr)->kind;
    unsigned nb = kl_cu_blocks(it.n, KL_CU_THREADS);
    cudaStream_t s = kl_cu_stream();
    const void *a = kl_data(ex, t->src[0]), *b = kl_data(ex, t->src[1]);
    KL_CU_FLOAT_SWITCH(t->dtype, return kl_cu_bad_dtype(t),
        binary_k<S><<<nb, KL_CU_THREADS, 0, s>>>(it, (const S *)a, (const S *)b, (S *)kl_data(ex, t), kind))
    KL_CUDA_LAUNCHED(t, "binary_k");
    return KL_OK;
}

/* ---- dropout: the CPU's mask (Philox word i of (seed, salt, run)) ---- */

/* thread per counter q: its four words decide elements 4q .. 4q+3; the run
 * counter is read from the run block, so a replayed graph draws a new mask */
template <typename S>
__global__ void dropout_k(const S *x, S *y, int64_t n, uint64_t seed, uint32_t salt, const uint64_t *runp, uint32_t thr,
                          typename kl_cu_calc<S>::T scale)
{
    typedef typename kl_cu_calc<S>::T T;
    uint64_t run = *runp;
    KL_CU_FOR(q, (n + 3) / 4)
    {
        kl_u32x4 c = {{(uint32_t)q, salt, (uint32_t)run, (uint32_t)(run >> 32)}};
        kl_u32x4 w = kl_philox(c, (uint32_t)seed, (uint32_t)(seed >> 32));
#pragma unroll
        for (int l = 0; l < 4; l++) {
            int64_t i = 4 * q + l;
            if (i < n) kl_cu_store(y, i, kl_cu_load(x, i) * (w.v[l] >= thr ? scale : (T)0));
        }
    }
}

extern "C" kl_status kl_cuda_dropout(const kl_exec *ex, const kl_tensor *t)
{
    const dropout_attr *a = KL_ATTR_C(t, dropout_attr);
    int64_t n = kl_numel(t);
    unsigned nb = kl_cu_blocks((n + 3) / 4, KL_CU_THREADS);
    cudaStream_t s = kl_cu_stream();
    uint64_t seed = ex->ctx->seed;
    const uint64_t *run = (const uint64_t *)kl_run_vals(ex, t);
    KL_CU_FLOAT_SWITCH(t->dtype, return kl_cu_bad_dtype(t),
        dropout_k<S><<<nb, KL_CU_THREADS, 0, s>>>((const S *)kl_data(ex, t->src[0]), (S *)kl_data(ex, t), n, seed, a->salt,
                                                 run, a->threshold, (typename kl_cu_calc<S>::T)(1.0 / (1.0 - a->p))))
    KL_CUDA_LAUNCHED(t, "dropout_k");
    return KL_OK;
}
