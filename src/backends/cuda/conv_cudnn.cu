/* Convolutions through cuDNN 9 (its convolution API), the alternative to
 * kiln's im2col + cuBLASLt kernels (conv.cu) for f32 nodes, chosen with
 * KILN_CUDA_CONV=cudnn (default: im2col, until the benchmark says which is
 * faster on which shapes; bench/run_gpu.sh runs both).
 *
 * libcudnn.so.9 is loaded at run time (dlopen), so kiln runs where it is
 * absent; the calls used exist from cuDNN 9.0 on. Per node:
 *   forward      cudnnConvolutionForward into y (NCHW), then one in-place
 *                pass for bias and activation (kl_conv_post_*, as conv.cu);
 *   bwd_data     dz = act'(y) dy (kl_conv_dzv_*) into the node's cn
 *                scratch when an activation is fused, else dy itself, then
 *                cudnnConvolutionBackwardData;
 *   bwd_filter   the same dz, cudnnConvolutionBackwardFilter, and db in
 *                double in a fixed order (conv_db.cuh, no atomics).
 * Algorithms come from cuDNN's heuristics (the _v7 queries: no trial runs,
 * so the first step stays fast), the best one that is deterministic and
 * whose workspace fits the node's col scratch or the cuBLASLt workspace
 * (ops on kiln's stream run one after another, so they can share it).
 * Descriptors and the choice are cached per geometry at the graph's first,
 * eager run; a captured graph replays the launches as recorded. A node
 * cuDNN does not take (f64, a batch in chunks, int overflow, no algorithm)
 * runs on kiln's kernels, as does one whose operands sit at unaligned offsets
 * or whose call cuDNN refuses at the first, eager run. */
#include "backends/cuda/cuda_internal.cuh"
extern "C" {
#include "ops/conv2d.h"
}
#include "ops/conv2d_index.h"
#include "backends/cuda/conv_db.cuh"

#include <cudnn.h>
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define DN_FUNCS(X)                                                                                \
    X(cudnnGetVersion) X(cudnnGetErrorString) X(cudnnCreate) X(cudnnSetStream)                     \
    X(cudnnCreateTensorDescriptor) X(cudnnSetTensor4dDescriptor) X(cudnnCreateFilterDescriptor)    \
    X(cudnnSetFilter4dDescriptor) X(cudnnCreateConvolutionDescriptor)                              \
    X(cudnnSetConvolution2dDescriptor) X(cudnnSetConvolutionGroupCount)                            \
    X(cudnnSetConvolutionMathType) X(cudnnGetConvolutionForwardAlgorithm_v7)                       \
    X(cudnnGetConvolutionBackwardDataAlgorithm_v7) X(cudnnGetConvolutionBackwardFilterAlgorithm_v7) \
    X(cudnnGetConvolutionForwardWorkspaceSize) X(cudnnGetConvolutionBackwardDataWorkspaceSize)     \
    X(cudnnGetConvolutionBackwardFilterWorkspaceSize)                                              \
    X(cudnnConvolutionForward) X(cudnnConvolutionBackwardData) X(cudnnConvolutionBackwardFilter)

/* One geometry's descriptors and algorithm (algo < 0: cuDNN does not take it). */
typedef struct dn_entry {
    int64_t key[20];
    struct dn_entry *next;
    int algo;
    size_t ws;
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
} dn_entry;

static struct {
#define DN_PTR(f) decltype(&::f) f;
    DN_FUNCS(DN_PTR)
    int on; /* KILN_CUDA_CONV=cudnn and the library loaded */
    char engine[160];
    cudnnHandle_t h;
    dn_entry *cache;
    long long runs; /* nodes run by cuDNN (tests check the path is taken) */
    pthread_mutex_t mu;
} g_dn = {};
static pthread_once_t g_dn_once = PTHREAD_ONCE_INIT;

