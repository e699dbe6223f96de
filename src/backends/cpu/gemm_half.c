/* GEMMs of 16-bit operands on the CPU (cpu.h: kl_gemm_half).
 *
 * oneDNN's matmul multiplies bf16 (or f16) operands as they are stored, on
 * AMX tiles or AVX-512 BF16 where the CPU has them, accumulating in f32
 * into an f32 result; the matmul op rounds that after its bias and
 * activation, as the GPU's cuBLASLt epilogue does. Operands are described
 * by their strides (a transposed view is a stride swap), so nothing is
 * copied or reordered. One primitive per geometry and thread count, made
 * on first use and kept for the process (kl_dnnl_cached). */
#include "backends/cpu/cpu.h"
#include "backends/cpu/dnnl_lib.h"

#include <stdlib.h>
#include <string.h>

#ifndef KL_HAVE_DNNL
bool kl_gemm_half_ready(int dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int threads)
{
    (void)dt, (void)ta, (void)tb, (void)M, (void)N, (void)K, (void)lda, (void)ldb, (void)threads;
    return false;
}
bool kl_gemm_half(int dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void *A, int64_t lda, const void *B,
                  int64_t ldb, float *C, int threads)
{
    (void)dt, (void)ta, (void)tb, (void)M, (void)N, (void)K, (void)A, (void)lda, (void)B, (void)ldb, (void)C, (void)threads;
    return false;
}
#else
#include "kiln/tensor.h" /* KL_BF16 */

#include <pthread.h>

typedef struct half_entry {
    kl_dnnl_entry h; /* failed: oneDNN has no matmul for it, the op widens instead */
    dnnl_primitive_t mm;
    dnnl_memory_t a, b, c;
} half_entry;

static struct {
    const kl_dnnl_lib *f;
    kl_dnnl_cache cache;
} g_half = {.cache = KL_DNNL_CACHE_INIT};
static pthread_once_t g_half_once = PTHREAD_ONCE_INIT;

/* oneDNN runs bf16 matmuls on CPUs without bf16 dot products too, by
 * converting inside its f32 kernels; measured on an AVX-512 CPU without
 * BF16 (2026-12-07, bench_mlp --bf16) that is 1.85x slower than the
 * widened path (f32 copies, OpenBLAS sgemm), so only CPUs with AVX-512
 * BF16 or AMX take it. KILN_HALF_GEMM: "widen", never; "native", always. */
static void half_load(void)
{
    const char *env = getenv("KILN_HALF_GEMM");
    g_half.f = env && !strcmp(env, "widen") ? NULL : kl_dnnl();
    if (!g_half.f || (env && !strcmp(env, "native"))) return;
    dnnl_cpu_isa_t isa = g_half.f->dnnl_get_effective_cpu_isa();
    if ((isa & dnnl_cpu_isa_avx512_core_bf16) != dnnl_cpu_isa_avx512_core_bf16) g_half.f = NULL;
}

#define HT(call)                                                                                   \
    do {                                                                                           \
        if ((call) != dnnl_success) return false;                                                  \
    } while (0)

/* op(X)[r][c] of a [rows, cols] operand stored with leading dimension ld:
 * X[r*ld + c], or X[c*ld + r] when stored transposed. */
static dnnl_status_t operand(const kl_dnnl_lib *f, dnnl_memory_desc_t *d, int64_t rows, int64_t cols, dnnl_data_type_t t,
                             bool trans, int64_t ld)
{
    return f->dnnl_memory_desc_init_by_strides(d, 2, (dnnl_dims_t){rows, cols}, t,
                                               trans ? (dnnl_dims_t){1, ld} : (dnnl_dims_t){ld, 1});
}

static bool entry_make(kl_dnnl_entry *h, const void *key)
{
    half_entry *e = (half_entry *)h;
    const int64_t *k = key;
    const kl_dnnl_lib *f = g_half.f;
    dnnl_data_type_t t = k[0] == KL_BF16 ? dnnl_bf16 : dnnl_f16;
    int64_t M = k[3], N = k[4], K = k[5];
    dnnl_memory_desc_t ad, bd, cd;
    HT(operand(f, &ad, M, K, t, k[1], k[6]));
    HT(operand(f, &bd, K, N, t, k[2], k[7]));
    HT(f->dnnl_memory_desc_init_by_strides(&cd, 2, (dnnl_dims_t){M, N}, dnnl_f32, (dnnl_dims_t){N, 1}));
    dnnl_matmul_desc_t md;
    HT(f->dnnl_matmul_desc_init(&md, &ad, &bd, NULL, &cd));
    dnnl_primitive_desc_t pd = NULL;
    HT(f->dnnl_primitive_desc_create(&pd, &md, NULL, f->eng, NULL));
    bool ok = f->dnnl_primitive_create(&e->mm, pd) == dnnl_success &&
              f->dnnl_memory_create(&e->a, &ad, f->eng, DNNL_MEMORY_NONE) == dnnl_success &&
              f->dnnl_memory_create(&e->b, &bd, f->eng, DNNL_MEMORY_NONE) == dnnl_success &&
              f->dnnl_memory_create(&e->c, &cd, f->eng, DNNL_MEMORY_NONE) == dnnl_success;
    f->dnnl_primitive_desc_destroy(pd);
    return ok;
}

static half_entry *entry_get(int dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb,
                             int threads)
{
    pthread_once(&g_half_once, half_load);
    if (!g_half.f || (dt != KL_BF16 && dt != KL_F16) || M < 1 || N < 1 || K < 1) return NULL;
    int64_t k[9] = {dt, ta, tb, M, N, K, lda, ldb, threads};
    return (half_entry *)kl_dnnl_cached(&g_half.cache, k, 9, sizeof(half_entry), threads, entry_make, k);
}

bool kl_gemm_half_ready(int dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int threads)
{
    return entry_get(dt, ta, tb, M, N, K, lda, ldb, threads) != NULL;
}

bool kl_gemm_half(int dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void *A, int64_t lda, const void *B,
                  int64_t ldb, float *C, int threads)
{
    half_entry *e = entry_get(dt, ta, tb, M, N, K, lda, ldb, threads);
    if (!e) return false;
    const kl_dnnl_lib *f = g_half.f;
    dnnl_exec_arg_t a[3] = {{DNNL_ARG_SRC, e->a}, {DNNL_ARG_WEIGHTS, e->b}, {DNNL_ARG_DST, e->c}};
    pthread_mutex_lock(&e->h.mu);
    bool ok = f->dnnl_memory_set_data_handle(e->a, (void *)A) == dnnl_success &&
              f->dnnl_memory_set_data_handle(e->b, (void *)B) == dnnl_success &&
              f->dnnl_memory_set_data_handle(e->c, C) == dnnl_success &&
              f->dnnl_primitive_execute(e->mm, f->st, 3, a) == dnnl_success &&
              f->dnnl_stream_wait(f->st) == dnnl_success; /* the caller reads C next */
    pthread_mutex_unlock(&e->h.mu);
    return ok;
}
#endif
