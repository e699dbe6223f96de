/* GEMM through OpenBLAS (Debian's OpenMP build), or oneDNN's sgemm and
 * BLIS where OpenBLAS does not know the CPU.
 *
 * OpenBLAS 0.3.21 picks its kernels by CPU model and, on a model it does
 * not know (recent Xeons among them), falls back to its SSE3 kernels
 * ("Prescott"): a third of what the same CPU gives through BLIS, which picks
 * kernels by instruction set (measured in bench/RESULTS.md). So where
 * OpenBLAS reports a pre-AVX core on a CPU with AVX2 and FMA, kiln loads
 * BLIS (libblis.so.4, Debian's libblis4-openmp) at run time and calls its
 * typed API: bli_* names, which OpenBLAS does not define, so neither library
 * interposes on the other. On such a CPU with AVX-512, f32 GEMMs go to
 * oneDNN's dnnl_sgemm instead (already loaded for convolutions): measured
 * on a 2-core AVX-512 Xeon (2026-12-07) at 200-320 GFLOP/s against BLIS's
 * 140-160 on the GPT and MLP shapes, about what OpenBLAS's own AVX-512
 * kernels give where it knows the CPU; f64 stays on BLIS (oneDNN has no
 * dgemm). dnnl_sgemm takes OpenMP's thread count (one inside kiln's worker
 * loops, where nesting is off). KILN_BLAS=openblas, blis or dnnl forces
 * the choice; without libblis.so.4 (or oneDNN) kiln stays on OpenBLAS, and
 * so do AddressSanitizer builds unless forced. */
#include "backends/cpu/cpu.h"
#include "backends/cpu/dnnl_lib.h"
#include "backends/backend.h"

#include <cblas.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void openblas_set_num_threads(int);
int openblas_get_num_threads(void);
char *openblas_get_corename(void);

/* BLIS's typed gemm: C = beta C + alpha op(A) op(B), op(A) m x k, each
 * matrix given by its row and column strides; trans 0 or 8 (BLIS_TRANSPOSE);
 * dim_t and inc_t are 64-bit. */
typedef void (*bli_sgemm_fn)(int ta, int tb, long m, long n, long k, const float *alpha, const float *a, long rsa,
                             long csa, const float *b, long rsb, long csb, const float *beta, float *c, long rsc,
                             long csc);
typedef void (*bli_dgemm_fn)(int ta, int tb, long m, long n, long k, const double *alpha, const double *a, long rsa,
                             long csa, const double *b, long rsb, long csb, const double *beta, double *c, long rsc,
                             long csc);
#define BLI_TRANS 8

static struct {
#ifdef KL_HAVE_DNNL
    const kl_dnnl_lib *dnnl; /* f32 GEMMs by dnnl_sgemm */
#endif
    bli_sgemm_fn sgemm;
    bli_dgemm_fn dgemm;
    void (*set_threads)(long);
    int threads;
    char name[160];
} g_blas;
static pthread_once_t g_blas_once = PTHREAD_ONCE_INIT;

/* OpenBLAS's cores without AVX: what it falls back to on CPUs it does not know. */
static int pre_avx_core(const char *core)
{
    static const char *const old[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem", "Atom",
                                      "Katmai", "Coppermine", "Northwood", "Banias", "Opteron", "Opteron_SSE3",
                                      "Barcelona", "Nano", "generic", NULL};
    for (int i = 0; core && old[i]; i++)
        if (!strcmp(core, old[i])) return 1;
    return 0;
}

#ifdef KL_HAVE_DNNL
static bool kl_blas_dnnl(void) { return g_blas.dnnl != NULL; }
#else
static bool kl_blas_dnnl(void) { return false; }
#endif

