/* The CUDA backend: device memory, copies on kiln's stream, device probing
 * and the per-process device state (stream, cuBLASLt handle and workspace,
 * the error record kernels report bad labels and indices in).
 *
 * One CUDA device per process (kl_cuda_use): multi-GPU runs use one process
 * per GPU. Every copy goes through one non-blocking stream, so copies and
 * kernels run in issue order; d2h waits for the stream, so the host reads
 * what the kernels before it wrote. */
#include "backends/cuda/cuda_internal.cuh"

#include <cublasLt.h>
#include <nvtx3/nvToolsExt.h> /* header-only: a no-op unless a profiler injects itself */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <unistd.h>

#define KL_CU_WORKSPACE (32u << 20) /* cuBLASLt workspace: 32 MiB recommended on sm90 */

static struct {
    int ready;
    int device;
    cudaStream_t stream;
    cublasLtHandle_t lt;
    void *workspace;
    kl_cuda_err *err_host, *err_dev;
    double *red;
    int tf32;
} g_cu;
static pthread_mutex_t g_cu_lock = PTHREAD_MUTEX_INITIALIZER;

/* The issue lock (backend.h, begin_run): whatever enqueues on kiln's one
 * stream, or waits for it, holds it, and a graph run holds it from
 * begin_run to end_run. So a capture records only its own run's work (a
 * capture takes every launch into the stream, from any thread), launches
 * sharing the reduction scratch stay adjacent, and no thread syncs or
 * queries a stream being captured. Recursive: a run's copies take it again. */
static pthread_mutex_t g_issue;
static pthread_once_t g_issue_once = PTHREAD_ONCE_INIT;
static void issue_init(void)
{
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    pthread_mutex_init(&g_issue, &a);
    pthread_mutexattr_destroy(&a);
}
static void issue_lock(void)
{
    pthread_once(&g_issue_once, issue_init);
    pthread_mutex_lock(&g_issue);
}
static void issue_unlock(void) { pthread_mutex_unlock(&g_issue); }
/* returns call's status with the issue lock held around it */
#define KL_CU_LOCKED(call)                                                                         \
    do {                                                                                           \
        issue_lock();                                                                              \
        kl_status locked_s_ = (call);                                                              \
        issue_unlock();                                                                            \
        return locked_s_;                                                                          \
    } while (0)

kl_status kl_cu_fail(cudaError_t e, const char *op, const char *kernel, const char *file, int line)
{
    int dev = g_cu.ready ? g_cu.device : -1;
    (void)cudaGetLastError(); /* clear a non-sticky error so later calls can go on */
    const char *base = strrchr(file, '/');
    kl_status s = e == cudaErrorMemoryAllocation ? KL_EDEVMEM : KL_EDEVICE;
    /* a fault inside a kernel surfaces at a later synchronisation, in a
     * replayed graph, or (sticky) at any later call, where the op named is
     * not the one that faulted: say how to find it */
    bool sticky = e == cudaErrorIllegalAddress || e == cudaErrorLaunchFailure || e == cudaErrorAssert ||
                  e == cudaErrorIllegalInstruction || e == cudaErrorMisalignedAddress ||
                  e == cudaErrorInvalidAddressSpace || e == cudaErrorInvalidPc || e == cudaErrorHardwareStackError ||
                  e == cudaErrorLaunchTimeout;
    bool later = sticky || strstr(kernel, "Synchronize") || strstr(kernel, "Query") || strstr(kernel, "GraphLaunch");
    return kl_fail(s, "%s: %s on cuda:%d failed: %s (%s) [%s:%d]%s", op, kernel, dev, cudaGetErrorString(e),
                   cudaGetErrorName(e), base ? base + 1 : file, line,
                   later && e != cudaErrorMemoryAllocation
                       ? "; kernels run asynchronously: run again with KILN_CUDA_GRAPH=0 CUDA_LAUNCH_BLOCKING=1 to "
                         "have the failing op named"
                       : "");
}

