/* conv2d and its gradient ops on CUDA (NCHW, cross-correlation, stride,
 * padding, dilation, groups, optional bias, fused none/relu/tanh/sigmoid):
 *   conv2d             y  = act(W (*) x + bias)                 (src: x, w[, bias])
 *   conv2d_bwd_data    dx = col2im(W^T dz)                      (src: dy, w[, y])
 *   conv2d_bwd_filter  dW = sum_n dz_n col_n^T, db = sum dz     (src: dy, x[, y])
 * with dz = act'(y) * dy formed from the forward's y (dz = dy without an
 * activation). y, dx, dW and db are written, never accumulated; nothing is
 * saved in aux (the gradient ops read x, w and y).
 *
 * The batch goes in chunks of m <= a->cu_nc samples (set at shape time, so
 * the chunk's buffers fit the node's scratch). Per chunk: one element-wise
 * pass into the GEMM layout, one cuBLASLt GEMM batched over the groups, one
 * element-wise pass out. Layouts (col [G, Kg, m*P], cn [O, m*P] in CNHW
 * order), GEMM shapes and the scratch carving are ops/conv2d_index.h, whose
 * per-thread functions tests/test_conv_index.c runs on the host against the
 * CPU ops. f32 GEMMs use TF32 (kl_cu_gemm_run).
 *
 * Graph-capture safe: only kernel launches and GEMMs on kiln's stream, all
 * temporaries in the node's planned scratch; no host reads of device data.
 * Deterministic: every sum has a fixed order (col2im gathers, no atomics; db
 * as conv_db.cuh, over the batch chunks in order in double). */
#include "backends/cuda/cuda_internal.cuh"
extern "C" {
#include "ops/conv2d.h"
}
#include "ops/conv2d_index.h"
#include "backends/cuda/conv_db.cuh"

static __device__ __forceinline__ float im2col_at(const kl_conv_ix *c, const float *x, int64_t n0, int64_t m, int64_t i) { return kl_conv_im2col_float(c, x, n0, m, i); }
static __device__ __forceinline__ double im2col_at(const kl_conv_ix *c, const double *x, int64_t n0, int64_t m, int64_t i) { return kl_conv_im2col_double(c, x, n0, m, i); }
static __device__ __forceinline__ float out_at(const kl_conv_ix *c, const float *cn, const float *b, int64_t m, int64_t i) { return kl_conv_out_float(c, cn, b, m, i); }
static __device__ __forceinline__ double out_at(const kl_conv_ix *c, const double *cn, const double *b, int64_t m, int64_t i) { return kl_conv_out_double(c, cn, b, m, i); }
static __device__ __forceinline__ float dz_at(const kl_conv_ix *c, const float *dy, const float *y, int64_t n0, int64_t m, int64_t i) { return kl_conv_dz_float(c, dy, y, n0, m, i); }
static __device__ __forceinline__ double dz_at(const kl_conv_ix *c, const double *dy, const double *y, int64_t n0, int64_t m, int64_t i) { return kl_conv_dz_double(c, dy, y, n0, m, i); }
static __device__ __forceinline__ float col2im_at(const kl_conv_ix *c, const float *d, int64_t m, int64_t i) { return kl_conv_col2im_float(c, d, m, i); }
static __device__ __forceinline__ double col2im_at(const kl_conv_ix *c, const double *d, int64_t m, int64_t i) { return kl_conv_col2im_double(c, d, m, i); }

/* thread per col element, in col order (consecutive threads: consecutive output pixels) */
template <typename T> __global__ void im2col_k(kl_conv_ix c, const T *x, T *col, int64_t n0, int64_t m)
{
    KL_CU_FOR(i, c.G * c.Kg * m * c.P) col[i] = im2col_at(&c, x, n0, m, i);
}

/* thread per y element of the chunk, in NCHW order (y starts at sample n0) */
template <typename T> __global__ void out_k(kl_conv_ix c, const T *cn, const T *bias, T *y, int64_t m)
{
    KL_CU_FOR(i, m * c.O * c.P) y[i] = out_at(&c, cn, bias, m, i);
}

/* thread per cn element of the chunk, in cn order */
template <typename T> __global__ void dz_k(kl_conv_ix c, const T *dy, const T *y, T *cn, int64_t n0, int64_t m)
{
    KL_CU_FOR(i, c.O * m * c.P) cn[i] = dz_at(&c, dy, y, n0, m, i);
}