static void dn_load(void)
{
    pthread_mutex_init(&g_dn.mu, NULL);
    const char *env = getenv("KILN_CUDA_CONV");
    snprintf(g_dn.engine, sizeof g_dn.engine, "im2col + cuBLASLt");
    if (!env || strcmp(env, "cudnn")) return;
    void *lib = dlopen("libcudnn.so.9", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        snprintf(g_dn.engine, sizeof g_dn.engine, "im2col + cuBLASLt (KILN_CUDA_CONV=cudnn, but: %.100s)", dlerror());
        return;
    }
    bool ok = true;
#define DN_SYM(f)                                                                                  \
    {                                                                                              \
        void *p = dlsym(lib, #f);                                                                  \
        ok &= p != NULL;                                                                           \
        memcpy(&g_dn.f, &p, sizeof p);                                                             \
    }
    DN_FUNCS(DN_SYM)
    if (!ok) {
        snprintf(g_dn.engine, sizeof g_dn.engine, "im2col + cuBLASLt (KILN_CUDA_CONV=cudnn, but libcudnn.so.9 lacks a call kiln uses)");
        return;
    }
    size_t v = g_dn.cudnnGetVersion();
    snprintf(g_dn.engine, sizeof g_dn.engine, "cuDNN %zu.%zu.%zu (f32; im2col + cuBLASLt for the rest)", v / 10000,
             v / 100 % 100, v % 100);
    g_dn.on = 1;
}

extern "C" const char *kl_cuda_conv_engine(void)
{
    pthread_once(&g_dn_once, dn_load);
    return g_dn.engine;
}

extern "C" long long kl_cuda_conv_cudnn_runs(void) { return __atomic_load_n(&g_dn.runs, __ATOMIC_RELAXED); }

static kl_status dn_fail(cudnnStatus_t s, const kl_tensor *t, const char *call)
{
    return kl_fail(KL_EDEVICE, "%s %s: %s on cuda:%d failed: %s", kl_ops[t->op]->name, kl_desc(t), call, kl_cu_device(),
                   g_dn.cudnnGetErrorString(s));
}

#define DN_CHECK(call, t)                                                                          \
    do {                                                                                           \
        cudnnStatus_t dn_s_ = (g_dn.call);                                                         \
        if (dn_s_ != CUDNN_STATUS_SUCCESS) return dn_fail(dn_s_, t, #call);                        \
    } while (0)

/* Bytes cuDNN may use as workspace for a node: the larger of its col
 * scratch (unused on this path) and the shared cuBLASLt workspace. */
static void *workspace_of(const kl_exec *ex, const kl_tensor *t, const kl_conv_attr *a, size_t *bytes)
{
    kl_conv_cu_layout l = kl_conv_cu_layout_of(a, t->op, sizeof(float), a->cu_nc);
    size_t shared;
    void *ws = kl_cu_workspace(&shared);
    if (l.cn - l.col >= shared) {
        *bytes = l.cn - l.col;
        return (unsigned char *)kl_scratch(ex, t) + l.col;
    }
    *bytes = shared;
    return ws;
}

/* The heuristics' best deterministic algorithm whose workspace (asked
 * for separately: the heuristics' figure is an estimate) fits in ws bytes;
 * -1: none. Each candidate is sized under its own math type, which the
 * descriptor keeps once chosen; entries that may convert f32 inputs to
 * 16-bit types are skipped (kiln promises TF32 at most), and without TF32
 * (KILN_TF32=0) so are tensor-op entries: the descriptor stays on FMA math. PERF: the op's
 * perf-result type; QUERY, SIZE: its _v7 and workspace-size calls; the
 * operands in the calls' order. */
#define PICK(PERF, ALGO, COUNT, QUERY, SIZE, ...)                                                  \
    {                                                                                              \
        PERF perf[COUNT];                                                                          \
        int n = 0;                                                                                 \
        DN_CHECK(QUERY(g_dn.h, __VA_ARGS__, COUNT, &n, perf), t);                                  \
        for (int i = 0; i < n && e->algo < 0; i++) {                                               \
            size_t need = 0;                                                                       \
            cudnnMathType_t m = tf32 ? perf[i].mathType : CUDNN_FMA_MATH;                          \
            if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].determinism != CUDNN_DETERMINISTIC || \
                perf[i].mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION ||                       \
                (!tf32 && is_tensor_op(perf[i].mathType)) ||                                       \
                g_dn.cudnnSetConvolutionMathType(e->conv, m) != CUDNN_STATUS_SUCCESS)              \
                continue;                                                                          \
            if (g_dn.SIZE(g_dn.h, __VA_ARGS__, (ALGO)perf[i].algo, &need) == CUDNN_STATUS_SUCCESS && need <= ws) \
                e->algo = (int)perf[i].algo, e->ws = need;                                         \
        }                                                                                          \
    }