cudaStream_t kl_cu_stream(void) { return g_cu.stream; }
int kl_cu_device(void) { return g_cu.device; }
kl_cuda_err *kl_cu_err(void) { return g_cu.err_dev; }
void *kl_cu_lt(void) { return g_cu.lt; }
int kl_cu_tf32(void) { return g_cu.tf32; }
double *kl_cu_reduce_buf(void) { return g_cu.red; }
void *kl_cu_workspace(size_t *bytes)
{
    *bytes = KL_CU_WORKSPACE;
    return g_cu.workspace;
}

/* ---- probing ---- */

static void runtime_version_str(char *buf, size_t n)
{
    int rt = 0;
    cudaRuntimeGetVersion(&rt);
    snprintf(buf, n, "%d.%d", rt / 1000, rt % 1000 / 10);
}

/* Number of devices, or a message saying why none can be used. */
static kl_status device_count(int *n, const char *who)
{
    *n = 0;
    cudaError_t e = cudaGetDeviceCount(n);
    if (e == cudaSuccess) return KL_OK;
    (void)cudaGetLastError();
    *n = 0;
    char rt[32];
    runtime_version_str(rt, sizeof rt);
    if (e == cudaErrorNoDevice) return KL_OK;
    if (e == cudaErrorInsufficientDriver || e == cudaErrorCompatNotSupportedOnDevice) {
        int drv = 0;
        cudaDriverGetVersion(&drv);
        if (drv == 0)
            return kl_fail(KL_EDEVICE, "%sno CUDA driver found (libcuda.so.1 could not be loaded; kiln uses CUDA runtime %s)",
                           who, rt);
        return kl_fail(KL_EDEVICE, "%sthe CUDA driver (supports CUDA %d.%d) is older than kiln's CUDA runtime %s",
                       who, drv / 1000, drv % 1000 / 10, rt);
    }
    return kl_fail(KL_EDEVICE, "%sCUDA cannot list devices: %s (%s; CUDA runtime %s)", who, cudaGetErrorString(e),
                   cudaGetErrorName(e), rt);
}

extern "C" kl_status kl_cuda_device_count(int *n)
{
    int tmp;
    return device_count(n ? n : &tmp, "");
}

#ifndef KL_CU_MIN_CC
#error "KL_CU_MIN_CC (the oldest compute capability the build has GPU code for) comes from CMakeLists.txt"
#endif

/* cuda:index exists (the driver loads and lists it) */
static kl_status device_exists(int index)
{
    char who[32];
    snprintf(who, sizeof who, "cuda:%d: ", index);
    if (index < 0) return kl_fail(KL_EINVAL, "cuda:%d: device index must be >= 0", index);
    int n;
    KL_TRY(device_count(&n, who));
    if (n == 0) return kl_fail(KL_EDEVICE, "cuda:%d: no CUDA device found (the driver is loaded but lists none)", index);
    if (index >= n) {
        if (n == 1) return kl_fail(KL_EINVAL, "cuda:%d: index out of range: 1 CUDA device present (cuda:0)", index);
        return kl_fail(KL_EINVAL, "cuda:%d: index out of range: %d CUDA devices present (cuda:0 .. cuda:%d)", index, n,
                       n - 1);
    }
    return KL_OK;
}

/* the build has GPU code for compute capability major.minor */
static bool cc_supported(int major, int minor) { return major * 10 + minor >= KL_CU_MIN_CC; }

/* The build's kernels run on cuda:index: an older GPU is refused here, by
 * name, instead of at the first kernel launch (no kernel image) */
