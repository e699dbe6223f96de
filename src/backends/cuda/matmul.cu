/* matmul on cuBLASLt: y[..., M, N] = act(a[..., M, K] @ b[..., K, N] + bias).
 *
 * Row-major through column-major cuBLASLt: y^T = b^T a^T, so Lt's A is kiln's
 * b, Lt's B is kiln's a and D (N x M, ld N) is y as stored. A transposed
 * view (gemm_layout's trans flag) becomes Lt's transpose op, no copy.
 * f32 uses TF32 tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32: inputs rounded to
 * 10-bit mantissas, f32 accumulation) unless KILN_TF32=0 (or the heuristic
 * has no TF32 kernel for the operands' alignment); f64 is exact FP64;
 * bf16 and f16 operands run on tensor cores with f32 accumulation and f32
 * scalars, the output rounded once (as the CPU's widened path).
 * Bias and ReLU ride on the epilogue (all but f64, the bias in the output's
 * type); other activations, and f64's bias, run as one extra elementwise
 * kernel. So a 16-bit output with tanh, sigmoid or GELU is rounded twice
 * (after the bias epilogue, after the activation), where the CPU rounds
 * once: they may differ by one 16-bit ulp.
 *
 * Plans (descriptors, layouts and the heuristic's algorithm) are cached by
 * GEMM shape, layout, epilogue and pointer alignment: the heuristic runs
 * once per distinct GEMM, at the graph's first run (before any capture). */
#include "backends/cuda/cuda_internal.cuh"
#include "ops/elem.h"

#include <cublasLt.h>
#include <pthread.h>
#include <stdint.h>

typedef struct gemm_key {
    int dtype, tf32, epi;
    int op_a, op_b;             /* Lt transpose ops of Lt's A (kiln b) and B (kiln a) */
    int64_t M, N, K, lda, ldb, ldy; /* kiln's view: a [M,K] ld lda, b [K,N] ld ldb, y [M,N] ld ldy */
    int64_t batch, sa, sb, sy;  /* strided batch (batch 1: none) */
    unsigned align_a, align_b, align_y, align_bias;
} gemm_key;

typedef struct gemm_plan {
    gemm_key key;
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t la, lb, ly; /* Lt's A (b), Lt's B (a), C = D (y) */
    cublasLtMatmulAlgo_t algo;
    size_t ws;
} gemm_plan;

static gemm_plan **g_plans; /* each allocated once: pointers stay valid */
static int g_nplans, g_capplans;
static pthread_mutex_t g_plan_lock = PTHREAD_MUTEX_INITIALIZER;

static kl_status lt_fail(cublasStatus_t s, const kl_tensor *t, const char *call)
{
    return kl_fail(KL_EDEVICE, "matmul %s: %s on cuda:%d failed: %s (%s)", kl_desc(t), call, kl_cu_device(),
                   cublasLtGetStatusString(s), cublasLtGetStatusName(s));
}

#define LT_CHECK(call, t)                                          \
    do {                                                           \
        cublasStatus_t lt_s_ = (call);                             \
        if (lt_s_ != CUBLAS_STATUS_SUCCESS) return lt_fail(lt_s_, t, #call); \
    } while (0)

static void plan_destroy(gemm_plan *p)
{
    if (p->la) cublasLtMatrixLayoutDestroy(p->la);
    if (p->lb) cublasLtMatrixLayoutDestroy(p->lb);
    if (p->ly) cublasLtMatrixLayoutDestroy(p->ly);
    if (p->desc) cublasLtMatmulDescDestroy(p->desc);
}

static kl_status layout(cublasLtMatrixLayout_t *l, cudaDataType dt, int64_t rows, int64_t cols, int64_t ld, int64_t batch,
                        int64_t stride, const kl_tensor *t)
{
    LT_CHECK(cublasLtMatrixLayoutCreate(l, dt, (uint64_t)rows, (uint64_t)cols, ld), t);
    if (batch > 1) {
        int32_t bc = (int32_t)batch;
        LT_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof bc), t);
        LT_CHECK(cublasLtMatrixLayoutSetAttribute(*l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride), t);
    }
    return KL_OK;
}

/* p->desc for k with compute type ct: ops, epilogue, bias pointer. */
static kl_status desc_make(const gemm_key *k, cublasComputeType_t ct, const void *bias, const kl_tensor *t, gemm_plan *p)
{
    bool f64 = k->dtype == KL_F64;
    LT_CHECK(cublasLtMatmulDescCreate(&p->desc, ct, f64 ? CUDA_R_64F : CUDA_R_32F), t); /* scalars: f32 but for f64 */
    int32_t opa = k->op_a, opb = k->op_b;
    LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa), t);
    LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb), t);
    uint32_t epi = (uint32_t)k->epi;
    LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi), t);
    if (bias) /* the heuristic reads the pointer for its alignment */
        LT_CHECK(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias), t);
    return KL_OK;
}