static bool is_tensor_op(cudnnMathType_t m)
{
    return m == CUDNN_TENSOR_OP_MATH || m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
}

static kl_status entry_make(const kl_tensor *t, const kl_conv_attr *a, size_t ws, dn_entry *e)
{
    e->algo = -1;
    DN_CHECK(cudnnCreateTensorDescriptor(&e->x), t);
    DN_CHECK(cudnnCreateTensorDescriptor(&e->y), t);
    DN_CHECK(cudnnCreateFilterDescriptor(&e->w), t);
    DN_CHECK(cudnnCreateConvolutionDescriptor(&e->conv), t);
    cudnnDataType_t f = CUDNN_DATA_FLOAT;
    DN_CHECK(cudnnSetTensor4dDescriptor(e->x, CUDNN_TENSOR_NCHW, f, (int)a->N, (int)a->C, (int)a->H, (int)a->W), t);
    DN_CHECK(cudnnSetTensor4dDescriptor(e->y, CUDNN_TENSOR_NCHW, f, (int)a->N, (int)a->O, (int)a->OH, (int)a->OW), t);
    DN_CHECK(cudnnSetFilter4dDescriptor(e->w, f, CUDNN_TENSOR_NCHW, (int)a->O, (int)(a->C / a->groups), (int)a->KH,
                                        (int)a->KW), t);
    DN_CHECK(cudnnSetConvolution2dDescriptor(e->conv, a->ph, a->pw, a->sh, a->sw, a->dh, a->dw, CUDNN_CROSS_CORRELATION, f), t);
    DN_CHECK(cudnnSetConvolutionGroupCount(e->conv, a->groups), t);
    /* TF32 tensor cores as kiln's GEMMs (KILN_TF32=0: exact f32 FMA) */
    int tf32 = kl_cu_tf32();
    DN_CHECK(cudnnSetConvolutionMathType(e->conv, tf32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH), t);
    if (t->op == KL_OP_conv2d)
        PICK(cudnnConvolutionFwdAlgoPerf_t, cudnnConvolutionFwdAlgo_t, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
             cudnnGetConvolutionForwardAlgorithm_v7, cudnnGetConvolutionForwardWorkspaceSize, e->x, e->w, e->conv, e->y)
    else if (t->op == KL_OP_conv2d_bwd_data)
        PICK(cudnnConvolutionBwdDataAlgoPerf_t, cudnnConvolutionBwdDataAlgo_t, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
             cudnnGetConvolutionBackwardDataAlgorithm_v7, cudnnGetConvolutionBackwardDataWorkspaceSize, e->w, e->y,
             e->conv, e->x)
    else
        PICK(cudnnConvolutionBwdFilterAlgoPerf_t, cudnnConvolutionBwdFilterAlgo_t, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
             cudnnGetConvolutionBackwardFilterAlgorithm_v7, cudnnGetConvolutionBackwardFilterWorkspaceSize, e->x, e->y,
             e->conv, e->w)
    return KL_OK;
}

/* The cached entry of t's geometry (made on first use); NULL with *s set on
 * failure. Entries are made in eager runs (every plan runs eagerly once
 * before it is captured); a geometry first met while capturing, when
 * cudnnCreate may not run, is left to kiln's kernels (NULL, KL_OK). */