static kl_status device_supported(int index)
{
    int major = 0, minor = 0;
    KL_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, index), "devices",
                  "cudaDeviceGetAttribute");
    KL_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, index), "devices",
                  "cudaDeviceGetAttribute");
    if (cc_supported(major, minor)) return KL_OK;
    char name[256] = "?";
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, index) == cudaSuccess) snprintf(name, sizeof name, "%s", p.name);
    else (void)cudaGetLastError();
    return kl_fail(KL_EUNSUPPORTED,
                   "cuda:%d: %s has compute capability %d.%d; this build of kiln carries GPU code for %d.%d and newer "
                   "only (CMakeLists.txt's -gencode list)", index, name, major, minor, KL_CU_MIN_CC / 10, KL_CU_MIN_CC % 10);
}

extern "C" kl_status kl_cuda_available(int index)
{
    KL_TRY(device_exists(index));
    return device_supported(index);
}

extern "C" kl_status kl_cuda_device_info_get(int index, kl_cuda_device_info *out)
{
    if (!out) return kl_fail(KL_EMISUSE, "kl_cuda_device_info_get: out is NULL");
    memset(out, 0, sizeof *out);
    KL_TRY(device_exists(index));
    cudaDeviceProp p;
    KL_CUDA_CHECK(cudaGetDeviceProperties(&p, index), "devices", "cudaGetDeviceProperties");
    snprintf(out->name, sizeof out->name, "%s", p.name);
    if (cudaDeviceGetPCIBusId(out->pci_bus_id, (int)sizeof out->pci_bus_id, index) != cudaSuccess) {
        (void)cudaGetLastError();
        out->pci_bus_id[0] = 0;
    }
    out->major = p.major;
    out->minor = p.minor;
    out->usable = cc_supported(p.major, p.minor);
    out->sm_count = p.multiProcessorCount;
    out->total_bytes = p.totalGlobalMem;
    cudaDriverGetVersion(&out->driver_version);
    cudaRuntimeGetVersion(&out->runtime_version);
    int cur = 0;
    KL_CUDA_CHECK(cudaGetDevice(&cur), "devices", "cudaGetDevice");
    KL_CUDA_CHECK(cudaSetDevice(index), "devices", "cudaSetDevice");
    size_t fr = 0, tot = 0;
    cudaError_t e = cudaMemGetInfo(&fr, &tot);
    cudaSetDevice(cur);
    KL_CUDA_CHECK(e, "devices", "cudaMemGetInfo");
    out->free_bytes = fr;
    return KL_OK;
}

/* ---- the process's device ---- */

static void release_state(void)
{
    if (g_cu.lt) cublasLtDestroy(g_cu.lt);
    if (g_cu.workspace) cudaFree(g_cu.workspace);
    if (g_cu.red) cudaFree(g_cu.red);
    if (g_cu.err_host) cudaFreeHost(g_cu.err_host);
    if (g_cu.stream) cudaStreamDestroy(g_cu.stream);
    memset(&g_cu, 0, sizeof g_cu);
}

static kl_status init_state(int index)
{
    const char *op = "cuda init";
    KL_CUDA_CHECK(cudaSetDevice(index), op, "cudaSetDevice");
    g_cu.device = index;
    KL_CUDA_CHECK(cudaStreamCreateWithFlags(&g_cu.stream, cudaStreamNonBlocking), op, "cudaStreamCreateWithFlags");
    KL_CUDA_CHECK(cudaMalloc(&g_cu.workspace, KL_CU_WORKSPACE), op, "cudaMalloc(cuBLASLt workspace)");
    KL_CUDA_CHECK(cudaMalloc((void **)&g_cu.red, (KL_CU_RED_BLOCKS + 1) * sizeof(double)), op, "cudaMalloc(reduction scratch)");
    KL_CUDA_CHECK(cudaHostAlloc((void **)&g_cu.err_host, sizeof(kl_cuda_err), cudaHostAllocMapped | cudaHostAllocPortable),
                  op, "cudaHostAlloc(error record)");
    memset(g_cu.err_host, 0, sizeof(kl_cuda_err));
    if (cudaHostGetDevicePointer((void **)&g_cu.err_dev, g_cu.err_host, 0) != cudaSuccess) {
        (void)cudaGetLastError();
        g_cu.err_dev = g_cu.err_host; /* unified addressing: the host pointer works on the device */
    }
    cublasStatus_t bs = cublasLtCreate(&g_cu.lt);
    if (bs != CUBLAS_STATUS_SUCCESS)
        return kl_fail(KL_EDEVICE, "cuda:%d: cublasLtCreate failed: %s", index, cublasLtGetStatusString(bs));
    const char *e = getenv("KILN_TF32");
    g_cu.tf32 = !(e && !strcmp(e, "0"));
    g_cu.ready = 1;
    return KL_OK;
}