/* The heuristic's best algorithm for p's descriptors (*n = 0: none). */
static kl_status algo_find(const gemm_key *k, const kl_tensor *t, gemm_plan *p, int *n)
{
    size_t ws_max;
    kl_cu_workspace(&ws_max);
    cublasLtMatmulPreference_t pref;
    LT_CHECK(cublasLtMatmulPreferenceCreate(&pref), t);
    uint64_t wsb = ws_max;
    uint32_t al[4] = {k->align_b, k->align_a, k->align_y, k->align_y}; /* Lt's A, B, C, D */
    cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &wsb, sizeof wsb);
    for (int i = 0; i < 4 && s == CUBLAS_STATUS_SUCCESS; i++)
        s = cublasLtMatmulPreferenceSetAttribute(pref, (cublasLtMatmulPreferenceAttributes_t)(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES + i),
                                                 &al[i], sizeof al[i]);
    cublasLtMatmulHeuristicResult_t res;
    *n = 0;
    if (s == CUBLAS_STATUS_SUCCESS)
        s = cublasLtMatmulAlgoGetHeuristic((cublasLtHandle_t)kl_cu_lt(), p->desc, p->la, p->lb, p->ly, p->ly, pref, 1, &res, n);
    cublasLtMatmulPreferenceDestroy(pref);
    if (s != CUBLAS_STATUS_SUCCESS) return lt_fail(s, t, "cublasLtMatmulAlgoGetHeuristic");
    if (*n > 0) {
        p->algo = res.algo;
        p->ws = res.workspaceSize;
    }
    return KL_OK;
}

/* Descriptors and the heuristic's best algorithm for k. */
static kl_status plan_make(const gemm_key *k, const void *bias, const kl_tensor *t, gemm_plan *p)
{
    memset(p, 0, sizeof *p);
    p->key = *k;
    bool f64 = k->dtype == KL_F64;
    cudaDataType dt = f64 ? CUDA_R_64F : k->dtype == KL_BF16 ? CUDA_R_16BF : k->dtype == KL_F16 ? CUDA_R_16F : CUDA_R_32F;
    /* Lt's A = b^T as stored: N x K (ld ldb) unless b is a transposed view (K x N, op T) */
    if (k->op_a == CUBLAS_OP_N) KL_TRY(layout(&p->la, dt, k->N, k->K, k->ldb, k->batch, k->sb, t));
    else KL_TRY(layout(&p->la, dt, k->K, k->N, k->ldb, k->batch, k->sb, t));
    /* Lt's B = a^T as stored: K x M (ld lda) unless a is a transposed view (M x K, op T) */
    if (k->op_b == CUBLAS_OP_N) KL_TRY(layout(&p->lb, dt, k->K, k->M, k->lda, k->batch, k->sa, t));
    else KL_TRY(layout(&p->lb, dt, k->M, k->K, k->lda, k->batch, k->sa, t));
    KL_TRY(layout(&p->ly, dt, k->N, k->M, k->ldy, k->batch, k->sy, t));

    cublasComputeType_t ct = f64 ? CUBLAS_COMPUTE_64F : k->tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    int n;
    KL_TRY(desc_make(k, ct, bias, t, p));
    KL_TRY(algo_find(k, t, p, &n));
    if (n < 1 && k->tf32) { /* TF32 kernels want aligned operands (a recurrent step's rows may not be): full f32 */
        cublasLtMatmulDescDestroy(p->desc);
        p->desc = NULL;
        KL_TRY(desc_make(k, CUBLAS_COMPUTE_32F, bias, t, p));
        KL_TRY(algo_find(k, t, p, &n));
    }
    if (n < 1)
        return kl_fail(KL_EUNSUPPORTED, "matmul %s: cuBLASLt has no algorithm for M %lld N %lld K %lld (%s, epilogue %d, "
                       "alignment %u/%u/%u bytes) on cuda:%d", kl_desc(t), (long long)k->M, (long long)k->N,
                       (long long)k->K, k->tf32 ? "f32 tf32" : kl_dtype_name((kl_dtype)k->dtype), k->epi, k->align_a, k->align_b,
                       k->align_y, kl_cu_device());
    return KL_OK;
}

