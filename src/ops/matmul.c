/* Matrix product with optional bias and fused activation:
 *   y[..., M, N] = act(a[..., M, K] @ b[..., K, N] + bias[N])
 * Each matrix operand may be row-major or transposed (a permuted view), which
 * maps onto GEMM's transpose flags without a copy. Batch dims broadcast.
 * Backward: dz = act'(y) * dy; da = dz @ b^T; db = a^T @ dz (for a transposed
 * weight view, dW = dz^T @ a is produced directly in W's layout, as Linear
 * needs); dbias = sum of dz over rows. */
#include "ops/ops.h"
#include "ops/elem.h"
#include "backends/cpu/cpu.h"
#include "backends/cpu/iter.h"
#include "core/half.h"

#include "ops/attrs.h" /* the attribute structs */

/* Whether GEMM can read this matrix as is: row-major or transposed. */
static bool gemm_ready(const kl_tensor *t)
{
    int n = t->ndim;
    if (t->ne[n - 1] == 1 || t->ne[n - 2] == 1) return kl_is_contiguous(t) || t->st[n - 1] == 1 || t->st[n - 2] == 1;
    return (t->st[n - 1] == 1 && t->st[n - 2] >= t->ne[n - 1]) || (t->st[n - 2] == 1 && t->st[n - 1] >= t->ne[n - 2]);
}

/* GEMM transpose flag and leading dimension of a matrix view. */
static void gemm_layout(const kl_tensor *t, bool *trans, int64_t *ld)
{
    int n = t->ndim;
    int64_t rows = t->ne[n - 2], cols = t->ne[n - 1];
    if (t->st[n - 1] == 1 && (rows == 1 || t->st[n - 2] >= cols)) {
        *trans = false;
        *ld = rows == 1 ? (cols > 0 ? cols : 1) : t->st[n - 2];
    } else {
        *trans = true;
        *ld = cols == 1 ? (rows > 0 ? rows : 1) : t->st[n - 1];
    }
}

static bool cpu_half_gemm(const kl_tensor *t, int threads);

static kl_status matmul_shape(kl_tensor *t)
{
    const kl_tensor *a = t->src[0], *b = t->src[1], *bias = t->n_src > 2 ? t->src[2] : NULL;
    if (a->dtype != b->dtype || !kl_is_float(a->dtype))
        return kl_fail(KL_EINVAL, "matmul: dtypes must match and be floating-point: %s x %s", kl_desc(a), kl_desc(b));
    if (a->ndim < 2 || b->ndim < 2)
        return kl_fail(KL_EINVAL, "matmul: both operands need >= 2 dims: %s x %s", kl_desc(a), kl_desc(b));
    int64_t M = a->ne[a->ndim - 2], K = a->ne[a->ndim - 1], N = b->ne[b->ndim - 1];
    if (b->ne[b->ndim - 2] != K)
        return kl_fail(KL_EINVAL, "matmul: inner dims differ: %s x %s", kl_desc(a), kl_desc(b));
    int n = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int i = 0; i < n - 2; i++) {
        int ia = i - (n - a->ndim), ib = i - (n - b->ndim);
        int64_t da = ia >= 0 ? a->ne[ia] : 1, db = ib >= 0 ? b->ne[ib] : 1;
        if (da != db && da != 1 && db != 1)
            return kl_fail(KL_EINVAL, "matmul: batch dims do not broadcast: %s x %s", kl_desc(a), kl_desc(b));
        t->ne[i] = da > db ? da : db;
    }
    t->ne[n - 2] = M;
    t->ne[n - 1] = N;
    t->ndim = n;
    t->dtype = a->dtype;
    if (bias && (bias->ndim != 1 || bias->ne[0] != N || bias->dtype != a->dtype || !kl_is_contiguous(bias)))
        return kl_fail(KL_EINVAL, "matmul: bias must be contiguous [%lld] %s, got %s", (long long)N,
                       kl_dtype_name(a->dtype), kl_desc(bias));
    if (t->g->ctx->backend == KL_BACKEND_CPU && cpu_half_gemm(t, t->g->ctx->threads))
        t->scratch_bytes = (size_t)kl_numel(t) * sizeof(float); /* the GEMMs' f32 results */
    return KL_OK;
}

/* Operand k's strides over the output's batch dims (0 where broadcast). */
static void batch_strides(const kl_tensor *t, const kl_tensor *x, int64_t *st)
{
    int nb = t->ndim - 2, xb = x->ndim - 2;
    for (int i = 0; i < nb; i++) {
        int ix = i - (nb - xb);
        st[i] = (ix >= 0 && x->ne[ix] == t->ne[i]) ? x->st[ix] : 0;
    }
}

