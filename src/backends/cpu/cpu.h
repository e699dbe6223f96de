/* CPU kernel helpers: BLAS wrappers and parallel-loop thresholds. */
#ifndef KL_CPU_H
#define KL_CPU_H

#include <stdbool.h>
#include <stdint.h>

/* Below this many elements a loop runs on one thread (thread start costs more). */
#define KL_PAR_MIN 32768

void kl_blas_set_threads(int n);
int kl_blas_threads(void);

/* C[M,N] = alpha * op(A) op(B) + beta * C, row-major, for float and double.
 * ta/tb: operand stored transposed. */
void kl_gemm_float(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                   const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
void kl_gemm_double(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double *A, int64_t lda,
                    const double *B, int64_t ldb, double beta, double *C, int64_t ldc);

#endif
