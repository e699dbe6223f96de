/* RMSNorm and RoPE on CUDA: the CPU kernels' math and layouts
 * (src/ops/rmsnorm.c, rope.c), their per-element pieces from ops/seq.h.
 *
 * rmsnorm: x [..., D] as rows [R, D]; y = x * rstd * w (w optional),
 *   rstd = 1 / sqrt(mean(x^2) + eps) saved per row in aux [R] (the dtype).
 *   The sum of squares is taken in double by a block tree per row.
 * rmsnorm_bwd (sources dy, x, forward node, w?): dx (primary output,
 *   overwritten) = rstd (g - x rstd mean(g x rstd)), g = dy w, per row as the
 *   forward; dw (extra, overwritten) = sum_r dy x rstd: partial sums over
 *   chunks of rows into scratch ([chunks, D] double, ops/seq.h kl_rms_chunks),
 *   then each column's partials added in chunk order. Fixed order, no atomics.
 * rope: x [..., T, D] (contiguous); the [T, D/2] cosine table then the sine
 *   table in scratch (angles in double, as on the CPU), then each pair
 *   (x[i], x[i + D/2]) rotated; y overwritten. inverse: rotation by -angle. */
#include "backends/cuda/cuda_internal.cuh"
#include "ops/seq.h"

#define SEQ_NORM_FNS(T_)                                                                           \
    static __device__ __forceinline__ void rms_rstd(double ss, int64_t D, double eps, T_ *out)     \
    {                                                                                              \
        *out = kl_rmsnorm_rstd_##T_(ss, D, eps);                                                   \
    }                                                                                              \
    static __device__ __forceinline__ T_ rms_y(T_ x, T_ r, T_ w) { return kl_rmsnorm_y_##T_(x, r, w); } \
    static __device__ __forceinline__ T_ rms_mgx(double s, T_ r, int64_t D) { return kl_rmsnorm_mgx_##T_(s, r, D); } \
    static __device__ __forceinline__ T_ rms_dx(T_ x, T_ g, T_ r, T_ m) { return kl_rmsnorm_bwd_##T_(x, g, r, m); } \
    static __device__ __forceinline__ void rope_table(T_ *cs, T_ *sn, int64_t half, int64_t D, double base, \
                                                      int inv, int64_t i)                          \
    {                                                                                              \
        kl_rope_table_##T_(cs, sn, half, D, base, inv, i);                                         \
    }                                                                                              \
    static __device__ __forceinline__ void rope_idx(const T_ *x, T_ *y, const T_ *cs, const T_ *sn, \
                                                    int64_t steps, int64_t half, int64_t i)        \
    {                                                                                              \
        kl_rope_idx_##T_(x, y, cs, sn, steps, half, i);                                            \
    }
SEQ_NORM_FNS(float)
SEQ_NORM_FNS(double)


/* ---- rmsnorm: block per row (grid-stride over rows) ---- */

template <typename T> __global__ void rms_fwd_k(const T *x, const T *w, T *y, T *rstd, int64_t R, int64_t D, double eps)
{
    for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
        const T *xr = x + r * D;
        T *yr = y + r * D;
        double ss = 0;
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x) ss += (double)xr[i] * (double)xr[i];
        ss = kl_cu_block_reduce<double, 0>(ss);
        T is;
        rms_rstd(ss, D, eps, &is);
        if (threadIdx.x == 0) rstd[r] = is;
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x) yr[i] = rms_y(xr[i], is, w ? w[i] : (T)1);
    }
}

template <typename T>
__global__ void rms_bwd_dx_k(const T *dy, const T *x, const T *rstd, const T *w, T *dx, int64_t R, int64_t D)
{
    for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
        const T *xr = x + r * D, *dr = dy + r * D;
        T *out = dx + r * D, is = rstd[r];
        double sgx = 0;
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
            sgx += (double)dr[i] * (w ? (double)w[i] : 1.0) * (double)xr[i];
        T mgx = rms_mgx(kl_cu_block_reduce<double, 0>(sgx), is, D);
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x) out[i] = rms_dx(xr[i], dr[i] * (w ? w[i] : (T)1), is, mgx);
    }
}

/* dw partials: block (32 columns blockIdx.x, row chunk blockIdx.y) of 32 x 8
 * threads; thread (ty, tx) sums rows ty, ty + 8, ... of the chunk for column
 * 32 blockIdx.x + tx, then the 8 sums are added in ty order. */
template <typename T>
__global__ void rms_dw_part_k(const T *dy, const T *x, const T *rstd, double *part, int64_t R, int64_t D, int64_t per)
{
    __shared__ double sh[8][32];
    int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
    int64_t c = (int64_t)blockIdx.x * 32 + tx, r0 = (int64_t)blockIdx.y * per, r1 = r0 + per < R ? r0 + per : R;
    double acc = 0;
    if (c < D)
        for (int64_t r = r0 + ty; r < r1; r += 8) acc += (double)dy[r * D + c] * (double)x[r * D + c] * (double)rstd[r];
    sh[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && c < D) {
        double s = 0;
        for (int k = 0; k < 8; k++) s += sh[k][tx];
        part[blockIdx.y * D + c] = s;
    }
}