/* thread per dx element of the chunk, in NCHW order (dx starts at sample n0) */
template <typename T> __global__ void col2im_k(kl_conv_ix c, const T *dcol, T *dx, int64_t m)
{
    KL_CU_FOR(i, m * c.C * c.H * c.W) dx[i] = col2im_at(&c, dcol, m, i);
}

/* The chunk GEMM of op (kl_conv_gemm_of) on a, b into y, y = a@b + beta*y. */
static kl_status gemm(const kl_tensor *t, const kl_conv_ix *c, int64_t m, const void *a, const void *b, void *y, double beta)
{
    kl_conv_gemm s = kl_conv_gemm_of(c, t->op, m);
    kl_cu_gemm g;
    memset(&g, 0, sizeof g);
    g.dt = t->dtype;
    g.M = s.M, g.N = s.N, g.K = s.K;
    g.a = a, g.lda = s.lda, g.ta = s.ta;
    g.b = b, g.ldb = s.ldb, g.tb = s.tb;
    g.y = y, g.ldy = s.ldy;
    g.batch = s.batch, g.sa = s.sa, g.sb = s.sb, g.sy = s.sy;
    g.beta = beta;
    return kl_cu_gemm_run(t, &g);
}

/* Everything a launcher needs: geometry, chunking, scratch buffers. */
template <typename T> struct conv_run {
    kl_conv_ix c;
    kl_conv_cu_layout l;
    T *col, *cn; /* col or dcol; cn */
    double *dbsum;
    cudaStream_t s;
};

template <typename T> static conv_run<T> run_of(const kl_exec *ex, const kl_tensor *t)
{
    const kl_conv_attr *a = KL_ATTR_C(t, kl_conv_attr);
    conv_run<T> r;
    r.c = kl_conv_ix_of(a);
    r.l = kl_conv_cu_layout_of(a, t->op, sizeof(T), a->cu_nc);
    unsigned char *s = (unsigned char *)kl_scratch(ex, t);
    r.col = (T *)(void *)(s + r.l.col);
    r.cn = (T *)(void *)(s + r.l.cn);
    r.dbsum = (double *)(void *)(s + r.l.dbsum);
    r.s = kl_cu_stream();
    return r;
}

/* Samples in the chunk starting at n0 (the last one may be short). */
template <typename T> static int64_t chunk_len(const conv_run<T> &r, int64_t n0)
{
    return r.c.N - n0 < r.l.nc ? r.c.N - n0 : r.l.nc;
}

template <typename T> static kl_status conv_fwd(const kl_exec *ex, const kl_tensor *t)
{
    conv_run<T> r = run_of<T>(ex, t);
    const T *x = (const T *)kl_data(ex, t->src[0]), *w = (const T *)kl_data(ex, t->src[1]);
    const T *bias = t->n_src > 2 ? (const T *)kl_data(ex, t->src[2]) : NULL;
    T *y = (T *)kl_data(ex, t);
    const kl_conv_ix &c = r.c;
    for (int64_t n0 = 0; n0 < c.N; n0 += r.l.nc) {
        int64_t m = chunk_len(r, n0);
        im2col_k<T><<<kl_cu_blocks(c.G * c.Kg * m * c.P, KL_CU_THREADS), KL_CU_THREADS, 0, r.s>>>(c, x, r.col, n0, m);
        KL_CUDA_LAUNCHED(t, "im2col_k");
        KL_TRY(gemm(t, &c, m, w, r.col, r.cn, 0));
        out_k<T><<<kl_cu_blocks(m * c.O * c.P, KL_CU_THREADS), KL_CU_THREADS, 0, r.s>>>(c, r.cn, bias, y + n0 * c.O * c.P, m);
        KL_CUDA_LAUNCHED(t, "out_k");
    }
    return KL_OK;
}

/* dz of the chunk into r.cn; y is the forward's output (src 2) with a fused activation */
template <typename T> static kl_status form_dz(const kl_exec *ex, const kl_tensor *t, const conv_run<T> &r, int64_t n0, int64_t m)
{
    const T *dy = (const T *)kl_data(ex, t->src[0]);
    const T *y = r.c.act >= 0 ? (const T *)kl_data(ex, t->src[2]) : NULL;
    dz_k<T><<<kl_cu_blocks(r.c.O * m * r.c.P, KL_CU_THREADS), KL_CU_THREADS, 0, r.s>>>(r.c, dy, y, r.cn, n0, m);
    KL_CUDA_LAUNCHED(t, "dz_k");
    return KL_OK;
}