extern "C" kl_status kl_cuda_use(int index)
{
    KL_TRY(kl_cuda_available(index));
    pthread_mutex_lock(&g_cu_lock);
    kl_status s = KL_OK;
    if (g_cu.ready && g_cu.device != index)
        s = kl_fail(KL_EUNSUPPORTED, "cuda:%d: this process already uses cuda:%d; kiln drives one CUDA device per "
                    "process (start one process per GPU)", index, g_cu.device);
    else if (g_cu.ready)
        s = cudaSetDevice(index) == cudaSuccess ? KL_OK : kl_cu_fail(cudaGetLastError(), "cuda init", "cudaSetDevice", __FILE__, __LINE__);
    else if ((s = init_state(index)) != KL_OK)
        release_state();
    pthread_mutex_unlock(&g_cu_lock);
    return s;
}

/* ---- kl_backend ---- */

static kl_status need_ready(const char *what)
{
    if (g_cu.ready) return KL_OK;
    return kl_fail(KL_EMISUSE, "cuda %s: no CUDA device selected (create a ctx with device cuda:N first)", what);
}

/* Reports (once) the first data error a kernel recorded; call after a
 * sync. Work issued after the awaited point may still run: a record whose
 * code is -1 is being written (kl_cu_report) and is left for a later sync;
 * the fields are read only once the code says they are complete, and only
 * the code is cleared, last. */
static kl_status cu_h2d(void *dst, const void *src, size_t bytes);

static kl_status check_kernel_errors(void)
{
    kl_cuda_err *e = g_cu.err_host;
    if (!e) return KL_OK;
    int code = __atomic_load_n(&e->code, __ATOMIC_ACQUIRE);
    if (code <= 0) return KL_OK;
    kl_cuda_err r = *e;
    r.code = code;
    __atomic_store_n(&e->code, 0, __ATOMIC_RELEASE);
    /* release the runs issued after this report (kl_cuda_err.poison); the
     * data error is what this call reports: a failed launch here means a
     * broken context, which the next CUDA call reports */
    int zero = 0;
    (void)cu_h2d(&g_cu.err_dev->poison, &zero, sizeof zero);
    if (r.code == KL_CUERR_LABEL)
        return kl_fail(KL_EINVAL, "softmax_cross_entropy: label %d of row %lld out of range [0,%lld) (found on cuda:%d)",
                       r.value, r.where, r.limit, g_cu.device);
    if (r.code == KL_CUERR_INDEX)
        return kl_fail(KL_EINVAL, "embedding: index %d at position %lld out of range [0,%lld) (found on cuda:%d)", r.value,
                       r.where, r.limit, g_cu.device);
    if (r.code == KL_CUERR_GATHER)
        return kl_fail(KL_EINVAL, "gather_rows: index %d at position %lld out of range [0,%lld) (found on cuda:%d)",
                       r.value, r.where, r.limit, g_cu.device);
    if (r.code == KL_CUERR_START)
        return kl_fail(KL_EINVAL, "gather_rows: rows [%d, %lld) are not within the %lld indices (found on cuda:%d)",
                       r.value, r.where, r.limit, g_cu.device);
    return kl_fail(KL_EINTERNAL, "cuda:%d: a kernel reported unknown error %d", g_cu.device, r.code);
}

