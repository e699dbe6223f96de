/* Batch and layer normalisation, forward and backward (formulas in
 * ops/norm.h, layouts and saved statistics as the CPU kernels in
 * src/ops/batchnorm.c and layernorm.c). Statistics are summed in double by
 * block trees: a block per channel (batchnorm) or per row (layernorm). */
#include "backends/cuda/cuda_internal.cuh"
#include "ops/norm.h"

#include <math.h>

static __device__ __forceinline__ float norm_fwd(float x, float m, float is, float g, float b) { return kl_norm_fwd_float(x, m, is, g, b); }
static __device__ __forceinline__ double norm_fwd(double x, double m, double is, double g, double b) { return kl_norm_fwd_double(x, m, is, g, b); }
static __device__ __forceinline__ float norm_bwd(float x, float g, float m, float is, float mg, float mgx) { return kl_norm_bwd_float(x, g, m, is, mg, mgx); }
static __device__ __forceinline__ double norm_bwd(double x, double g, double m, double is, double mg, double mgx) { return kl_norm_bwd_double(x, g, m, is, mg, mgx); }


template <typename T> static const T *src_or_null(const kl_exec *ex, const kl_tensor *t, int i)
{
    return i >= 0 ? (const T *)kl_data(ex, t->src[i]) : NULL;
}

/* ---- batchnorm: x [N, C, S], block per channel ---- */

template <typename T> struct bn_args {
    const T *x, *gm, *bt;
    T *rm, *rv, *y, *mean; /* mean[C] then invstd[C] (the node's aux) */
    int64_t N, C, S;
    double eps, mom;
    int training;
};

template <typename T> __global__ void bn_fwd_k(bn_args<T> a)
{
    int64_t M = a.N * a.S;
    T *invstd = a.mean + a.C;
    for (int64_t c = blockIdx.x; c < a.C; c += gridDim.x) {
        __shared__ double sh_mu, sh_is;
        if (a.training) {
            /* shifted sums: k = x[0, c, 0] keeps the variance free of cancellation */
            T k = a.x[c * a.S];
            double s1 = 0, s2 = 0;
            for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
                int64_t n = j / a.S, s = j - n * a.S;
                double d = (double)a.x[(n * a.C + c) * a.S + s] - (double)k;
                s1 += d;
                s2 += d * d;
            }
            s1 = kl_cu_block_reduce<double, 0>(s1);
            s2 = kl_cu_block_reduce<double, 0>(s2);
            if (threadIdx.x == 0) {
                double d = s1 / (double)M, var = s2 / (double)M - d * d;
                if (var < 0) var = 0;
                double mu = (double)k + d;
                a.mean[c] = (T)mu;
                invstd[c] = (T)(1.0 / sqrt(var + a.eps));
                if (a.rm) a.rm[c] = (T)((1 - a.mom) * (double)a.rm[c] + a.mom * mu);
                if (a.rv) a.rv[c] = (T)((1 - a.mom) * (double)a.rv[c] + a.mom * var * (double)M / (double)(M - 1));
                sh_mu = (double)a.mean[c];
                sh_is = (double)invstd[c];
            }
        } else if (threadIdx.x == 0) {
            a.mean[c] = a.rm[c];
            invstd[c] = (T)(1.0 / sqrt((double)a.rv[c] + a.eps));
            sh_mu = (double)a.mean[c];
            sh_is = (double)invstd[c];
        }
        __syncthreads();
        T mu = (T)sh_mu, is = (T)sh_is, g = a.gm ? a.gm[c] : (T)1, b = a.bt ? a.bt[c] : (T)0;
        for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
            int64_t n = j / a.S, s = j - n * a.S, i = (n * a.C + c) * a.S + s;
            a.y[i] = norm_fwd(a.x[i], mu, is, g, b);
        }
        __syncthreads(); /* sh_mu, sh_is are rewritten for the next channel */
    }
}