/* One GEMM's geometry: every matrix of a (batched) matmul shares it. */
typedef struct {
    int64_t M, N, K, lda, ldb;
    bool ta, tb;
} gemm_geom;

static gemm_geom geom_of(const kl_tensor *t)
{
    const kl_tensor *a = t->src[0], *b = t->src[1];
    gemm_geom g = {.M = t->ne[t->ndim - 2], .N = t->ne[t->ndim - 1], .K = a->ne[a->ndim - 1]};
    gemm_layout(a, &g.ta, &g.lda);
    gemm_layout(b, &g.tb, &g.ldb);
    return g;
}

/* Calls f(u, y, a, b) with the element offsets of each matrix of the
 * output and of the operands (broadcast over batch dims); false stops. */
static bool each_matrix(const kl_tensor *t, bool (*f)(void *u, int64_t y, int64_t a, int64_t b), void *u)
{
    int n = t->ndim;
    int64_t st[3][8] = {{0}};
    for (int i = 0; i < n - 2; i++) st[0][i] = t->st[i];
    batch_strides(t, t->src[0], st[1]);
    batch_strides(t, t->src[1], st[2]);
    kl_iter it;
    kl_iter_init(&it, n - 2, t->ne, 3, (const int64_t(*)[8])st);
    for (int64_t r = 0; r < it.rows; r++) {
        int64_t o[3];
        kl_iter_row(&it, r, o);
        for (int64_t i = 0; i < it.inner; i++)
            if (!f(u, o[0] + i * it.st[0][it.ndim - 1], o[1] + i * it.st[1][it.ndim - 1], o[2] + i * it.st[2][it.ndim - 1]))
                return false;
    }
    return true;
}

/* y = act(y + bias) over the output's rows. The 16-bit path reads its f32
 * GEMM results from W and rounds each element once, into Y. */
#define MATMUL_KERNEL(T)                                                                           \
    typedef struct {                                                                               \
        gemm_geom g;                                                                               \
        const T *A, *B;                                                                            \
        T *Y;                                                                                      \
    } gemm_##T;                                                                                    \
    static bool gemm_one_##T(void *u, int64_t y, int64_t a, int64_t b)                             \
    {                                                                                              \
        gemm_##T *m = u;                                                                           \
        kl_gemm_##T(m->g.ta, m->g.tb, m->g.M, m->g.N, m->g.K, 1, m->A + a, m->g.lda, m->B + b, m->g.ldb, 0, \
                    m->Y + y, m->g.N);                                                             \
        return true;                                                                               \
    }                                                                                              \
    static void matmul_cpu_##T(const kl_tensor *t, const T *A, const T *B, const T *bias, T *Y)   \
    {                                                                                              \
        gemm_##T m = {geom_of(t), A, B, Y};                                                        \
        each_matrix(t, gemm_one_##T, &m);                                                          \
        int act = KL_ATTR_C(t, matmul_attr)->act;                                                  \
        if (!bias && act == KL_ACT_NONE) return;                                                   \
        int64_t N = m.g.N, rows = kl_numel(t) / N;                                                 \
        int kind = kl_act_unary(act);                                                              \
        _Pragma("omp parallel for schedule(static) if (rows * N > KL_PAR_MIN)")                     \
        for (int64_t r = 0; r < rows; r++) {                                                       \
            T *y = Y + r * N;                                                                      \
            if (bias)                                                                              \
                for (int64_t j = 0; j < N; j++) y[j] += bias[j];                                   \
            if (act != KL_ACT_NONE)                                                                \
                for (int64_t j = 0; j < N; j++) y[j] = kl_unary_##T(kind, y[j], 0);                \
        }                                                                                          \
    }
KL_FOR_REAL(MATMUL_KERNEL)

/* ---- f16/bf16 operands on the CPU ----
 * oneDNN multiplies them as stored (kl_gemm_half) into f32 scratch; the
 * bias, activation and one rounding follow, as in cuBLASLt's epilogue for
 * bias and ReLU (CUDA rounds twice with other activations: matmul.cu).
 * Geometries oneDNN cannot take go through the executor's f32 copies
 * (core/widen.c), which matmul_half_native tells it. */
static bool is_half(kl_dtype d) { return d == KL_F16 || d == KL_BF16; }

static bool cpu_half_gemm(const kl_tensor *t, int threads)
{
    if (!is_half(t->dtype) || !kl_numel(t) || t->src[0]->ne[t->src[0]->ndim - 1] == 0) return false;
    gemm_geom g = geom_of(t);
    return kl_gemm_half_ready(t->dtype, g.ta, g.tb, g.M, g.N, g.K, g.lda, g.ldb, threads);
}

static bool matmul_half_native(kl_backend_id b, const kl_tensor *t)
{
    return b == KL_BACKEND_CPU && cpu_half_gemm(t, t->g->ctx->threads);
}

typedef struct {
    gemm_geom g;
    int dt, threads;
    const uint16_t *A, *B;
    float *W;
} gemm_half;

static bool gemm_one_half(void *u, int64_t y, int64_t a, int64_t b)
{
    gemm_half *m = u;
    return kl_gemm_half(m->dt, m->g.ta, m->g.tb, m->g.M, m->g.N, m->g.K, m->A + a, m->g.lda, m->B + b, m->g.ldb,
                        m->W + y, m->threads);
}

static kl_status matmul_cpu_half(const kl_exec *ex, const kl_tensor *t, const uint16_t *bias)
{
    gemm_half m = {geom_of(t), t->dtype, ex->threads, kl_data(ex, t->src[0]), kl_data(ex, t->src[1]),
                   (float *)(ex->arena + t->scratch_off)};
    if (!each_matrix(t, gemm_one_half, &m))
        return kl_fail(KL_EUNSUPPORTED, "matmul: oneDNN %s GEMM failed for %s x %s", kl_dtype_name(t->dtype),
                       kl_desc(t->src[0]), kl_desc(t->src[1]));
    int act = KL_ATTR_C(t, matmul_attr)->act, kind = kl_act_unary(act), bf = t->dtype == KL_BF16;
    int64_t N = m.g.N, rows = kl_numel(t) / N;
    uint16_t *Y = kl_data(ex, t);
#pragma omp parallel for schedule(static) if (rows * N > KL_PAR_MIN)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j = 0; j < N; j++) {
            float v = m.W[r * N + j];
            if (bias) v += bf ? kl_bf16_to_f32(bias[j]) : kl_f16_to_f32(bias[j]);
            if (act != KL_ACT_NONE) v = kl_unary_float(kind, v, 0);
            Y[r * N + j] = bf ? kl_f32_to_bf16(v) : kl_f32_to_f16(v);
        }
    return KL_OK;
}