static kl_status cu_alloc(void **p, size_t bytes)
{
    *p = NULL;
    KL_TRY(need_ready("alloc"));
    cudaError_t e = cudaMalloc(p, bytes ? bytes : 256); /* cudaMalloc aligns to 256 bytes */
    if (e == cudaSuccess) return KL_OK;
    (void)cudaGetLastError();
    *p = NULL;
    size_t fr = 0, tot = 0;
    cudaMemGetInfo(&fr, &tot);
    return kl_fail(KL_EDEVMEM, "out of memory on cuda:%d allocating %zu bytes (%zu of %zu bytes free): %s", g_cu.device,
                   bytes, fr, tot, cudaGetErrorString(e));
}

static void cu_free(void *p)
{
    if (p) cudaFree(p); /* waits for work using it */
}

/* A few KiB travel as a kernel argument: the launch copies them at once, so
 * the call never waits for the device (a pageable cudaMemcpyAsync may) and
 * src can be reused at once. Per-run values and batch offsets go this way
 * before every replay of a captured graph. */
#define KL_CU_SMALL 2048
#define KL_CU_SMALL_MAX (32 * KL_CU_SMALL)
typedef struct { unsigned char b[KL_CU_SMALL]; } small_blob;

__global__ void small_copy_k(unsigned char *dst, small_blob src, unsigned n)
{
    for (unsigned i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src.b[i];
}

static kl_status h2d_issue(void *dst, const void *src, size_t bytes)
{
    KL_TRY(need_ready("h2d"));
    if (!bytes) return KL_OK;
    if (bytes <= KL_CU_SMALL_MAX) { /* in KL_CU_SMALL pieces: a run block of many nodes too */
        for (size_t at = 0; at < bytes; at += KL_CU_SMALL) {
            size_t n = bytes - at < KL_CU_SMALL ? bytes - at : KL_CU_SMALL;
            small_blob b;
            memcpy(b.b, (const unsigned char *)src + at, n);
            small_copy_k<<<1, 256, 0, g_cu.stream>>>((unsigned char *)dst + at, b, (unsigned)n);
            KL_CUDA_CHECK(cudaGetLastError(), "copy to device", "small_copy_k");
        }
        return KL_OK;
    }
    /* from pageable memory the call returns once src has been staged, which
     * the driver may do by waiting for the stream: only large, rare copies
     * (optimizer state after a checkpoint load, datasets) come here. From
     * pinned memory it returns at once and reads src later: wait for it,
     * as src is the caller's again when h2d returns */
    cudaPointerAttributes pa;
    bool pinned = cudaPointerGetAttributes(&pa, src) == cudaSuccess && pa.type == cudaMemoryTypeHost;
    if (!pinned) (void)cudaGetLastError();
    KL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g_cu.stream), "copy to device", "cudaMemcpyAsync");
    if (pinned) KL_CUDA_CHECK(cudaStreamSynchronize(g_cu.stream), "copy to device", "cudaStreamSynchronize");
    return KL_OK;
}

static kl_status cu_h2d(void *dst, const void *src, size_t bytes) { KL_CU_LOCKED(h2d_issue(dst, src, bytes)); }

static kl_status d2h_issue(void *dst, const void *src, size_t bytes)
{
    KL_TRY(need_ready("d2h"));
    if (bytes) KL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g_cu.stream), "copy to host", "cudaMemcpyAsync");
    KL_CUDA_CHECK(cudaStreamSynchronize(g_cu.stream), "copy to host", "cudaStreamSynchronize");
    return check_kernel_errors();
}
static kl_status cu_d2h(void *dst, const void *src, size_t bytes) { KL_CU_LOCKED(d2h_issue(dst, src, bytes)); }

static kl_status d2d_issue(void *dst, const void *src, size_t bytes)
{
    KL_TRY(need_ready("d2d"));
    if (bytes) KL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g_cu.stream), "copy on device", "cudaMemcpyAsync");
    return KL_OK;
}
static kl_status cu_d2d(void *dst, const void *src, size_t bytes) { KL_CU_LOCKED(d2d_issue(dst, src, bytes)); }

