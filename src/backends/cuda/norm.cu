/* Batch and layer normalisation, forward and backward (formulas in
 * ops/norm.h, layouts and saved statistics as the CPU kernels in
 * src/ops/batchnorm.c and layernorm.c). Statistics are summed in double by
 * block trees in a fixed order: blocks per chunk of a channel (batchnorm)
 * or a block per row (layernorm). */
#include "backends/cuda/cuda_internal.cuh"
#include "backends/cuda/col_sums.cuh"
#include "backends/cuda/storage.cuh"
#include "ops/norm.h"
#include "ops/elem.h" /* batchnorm's fused activation */

#include <math.h>

static __device__ __forceinline__ float norm_fwd(float x, float m, float is, float g, float b) { return kl_norm_fwd_float(x, m, is, g, b); }
static __device__ __forceinline__ double norm_fwd(double x, double m, double is, double g, double b) { return kl_norm_fwd_double(x, m, is, g, b); }
static __device__ __forceinline__ float norm_bwd(float x, float g, float m, float is, float mg, float mgx) { return kl_norm_bwd_float(x, g, m, is, mg, mgx); }
static __device__ __forceinline__ double norm_bwd(double x, double g, double m, double is, double mg, double mgx) { return kl_norm_bwd_double(x, g, m, is, mg, mgx); }


/* batchnorm's fused activation (a KL_UN_* kind; -1: none); its backward is
 * a unary_bwd node before batchnorm_bwd (ops/batchnorm.c) */
static __device__ __forceinline__ float act_fwd(int k, float v) { return k < 0 ? v : kl_unary_float(k, v, 0.f); }
static __device__ __forceinline__ double act_fwd(int k, double v) { return k < 0 ? v : kl_unary_double(k, v, 0.0); }

template <typename T> static const T *src_or_null(const kl_exec *ex, const kl_tensor *t, int i)
{
    return i >= 0 ? (const T *)kl_data(ex, t->src[i]) : NULL;
}

/* ---- batchnorm: x [N, C, S] ----
 * Channel c's M = N*S values are summed in nch chunks (kl_sum_chunks),
 * a block per (chunk, channel), or with S == 1 per (chunk, 32 channels) for
 * coalesced loads, writing two doubles of the node's scratch;
 * a thread per channel then adds its chunks in order and finishes the
 * statistics; a grid-stride pass over every element applies them. Fixed
 * order throughout: results repeat run to run. */

/* the j-th of channel c's M values, j in [0, M) */
static __device__ __forceinline__ int64_t bn_index(int64_t j, int64_t c, int64_t C, int64_t S)
{
    int64_t n = j / S, s = j - n * S;
    return (n * C + c) * S + s;
}

/* Storage ST: f32, f64 or 16-bit for x, gamma, beta, y and the gradients
 * (kl_cu_load / kl_cu_store), computing in T = kl_cu_calc<ST>::T; the
 * saved mean/invstd (aux) and the running statistics are T (16-bit x runs
 * here only with f32 running statistics: bn_half_native in
 * ops/batchnorm.c), so the math is the f32 kernel's, rounded once per
 * store, as the CPU's widened path. */
template <typename ST> struct bn_args {
    typedef typename kl_cu_calc<ST>::T T;
    const ST *x, *gm, *bt;
    T *rm, *rv;
    ST *y;
    T *mean;      /* mean[C] then invstd[C] (the node's aux) */
    double *part; /* [C, nch, 2] */
    int64_t N, C, S, nch;
    double eps, mom;
    int act; /* fused activation (KL_UN_*; -1: none) */
};

/* The two sums over chunks of each channel, written to part[(c * nch + q)
 * * 2 + {0, 1}]: forward (BWD 0) d = x - k and d^2 with the shift k =
 * x[0, c, 0], which keeps the variance free of cancellation; backward
 * (BWD 1) dy and dy * (x - mean[c]). */
template <int BWD> static __device__ __forceinline__ void bn_terms(double x, double dy, double ref, double *s1, double *s2)
{
    double d = x - ref;
    *s1 += BWD ? dy : d;
    *s2 += BWD ? dy * d : d * d;
}