static kl_status matmul_cpu(const kl_exec *ex, const kl_tensor *t)
{
    const void *bias = t->n_src > 2 ? kl_data(ex, t->src[2]) : NULL;
    if (is_half(t->dtype)) return matmul_cpu_half(ex, t, bias);
    if (t->dtype == KL_F32)
        matmul_cpu_float(t, kl_data(ex, t->src[0]), kl_data(ex, t->src[1]), bias, kl_data(ex, t));
    else
        matmul_cpu_double(t, kl_data(ex, t->src[0]), kl_data(ex, t->src[1]), bias, kl_data(ex, t));
    return KL_OK;
}

/* b is W^T for a contiguous 2-D W (how kl_linear passes weights). */
static kl_tensor *transposed_weight(kl_tensor *b)
{
    if (b->op != KL_OP_view || b->ndim != 2 || b->src[0]->ndim != 2) return NULL;
    kl_tensor *w = b->src[0];
    if (w->ne[0] != b->ne[1] || w->ne[1] != b->ne[0] || b->st[0] != 1 || !kl_is_contiguous(w)) return NULL;
    return w;
}

static kl_status matmul_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    kl_tensor *a = t->src[0], *b = t->src[1], *bias = t->n_src > 2 ? t->src[2] : NULL, *dz = dy, *tmp, *d;
    int act = KL_ATTR(t, matmul_attr)->act;
    int64_t K = a->ne[a->ndim - 1], N = t->ne[t->ndim - 1];
    if (act != KL_ACT_NONE) KL_TRY(kl_fused_act_grad(g, kl_act_unary(act), dy, t, &dz));
    if (a->requires_grad) {
        KL_TRY(kl_transpose(g, b, -1, -2, &tmp));
        KL_TRY(kl_matmul_op(g, dz, tmp, NULL, KL_ACT_NONE, &d));
        KL_TRY(kl_reduce_to(g, d, a, &d));
        KL_TRY(kl_grad_acc(g, a, d));
    }
    if (b->requires_grad) {
        if (b->ndim == 2) {
            kl_tensor *a2, *dz2, *w = transposed_weight(b);
            int64_t ak[2] = {-1, K}, dn[2] = {-1, N};
            KL_TRY(kl_reshape(g, a, 2, ak, &a2));
            KL_TRY(kl_reshape(g, dz, 2, dn, &dz2));
            if (w && w->requires_grad) { /* dW [N, K] = dz^T a */
                KL_TRY(kl_transpose(g, dz2, 0, 1, &tmp));
                KL_TRY(kl_matmul_op(g, tmp, a2, NULL, KL_ACT_NONE, &d));
                KL_TRY(kl_grad_acc(g, w, d));
            } else {
                KL_TRY(kl_transpose(g, a2, 0, 1, &tmp));
                KL_TRY(kl_matmul_op(g, tmp, dz2, NULL, KL_ACT_NONE, &d));
                KL_TRY(kl_grad_acc(g, b, d));
            }
        } else {
            KL_TRY(kl_transpose(g, a, -1, -2, &tmp));
            KL_TRY(kl_matmul_op(g, tmp, dz, NULL, KL_ACT_NONE, &d));
            KL_TRY(kl_reduce_to(g, d, b, &d));
            KL_TRY(kl_grad_acc(g, b, d));
        }
    }
    if (bias && bias->requires_grad) {
        KL_TRY(kl_reduce_to(g, dz, bias, &d));
        KL_TRY(kl_grad_acc(g, bias, d));
    }
    return KL_OK;
}