static kl_status memset0_issue(void *p, size_t bytes)
{
    KL_TRY(need_ready("memset"));
    if (bytes) KL_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, g_cu.stream), "memset", "cudaMemsetAsync");
    return KL_OK;
}
static kl_status cu_memset0(void *p, size_t bytes) { KL_CU_LOCKED(memset0_issue(p, bytes)); }

static kl_status sync_issue(void)
{
    KL_TRY(need_ready("sync"));
    KL_CUDA_CHECK(cudaStreamSynchronize(g_cu.stream), "sync", "cudaStreamSynchronize");
    return check_kernel_errors();
}
static kl_status cu_sync(void) { KL_CU_LOCKED(sync_issue()); }

static kl_status cu_host_alloc(void **host, void **dev, size_t bytes)
{
    *host = *dev = NULL;
    KL_TRY(need_ready("host alloc"));
    KL_CUDA_CHECK(cudaHostAlloc(host, bytes ? bytes : 256, cudaHostAllocMapped | cudaHostAllocPortable), "host memory",
                  "cudaHostAlloc");
    memset(*host, 0, bytes ? bytes : 256);
    if (cudaHostGetDevicePointer(dev, *host, 0) != cudaSuccess) {
        (void)cudaGetLastError();
        *dev = *host; /* unified addressing: the host pointer works on the device */
    }
    return KL_OK;
}

static void cu_host_free(void *host)
{
    if (host) cudaFreeHost(host);
}

/* Polls host memory a kernel writes; sleeps a little between polls. When the
 * stream has gone idle without the value arriving, the run that should have
 * written it failed: say so instead of waiting forever. */
static kl_status cu_wait_seq(const volatile uint64_t *seq, uint64_t want)
{
    KL_TRY(need_ready("wait"));
    for (long spin = 0;; spin++) {
        if (*seq >= want) return check_kernel_errors();
        issue_lock(); /* no query of a stream another thread is capturing */
        cudaError_t e = cudaStreamQuery(g_cu.stream);
        issue_unlock();
        if (e == cudaSuccess) {
            if (*seq >= want) return check_kernel_errors();
            KL_TRY(check_kernel_errors());
            return kl_fail(KL_EDEVICE, "cuda:%d: the device finished without writing record %llu (its run failed)",
                           g_cu.device, (unsigned long long)want);
        }
        if (e != cudaErrorNotReady) return kl_cu_fail(e, "read-back", "cudaStreamQuery", __FILE__, __LINE__);
        /* the runtime may keep "not ready" as this thread's last error (PyTorch
         * clears it after its queries): clear it, or the next launch's
         * cudaGetLastError check fails with "device not ready" */
        if (cudaPeekAtLastError() == cudaErrorNotReady) (void)cudaGetLastError();
        if (spin < 64) sched_yield();
        else usleep(20);
    }
}

/* ---- whole-run capture (CUDA graphs) ---- */

/* Thread-local mode: only this thread's unsafe calls (a sync, a cudaMalloc)
 * break the capture; the loader's and telemetry's threads go on. */
static kl_status cu_capture_begin(void)
{
    KL_TRY(need_ready("capture"));
    KL_CUDA_CHECK(cudaStreamBeginCapture(g_cu.stream, cudaStreamCaptureModeThreadLocal), "graph capture",
                  "cudaStreamBeginCapture");
    return KL_OK;
}

static kl_status cu_capture_end(void **exec)
{
    *exec = NULL;
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(g_cu.stream, &graph);
    if (e == cudaSuccess && !graph) e = cudaErrorStreamCaptureInvalidated;
    if (e != cudaSuccess) {
        if (graph) cudaGraphDestroy(graph);
        return kl_cu_fail(e, "graph capture", "cudaStreamEndCapture", __FILE__, __LINE__);
    }
    cudaGraphExec_t ge = NULL;
    e = cudaGraphInstantiate(&ge, graph, 0);
    cudaGraphDestroy(graph);
    if (e != cudaSuccess) return kl_cu_fail(e, "graph capture", "cudaGraphInstantiate", __FILE__, __LINE__);
    *exec = ge;
    return KL_OK;
}