template <typename ST, int BWD>
static __device__ __forceinline__ double bn_ref(const ST *x, const typename kl_cu_calc<ST>::T *mean, int64_t c, int64_t S)
{
    return BWD ? (double)mean[c] : (double)kl_cu_load(x, c * S);
}

/* block (q, c): chunk q of channel c (any S) */
template <typename ST, int BWD>
__global__ void bn_sums_k(const ST *x, const ST *dy, const typename kl_cu_calc<ST>::T *mean, int64_t N, int64_t C,
                          int64_t S, int64_t nch, double *part)
{
    int64_t M = N * S;
    for (int64_t c = blockIdx.y; c < C; c += gridDim.y) {
        int64_t q = blockIdx.x, j0, j1;
        kl_chunk_range(q, nch, M, &j0, &j1);
        double ref = bn_ref<ST, BWD>(x, mean, c, S), s1 = 0, s2 = 0;
        for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) {
            int64_t i = bn_index(j, c, C, S);
            bn_terms<BWD>((double)kl_cu_load(x, i), BWD ? (double)kl_cu_load(dy, i) : 0.0, ref, &s1, &s2);
        }
        s1 = kl_cu_block_reduce<double, 0>(s1);
        s2 = kl_cu_block_reduce<double, 0>(s2);
        if (threadIdx.x == 0) {
            part[(c * nch + q) * 2] = s1;
            part[(c * nch + q) * 2 + 1] = s2;
        }
    }
}

/* S == 1 ([N, C] input): col_sums_k (32 channels, chunk q of the rows)
 * with these terms, so a warp reads 32 consecutive values; BN_ROWS row
 * phases per channel */
#define BN_ROWS 8
template <typename ST, int BWD> struct bn_cols {
    enum { NV = 2 };
    const ST *x, *dy;
    const typename kl_cu_calc<ST>::T *mean;
    double *part;
    __device__ double col(int64_t c) const { return bn_ref<ST, BWD>(x, mean, c, 1); }
    __device__ void add(int64_t n, int64_t c, int64_t C, double ref, double *acc) const
    {
        bn_terms<BWD>((double)kl_cu_load(x, n * C + c), BWD ? (double)kl_cu_load(dy, n * C + c) : 0.0, ref, &acc[0],
                      &acc[1]);
    }
    __device__ void put(int64_t c, int64_t q, int64_t, int64_t nch, const double *sum) const
    {
        part[(c * nch + q) * 2] = sum[0];
        part[(c * nch + q) * 2 + 1] = sum[1];
    }
};

/* returns the name of the kernel it launched */
template <typename ST, int BWD>
static const char *bn_sums(const ST *x, const ST *dy, const typename kl_cu_calc<ST>::T *mean, int64_t N, int64_t C,
                           int64_t S, int64_t nch, double *part, cudaStream_t s)
{
    if (S == 1) {
        int64_t nbc = (C + 31) / 32;
        dim3 grid((unsigned)(nbc < 65535 ? nbc : 65535), (unsigned)nch);
        col_sums_k<BN_ROWS><<<grid, dim3(32, BN_ROWS), 0, s>>>(bn_cols<ST, BWD>{x, dy, mean, part}, C, N, nch);
        return "col_sums_k";
    }
    dim3 grid((unsigned)nch, (unsigned)(C < 65535 ? C : 65535));
    bn_sums_k<ST, BWD><<<grid, kl_cu_red_threads(N * S / nch), 0, s>>>(x, dy, mean, N, C, S, nch, part);
    return "bn_sums_k";
}

/* thread per channel: mean and invstd (from the chunks, or the running
 * statistics in evaluation), and the running statistics' update, which a
 * data error recorded in this step or a queued one skips (the CPU stops the
 * run before it: a failed step changes no buffer, as no parameter) */
