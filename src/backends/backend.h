/* Backends behind one interface. The core asks a backend for memory, copies
 * and synchronisation; kernels are per op in the op table (kl_op_def.fwd).
 * The CUDA backend registers only in CUDA builds; core never includes a
 * CUDA header. */
#ifndef KL_BACKEND_H
#define KL_BACKEND_H

#include "kiln/status.h"
#include <stddef.h>
#include <stdint.h>

typedef struct kl_backend {
    const char *name;
    /* Memory: 256-byte aligned; free(NULL) is a no-op. */
    kl_status (*alloc)(void **p, size_t bytes);
    void (*free)(void *p);
    /* Copies are ordered with the kernels issued before and after them; the
     * host may reuse src as soon as h2d returns (also pinned src), and h2d
     * of a few KiB (per-run values, a batch offset) never waits for the
     * device. */
    kl_status (*h2d)(void *dst, const void *src, size_t bytes);
    kl_status (*d2h)(void *dst, const void *src, size_t bytes);
    kl_status (*d2d)(void *dst, const void *src, size_t bytes);
    kl_status (*memset0)(void *p, size_t bytes);
    kl_status (*sync)(void);
    /* Called before a graph runs (thread counts, streams), and end_run
     * (NULL: none) after it is issued. On CUDA every thread's work goes to
     * one stream: the pair holds the process's issue lock, so another
     * thread's kernels or copies never land inside this run's capture or
     * between two launches sharing scratch. */
    void (*begin_run)(int threads);
    /* Host memory kernels can write (pinned and mapped on CUDA): *host for
     * the host, *dev for kernels; host_free(NULL) is a no-op. */
    kl_status (*host_alloc)(void **host, void **dev, size_t bytes);
    void (*host_free)(void *host);
    /* Waits until *seq (host memory written by kernels) is >= want; fails
     * on a device error instead of waiting forever. */
    kl_status (*wait_seq)(const volatile uint64_t *seq, uint64_t want);
    /* Capture of a whole run as one replayable graph; NULL where the backend
     * has none. capture_end leaves nothing capturing, also when it fails. */
    kl_status (*capture_begin)(void);
    kl_status (*capture_end)(void **exec);
    kl_status (*capture_launch)(void *exec);
    void (*capture_free)(void *exec);
    /* Per-op timing while profiling (NULL: the host clock times ops):
     * timer_mark(i) records point i after the work issued so far;
     * timer_read(n, secs) waits and gives the n - 1 intervals between
     * points 0 .. n-1 in seconds. */
    kl_status (*timer_mark)(int i);
    kl_status (*timer_read)(int n, double *secs);
    /* Named ranges for a profiler's timeline (NVTX on CUDA); NULL: none. */
    void (*range_push)(const char *name);
    void (*range_pop)(void);
    /* Streamed batches (kl_device_data_stream_new): copies from pinned host
     * slots on a copy stream, overlapping the kernels. NULL where copies run
     * in order anyway (h2d does them). A stage holds `slots` slots:
     * stage_wait(k): the host waits for slot k's last copy, so its pinned
     * source may be rewritten; stage_h2d(k, ...): copies pinned src to dst
     * once the work issued before slot k's last stage_release is done, and
     * the work issued after it waits for the copy; stage_release(k): slot k
     * is read by the work issued so far. */
    kl_status (*stage_new)(void **stage, int slots);
    void (*stage_free)(void *stage);
    kl_status (*stage_wait)(void *stage, int slot);
    kl_status (*stage_h2d)(void *stage, int slot, void *dst, const void *src, size_t bytes);
    kl_status (*stage_release)(void *stage, int slot);
    void (*end_run)(void); /* see begin_run */
} kl_backend;

extern const kl_backend kl_backend_cpu;

/* The backend of a ctx: kl_backends[ctx->backend]; NULL where not built. */
extern const kl_backend *const kl_backends[];

/* Number of CPU cores available to this process. */
int kl_cpu_cores(void);
/* The CPU backend's GEMM library, e.g. "OpenBLAS (SkylakeX kernels)" or
 * "BLIS (...why...)" (backends/cpu/blas.c). */
const char *kl_cpu_blas_name(void);
/* What runs CUDA convolutions, e.g. "im2col + cuBLASLt" or "cuDNN 9.14.0
 * (...)" (KILN_CUDA_CONV=cudnn; backends/cuda/conv_cudnn.cu); "none" in
 * CPU-only builds. */
const char *kl_cuda_conv_engine(void);
/* Conv nodes run by cuDNN so far (0 in CPU-only builds). */
long long kl_cuda_conv_cudnn_runs(void);
/* Scratch bytes of a CUDA embedding_bwd node over P positions and V rows
 * of D values of es bytes (its sort and sums, backends/cuda/embedding.cu);
 * 0 if CUB cannot size it or in CPU-only builds. */
size_t kl_cuda_embedding_bwd_scratch(int64_t P, int64_t V, int64_t D, size_t es);
/* KL_OK if cuda:index can be used; otherwise a message saying why (no CUDA
 * in this build, no driver, no such device). */
kl_status kl_cuda_available(int index);
/* Makes cuda:index this process's CUDA device (one per process): sets it
 * current and creates kiln's stream, cuBLASLt handle and workspace. Fails
 * if another device is in use already or in CPU-only builds. */
kl_status kl_cuda_use(int index);

/* What `kiln devices` shows about one CUDA device. */
typedef struct kl_cuda_device_info {
    char name[256];
    char pci_bus_id[32]; /* "0000:3b:00.0": how NVML finds the same device */
    int major, minor; /* compute capability */
    int sm_count;
    size_t total_bytes, free_bytes;
    int driver_version, runtime_version; /* 13000 means 13.0 */
    int usable; /* this build has GPU code for it (else kl_cuda_available says why not) */
} kl_cuda_device_info;
/* Number of CUDA devices: 0 when the driver sees none. Fails with a message
 * when no driver can be loaded, and (KL_EUNSUPPORTED) in CPU-only builds. */
kl_status kl_cuda_device_count(int *n);
/* Properties and free memory of cuda:index (the device's context is created),
 * also of a device this build cannot run on (usable 0). */
kl_status kl_cuda_device_info_get(int index, kl_cuda_device_info *out);

#endif