static kl_status cu_capture_launch(void *exec)
{
    KL_CUDA_CHECK(cudaGraphLaunch((cudaGraphExec_t)exec, g_cu.stream), "graph replay", "cudaGraphLaunch");
    return KL_OK;
}

/* An executable graph still running is freed when it completes. */
static void cu_capture_free(void *exec)
{
    if (exec) cudaGraphExecDestroy((cudaGraphExec_t)exec);
}

/* ---- per-op timing while profiling: one event per point ---- */

static cudaEvent_t *g_ev;
static int g_nev;

static kl_status cu_timer_mark(int i)
{
    if (i >= g_nev) {
        int n = g_nev ? g_nev : 256;
        while (n <= i) n *= 2;
        cudaEvent_t *ev = (cudaEvent_t *)kl_realloc(g_ev, (size_t)n * sizeof *ev);
        if (!ev) return kl_fail(KL_ENOMEM, "profile: no memory for %d CUDA timing events", n);
        g_ev = ev;
        for (; g_nev < n; g_nev++) KL_CUDA_CHECK(cudaEventCreate(&g_ev[g_nev]), "profile", "cudaEventCreate");
    }
    KL_CUDA_CHECK(cudaEventRecord(g_ev[i], g_cu.stream), "profile", "cudaEventRecord");
    return KL_OK;
}

static kl_status cu_timer_read(int n, double *secs)
{
    if (n < 2 || n > g_nev) return KL_OK;
    KL_CUDA_CHECK(cudaEventSynchronize(g_ev[n - 1]), "profile", "cudaEventSynchronize");
    for (int k = 0; k + 1 < n; k++) {
        float ms = 0;
        KL_CUDA_CHECK(cudaEventElapsedTime(&ms, g_ev[k], g_ev[k + 1]), "profile", "cudaEventElapsedTime");
        secs[k] = 1e-3 * ms;
    }
    return check_kernel_errors();
}

static void cu_range_push(const char *name) { nvtxRangePushA(name); }
static void cu_range_pop(void) { nvtxRangePop(); }

/* ---- streamed batches: a copy stream, two events per slot ---- */

static cudaStream_t g_copy_stream; /* created with the first stage; lives as long as the process's device state */

typedef struct cu_stage {
    int slots;
    cudaEvent_t *copied, *released;
    unsigned char *has_copy, *has_release; /* the event was recorded at least once */
} cu_stage;

static void cu_stage_free(void *st)
{
    cu_stage *g = (cu_stage *)st;
    if (!g) return;
    /* the copies read the caller's pinned slots, freed after this returns */
    if (g_copy_stream && cudaStreamSynchronize(g_copy_stream) != cudaSuccess) (void)cudaGetLastError();
    for (int k = 0; k < g->slots; k++) {
        if (g->copied && g->copied[k]) cudaEventDestroy(g->copied[k]);
        if (g->released && g->released[k]) cudaEventDestroy(g->released[k]);
    }
    kl_free(g->copied);
    kl_free(g->released);
    kl_free(g->has_copy);
    kl_free(g->has_release);
    kl_free(g);
}