template <typename T> static kl_status conv_bwd_data(const kl_exec *ex, const kl_tensor *t)
{
    conv_run<T> r = run_of<T>(ex, t);
    const T *w = (const T *)kl_data(ex, t->src[1]);
    T *dx = (T *)kl_data(ex, t);
    const kl_conv_ix &c = r.c;
    for (int64_t n0 = 0; n0 < c.N; n0 += r.l.nc) {
        int64_t m = chunk_len(r, n0);
        KL_TRY(form_dz<T>(ex, t, r, n0, m));
        KL_TRY(gemm(t, &c, m, w, r.cn, r.col, 0));
        col2im_k<T><<<kl_cu_blocks(m * c.C * c.H * c.W, KL_CU_THREADS), KL_CU_THREADS, 0, r.s>>>(c, r.col, dx + n0 * c.C * c.H * c.W, m);
        KL_CUDA_LAUNCHED(t, "col2im_k");
    }
    return KL_OK;
}

template <typename T> static kl_status conv_bwd_filter(const kl_exec *ex, const kl_tensor *t)
{
    conv_run<T> r = run_of<T>(ex, t);
    const T *x = (const T *)kl_data(ex, t->src[1]);
    T *dw = (T *)kl_data(ex, t);
    T *db = KL_ATTR_C(t, kl_conv_attr)->has_bias ? (T *)kl_data(ex, t->extra[0]) : NULL;
    const kl_conv_ix &c = r.c;
    for (int64_t n0 = 0; n0 < c.N; n0 += r.l.nc) {
        int64_t m = chunk_len(r, n0);
        KL_TRY(form_dz<T>(ex, t, r, n0, m));
        im2col_k<T><<<kl_cu_blocks(c.G * c.Kg * m * c.P, KL_CU_THREADS), KL_CU_THREADS, 0, r.s>>>(c, x, r.col, n0, m);
        KL_CUDA_LAUNCHED(t, "im2col_k");
        KL_TRY(gemm(t, &c, m, r.cn, r.col, dw, n0 == 0 ? 0 : 1)); /* beta 0 first: dW is written */
        if (db) /* cn is [O, m*P]: sample n's pixels at n*P, channel o's row at o*m*P */
            KL_TRY(kl_cu_conv_db<T>(t, r.cn, c.O, m, c.P, c.P, m * c.P, r.dbsum, n0 == 0, n0 + m == c.N ? db : NULL, r.s));
    }
    return KL_OK;
}

/* A node whose shape fn did not size it for CUDA (no chunk size) or an unsupported dtype. */
static kl_status not_runnable(const kl_tensor *t)
{
    if (KL_ATTR_C(t, kl_conv_attr)->cu_nc < 1)
        return kl_fail(KL_EINTERNAL, "%s %s: node was not planned for CUDA (no chunk size)", kl_ops[t->op]->name, kl_desc(t));
    return kl_fail(KL_EUNSUPPORTED, "%s: no CUDA kernel for %s", kl_ops[t->op]->name, kl_desc(t));
}

#define DISPATCH(fn)                                                                               \
    (KL_ATTR_C(t, kl_conv_attr)->cu_nc < 1 ? not_runnable(t)                                       \
     : t->dtype == KL_F32                  ? fn<float>(ex, t)                                      \
     : t->dtype == KL_F64                  ? fn<double>(ex, t)                                     \
                                           : not_runnable(t))

/* cuDNN first where it is chosen and takes the node (conv_cudnn.cu) */
#define CONV_ENTRY(name, fn)                                                                       \
    extern "C" kl_status name(const kl_exec *ex, const kl_tensor *t)                               \
    {                                                                                              \
        int done;                                                                                  \
        KL_TRY(kl_cu_cudnn_conv(ex, t, &done));                                                    \
        return done ? KL_OK : DISPATCH(fn);                                                        \
    }
CONV_ENTRY(kl_cuda_conv2d, conv_fwd)
CONV_ENTRY(kl_cuda_conv2d_bwd_data, conv_bwd_data)
CONV_ENTRY(kl_cuda_conv2d_bwd_filter, conv_bwd_filter)