template <typename ST> __global__ void bn_stats_k(bn_args<ST> a, int training, const kl_cuda_err *err)
{
    bool keep_running = *(const volatile int *)&err->poison != 0;
    typedef typename kl_cu_calc<ST>::T T;
    int64_t M = a.N * a.S;
    T *invstd = a.mean + a.C;
    KL_CU_FOR(c, a.C)
    {
        if (!training) {
            a.mean[c] = a.rm[c];
            invstd[c] = (T)(1.0 / sqrt((double)a.rv[c] + a.eps));
            continue;
        }
        const double *pc = a.part + c * a.nch * 2;
        double s1 = kl_cu_sum_parts(0, pc, a.nch, 2), s2 = kl_cu_sum_parts(0, pc + 1, a.nch, 2);
        double d = s1 / (double)M, var = s2 / (double)M - d * d;
        if (var < 0) var = 0;
        double mu = (double)kl_cu_load(a.x, c * a.S) + d;
        a.mean[c] = (T)mu;
        invstd[c] = (T)(1.0 / sqrt(var + a.eps));
        if (keep_running) continue;
        if (a.rm) a.rm[c] = (T)((1 - a.mom) * (double)a.rm[c] + a.mom * mu);
        if (a.rv) a.rv[c] = (T)((1 - a.mom) * (double)a.rv[c] + a.mom * var * (double)M / (double)(M - 1));
    }
}

template <typename ST> __global__ void bn_apply_k(bn_args<ST> a)
{
    typedef typename kl_cu_calc<ST>::T T;
    const T *invstd = a.mean + a.C;
    KL_CU_FOR(i, a.N * a.C * a.S)
    {
        int64_t c = i / a.S % a.C;
        T g = a.gm ? kl_cu_load(a.gm, c) : (T)1, b = a.bt ? kl_cu_load(a.bt, c) : (T)0;
        kl_cu_store(a.y, i, act_fwd(a.act, norm_fwd(kl_cu_load(a.x, i), a.mean[c], invstd[c], g, b)));
    }
}

template <typename ST> static kl_status bn_fwd_launch(const kl_exec *ex, const kl_tensor *t)
{
    typedef typename kl_cu_calc<ST>::T T;
    const bn_attr *at = KL_ATTR_C(t, bn_attr);
    bn_args<ST> a;
    a.x = (const ST *)kl_data(ex, t->src[0]);
    a.gm = src_or_null<ST>(ex, t, at->ig);
    a.bt = src_or_null<ST>(ex, t, at->ib);
    a.rm = (T *)src_or_null<T>(ex, t, at->irm);
    a.rv = (T *)src_or_null<T>(ex, t, at->irv);
    a.y = (ST *)kl_data(ex, t);
    a.mean = (T *)kl_aux(ex, t);
    a.part = at->training ? (double *)kl_scratch(ex, t) : NULL;
    a.N = t->ne[0];
    a.C = t->ne[1];
    a.S = kl_numel(t) / (a.N * a.C);
    a.nch = kl_sum_chunks(a.N * a.S);
    a.eps = at->eps;
    a.mom = at->momentum;
    a.act = at->act;
    cudaStream_t s = kl_cu_stream();
    if (at->training) {
        const char *k = bn_sums<ST, 0>(a.x, (const ST *)NULL, (const T *)NULL, a.N, a.C, a.S, a.nch, a.part, s);
        KL_CUDA_LAUNCHED(t, k);
    }
    bn_stats_k<ST><<<kl_cu_blocks(a.C, KL_CU_THREADS), KL_CU_THREADS, 0, s>>>(a, at->training, kl_cu_err());
    KL_CUDA_LAUNCHED(t, "bn_stats_k");
    bn_apply_k<ST><<<kl_cu_blocks(kl_numel(t), KL_CU_THREADS), KL_CU_THREADS, 0, s>>>(a);
    KL_CUDA_LAUNCHED(t, "bn_apply_k");
    return KL_OK;
}

extern "C" kl_status kl_cuda_batchnorm(const kl_exec *ex, const kl_tensor *t)
{
    KL_CU_FLOAT_SWITCH(t->dtype, return kl_cu_bad_dtype(t), return bn_fwd_launch<S>(ex, t))
    return KL_OK;
}

template <typename ST> struct bn_bwd_args {
    typedef typename kl_cu_calc<ST>::T T;
    const ST *dy, *x, *gm;
    const T *mean; /* mean[C] then invstd[C] (the forward node's aux) */
    ST *dx, *dg, *db;
    double *part, *sum; /* [C, nch, 2] chunk sums; [C, 2]: sum(dy), sum(dy * xhat) */
    int64_t N, C, S, nch;
    int training;
};