/* The cached plan for k (made on first use). */
static kl_status plan_get(const gemm_key *k, const void *bias, const kl_tensor *t, const gemm_plan **out)
{
    pthread_mutex_lock(&g_plan_lock);
    for (int i = 0; i < g_nplans; i++)
        if (!memcmp(&g_plans[i]->key, k, sizeof *k)) {
            *out = g_plans[i];
            pthread_mutex_unlock(&g_plan_lock);
            return KL_OK;
        }
    kl_status s = KL_OK;
    if (g_nplans == g_capplans) {
        int ncap = g_capplans ? 2 * g_capplans : 32;
        gemm_plan **np = (gemm_plan **)kl_realloc(g_plans, (size_t)ncap * sizeof *np);
        if (!np) s = KL_ENOMEM;
        else g_plans = np, g_capplans = ncap;
    }
    gemm_plan *p = s == KL_OK ? (gemm_plan *)kl_calloc(1, sizeof *p) : NULL;
    if (s == KL_OK && !p) s = KL_ENOMEM;
    if (s == KL_OK) s = plan_make(k, bias, t, p);
    if (s == KL_OK) {
        g_plans[g_nplans++] = p;
        *out = p;
    } else if (p) {
        plan_destroy(p);
        kl_free(p);
    }
    pthread_mutex_unlock(&g_plan_lock);
    return s;
}

/* ---- one GEMM (or a strided batch of them) ---- */

/* Largest power of two <= 256 dividing v. */
static unsigned align_of(uint64_t v)
{
    unsigned a = 256;
    while (a > 1 && v % a) a >>= 1;
    return a;
}

extern "C" kl_status kl_cu_gemm_run(const kl_tensor *t, const kl_cu_gemm *g)
{
    if (g->dt != KL_F32 && g->dt != KL_F64 && g->dt != KL_BF16 && g->dt != KL_F16)
        return kl_fail(KL_EUNSUPPORTED, "%s: no CUDA GEMM for %s", kl_ops[t->op]->name, kl_desc(t));
    bool f32 = g->dt == KL_F32, f64 = g->dt == KL_F64;
    size_t es = kl_dtype_size(g->dt);
    gemm_key k;
    memset(&k, 0, sizeof k); /* padding too: keys are compared with memcmp */
    k.dtype = g->dt;
    k.tf32 = f32 && kl_cu_tf32();
    k.M = g->M, k.N = g->N, k.K = g->K;
    k.lda = g->lda, k.ldb = g->ldb, k.ldy = g->ldy;
    k.op_a = g->tb ? CUBLAS_OP_T : CUBLAS_OP_N; /* Lt's A is kiln's b */
    k.op_b = g->ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    bool bias = !f64 && g->bias, relu = !f64 && g->relu;
    k.epi = bias && relu ? CUBLASLT_EPILOGUE_RELU_BIAS
            : bias       ? CUBLASLT_EPILOGUE_BIAS
            : relu       ? CUBLASLT_EPILOGUE_RELU
                         : CUBLASLT_EPILOGUE_DEFAULT;
    k.batch = g->batch > 1 ? g->batch : 1;
    if (k.batch > 1) k.sa = g->sa, k.sb = g->sb, k.sy = g->sy;
    uint64_t ga = (uintptr_t)g->a, gb = (uintptr_t)g->b, gy = (uintptr_t)g->y;
    if (k.batch > 1) { /* every matrix of the batch shares the alignment */
        ga |= (uint64_t)(k.sa * (int64_t)es);
        gb |= (uint64_t)(k.sb * (int64_t)es);
        gy |= (uint64_t)(k.sy * (int64_t)es);
    }
    k.align_a = align_of(ga);
    k.align_b = align_of(gb);
    k.align_y = align_of(gy);
    k.align_bias = bias ? align_of((uintptr_t)g->bias) : 0;

    const gemm_plan *p;
    KL_TRY(plan_get(&k, bias ? g->bias : NULL, t, &p));
    size_t ws_bytes;
    void *ws = kl_cu_workspace(&ws_bytes);
    /* host scalars: their values are read at the call (and baked into a captured graph) */
    float alpha_f = 1, beta_f = (float)g->beta;
    double alpha_d = 1, beta_d = g->beta;
    const void *alpha = !f64 ? (const void *)&alpha_f : (const void *)&alpha_d;
    const void *beta = !f64 ? (const void *)&beta_f : (const void *)&beta_d;
    /* the bias pointer lives in the plan's shared descriptor: set and used
     * under the lock, so another thread's GEMM of this shape cannot swap it */
    pthread_mutex_lock(&g_plan_lock);
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
    if (bias) st = cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &g->bias, sizeof g->bias);
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmul((cublasLtHandle_t)kl_cu_lt(), p->desc, alpha, g->b, p->la, g->a, p->lb, beta, g->y, p->ly, g->y,
                            p->ly, &p->algo, ws, p->ws, kl_cu_stream());
    pthread_mutex_unlock(&g_plan_lock);
    if (st != CUBLAS_STATUS_SUCCESS) return lt_fail(st, t, bias ? "cublasLtMatmul (bias epilogue)" : "cublasLtMatmul");
    return KL_OK;
}

