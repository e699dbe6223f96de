/* Reductions and row-wise kernels: reduce (sum over axes, times a scale),
 * softmax / log-softmax and their gradient, the fused softmax cross-entropy
 * (loss and gradient). Sums are made in double in a fixed order (block and
 * warp trees), so results do not change from run to run. */
#include "backends/cuda/cuda_internal.cuh"
#include "backends/cuda/col_sums.cuh"
#include "backends/cuda/storage.cuh"
#include "ops/sum_chunks.h"

#include <math.h>


/* ---- reduce ----
 * Storage S: f32, f64 or 16-bit (loaded and stored with kl_cu_load /
 * kl_cu_store: a bias gradient of bf16 activations is read as it is,
 * summed in double and rounded once, as the CPU's widened path does).
 * Each output's values are summed in nq chunks (kl_reduce_cuda_chunks: 1
 * unless a long reduction to few outputs would leave the GPU idle), each
 * chunk by one block in a fixed order. One chunk: the block writes the
 * output; more: it writes part[o * nq + q] (the node's scratch) and
 * reduce_finish_k adds the chunks in order. */

template <typename S>
static __device__ __forceinline__ void red_put(S *y, double *part, int64_t o, int64_t q, int64_t nq, double v, double scale)
{
    typedef typename kl_cu_calc<S>::T T;
    if (part) part[o * nq + q] = v;
    else kl_cu_store(y, o, (T)(v * scale));
}

/* block (q, o), the general case. out: offsets in x of each output's first
 * value (over t's dims); red: offsets of the reduced values from there */
template <typename S>
__global__ void reduce_k(const S *x, kl_cu_iter out, kl_cu_iter red, int64_t nq, double *part, S *y, double scale)
{
    for (int64_t o = blockIdx.y; o < out.n; o += gridDim.y) {
        int64_t base, q = blockIdx.x, r0, r1;
        kl_chunk_range(q, nq, red.n, &r0, &r1);
        kl_cu_offsets<1>(out, o, &base);
        double acc = 0;
        for (int64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x) {
            int64_t off;
            kl_cu_offsets<1>(red, r, &off);
            acc += (double)kl_cu_load(x, base + off);
        }
        acc = kl_cu_block_reduce<double, 0>(acc);
        if (threadIdx.x == 0) red_put(y, part, o, q, nq, acc, scale);
    }
}

/* col_sums_k's terms when outputs are consecutive in x (a bias gradient):
 * column c of row r is x[off(r) + c], off the reduced values' offsets
 * (red); RED_ROWS row phases per column */
#define RED_ROWS 8
template <typename S> struct red_cols {
    enum { NV = 1 };
    const S *x;
    kl_cu_iter red;
    double *part;
    S *y;
    double scale;
    __device__ double col(int64_t) const { return 0; }
    __device__ void add(int64_t r, int64_t c, int64_t, double, double *acc) const
    {
        int64_t off;
        kl_cu_offsets<1>(red, r, &off);
        acc[0] += (double)kl_cu_load(x, off + c);
    }
    __device__ void put(int64_t c, int64_t q, int64_t, int64_t nq, const double *sum) const
    {
        red_put(y, part, c, q, nq, sum[0], scale);
    }
};

template <typename S> __global__ void reduce_finish_k(const double *part, int64_t nout, int64_t nq, double scale, S *y)
{
    typedef typename kl_cu_calc<S>::T T;
    KL_CU_FOR(o, nout)
    {
        kl_cu_store(y, o, (T)(kl_cu_sum_parts(0, part + o * nq, nq, 1) * scale));
    }
}

/* Unchunked, the column kernel wins while its blocks have work enough
 * each: up to 1024 rows a thread, or at least 64 blocks; otherwise a block
 * per output keeps more of the GPU busy. */
static bool use_cols(const kl_cu_iter *out, const kl_cu_iter *red)
{
    if (out->ndim != 1 || out->st[0][0] != 1 || out->n < 32 || red->n < 2) return false;
    return red->n / RED_ROWS <= 1024 || (out->n + 31) / 32 >= 64;
}

