/* The CPU's 16-bit GEMMs (backends/cpu/gemm_half.c) against a double
 * reference on the same 16-bit values, for bf16 and f16, each transpose
 * pair, odd sizes and padded leading dimensions; and the matmul op's use of
 * them: a 16-bit matmul node takes the native path (f32 scratch for the
 * GEMM, nothing widened) exactly when kl_gemm_half_ready says so. Skipped
 * where oneDNN is absent (sanitizer builds) or cannot multiply bf16
 * (f16 is checked where it can); the widened path is covered by test_cuda_half_widen. */
#include "kiln/kiln.h"
#include "testutil.h"
#include "backends/cpu/cpu.h"
#include "core/graph.h"
#include "core/half.h"

#include <math.h>
#include <stdlib.h>

static uint16_t to_half(int dt, float v) { return dt == KL_BF16 ? kl_f32_to_bf16(v) : kl_f32_to_f16(v); }
static double of_half(int dt, uint16_t h) { return dt == KL_BF16 ? kl_bf16_to_f32(h) : kl_f16_to_f32(h); }

/* Random [rows, cols] operand stored (transposed when trans) with leading
 * dimension ld; vals gets op(X) row-major as doubles of the 16-bit values. */
static uint16_t *operand(int dt, bool trans, int64_t rows, int64_t cols, int64_t ld, double *vals, uint64_t *rng)
{
    int64_t outer = trans ? cols : rows;
    uint16_t *p = malloc(sizeof *p * (size_t)(outer * ld));
    for (int64_t i = 0; i < outer * ld; i++) p[i] = to_half(dt, 1e30f); /* padding: must not be read */
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) {
            *rng = *rng * 6364136223846793005ULL + 1442695040888963407ULL;
            float v = (float)((double)(*rng >> 11) / 9007199254740992.0 * 2.0 - 1.0);
            uint16_t h = to_half(dt, v);
            p[trans ? c * ld + r : r * ld + c] = h;
            vals[r * cols + c] = of_half(dt, h);
        }
    return p;
}

static void check_gemm(int dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K, uint64_t *rng)
{
    int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 5;
    double *av = malloc(sizeof *av * (size_t)(M * K)), *bv = malloc(sizeof *bv * (size_t)(K * N));
    uint16_t *A = operand(dt, ta, M, K, lda, av, rng), *B = operand(dt, tb, K, N, ldb, bv, rng);
    float *C = malloc(sizeof *C * (size_t)(M * N));
    char what[96];
    snprintf(what, sizeof what, "%s ta %d tb %d %lldx%lldx%lld", kl_dtype_name(dt), ta, tb, (long long)M,
             (long long)N, (long long)K);
    CHECK(kl_gemm_half_ready(dt, ta, tb, M, N, K, lda, ldb, 2));
    CHECK(kl_gemm_half(dt, ta, tb, M, N, K, A, lda, B, ldb, C, 2));
    double worst = 0, big = 0;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) {
            double ref = 0;
            for (int64_t k = 0; k < K; k++) ref += av[i * K + k] * bv[k * N + j];
            big = fmax(big, fabs(ref));
            worst = fmax(worst, fabs(C[i * N + j] - ref));
        }
    /* products of 16-bit values are exact in f32: only the f32 sums round */
    if (!(worst <= 1e-5 * big)) fprintf(stderr, "  %s: max error %.3g of %.3g\n", what, worst, big);
    CHECK(worst <= 1e-5 * big);
    free(av), free(bv), free(A), free(B), free(C);
}

/* A 16-bit linear layer on the CPU: native matmul nodes when ready. */
static void check_node(int dt)
{
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *x, *w, *b, *y;
    CHECK_OK(kl_ctx_new(&(kl_ctx_opts){.device = {KL_DEVICE_CPU, 0}, .threads = 2}, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "x", dt, 2, (int64_t[]){9, 13}, &x));
    CHECK_OK(kl_input(g, "w", dt, 2, (int64_t[]){7, 13}, &w));
    CHECK_OK(kl_input(g, "b", dt, 1, (int64_t[]){7}, &b));
    CHECK_OK(kl_linear(g, x, w, b, KL_ACT_RELU, &y));
    CHECK(y->op == KL_OP_matmul);
    bool ready = kl_gemm_half_ready(dt, false, true, 9, 7, 13, 13, 13, 2);
    CHECK(ready);
    CHECK(!kl_widen_needed(KL_BACKEND_CPU, y));
    CHECK(y->scratch_bytes == 9 * 7 * sizeof(float));
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

int main(void)
{
    if (!kl_gemm_half_ready(KL_BF16, false, false, 8, 8, 8, 8, 8, 2)) {
        printf("test_gemm_half: skipped (no oneDNN bf16 matmul here; 16-bit matmuls widen to f32)\n");
        return 77;
    }
    CHECK(!kl_gemm_half_ready(KL_F32, false, false, 8, 8, 8, 8, 8, 2)); /* f32 is BLAS's */
    uint64_t rng = 7;
    int dts[2] = {KL_BF16, KL_F16};
    for (int d = 0; d < 2; d++) {
        if (!kl_gemm_half_ready(dts[d], false, false, 8, 8, 8, 8, 8, 2)) { /* oneDNN 2 on the CPU: bf16 only */
            printf("  %s: no oneDNN matmul here (widens to f32)\n", kl_dtype_name(dts[d]));
            continue;
        }
        for (int t = 0; t < 4; t++) check_gemm(dts[d], t & 1, t >> 1, 37, 53, 71, &rng);
        check_gemm(dts[d], false, false, 1, 29, 300, &rng); /* a row vector, long K */
        check_node(dts[d]);
    }
    return kl_test_done("test_gemm_half");
}