/* thread per channel: the chunks in order; dgamma = sum(dy * xhat), dbeta = sum(dy) */
template <typename ST> __global__ void bn_bwd_sums_k(bn_bwd_args<ST> a)
{
    typedef typename kl_cu_calc<ST>::T T;
    const T *invstd = a.mean + a.C;
    KL_CU_FOR(c, a.C)
    {
        const double *pc = a.part + c * a.nch * 2;
        double sdy = kl_cu_sum_parts(0, pc, a.nch, 2), sdyx = kl_cu_sum_parts(0, pc + 1, a.nch, 2);
        sdyx *= (double)invstd[c];
        a.sum[2 * c] = sdy;
        a.sum[2 * c + 1] = sdyx;
        if (a.dg) kl_cu_store(a.dg, c, (T)sdyx);
        if (a.db) kl_cu_store(a.db, c, (T)sdy);
    }
}

template <typename ST> __global__ void bn_bwd_dx_k(bn_bwd_args<ST> a)
{
    typedef typename kl_cu_calc<ST>::T T;
    const T *invstd = a.mean + a.C;
    double M = (double)(a.N * a.S);
    KL_CU_FOR(i, a.N * a.C * a.S)
    {
        int64_t c = i / a.S % a.C;
        T g = a.gm ? kl_cu_load(a.gm, c) : (T)1, is = invstd[c], dy = kl_cu_load(a.dy, i);
        if (a.training) {
            T mg = (T)(a.sum[2 * c] / M) * g, mgx = (T)(a.sum[2 * c + 1] / M) * g;
            kl_cu_store(a.dx, i, norm_bwd(kl_cu_load(a.x, i), dy * g, a.mean[c], is, mg, mgx));
        } else {
            kl_cu_store(a.dx, i, dy * (g * is));
        }
    }
}

template <typename ST> static kl_status bn_bwd_launch(const kl_exec *ex, const kl_tensor *t)
{
    typedef typename kl_cu_calc<ST>::T T;
    const bn_attr *at = KL_ATTR_C(t, bn_attr);
    const kl_tensor *fw = t->src[2];
    bn_bwd_args<ST> a;
    a.dy = (const ST *)kl_data(ex, t->src[0]);
    a.x = (const ST *)kl_data(ex, t->src[1]);
    a.mean = (const T *)kl_aux(ex, fw);
    a.gm = t->n_src > 3 ? (const ST *)kl_data(ex, t->src[3]) : NULL;
    int e = 0;
    a.dg = at->need_dg ? (ST *)kl_data(ex, t->extra[e++]) : NULL;
    a.db = at->need_db ? (ST *)kl_data(ex, t->extra[e++]) : NULL;
    a.dx = (ST *)kl_data(ex, t);
    a.N = t->ne[0];
    a.C = t->ne[1];
    a.S = kl_numel(t) / (a.N * a.C);
    a.nch = kl_sum_chunks(a.N * a.S);
    a.part = (double *)kl_scratch(ex, t);
    a.sum = a.part + 2 * a.C * a.nch;
    a.training = at->training;
    cudaStream_t s = kl_cu_stream();
    if (a.training || a.dg || a.db) {
        const char *k = bn_sums<ST, 1>(a.x, a.dy, a.mean, a.N, a.C, a.S, a.nch, a.part, s);
        KL_CUDA_LAUNCHED(t, k);
        bn_bwd_sums_k<ST><<<kl_cu_blocks(a.C, KL_CU_THREADS), KL_CU_THREADS, 0, s>>>(a);
        KL_CUDA_LAUNCHED(t, "bn_bwd_sums_k");
    }
    if (at->need_dx) {
        bn_bwd_dx_k<ST><<<kl_cu_blocks(kl_numel(t), KL_CU_THREADS), KL_CU_THREADS, 0, s>>>(a);
        KL_CUDA_LAUNCHED(t, "bn_bwd_dx_k");
    }
    return KL_OK;
}