template <typename S>
static kl_status reduce_launch(const kl_exec *ex, const kl_tensor *t, const kl_cu_iter &out, const kl_cu_iter &red,
                               int64_t nq, bool cols)
{
    const S *x = (const S *)kl_data(ex, t->src[0]);
    S *y = (S *)kl_data(ex, t);
    double scale = KL_ATTR_C(t, reduce_attr)->scale, *part = nq > 1 ? (double *)kl_scratch(ex, t) : NULL;
    cudaStream_t s = kl_cu_stream();
    if (cols) {
        int64_t nbc = (out.n + 31) / 32;
        dim3 grid((unsigned)(nbc < 65535 * 16 ? nbc : 65535 * 16), (unsigned)nq);
        col_sums_k<RED_ROWS><<<grid, dim3(32, RED_ROWS), 0, s>>>(red_cols<S>{x, red, part, y, scale}, out.n, red.n, nq);
        KL_CUDA_LAUNCHED(t, "col_sums_k");
    } else {
        dim3 grid((unsigned)nq, (unsigned)(out.n < 65535 ? out.n : 65535));
        reduce_k<S><<<grid, kl_cu_red_threads(red.n / nq), 0, s>>>(x, out, red, nq, part, y, scale);
        KL_CUDA_LAUNCHED(t, "reduce_k");
    }
    if (nq > 1) {
        reduce_finish_k<S><<<kl_cu_blocks(out.n, KL_CU_THREADS), KL_CU_THREADS, 0, s>>>(part, out.n, nq, scale, y);
        KL_CUDA_LAUNCHED(t, "reduce_finish_k");
    }
    return KL_OK;
}

extern "C" kl_status kl_cuda_reduce(const kl_exec *ex, const kl_tensor *t)
{
    const kl_tensor *xs = t->src[0];
    const reduce_attr *a = KL_ATTR_C(t, reduce_attr);
    int64_t rne[8], rst[1][8], ost[1][8];
    int rn = 0;
    memset(rst, 0, sizeof rst);
    memset(ost, 0, sizeof ost);
    for (int d = 0; d < xs->ndim; d++) {
        ost[0][d] = xs->st[d]; /* t->ne[d] is 1 on reduced axes */
        if (a->mask >> d & 1) {
            rne[rn] = xs->ne[d];
            rst[0][rn++] = xs->st[d];
        }
    }
    kl_cu_iter out = kl_cu_iter_make(t->ndim, t->ne, 1, (const int64_t(*)[8])ost);
    kl_cu_iter red = kl_cu_iter_make(rn, rne, 1, (const int64_t(*)[8])rst);
    int cols;
    int64_t nq = kl_reduce_cuda_chunks(t, &cols); /* as the shape fn sized the scratch */
    if (nq == 1) cols = use_cols(&out, &red);
    KL_CU_FLOAT_SWITCH(t->dtype, return kl_cu_bad_dtype(t), return reduce_launch<S>(ex, t, out, red, nq, cols))
    return KL_OK;
}

/* ---- softmax: block per row (rows of C, contiguous) ---- */

/* exp is taken in double of the difference in T, as the CPU does
 * (exp((double)(x - max))): for f32, expf would differ from the CPU by up
 * to 2 ulp before the double sum. */

template <typename T> __global__ void softmax_k(const T *x, T *y, int64_t rows, int64_t C, int is_log)
{
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const T *xr = x + r * C;
        T *yr = y + r * C;
        T mx = xr[0];
        for (int64_t i = threadIdx.x; i < C; i += blockDim.x) mx = xr[i] > mx ? xr[i] : mx;
        mx = kl_cu_block_reduce<T, 1>(mx);
        double s = 0;
        for (int64_t i = threadIdx.x; i < C; i += blockDim.x) s += exp((double)(xr[i] - mx));
        s = kl_cu_block_reduce<double, 0>(s);
        if (is_log) {
            T ls = (T)log(s);
            for (int64_t i = threadIdx.x; i < C; i += blockDim.x) yr[i] = xr[i] - mx - ls;
        } else {
            for (int64_t i = threadIdx.x; i < C; i += blockDim.x) yr[i] = (T)(exp((double)(xr[i] - mx)) / s);
        }
    }
}

/* dx = y * (dy - sum(dy * y)), or for log-softmax dx = dy - exp(y) * sum(dy) */
template <typename T> __global__ void softmax_bwd_k(const T *dy, const T *y, T *dx, int64_t rows, int64_t C, int is_log)
{
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const T *dr = dy + r * C, *yr = y + r * C;
        T *xr = dx + r * C;
        double s = 0;
        for (int64_t i = threadIdx.x; i < C; i += blockDim.x) s += is_log ? (double)dr[i] : (double)dr[i] * (double)yr[i];
        s = kl_cu_block_reduce<double, 0>(s);
        for (int64_t i = threadIdx.x; i < C; i += blockDim.x)
            xr[i] = is_log ? (T)((double)dr[i] - exp((double)yr[i]) * s) : (T)((double)yr[i] * ((double)dr[i] - s));
    }
}