static kl_status cu_stage_new(void **out, int slots)
{
    *out = NULL;
    KL_TRY(need_ready("streamed batches"));
    issue_lock(); /* two threads' first stages make one copy stream */
    cudaError_t ce = g_copy_stream ? cudaSuccess : cudaStreamCreateWithFlags(&g_copy_stream, cudaStreamNonBlocking);
    issue_unlock();
    KL_CUDA_CHECK(ce, "streamed batches", "cudaStreamCreateWithFlags");
    cu_stage *g = (cu_stage *)kl_calloc(1, sizeof *g);
    if (!g) return KL_ENOMEM;
    g->copied = (cudaEvent_t *)kl_calloc((size_t)slots, sizeof *g->copied);
    g->released = (cudaEvent_t *)kl_calloc((size_t)slots, sizeof *g->released);
    g->has_copy = (unsigned char *)kl_calloc((size_t)slots, 1);
    g->has_release = (unsigned char *)kl_calloc((size_t)slots, 1);
    g->slots = slots;
    if (!g->copied || !g->released || !g->has_copy || !g->has_release) {
        cu_stage_free(g);
        return KL_ENOMEM;
    }
    for (int k = 0; k < slots; k++) {
        cudaError_t e = cudaEventCreateWithFlags(&g->copied[k], cudaEventDisableTiming);
        if (e == cudaSuccess) e = cudaEventCreateWithFlags(&g->released[k], cudaEventDisableTiming);
        if (e != cudaSuccess) {
            cu_stage_free(g);
            return kl_cu_fail(e, "streamed batches", "cudaEventCreateWithFlags", __FILE__, __LINE__);
        }
    }
    *out = g;
    return KL_OK;
}

static kl_status cu_stage_wait(void *st, int k)
{
    cu_stage *g = (cu_stage *)st;
    if (g->has_copy[k]) KL_CUDA_CHECK(cudaEventSynchronize(g->copied[k]), "streamed batch", "cudaEventSynchronize");
    return KL_OK;
}

static kl_status stage_h2d_issue(void *st, int k, void *dst, const void *src, size_t bytes)
{
    cu_stage *g = (cu_stage *)st;
    const char *op = "streamed batch";
    if (g->has_release[k]) KL_CUDA_CHECK(cudaStreamWaitEvent(g_copy_stream, g->released[k], 0), op, "cudaStreamWaitEvent");
    if (bytes) KL_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g_copy_stream), op, "cudaMemcpyAsync");
    KL_CUDA_CHECK(cudaEventRecord(g->copied[k], g_copy_stream), op, "cudaEventRecord");
    g->has_copy[k] = 1;
    KL_CUDA_CHECK(cudaStreamWaitEvent(g_cu.stream, g->copied[k], 0), op, "cudaStreamWaitEvent");
    return KL_OK;
}
static kl_status cu_stage_h2d(void *st, int k, void *dst, const void *src, size_t bytes)
{
    KL_CU_LOCKED(stage_h2d_issue(st, k, dst, src, bytes));
}

static kl_status stage_release_issue(void *st, int k)
{
    cu_stage *g = (cu_stage *)st;
    KL_CUDA_CHECK(cudaEventRecord(g->released[k], g_cu.stream), "streamed batch", "cudaEventRecord");
    g->has_release[k] = 1;
    return KL_OK;
}
static kl_status cu_stage_release(void *st, int k) { KL_CU_LOCKED(stage_release_issue(st, k)); }

/* Host threads other than the ctx's creator may run graphs: make the
 * device current on this one. The run holds the issue lock until end_run. */
static void cu_begin_run(int threads)
{
    (void)threads;
    issue_lock();
    if (g_cu.ready) cudaSetDevice(g_cu.device);
}

static void cu_end_run(void) { issue_unlock(); }

extern "C" const kl_backend kl_backend_cuda = {
    "cuda",           cu_alloc,        cu_free,           cu_h2d,           cu_d2h,        cu_d2d,
    cu_memset0,       cu_sync,         cu_begin_run,      cu_host_alloc,    cu_host_free,  cu_wait_seq,
    cu_capture_begin, cu_capture_end,  cu_capture_launch, cu_capture_free,  cu_timer_mark, cu_timer_read,
    cu_range_push,    cu_range_pop,    cu_stage_new,      cu_stage_free,    cu_stage_wait, cu_stage_h2d,
    cu_stage_release, cu_end_run,
};