extern "C" kl_status kl_cuda_batchnorm_bwd(const kl_exec *ex, const kl_tensor *t)
{
    KL_CU_FLOAT_SWITCH(t->dtype, return kl_cu_bad_dtype(t), return bn_bwd_launch<S>(ex, t))
    return KL_OK;
}

/* ---- layernorm: rows [R, D], block per row ----
 * Storage S: f32, f64 or 16-bit (x, gamma, beta, y and the gradients,
 * through kl_cu_load / kl_cu_store), computing in T = kl_cu_calc<S>::T;
 * the saved mean and rstd (aux) are T, as the shape sized them, so a
 * 16-bit layernorm does the f32 kernel's math and rounds once per store,
 * as the CPU's widened path does. */

template <typename S>
__global__ void ln_fwd_k(const S *x, const S *gm, const S *bt, S *y, typename kl_cu_calc<S>::T *mean, int64_t R, int64_t D,
                         double eps)
{
    typedef typename kl_cu_calc<S>::T T;
    T *rstd = mean + R;
    for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
        const S *xr = x + r * D;
        S *yr = y + r * D;
        double s = 0;
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += (double)kl_cu_load(xr, i);
        double mu = kl_cu_block_reduce<double, 0>(s) / (double)D, v = 0;
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
            double d = (double)kl_cu_load(xr, i) - mu;
            v += d * d;
        }
        v = kl_cu_block_reduce<double, 0>(v);
        T m = (T)mu, is = (T)(1.0 / sqrt(v / (double)D + eps));
        if (threadIdx.x == 0) {
            mean[r] = m;
            rstd[r] = is;
        }
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
            kl_cu_store(yr, i, norm_fwd(kl_cu_load(xr, i), m, is, gm ? kl_cu_load(gm, i) : (T)1, bt ? kl_cu_load(bt, i) : (T)0));
    }
}

template <typename S>
__global__ void ln_bwd_dx_k(const S *dy, const S *x, const S *gm, const typename kl_cu_calc<S>::T *mean, S *dx, int64_t R,
                            int64_t D)
{
    typedef typename kl_cu_calc<S>::T T;
    const T *rstd = mean + R;
    for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
        const S *xr = x + r * D, *dr = dy + r * D;
        S *out = dx + r * D;
        T m = mean[r], is = rstd[r];
        double sg = 0, sgx = 0;
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
            double gi = (double)kl_cu_load(dr, i) * (gm ? (double)kl_cu_load(gm, i) : 1.0);
            sg += gi;
            sgx += gi * ((double)kl_cu_load(xr, i) - (double)m);
        }
        sg = kl_cu_block_reduce<double, 0>(sg);
        sgx = kl_cu_block_reduce<double, 0>(sgx);
        T mg = (T)(sg / (double)D), mgx = (T)(sgx * (double)is / (double)D);
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
            kl_cu_store(out, i, norm_bwd(kl_cu_load(xr, i), kl_cu_load(dr, i) * (gm ? kl_cu_load(gm, i) : (T)1), m, is, mg, mgx));
    }
}

/* dgamma, dbeta: col_sums_k with these terms, a block per 32 columns and
 * chunk of rows (kl_ln_dgb_chunks), LN_DGB_ROWS threads per column; into
 * dg/db directly with one chunk, else into part ([nq, 2, D] doubles) for
 * ln_dgb_finish_k to add in chunk order. Fixed order, and every SM gets
 * work. */
#define LN_DGB_ROWS 32
template <typename S> struct ln_dgb_cols {
    typedef typename kl_cu_calc<S>::T T;
    enum { NV = 2 };
    const S *dy, *x;
    const T *mean, *rstd;
    S *dg, *db;
    double *part;
    __device__ double col(int64_t) const { return 0; }
    __device__ void add(int64_t r, int64_t c, int64_t D, double, double *acc) const
    {
        double d = (double)kl_cu_load(dy, r * D + c);
        acc[0] += d * ((double)kl_cu_load(x, r * D + c) - (double)mean[r]) * (double)rstd[r];
        acc[1] += d;
    }
    __device__ void put(int64_t c, int64_t q, int64_t D, int64_t nq, const double *sum) const
    {
        if (nq > 1) {
            part[(q * 2) * D + c] = sum[0];
            part[(q * 2 + 1) * D + c] = sum[1];
        } else {
            if (dg) kl_cu_store(dg, c, (T)sum[0]);
            if (db) kl_cu_store(db, c, (T)sum[1]);
        }
    }
};

