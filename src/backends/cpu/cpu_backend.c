/* The CPU backend: host memory, OpenMP threads for kiln's own loops and
 * OpenBLAS threads for GEMMs. */
#include "backends/backend.h"
#include "backends/cpu/cpu.h"
#include "core/error.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static kl_status cpu_alloc(void **p, size_t bytes)
{
    *p = NULL;
    if (posix_memalign(p, 256, bytes ? bytes : 256) != 0)
        return kl_fail(KL_ENOMEM, "out of host memory allocating %zu bytes", bytes);
    return KL_OK;
}

static void cpu_free(void *p) { free(p); }

static kl_status cpu_copy(void *dst, const void *src, size_t bytes)
{
    memcpy(dst, src, bytes);
    return KL_OK;
}

static kl_status cpu_memset0(void *p, size_t bytes)
{
    memset(p, 0, bytes);
    return KL_OK;
}

static kl_status cpu_sync(void) { return KL_OK; }

static kl_status cpu_host_alloc(void **host, void **dev, size_t bytes)
{
    KL_TRY(cpu_alloc(host, bytes));
    memset(*host, 0, bytes ? bytes : 256);
    *dev = *host;
    return KL_OK;
}

/* Kernels run on the calling thread: what they write is there already. */
static kl_status cpu_wait_seq(const volatile uint64_t *seq, uint64_t want)
{
    if (*seq >= want) return KL_OK;
    return kl_fail(KL_EINTERNAL, "cpu: waiting for record %llu, which no run wrote (last %llu)",
                   (unsigned long long)want, (unsigned long long)*seq);
}

/* A run takes the ctx's thread count and gives the calling thread its own
 * counts back afterwards: an embedding program's OpenMP regions and BLAS
 * calls keep the threads they had. Per thread, as OpenMP's count is. */
static _Thread_local int g_saved_omp, g_saved_blas;

static void cpu_begin_run(int threads)
{
    g_saved_omp = omp_get_max_threads();
    g_saved_blas = kl_blas_threads();
    kl_blas_set_threads(threads);
    omp_set_num_threads(threads);
}

static void cpu_end_run(void)
{
    kl_blas_set_threads(g_saved_blas); /* OpenBLAS's OpenMP build sets OpenMP's count too */
    omp_set_num_threads(g_saved_omp);
}

const kl_backend kl_backend_cpu = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .free = cpu_free,
    .h2d = cpu_copy,
    .d2h = cpu_copy,
    .d2d = cpu_copy,
    .memset0 = cpu_memset0,
    .sync = cpu_sync,
    .begin_run = cpu_begin_run,
    .end_run = cpu_end_run,
    .host_alloc = cpu_host_alloc,
    .host_free = cpu_free,
    .wait_seq = cpu_wait_seq,
};

int kl_cpu_cores(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

#ifdef KILN_HAVE_CUDA
extern const kl_backend kl_backend_cuda;
const kl_backend *const kl_backends[] = {&kl_backend_cpu, &kl_backend_cuda};
#else
const kl_backend *const kl_backends[] = {&kl_backend_cpu, NULL};
#endif