template <typename T> static void bn_fwd_launch(const kl_exec *ex, const kl_tensor *t)
{
    const bn_attr *at = KL_ATTR_C(t, bn_attr);
    bn_args<T> a;
    a.x = (const T *)kl_data(ex, t->src[0]);
    a.gm = src_or_null<T>(ex, t, at->ig);
    a.bt = src_or_null<T>(ex, t, at->ib);
    a.rm = (T *)src_or_null<T>(ex, t, at->irm);
    a.rv = (T *)src_or_null<T>(ex, t, at->irv);
    a.y = (T *)kl_data(ex, t);
    a.mean = (T *)kl_aux(ex, t);
    a.N = t->ne[0];
    a.C = t->ne[1];
    a.S = kl_numel(t) / (a.N * a.C);
    a.eps = at->eps;
    a.mom = at->momentum;
    a.training = at->training;
    unsigned nb = (unsigned)(a.C < 65535 ? a.C : 65535);
    bn_fwd_k<T><<<nb, kl_cu_red_threads(a.N * a.S), 0, kl_cu_stream()>>>(a);
}

extern "C" kl_status kl_cuda_batchnorm(const kl_exec *ex, const kl_tensor *t)
{
    if (t->dtype == KL_F32) bn_fwd_launch<float>(ex, t);
    else if (t->dtype == KL_F64) bn_fwd_launch<double>(ex, t);
    else return kl_cu_bad_dtype(t);
    KL_CUDA_LAUNCHED(t, "bn_fwd_k");
    return KL_OK;
}

template <typename T> struct bn_bwd_args {
    const T *dy, *x, *mean, *gm; /* mean[C] then invstd[C] (the forward node's aux) */
    T *dx, *dg, *db;
    int64_t N, C, S;
    int training, need_dx;
};

template <typename T> __global__ void bn_bwd_k(bn_bwd_args<T> a)
{
    int64_t M = a.N * a.S;
    const T *invstd = a.mean + a.C;
    bool sums = a.training || a.dg || a.db;
    for (int64_t c = blockIdx.x; c < a.C; c += gridDim.x) {
        T mu = a.mean[c], is = invstd[c], g = a.gm ? a.gm[c] : (T)1;
        double sdy = 0, sdyx = 0;
        if (sums) {
            for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
                int64_t n = j / a.S, s = j - n * a.S, i = (n * a.C + c) * a.S + s;
                sdy += (double)a.dy[i];
                sdyx += (double)a.dy[i] * ((double)a.x[i] - (double)mu);
            }
            sdy = kl_cu_block_reduce<double, 0>(sdy);
            sdyx = kl_cu_block_reduce<double, 0>(sdyx) * (double)is; /* sum(dy * xhat) */
            if (threadIdx.x == 0) {
                if (a.dg) a.dg[c] = (T)sdyx;
                if (a.db) a.db[c] = (T)sdy;
            }
        }
        if (!a.need_dx) continue;
        T mg = (T)(sdy / (double)M) * g, mgx = (T)(sdyx / (double)M) * g, k = g * is;
        for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
            int64_t n = j / a.S, s = j - n * a.S, i = (n * a.C + c) * a.S + s;
            a.dx[i] = a.training ? norm_bwd(a.x[i], a.dy[i] * g, mu, is, mg, mgx) : a.dy[i] * k;
        }
    }
}