static kl_status softmax_run(const kl_exec *ex, const kl_tensor *t, int bwd)
{
    int64_t C = t->ne[t->ndim - 1], rows = kl_numel(t) / C;
    int is_log = KL_ATTR_C(t, softmax_attr)->log, threads = kl_cu_red_threads(C);
    unsigned nb = (unsigned)(rows < 65535 * 16 ? rows : 65535 * 16);
    cudaStream_t s = kl_cu_stream();
    const void *a = kl_data(ex, t->src[0]), *b = bwd ? kl_data(ex, t->src[1]) : NULL;
    void *y = kl_data(ex, t);
    if (t->dtype == KL_F32) {
        if (bwd) softmax_bwd_k<float><<<nb, threads, 0, s>>>((const float *)a, (const float *)b, (float *)y, rows, C, is_log);
        else softmax_k<float><<<nb, threads, 0, s>>>((const float *)a, (float *)y, rows, C, is_log);
    } else if (t->dtype == KL_F64) {
        if (bwd) softmax_bwd_k<double><<<nb, threads, 0, s>>>((const double *)a, (const double *)b, (double *)y, rows, C, is_log);
        else softmax_k<double><<<nb, threads, 0, s>>>((const double *)a, (double *)y, rows, C, is_log);
    } else {
        return kl_cu_bad_dtype(t);
    }
    KL_CUDA_LAUNCHED(t, bwd ? "softmax_bwd_k" : "softmax_k");
    return KL_OK;
}

extern "C" kl_status kl_cuda_softmax(const kl_exec *ex, const kl_tensor *t) { return softmax_run(ex, t, 0); }
extern "C" kl_status kl_cuda_softmax_bwd(const kl_exec *ex, const kl_tensor *t) { return softmax_run(ex, t, 1); }

/* ---- softmax cross-entropy: warp per row ---- */

/* Row n's max and sum(exp(x - max)), in every lane of the warp. */
template <typename T> __device__ void ce_row_stats(const T *xr, int64_t C, int lane, T *mx_out, double *s_out)
{
    T mx = xr[0];
    for (int64_t i = lane; i < C; i += 32) mx = xr[i] > mx ? xr[i] : mx;
    mx = kl_cu_warp_max(mx);
    double s = 0;
    for (int64_t i = lane; i < C; i += 32) s += exp((double)(xr[i] - mx));
    *mx_out = mx;
    *s_out = kl_cu_warp_sum(s);
}

/* loss = mean over rows of log(sum exp) + max - x[label], in two kernels
 * (a single block would leave all but one SM idle on an LM's [B*T, vocab]
 * logits): ce_fwd_k, warp per row over a grid of at most KL_CU_RED_BLOCKS
 * blocks, each block's total (its warps' in order) into part[block]; then
 * ce_mean_k sums the parts in a fixed tree. The block count depends on N
 * only, so the sum's order is fixed. A bad label is reported
 * (KL_CUERR_LABEL) and its row left out. */
template <typename T> __global__ void ce_fwd_k(const T *x, const int32_t *lab, double *part, int64_t N, int64_t C, kl_cuda_err *err)
{
    int lane = threadIdx.x & 31;
    int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
    double total = 0;
    for (int64_t n = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); n < N; n += warps) {
        int32_t l = lab[n];
        if (l < 0 || l >= C) {
            if (lane == 0) kl_cu_report(err, KL_CUERR_LABEL, l, n, C);
            continue;
        }
        const T *xr = x + n * C;
        T mx;
        double s;
        ce_row_stats(xr, C, lane, &mx, &s);
        total += log(s) + (double)mx - (double)xr[l];
    }
    /* lanes of a warp hold the same total: sum lane 0 of each warp */
    double v = lane == 0 ? total : 0.0;
    v = kl_cu_block_reduce<double, 0>(v);
    if (threadIdx.x == 0) part[blockIdx.x] = v;
}