static dn_entry *entry_get(const kl_tensor *t, const kl_conv_attr *a, size_t ws, bool capturing, kl_status *s)
{
    int64_t key[20] = {t->op, kl_cu_tf32(), a->N, a->C, a->H, a->W, a->O, a->KH, a->KW, a->sh, a->sw,
                       a->ph, a->pw, a->dh, a->dw, a->groups, (int64_t)ws};
    *s = KL_OK;
    pthread_mutex_lock(&g_dn.mu);
    dn_entry *e = g_dn.cache;
    while (e && memcmp(e->key, key, sizeof key)) e = e->next;
    if (!e && !capturing) {
        cudnnStatus_t c = g_dn.h ? CUDNN_STATUS_SUCCESS : g_dn.cudnnCreate(&g_dn.h);
        if (c != CUDNN_STATUS_SUCCESS) { /* e.g. a driver too old for this cuDNN: kiln's kernels run every conv */
            snprintf(g_dn.engine, sizeof g_dn.engine, "im2col + cuBLASLt (KILN_CUDA_CONV=cudnn, but cudnnCreate: %.80s)",
                     g_dn.cudnnGetErrorString(c));
            g_dn.on = 0;
        } else if (!(e = (dn_entry *)kl_calloc(1, sizeof *e))) {
            *s = KL_ENOMEM;
        } else {
            memcpy(e->key, key, sizeof key);
            /* a geometry cuDNN refuses stays on kiln's kernels (algo -1); the
             * entry is kept, its descriptors live as long as the process */
            if (entry_make(t, a, ws, e) != KL_OK) e->algo = -1;
            e->next = g_dn.cache;
            g_dn.cache = e;
        }
    }
    pthread_mutex_unlock(&g_dn.mu);
    return e;
}

/* in place, thread per y element (NCHW): y = act(y + bias) */
__global__ void post_nchw_k(kl_conv_ix c, float *y, const float *bias)
{
    KL_CU_FOR(i, c.N * c.O * c.P) y[i] = kl_conv_post_float(&c, y[i], bias, i / c.P % c.O);
}

/* thread per element (NCHW): dz = act'(y) dy */
__global__ void dz_nchw_k(kl_conv_ix c, const float *dy, const float *y, float *dz)
{
    KL_CU_FOR(i, c.N * c.O * c.P) dz[i] = kl_conv_dzv_float(&c, dy[i], y[i]);
}

/* dz of a gradient node: dy itself, or act'(y) dy in the cn scratch */
static kl_status dz_of(const kl_exec *ex, const kl_tensor *t, const kl_conv_attr *a, const kl_conv_ix &c, const float **dz)
{
    const float *dy = (const float *)kl_data(ex, t->src[0]);
    if (c.act < 0) {
        *dz = dy;
        return KL_OK;
    }
    kl_conv_cu_layout l = kl_conv_cu_layout_of(a, t->op, sizeof(float), a->cu_nc);
    float *buf = (float *)(void *)((unsigned char *)kl_scratch(ex, t) + l.cn);
    int64_t n = c.N * c.O * c.P;
    dz_nchw_k<<<kl_cu_blocks(n, KL_CU_THREADS), KL_CU_THREADS, 0, kl_cu_stream()>>>(c, dy, (const float *)kl_data(ex, t->src[2]), buf);
    KL_CUDA_LAUNCHED(t, "dz_nchw_k");
    *dz = buf;
    return KL_OK;
}

static bool fits_int(const kl_conv_attr *a)
{
    int64_t big = a->N * (a->C > a->O ? a->C : a->O) * (a->H * a->W > a->OH * a->OW ? a->H * a->W : a->OH * a->OW);
    return big < INT_MAX;
}

static bool aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }

/* cuDNN refused to run e's geometry: in an eager run, kiln's kernels take
 * this node and every later one of the geometry (nothing was written that
 * they do not overwrite); while capturing, the step fails (the capture is
 * broken). */
static kl_status refused(const kl_tensor *t, dn_entry *e, cudnnStatus_t r, bool capturing, const char *call)
{
    if (capturing) return dn_fail(r, t, call);
    /* a launch error cuDNN left behind would be blamed on kiln's next
     * kernel: clear it; a sticky one (the context is lost) fails here */
    (void)cudaGetLastError();
    if (cudaPeekAtLastError() != cudaSuccess) return dn_fail(r, t, call);
    pthread_mutex_lock(&g_dn.mu);
    e->algo = -1;
    pthread_mutex_unlock(&g_dn.mu);
    return KL_OK;
}