/* dw: thread per column, the chunks' partials in order */
template <typename T> __global__ void rms_dw_sum_k(const double *part, T *dw, int64_t chunks, int64_t D)
{
    KL_CU_FOR(c, D)
    {
        double s = 0;
        for (int64_t k = 0; k < chunks; k++) s += part[k * D + c];
        dw[c] = (T)s;
    }
}

template <typename T> static kl_status rms_run(const kl_exec *ex, const kl_tensor *t, int bwd)
{
    const rms_attr *at = KL_ATTR_C(t, rms_attr);
    int64_t D = t->ne[t->ndim - 1], R = kl_numel(t) / D;
    unsigned nb = (unsigned)(R < 65535 * 16 ? R : 65535 * 16);
    int threads = kl_cu_red_threads(D);
    cudaStream_t s = kl_cu_stream();
    if (!bwd) {
        const T *w = at->has_w ? (const T *)kl_data(ex, t->src[1]) : NULL;
        rms_fwd_k<T><<<nb, threads, 0, s>>>((const T *)kl_data(ex, t->src[0]), w, (T *)kl_data(ex, t),
                                             (T *)kl_aux(ex, t), R, D, at->eps);
        KL_CUDA_LAUNCHED(t, "rms_fwd_k");
        return KL_OK;
    }
    const T *dy = (const T *)kl_data(ex, t->src[0]), *x = (const T *)kl_data(ex, t->src[1]);
    const T *rstd = (const T *)kl_aux(ex, t->src[2]), *w = t->n_src > 3 ? (const T *)kl_data(ex, t->src[3]) : NULL;
    if (at->need_dx) {
        rms_bwd_dx_k<T><<<nb, threads, 0, s>>>(dy, x, rstd, w, (T *)kl_data(ex, t), R, D);
        KL_CUDA_LAUNCHED(t, "rms_bwd_dx_k");
    }
    if (at->need_dw) {
        double *part = (double *)kl_scratch(ex, t);
        int64_t chunks = kl_rms_chunks(R);
        dim3 grid((unsigned)((D + 31) / 32), (unsigned)chunks);
        rms_dw_part_k<T><<<grid, 256, 0, s>>>(dy, x, rstd, part, R, D, kl_rms_chunk_rows(R));
        KL_CUDA_LAUNCHED(t, "rms_dw_part_k");
        rms_dw_sum_k<T><<<kl_cu_blocks(D, KL_CU_THREADS), KL_CU_THREADS, 0, s>>>(part, (T *)kl_data(ex, t->extra[0]),
                                                                                chunks, D);
        KL_CUDA_LAUNCHED(t, "rms_dw_sum_k");
    }
    return KL_OK;
}

extern "C" kl_status kl_cuda_rmsnorm(const kl_exec *ex, const kl_tensor *t)
{
    return t->dtype == KL_F32 ? rms_run<float>(ex, t, 0) : t->dtype == KL_F64 ? rms_run<double>(ex, t, 0) : kl_cu_bad_dtype(t);
}

extern "C" kl_status kl_cuda_rmsnorm_bwd(const kl_exec *ex, const kl_tensor *t)
{
    return t->dtype == KL_F32 ? rms_run<float>(ex, t, 1) : t->dtype == KL_F64 ? rms_run<double>(ex, t, 1) : kl_cu_bad_dtype(t);
}

/* ---- rope: thread per table entry, then thread per pair ---- */

template <typename T> __global__ void rope_table_k(T *cs, T *sn, int64_t half, int64_t D, double base, int inv, int64_t n)
{
    KL_CU_FOR(i, n) rope_table(cs, sn, half, D, base, inv, i);
}

template <typename T>
__global__ void rope_k(const T *x, T *y, const T *cs, const T *sn, int64_t steps, int64_t half, int64_t n)
{
    KL_CU_FOR(i, n) rope_idx(x, y, cs, sn, steps, half, i);
}

template <typename T> static kl_status rope_run(const kl_exec *ex, const kl_tensor *t)
{
    const rope_attr *at = KL_ATTR_C(t, rope_attr);
    int64_t T_ = t->ne[t->ndim - 2], D = t->ne[t->ndim - 1], half = D / 2, rows = kl_numel(t) / D;
    T *cs = (T *)kl_scratch(ex, t), *sn = cs + T_ * half;
    cudaStream_t s = kl_cu_stream();
    rope_table_k<T><<<kl_cu_blocks(T_ * half, KL_CU_THREADS), KL_CU_THREADS, 0, s>>>(cs, sn, half, D, at->base,
                                                                                     at->inverse, T_ * half);
    KL_CUDA_LAUNCHED(t, "rope_table_k");
    rope_k<T><<<kl_cu_blocks(rows * half, KL_CU_THREADS), KL_CU_THREADS, 0, s>>>(
        (const T *)kl_data(ex, t->src[0]), (T *)kl_data(ex, t), cs, sn, T_, half, rows * half);
    KL_CUDA_LAUNCHED(t, "rope_k");
    return KL_OK;
}

extern "C" kl_status kl_cuda_rope(const kl_exec *ex, const kl_tensor *t)
{
    return t->dtype == KL_F32 ? rope_run<float>(ex, t) : t->dtype == KL_F64 ? rope_run<double>(ex, t) : kl_cu_bad_dtype(t);
}