/* ---- the matmul op: kiln's operand layout (as the CPU kernel in src/ops/matmul.c) ---- */

static void gemm_layout(const kl_tensor *t, int *trans, int64_t *ld)
{
    int n = t->ndim;
    int64_t rows = t->ne[n - 2], cols = t->ne[n - 1];
    if (t->st[n - 1] == 1 && (rows == 1 || t->st[n - 2] >= cols)) {
        *trans = 0;
        *ld = rows == 1 ? (cols > 0 ? cols : 1) : t->st[n - 2];
    } else {
        *trans = 1;
        *ld = cols == 1 ? (rows > 0 ? rows : 1) : t->st[n - 1];
    }
}

static void batch_strides(const kl_tensor *t, const kl_tensor *x, int64_t *st)
{
    int nb = t->ndim - 2, xb = x->ndim - 2;
    for (int i = 0; i < nb; i++) {
        int ix = i - (nb - xb);
        st[i] = (ix >= 0 && x->ne[ix] == t->ne[i]) ? x->st[ix] : 0;
    }
}


extern "C" kl_status kl_cuda_matmul(const kl_exec *ex, const kl_tensor *t)
{
    const kl_tensor *a = t->src[0], *b = t->src[1], *bt = t->n_src > 2 ? t->src[2] : NULL;
    if (t->dtype != KL_F32 && t->dtype != KL_F64 && t->dtype != KL_BF16 && t->dtype != KL_F16)
        return kl_fail(KL_EUNSUPPORTED, "matmul: no CUDA kernel for %s", kl_desc(t));
    int n = t->ndim, act = KL_ATTR_C(t, matmul_attr)->act;
    size_t es = kl_dtype_size(t->dtype);
    bool epi = t->dtype != KL_F64; /* cuBLASLt's bias/ReLU epilogue */
    kl_cu_gemm g;
    memset(&g, 0, sizeof g);
    g.dt = t->dtype;
    g.M = t->ne[n - 2];
    g.N = t->ne[n - 1];
    g.K = a->ne[a->ndim - 1];
    g.ldy = g.N;
    gemm_layout(a, &g.ta, &g.lda);
    gemm_layout(b, &g.tb, &g.ldb);
    /* epilogue: bias fused but for f64; the activation afterwards, ReLU
     * too: cuBLASLt documents its ReLU epilogue as max(x, 0), which need
     * not keep NaN as kiln's ReLU does (ops/elem.h: the loss must see a NaN
     * for the guard to halt before a NaN gradient is applied). gemm_run
     * keeps the ReLU epilogues for when a GPU test shows they keep NaN. */
    const void *bias = bt ? kl_data(ex, bt) : NULL;
    g.bias = epi ? bias : NULL;
    g.relu = false;
    int post_kind = g.relu ? -1 : kl_act_unary(act);
    const void *post_bias = g.bias ? NULL : bias;

    /* batch dims: one strided-batched call when they collapse to one dim
     * (an operand broadcast over it has batch stride 0, which cuBLASLt
     * reads as the same matrix for every product), else a call per matrix */
    const unsigned char *A = (const unsigned char *)kl_data(ex, a), *B = (const unsigned char *)kl_data(ex, b);
    unsigned char *Y = (unsigned char *)kl_data(ex, t);
    int64_t st[3][8];
    memset(st, 0, sizeof st);
    for (int i = 0; i < n - 2; i++) st[0][i] = t->st[i];
    batch_strides(t, a, st[1]);
    batch_strides(t, b, st[2]);
    kl_cu_iter it = kl_cu_iter_make(n - 2, t->ne, 3, (const int64_t(*)[8])st);
    bool one_call = it.n == 1 || (it.ndim == 1 && it.st[0][0]);
    g.batch = one_call ? it.n : 1;
    if (g.batch > 1) g.sy = it.st[0][0], g.sa = it.st[1][0], g.sb = it.st[2][0];
    int64_t calls = one_call ? 1 : it.n;
    for (int64_t c = 0; c < calls; c++) {
        int64_t o[3] = {0, 0, 0};
        if (!one_call) { /* offsets of matrix c (row-major over the batch dims) */
            int64_t rem = c;
            for (int d = it.ndim - 1; d >= 0; d--) {
                int64_t i = rem % it.ne[d];
                rem /= it.ne[d];
                for (int q = 0; q < 3; q++) o[q] += i * it.st[q][d];
            }
        }
        g.a = A + o[1] * (int64_t)es;
        g.b = B + o[2] * (int64_t)es;
        g.y = Y + o[0] * (int64_t)es;
        KL_TRY(kl_cu_gemm_run(t, &g));
    }
    if (post_kind >= 0 || post_bias) KL_TRY(kl_cu_bias_act(t, Y, post_bias, kl_numel(t) / g.N, g.N, post_kind));
    return KL_OK;
}