extern "C" kl_status kl_cu_cudnn_conv(const kl_exec *ex, const kl_tensor *t, int *done)
{
    *done = 0;
    pthread_once(&g_dn_once, dn_load);
    const kl_conv_attr *a = KL_ATTR_C(t, kl_conv_attr);
    /* the whole batch at once: dz fills cn only when the batch is one chunk */
    if (!g_dn.on || t->dtype != KL_F32 || a->cu_nc != a->N || !fits_int(a)) return KL_OK;
    size_t ws_max;
    void *ws = workspace_of(ex, t, a, &ws_max);
    if (!aligned16(kl_data(ex, t)) || !aligned16(ws)) return KL_OK;
    for (int i = 0; i < t->n_src; i++)
        if (!aligned16(kl_data(ex, t->src[i]))) return KL_OK; /* a view at an odd offset: kiln's kernels take it */
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    KL_CUDA_CHECK(cudaStreamIsCapturing(kl_cu_stream(), &cs), kl_ops[t->op]->name, "cudaStreamIsCapturing");
    bool capturing = cs != cudaStreamCaptureStatusNone;
    kl_status s;
    dn_entry *e = entry_get(t, a, ws_max, capturing, &s);
    if (!e || e->algo < 0) return s;
    DN_CHECK(cudnnSetStream(g_dn.h, kl_cu_stream()), t);
    kl_conv_ix c = kl_conv_ix_of(a);
    const float one = 1, zero = 0;
    cudaStream_t st = kl_cu_stream();
    cudnnStatus_t r;
    if (t->op == KL_OP_conv2d) {
        const void *x = kl_data(ex, t->src[0]), *w = kl_data(ex, t->src[1]);
        const float *bias = t->n_src > 2 ? (const float *)kl_data(ex, t->src[2]) : NULL;
        float *y = (float *)kl_data(ex, t);
        r = g_dn.cudnnConvolutionForward(g_dn.h, &one, e->x, x, e->w, w, e->conv, (cudnnConvolutionFwdAlgo_t)e->algo, ws,
                                         e->ws, &zero, e->y, y);
        if (r != CUDNN_STATUS_SUCCESS) return refused(t, e, r, capturing, "cudnnConvolutionForward");
        if (bias || c.act >= 0) {
            post_nchw_k<<<kl_cu_blocks(c.N * c.O * c.P, KL_CU_THREADS), KL_CU_THREADS, 0, st>>>(c, y, bias);
            KL_CUDA_LAUNCHED(t, "post_nchw_k");
        }
    } else if (t->op == KL_OP_conv2d_bwd_data) {
        const float *dz;
        KL_TRY(dz_of(ex, t, a, c, &dz));
        r = g_dn.cudnnConvolutionBackwardData(g_dn.h, &one, e->w, kl_data(ex, t->src[1]), e->y, dz, e->conv,
                                              (cudnnConvolutionBwdDataAlgo_t)e->algo, ws, e->ws, &zero, e->x,
                                              kl_data(ex, t));
        if (r != CUDNN_STATUS_SUCCESS) return refused(t, e, r, capturing, "cudnnConvolutionBackwardData");
    } else {
        const float *dz;
        KL_TRY(dz_of(ex, t, a, c, &dz));
        r = g_dn.cudnnConvolutionBackwardFilter(g_dn.h, &one, e->x, kl_data(ex, t->src[1]), e->y, dz, e->conv,
                                                (cudnnConvolutionBwdFilterAlgo_t)e->algo, ws, e->ws, &zero, e->w,
                                                kl_data(ex, t));
        if (r != CUDNN_STATUS_SUCCESS) return refused(t, e, r, capturing, "cudnnConvolutionBackwardFilter");
        if (a->has_bias) { /* dz is NCHW: sample n at n*O*P, channel o at o*P; the whole batch in one
                            * sum: its partials fit the scratch only because cu_nc == N here (see the top) */
            kl_conv_cu_layout l = kl_conv_cu_layout_of(a, t->op, sizeof(float), a->cu_nc);
            double *dbsum = (double *)(void *)((unsigned char *)kl_scratch(ex, t) + l.dbsum);
            KL_TRY(kl_cu_conv_db<float>(t, dz, c.O, c.N, c.P, c.O * c.P, c.P, dbsum, 1, (float *)kl_data(ex, t->extra[0]), st));
        }
    }
    __atomic_fetch_add(&g_dn.runs, 1, __ATOMIC_RELAXED);
    *done = 1;
    return KL_OK;
}
