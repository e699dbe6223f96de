/* The CPU's f32 and f64 GEMMs (backends/cpu/blas.c: OpenBLAS, or oneDNN's
 * sgemm and BLIS where OpenBLAS does not know the CPU) against a double
 * reference: each transpose pair, odd and degenerate sizes, padded leading
 * dimensions (the padding must stay unread and unwritten), alpha and beta.
 * ctest runs it as it comes and with KILN_BLAS=dnnl (test_gemm_f32_dnnl),
 * which must then report oneDNN wherever oneDNN loads. */
#include "kiln/kiln.h"
#include "testutil.h"
#include "backends/backend.h"
#include "backends/cpu/cpu.h"
#include "backends/cpu/dnnl_lib.h"

#include <math.h>
#include <stdlib.h>

static double rnd(uint64_t *rng)
{
    *rng = *rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(*rng >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}

#define PAD 1e30 /* padding value: must not be read (it would swamp the result) */

/* C = alpha op(A) op(B) + beta C in type T (float or double), against the
 * double sum of the same values; tol relative to the largest |result|. */
#define CHECK_GEMM(T, fn, tol)                                                                     \
    static void check_##T(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, double beta, uint64_t *rng) \
    {                                                                                              \
        int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 1, ldc = N + 2;                       \
        int64_t na = (ta ? K : M) * lda, nb = (tb ? N : K) * ldb, nc = M * ldc;                    \
        T *A = malloc(sizeof *A * (size_t)na), *B = malloc(sizeof *B * (size_t)nb), *C = malloc(sizeof *C * (size_t)nc); \
        double *ref = malloc(sizeof *ref * (size_t)(M * N));                                       \
        for (int64_t i = 0; i < na; i++) A[i] = (T)PAD;                                            \
        for (int64_t i = 0; i < nb; i++) B[i] = (T)PAD;                                            \
        for (int64_t i = 0; i < nc; i++) C[i] = (T)-7; /* the padding of C must keep it */        \
        for (int64_t r = 0; r < M; r++)                                                            \
            for (int64_t k = 0; k < K; k++) A[ta ? k * lda + r : r * lda + k] = (T)rnd(rng);       \
        for (int64_t k = 0; k < K; k++)                                                            \
            for (int64_t c = 0; c < N; c++) B[tb ? c * ldb + k : k * ldb + c] = (T)rnd(rng);       \
        for (int64_t r = 0; r < M; r++)                                                            \
            for (int64_t c = 0; c < N; c++) C[r * ldc + c] = (T)rnd(rng);                          \
        double big = 0;                                                                            \
        for (int64_t r = 0; r < M; r++)                                                            \
            for (int64_t c = 0; c < N; c++) {                                                      \
                double s = 0;                                                                      \
                for (int64_t k = 0; k < K; k++)                                                    \
                    s += (double)A[ta ? k * lda + r : r * lda + k] * (double)B[tb ? c * ldb + k : k * ldb + c]; \
                ref[r * N + c] = alpha * s + beta * (double)C[r * ldc + c];                        \
                big = fmax(big, fabs(ref[r * N + c]));                                             \
            }                                                                                      \
        fn(ta, tb, M, N, K, (T)alpha, A, lda, B, ldb, (T)beta, C, ldc);                            \
        double worst = 0;                                                                          \
        int pad_ok = 1;                                                                            \
        for (int64_t r = 0; r < M; r++) {                                                          \
            for (int64_t c = 0; c < N; c++) worst = fmax(worst, fabs((double)C[r * ldc + c] - ref[r * N + c])); \
            for (int64_t c = N; c < ldc; c++) pad_ok &= C[r * ldc + c] == (T)-7;                   \
        }                                                                                          \
        if (!(worst <= tol * (big > 1 ? big : 1)) || !pad_ok)                                       \
            fprintf(stderr, "  " #T " ta %d tb %d %lldx%lldx%lld alpha %g beta %g: max error %.3g of %.3g%s\n", ta, \
                    tb, (long long)M, (long long)N, (long long)K, alpha, beta, worst, big,          \
                    pad_ok ? "" : ", C's padding written");                                          \
        CHECK(worst <= tol * (big > 1 ? big : 1) && pad_ok);                                       \
        free(A), free(B), free(C), free(ref);                                                      \
    }
CHECK_GEMM(float, kl_gemm_float, 2e-5)
CHECK_GEMM(double, kl_gemm_double, 1e-12)

int main(void)
{
    const char *name = kl_cpu_blas_name(), *force = getenv("KILN_BLAS");
    printf("  GEMM by %s\n", name);
#ifdef KL_HAVE_DNNL
    if (force && !strcmp(force, "dnnl") && kl_dnnl()) CHECK(strstr(name, "oneDNN") != NULL);
#else
    (void)force;
#endif
    static const int64_t sizes[][3] = {{1, 1, 1}, {1, 37, 5}, {29, 1, 7}, {5, 3, 1}, {33, 65, 17}, {128, 96, 300}, {257, 130, 64}};
    static const double ab[][2] = {{1, 0}, {0.5, 1}, {-2, 0.25}};
    uint64_t rng = 1;
    for (int s = 0; s < 7; s++)
        for (int t = 0; t < 4; t++)
            for (int k = 0; k < 3; k++) {
                check_float(t & 1, t >> 1, sizes[s][0], sizes[s][1], sizes[s][2], ab[k][0], ab[k][1], &rng);
                check_double(t & 1, t >> 1, sizes[s][0], sizes[s][1], sizes[s][2], ab[k][0], ab[k][1], &rng);
            }
    kl_blas_set_threads(1); /* one thread, as inside kiln's worker loops */
    check_float(false, true, 130, 70, 200, 1, 0, &rng);
    kl_blas_set_threads(2);
    return kl_test_done("test_gemm_f32");
}