static void blas_choose(void)
{
    const char *core = openblas_get_corename(), *force = getenv("KILN_BLAS");
    snprintf(g_blas.name, sizeof g_blas.name, "OpenBLAS (%s kernels)", core ? core : "?");
    int fallback = pre_avx_core(core) && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int want = force ? !strcmp(force, "blis") || !strcmp(force, "dnnl") : fallback;
#if defined(__SANITIZE_ADDRESS__)
    /* LeakSanitizer's end-of-run scan crashes with BLIS loaded: sanitizer
     * builds stay on OpenBLAS unless told */
    want = force && !strcmp(force, "blis");
#endif
    if (!want) return;
#ifdef KL_HAVE_DNNL
    if (force ? !strcmp(force, "dnnl") : __builtin_cpu_supports("avx512f")) g_blas.dnnl = kl_dnnl();
    if (force && !strcmp(force, "dnnl") && !g_blas.dnnl)
        fprintf(stderr, "kiln: KILN_BLAS=dnnl, but oneDNN could not be loaded\n");
#endif
    const char *why = force ? (!strcmp(force, "dnnl") ? "KILN_BLAS=dnnl" : "KILN_BLAS=blis")
                            : "OpenBLAS knows this CPU only by its SSE3 kernels";
    if (kl_blas_dnnl()) snprintf(g_blas.name, sizeof g_blas.name, "oneDNN, f64 by OpenBLAS (%s)", why);
    void *h = dlopen("libblis.so.4", RTLD_NOW | RTLD_LOCAL);
    void *fs = h ? dlsym(h, "bli_sgemm") : NULL, *fd = h ? dlsym(h, "bli_dgemm") : NULL,
         *ft = h ? dlsym(h, "bli_thread_set_num_threads") : NULL;
    if (!fs || !fd || !ft) {
        if (force && !strcmp(force, "blis"))
            fprintf(stderr, "kiln: KILN_BLAS=blis, but libblis.so.4 could not be loaded; using OpenBLAS\n");
        if (h) dlclose(h);
        return;
    }
    /* object-to-function pointer conversions through memcpy (ISO C) */
    memcpy(&g_blas.sgemm, &fs, sizeof fs);
    memcpy(&g_blas.dgemm, &fd, sizeof fd);
    memcpy(&g_blas.set_threads, &ft, sizeof ft);
    g_blas.threads = openblas_get_num_threads();
    g_blas.set_threads(g_blas.threads);
    if (kl_blas_dnnl()) snprintf(g_blas.name, sizeof g_blas.name, "oneDNN, f64 by BLIS (%s)", why);
    else snprintf(g_blas.name, sizeof g_blas.name, "BLIS (%s)", why);
}

static void blas_init(void) { pthread_once(&g_blas_once, blas_choose); }

const char *kl_cpu_blas_name(void)
{
    blas_init();
    return g_blas.name;
}

void kl_blas_set_threads(int n)
{
    blas_init();
    if (g_blas.sgemm) {
        if (n != g_blas.threads) g_blas.set_threads(n);
        g_blas.threads = n;
    } else {
        openblas_set_num_threads(n);
    }
}

int kl_blas_threads(void)
{
    blas_init();
    return g_blas.sgemm ? g_blas.threads : openblas_get_num_threads();
}

/* Row-major operands: the stored matrix's strides are (ld, 1) whether or not
 * it is transposed. */
void kl_gemm_float(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                   const float *B, int64_t ldb, float beta, float *C, int64_t ldc)
{
    blas_init();
#ifdef KL_HAVE_DNNL
    if (g_blas.dnnl && g_blas.dnnl->dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C,
                                               ldc) == dnnl_success)
        return; /* (a failure, which oneDNN reports only for bad arguments, goes on to BLIS) */
#endif
    if (g_blas.sgemm) {
        g_blas.sgemm(ta ? BLI_TRANS : 0, tb ? BLI_TRANS : 0, M, N, K, &alpha, A, lda, 1, B, ldb, 1, &beta, C, ldc, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N,
                (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

void kl_gemm_double(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double *A, int64_t lda,
                    const double *B, int64_t ldb, double beta, double *C, int64_t ldc)
{
    blas_init();
    if (g_blas.dgemm) {
        g_blas.dgemm(ta ? BLI_TRANS : 0, tb ? BLI_TRANS : 0, M, N, K, &alpha, A, lda, 1, B, ldb, 1, &beta, C, ldc, 1);
        return;
    }
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N,
                (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}