template <typename T> static void bn_bwd_launch(const kl_exec *ex, const kl_tensor *t)
{
    const bn_attr *at = KL_ATTR_C(t, bn_attr);
    const kl_tensor *fw = t->src[2];
    bn_bwd_args<T> a;
    a.dy = (const T *)kl_data(ex, t->src[0]);
    a.x = (const T *)kl_data(ex, t->src[1]);
    a.mean = (const T *)kl_aux(ex, fw);
    a.gm = t->n_src > 3 ? (const T *)kl_data(ex, t->src[3]) : NULL;
    int e = 0;
    a.dg = at->need_dg ? (T *)kl_data(ex, t->extra[e++]) : NULL;
    a.db = at->need_db ? (T *)kl_data(ex, t->extra[e++]) : NULL;
    a.dx = (T *)kl_data(ex, t);
    a.N = t->ne[0];
    a.C = t->ne[1];
    a.S = kl_numel(t) / (a.N * a.C);
    a.training = at->training;
    a.need_dx = at->need_dx;
    unsigned nb = (unsigned)(a.C < 65535 ? a.C : 65535);
    bn_bwd_k<T><<<nb, kl_cu_red_threads(a.N * a.S), 0, kl_cu_stream()>>>(a);
}

extern "C" kl_status kl_cuda_batchnorm_bwd(const kl_exec *ex, const kl_tensor *t)
{
    if (t->dtype == KL_F32) bn_bwd_launch<float>(ex, t);
    else if (t->dtype == KL_F64) bn_bwd_launch<double>(ex, t);
    else return kl_cu_bad_dtype(t);
    KL_CUDA_LAUNCHED(t, "bn_bwd_k");
    return KL_OK;
}

/* ---- layernorm: rows [R, D], block per row ---- */

template <typename T>
__global__ void ln_fwd_k(const T *x, const T *gm, const T *bt, T *y, T *mean, int64_t R, int64_t D, double eps)
{
    T *rstd = mean + R;
    for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
        const T *xr = x + r * D;
        T *yr = y + r * D;
        double s = 0;
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += (double)xr[i];
        double mu = kl_cu_block_reduce<double, 0>(s) / (double)D, v = 0;
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x) v += ((double)xr[i] - mu) * ((double)xr[i] - mu);
        v = kl_cu_block_reduce<double, 0>(v);
        T m = (T)mu, is = (T)(1.0 / sqrt(v / (double)D + eps));
        if (threadIdx.x == 0) {
            mean[r] = m;
            rstd[r] = is;
        }
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
            yr[i] = norm_fwd(xr[i], m, is, gm ? gm[i] : (T)1, bt ? bt[i] : (T)0);
    }
}

template <typename T>
__global__ void ln_bwd_dx_k(const T *dy, const T *x, const T *gm, const T *mean, T *dx, int64_t R, int64_t D)
{
    const T *rstd = mean + R;
    for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
        const T *xr = x + r * D, *dr = dy + r * D;
        T *out = dx + r * D, m = mean[r], is = rstd[r];
        double sg = 0, sgx = 0;
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
            double gi = (double)dr[i] * (gm ? (double)gm[i] : 1.0);
            sg += gi;
            sgx += gi * ((double)xr[i] - (double)m);
        }
        sg = kl_cu_block_reduce<double, 0>(sg);
        sgx = kl_cu_block_reduce<double, 0>(sgx);
        T mg = (T)(sg / (double)D), mgx = (T)(sgx * (double)is / (double)D);
        for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
            out[i] = norm_bwd(xr[i], dr[i] * (gm ? gm[i] : (T)1), m, is, mg, mgx);
    }
}

/* dgamma, dbeta: a block per LN_DGB_COLS columns, LN_DGB_ROWS threads per
 * column (thread y sums rows y, y + LN_DGB_ROWS, ... in order), then the
 * column's partials in order: fixed order, and every SM gets work (a thread
 * per column over all R rows left most of the GPU idle and ran each thread
 * through R dependent iterations). */
