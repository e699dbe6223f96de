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

/* Many GEMMs with one fixed right operand: C_s = op(B) applied to A_s,
 * C_s = A_s op(B) + beta C_s (beta 0 or 1), for the recurrent weights of an
 * RNN across its time steps. f32 goes through oneDNN's matmul when it is
 * loaded, with B reordered into the primitive's layout once per
 * kl_gemm_rep_begin instead of packed again by every GEMM (1.6x faster on
 * an LSTM's per-step GEMMs, bench/RESULTS.md); f64, KILN_RNN_GEMM=blas and
 * machines without oneDNN take kl_gemm_* per call. Results are the same
 * from run to run. Not thread-safe on one kl_gemm_rep; begin and end pair. */
typedef struct kl_gemm_rep {
    struct kl_rep_entry *e; /* the oneDNN primitive, locked from begin to end; NULL: BLAS */
    bool tb;
    int64_t M, N, K, lda, ldb, ldc;
    double beta;
    const void *B;
} kl_gemm_rep;
void kl_gemm_rep_begin(kl_gemm_rep *r, int threads, int is_f32, bool tb, int64_t M, int64_t N, int64_t K,
                       const void *B, int64_t ldb, int64_t lda, int64_t ldc, double beta);
void kl_gemm_rep_float(kl_gemm_rep *r, const float *A, float *C);
void kl_gemm_rep_double(kl_gemm_rep *r, const double *A, double *C);
void kl_gemm_rep_end(kl_gemm_rep *r);

/* C[M,N] = op(A) op(B) for bf16 or f16 operands (dt: KL_BF16 / KL_F16),
 * into a contiguous f32 C, through oneDNN's matmul (AMX or AVX-512 BF16
 * where the CPU has them), f32 accumulation. kl_gemm_half_ready says
 * whether that geometry has a primitive (oneDNN loaded and able, the CPU
 * with AVX-512 BF16 or AMX or KILN_HALF_GEMM "native", and KILN_HALF_GEMM
 * not "widen"); kl_gemm_half returns false where not, or
 * when the run fails. Thread-safe. */
bool kl_gemm_half_ready(int dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K, int64_t lda, int64_t ldb, int threads);
bool kl_gemm_half(int dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void *A, int64_t lda, const void *B,
                  int64_t ldb, float *C, int threads);

#endif