template <typename S> __global__ void ln_dgb_finish_k(const double *part, int64_t nq, int64_t D, S *dg, S *db)
{
    typedef typename kl_cu_calc<S>::T T;
    KL_CU_FOR(c, D)
    {
        if (dg) kl_cu_store(dg, c, (T)kl_cu_sum_parts(0, part + c, nq, 2 * D));
        if (db) kl_cu_store(db, c, (T)kl_cu_sum_parts(0, part + D + c, nq, 2 * D));
    }
}

template <typename S> static kl_status ln_launch(const kl_exec *ex, const kl_tensor *t, int bwd)
{
    typedef typename kl_cu_calc<S>::T T;
    const ln_attr *at = KL_ATTR_C(t, ln_attr);
    int64_t D = t->ne[t->ndim - 1], R = kl_numel(t) / D;
    unsigned nb = (unsigned)(R < 65535 * 16 ? R : 65535 * 16);
    int threads = kl_cu_red_threads(D);
    cudaStream_t s = kl_cu_stream();
    if (!bwd) {
        ln_fwd_k<S><<<nb, threads, 0, s>>>((const S *)kl_data(ex, t->src[0]), src_or_null<S>(ex, t, at->ig),
                                            src_or_null<S>(ex, t, at->ib), (S *)kl_data(ex, t), (T *)kl_aux(ex, t), R, D,
                                            at->eps);
        KL_CUDA_LAUNCHED(t, "ln_fwd_k");
        return KL_OK;
    }
    const S *dy = (const S *)kl_data(ex, t->src[0]), *x = (const S *)kl_data(ex, t->src[1]);
    const S *gm = t->n_src > 3 ? (const S *)kl_data(ex, t->src[3]) : NULL;
    const T *mean = (const T *)kl_aux(ex, t->src[2]);
    int e = 0;
    S *dg = at->need_dg ? (S *)kl_data(ex, t->extra[e++]) : NULL;
    S *db = at->need_db ? (S *)kl_data(ex, t->extra[e++]) : NULL;
    if (at->need_dx) {
        ln_bwd_dx_k<S><<<nb, threads, 0, s>>>(dy, x, gm, mean, (S *)kl_data(ex, t), R, D);
        KL_CUDA_LAUNCHED(t, "ln_bwd_dx_k");
    }
    if (dg || db) {
        int64_t nc = (D + 31) / 32, nq = kl_ln_dgb_chunks(R);
        double *part = nq > 1 ? (double *)kl_scratch(ex, t) : NULL;
        dim3 grid((unsigned)(nc < 65535 ? nc : 65535), (unsigned)nq);
        ln_dgb_cols<S> terms = {dy, x, mean, mean + R, dg, db, part};
        col_sums_k<LN_DGB_ROWS><<<grid, dim3(32, LN_DGB_ROWS), 0, s>>>(terms, D, R, nq);
        KL_CUDA_LAUNCHED(t, "col_sums_k");
        if (nq > 1) {
            ln_dgb_finish_k<S><<<kl_cu_blocks(D, KL_CU_THREADS), KL_CU_THREADS, 0, s>>>(part, nq, D, dg, db);
            KL_CUDA_LAUNCHED(t, "ln_dgb_finish_k");
        }
    }
    return KL_OK;
}

static kl_status ln_run(const kl_exec *ex, const kl_tensor *t, int bwd)
{
    kl_status st = KL_OK;
    KL_CU_FLOAT_SWITCH(t->dtype, return kl_cu_bad_dtype(t), st = ln_launch<S>(ex, t, bwd))
    return st;
}

extern "C" kl_status kl_cuda_layernorm(const kl_exec *ex, const kl_tensor *t) { return ln_run(ex, t, 0); }
extern "C" kl_status kl_cuda_layernorm_bwd(const kl_exec *ex, const kl_tensor *t) { return ln_run(ex, t, 1); }