const kl_op_def kl_op_matmul = {
    .name = "matmul", .shape = matmul_shape, .backward = matmul_backward, .fwd = {[KL_BACKEND_CPU] = matmul_cpu},
    .half_native = KL_HALF_CUDA, .half_native_if = matmul_half_native};

kl_status kl_matmul_op(kl_graph *g, kl_tensor *a, kl_tensor *b, kl_tensor *bias, kl_act act, kl_tensor **out)
{
    if (a->ndim >= 2 && !gemm_ready(a)) KL_TRY(kl_contiguous(g, a, &a));
    if (b->ndim >= 2 && !gemm_ready(b)) KL_TRY(kl_contiguous(g, b, &b));
    /* [..., M, K] x [K, N]: one GEMM over all rows when a's rows are contiguous */
    if (a->ndim > 2 && b->ndim == 2 && kl_is_contiguous(a)) {
        int64_t k2[2] = {-1, a->ne[a->ndim - 1]}, ne[KL_MAX_DIMS];
        int nd = a->ndim;
        memcpy(ne, a->ne, sizeof ne);
        ne[nd - 1] = b->ne[1];
        kl_tensor *a2, *y;
        if (a->ne[nd - 1] != b->ne[0])
            return kl_fail(KL_EINVAL, "matmul: inner dims differ: %s x %s", kl_desc(a), kl_desc(b));
        KL_TRY(kl_reshape(g, a, 2, k2, &a2));
        KL_TRY(kl_matmul_op(g, a2, b, bias, act, &y));
        return kl_reshape(g, y, nd, ne, out);
    }
    matmul_attr at = {act};
    kl_tensor *src[3] = {a, b, bias};
    return kl_node_new(g, KL_OP_matmul, bias ? 3 : 2, src, &at, sizeof at, out);
}

kl_status kl_matmul(kl_graph *g, kl_tensor *a, kl_tensor *b, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "matmul: out is NULL");
    *out = NULL;
    kl_tensor *ab[2] = {a, b};
    KL_TRY(kl_check_args(g, "matmul", 2, ab));
    if (a->ndim < 2 || b->ndim < 2)
        return kl_fail(KL_EINVAL, "matmul: both operands need >= 2 dims: %s x %s", kl_desc(a), kl_desc(b));
    return kl_matmul_op(g, a, b, NULL, KL_ACT_NONE, out);
}

kl_status kl_linear(kl_graph *g, kl_tensor *x, kl_tensor *w, kl_tensor *bias, kl_act act, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "linear: out is NULL");
    *out = NULL;
    kl_tensor *xw[2] = {x, w};
    KL_TRY(kl_check_args(g, "linear", 2, xw));
    if (bias) KL_TRY(kl_check_args(g, "linear", 1, &bias));
    if ((unsigned)act >= KL_ACT_COUNT) return kl_fail(KL_EINVAL, "linear: unknown activation %d", (int)act);
    if (w->ndim != 2 || x->ndim < 1 || x->ne[x->ndim - 1] != w->ne[1])
        return kl_fail(KL_EINVAL, "linear: input %s does not match weight %s (expected [..., %lld] x [out, %lld])",
                       kl_desc(x), kl_desc(w), w->ndim == 2 ? (long long)w->ne[1] : -1LL,
                       w->ndim == 2 ? (long long)w->ne[1] : -1LL);
    kl_tensor *wt, *x2 = x, *y;
    if (x->ndim == 1) {
        int64_t d[2] = {1, x->ne[0]};
        KL_TRY(kl_reshape(g, x, 2, d, &x2));
    }
    KL_TRY(kl_transpose(g, w, 0, 1, &wt));
    /* GELU's backward needs the pre-activation, so it is not fused here */
    kl_act fused = act == KL_ACT_GELU ? KL_ACT_NONE : act;
    KL_TRY(kl_matmul_op(g, x2, wt, bias, fused, &y));
    if (act == KL_ACT_GELU) KL_TRY(kl_gelu(g, y, &y));
    if (x->ndim == 1) return kl_reshape(g, y, 1, &w->ne[0], out);
    *out = y;
    return KL_OK;
}