/* one block of KL_CU_RED_BLOCKS threads: out = sum(part[0 .. nparts)) / N */
template <typename T> __global__ void __launch_bounds__(KL_CU_RED_BLOCKS) ce_mean_k(const double *part, int nparts, T *out, int64_t N)
{
    double v = 0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) v += part[i];
    v = kl_cu_block_reduce<double, 0>(v);
    if (threadIdx.x == 0) out[0] = (T)(v / (double)N);
}

/* dx = (softmax(x) - onehot(label)) * dloss / N */
template <typename T> __global__ void ce_bwd_k(const T *x, const int32_t *lab, const T *dl, T *dx, int64_t N, int64_t C, kl_cuda_err *err)
{
    int lane = threadIdx.x & 31;
    int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
    double scale = (double)dl[0] / (double)N;
    for (int64_t n = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); n < N; n += warps) {
        const T *xr = x + n * C;
        T *dr = dx + n * C;
        int32_t l = lab[n];
        if (l < 0 || l >= C) {
            if (lane == 0) kl_cu_report(err, KL_CUERR_LABEL, l, n, C);
            for (int64_t i = lane; i < C; i += 32) dr[i] = (T)0;
            continue;
        }
        T mx;
        double s;
        ce_row_stats(xr, C, lane, &mx, &s);
        for (int64_t i = lane; i < C; i += 32) dr[i] = (T)((exp((double)(xr[i] - mx)) / s - (i == l)) * scale);
    }
}

extern "C" kl_status kl_cuda_softmax_ce(const kl_exec *ex, const kl_tensor *t)
{
    int64_t N = t->src[0]->ne[0], C = t->src[0]->ne[1];
    const void *x = kl_data(ex, t->src[0]);
    const int32_t *lab = (const int32_t *)kl_data(ex, t->src[1]);
    cudaStream_t s = kl_cu_stream();
    /* the parts live in the shared reduction scratch: stream order keeps its
     * users (this op, the optimizer's norm) apart */
    double *part = kl_cu_reduce_buf();
    unsigned nb = kl_cu_blocks(N, KL_CU_THREADS / 32);
    if (nb > KL_CU_RED_BLOCKS) nb = KL_CU_RED_BLOCKS;
    if (t->dtype == KL_F32) {
        ce_fwd_k<float><<<nb, KL_CU_THREADS, 0, s>>>((const float *)x, lab, part, N, C, kl_cu_err());
        KL_CUDA_LAUNCHED(t, "ce_fwd_k");
        ce_mean_k<float><<<1, KL_CU_RED_BLOCKS, 0, s>>>(part, (int)nb, (float *)kl_data(ex, t), N);
    } else if (t->dtype == KL_F64) {
        ce_fwd_k<double><<<nb, KL_CU_THREADS, 0, s>>>((const double *)x, lab, part, N, C, kl_cu_err());
        KL_CUDA_LAUNCHED(t, "ce_fwd_k");
        ce_mean_k<double><<<1, KL_CU_RED_BLOCKS, 0, s>>>(part, (int)nb, (double *)kl_data(ex, t), N);
    } else {
        return kl_cu_bad_dtype(t);
    }
    KL_CUDA_LAUNCHED(t, "ce_mean_k");
    return KL_OK;
}

extern "C" kl_status kl_cuda_softmax_ce_bwd(const kl_exec *ex, const kl_tensor *t)
{
    int64_t N = t->src[0]->ne[0], C = t->src[0]->ne[1];
    const void *x = kl_data(ex, t->src[0]), *dl = kl_data(ex, t->src[2]);
    const int32_t *lab = (const int32_t *)kl_data(ex, t->src[1]);
    int warps_per_block = KL_CU_THREADS / 32;
    unsigned nb = kl_cu_blocks(N, warps_per_block);
    cudaStream_t s = kl_cu_stream();
    if (t->dtype == KL_F32)
        ce_bwd_k<float><<<nb, KL_CU_THREADS, 0, s>>>((const float *)x, lab, (const float *)dl, (float *)kl_data(ex, t), N, C,
                                                    kl_cu_err());
    else if (t->dtype == KL_F64)
        ce_bwd_k<double><<<nb, KL_CU_THREADS, 0, s>>>((const double *)x, lab, (const double *)dl, (double *)kl_data(ex, t), N,
                                                     C, kl_cu_err());
    else
        return kl_cu_bad_dtype(t);
    KL_CUDA_LAUNCHED(t, "ce_bwd_k");
    return KL_OK;
}