#define LN_DGB_COLS 32
#define LN_DGB_ROWS 32
template <typename T>
__global__ void __launch_bounds__(LN_DGB_COLS * LN_DGB_ROWS) ln_bwd_dgb_k(const T *dy, const T *x, const T *mean, T *dg, T *db, int64_t R, int64_t D)
{
    __shared__ double sg[LN_DGB_ROWS][LN_DGB_COLS + 1], sb[LN_DGB_ROWS][LN_DGB_COLS + 1];
    const T *rstd = mean + R;
    int tx = threadIdx.x, ty = threadIdx.y;
    for (int64_t c0 = (int64_t)blockIdx.x * LN_DGB_COLS; c0 < D; c0 += (int64_t)gridDim.x * LN_DGB_COLS) {
        int64_t c = c0 + tx;
        double ag = 0, ab = 0;
        if (c < D)
            for (int64_t r = ty; r < R; r += LN_DGB_ROWS) {
                double d = (double)dy[r * D + c];
                ag += d * ((double)x[r * D + c] - (double)mean[r]) * (double)rstd[r];
                ab += d;
            }
        sg[ty][tx] = ag;
        sb[ty][tx] = ab;
        __syncthreads();
        if (ty == 0 && c < D) {
            double g = 0, b = 0;
            for (int k = 0; k < LN_DGB_ROWS; k++) {
                g += sg[k][tx];
                b += sb[k][tx];
            }
            if (dg) dg[c] = (T)g;
            if (db) db[c] = (T)b;
        }
        __syncthreads(); /* sg, sb are rewritten for the next columns */
    }
}

template <typename T> static void ln_launch(const kl_exec *ex, const kl_tensor *t, int bwd)
{
    const ln_attr *at = KL_ATTR_C(t, ln_attr);
    int64_t D = t->ne[t->ndim - 1], R = kl_numel(t) / D;
    unsigned nb = (unsigned)(R < 65535 * 16 ? R : 65535 * 16);
    int threads = kl_cu_red_threads(D);
    cudaStream_t s = kl_cu_stream();
    if (!bwd) {
        ln_fwd_k<T><<<nb, threads, 0, s>>>((const T *)kl_data(ex, t->src[0]), src_or_null<T>(ex, t, at->ig),
                                            src_or_null<T>(ex, t, at->ib), (T *)kl_data(ex, t), (T *)kl_aux(ex, t), R, D,
                                            at->eps);
        return;
    }
    const T *dy = (const T *)kl_data(ex, t->src[0]), *x = (const T *)kl_data(ex, t->src[1]);
    const T *mean = (const T *)kl_aux(ex, t->src[2]), *gm = t->n_src > 3 ? (const T *)kl_data(ex, t->src[3]) : NULL;
    int e = 0;
    T *dg = at->need_dg ? (T *)kl_data(ex, t->extra[e++]) : NULL;
    T *db = at->need_db ? (T *)kl_data(ex, t->extra[e++]) : NULL;
    if (at->need_dx) ln_bwd_dx_k<T><<<nb, threads, 0, s>>>(dy, x, gm, mean, (T *)kl_data(ex, t), R, D);
    if (dg || db) {
        int64_t nc = (D + LN_DGB_COLS - 1) / LN_DGB_COLS;
        ln_bwd_dgb_k<T><<<(unsigned)(nc < 65535 ? nc : 65535), dim3(LN_DGB_COLS, LN_DGB_ROWS), 0, s>>>(dy, x, mean, dg, db, R, D);
    }
}

static kl_status ln_run(const kl_exec *ex, const kl_tensor *t, int bwd)
{
    if (t->dtype == KL_F32) ln_launch<float>(ex, t, bwd);
    else if (t->dtype == KL_F64) ln_launch<double>(ex, t, bwd);
    else return kl_cu_bad_dtype(t);
    KL_CUDA_LAUNCHED(t, bwd ? "ln_bwd_k" : "ln_fwd_k");
    return KL_OK;
}

extern "C" kl_status kl_cuda_layernorm(const kl_exec *ex, const kl_tensor *t) { return ln_run(ex, t, 0); }
extern "C" kl_status kl_cuda_layernorm_bwd(const kl_exec *ex, const kl_tensor *t) { return ln_run(ex, t, 1); }
