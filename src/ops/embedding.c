/* Embedding lookup: weight [V, D], idx i32 [...] -> y [..., D], y[p] = weight[idx[p]].
 * An index outside [0, V) is a run-time error of the kernel (nothing is
 * written). embedding_bwd (srcs dy, idx) writes dW [V, D] (not accumulated
 * across steps): zero, then dW[idx[p]] += dy[p] in position order. Threads
 * own disjoint ranges of dW rows and each scans all positions, so every row
 * is summed in the same order whatever the thread count (the CUDA kernel
 * sums in the same order, long runs piece by piece: ops/emb_grad.h). */
#include "ops/ops.h"
#include "backends/cpu/cpu.h"
#include "backends/backend.h" /* kl_cuda_embedding_bwd_scratch */

#ifdef _OPENMP
#include <omp.h>
#define KL_OMP_IDS(nt, id) (nt = omp_get_num_threads(), id = omp_get_thread_num())
#else
#define KL_OMP_IDS(nt, id) ((void)0)
#endif

#include "ops/attrs.h" /* the attribute structs */

static kl_status emb_shape(kl_tensor *t)
{
    const kl_tensor *w = t->src[0], *idx = t->src[1];
    if (!kl_is_float(w->dtype) || w->ndim != 2)
        return kl_fail(KL_EINVAL, "embedding: weight must be [V, D] floating-point, got %s", kl_desc(w));
    if (idx->dtype != KL_I32)
        return kl_fail(KL_EINVAL, "embedding: indices must be i32, got %s", kl_desc(idx));
    if (idx->ndim + 1 > KL_MAX_DIMS)
        return kl_fail(KL_EINVAL, "embedding: indices %s have %d dims, at most %d", kl_desc(idx), idx->ndim,
                       KL_MAX_DIMS - 1);
    t->dtype = w->dtype;
    t->ndim = idx->ndim + 1;
    memcpy(t->ne, idx->ne, (size_t)idx->ndim * sizeof *idx->ne);
    t->ne[idx->ndim] = w->ne[1];
    return KL_OK;
}

static kl_status emb_cpu(const kl_exec *ex, const kl_tensor *t)
{
    const kl_tensor *w = t->src[0];
    const int32_t *idx = kl_data(ex, t->src[1]);
    int64_t V = w->ne[0], P = kl_numel(t->src[1]);
    for (int64_t p = 0; p < P; p++) /* guard: check all before writing */
        if (idx[p] < 0 || idx[p] >= V)
            return kl_fail(KL_EINVAL, "embedding: index %d at position %lld out of range [0,%lld)", idx[p],
                           (long long)p, (long long)V);
    size_t row = (size_t)w->ne[1] * kl_dtype_size(w->dtype);
    const unsigned char *wp = kl_data(ex, w);
    unsigned char *y = kl_data(ex, t);
#pragma omp parallel for schedule(static) if (kl_numel(t) > KL_PAR_MIN)
    for (int64_t p = 0; p < P; p++) memcpy(y + (size_t)p * row, wp + (size_t)idx[p] * row, row);
    return KL_OK;
}

#define EMB_BWD_KERNEL(T)                                                                          \
    static void emb_bwd_##T(const T *dy, const int32_t *idx, T *dw, int64_t V, int64_t D, int64_t P) \
    {                                                                                              \
        _Pragma("omp parallel if (V * D + P * D > KL_PAR_MIN)")                                    \
        {                                                                                          \
            int nt = 1, id = 0;                                                                    \
            KL_OMP_IDS(nt, id);                                                                    \
            int64_t r0 = V * id / nt, r1 = V * (id + 1) / nt;                                      \
            memset(dw + r0 * D, 0, (size_t)((r1 - r0) * D) * sizeof(T));                           \
            for (int64_t p = 0; p < P; p++) {                                                      \
                int64_t v = idx[p];                                                                \
                if (v < r0 || v >= r1) continue; /* another thread's row (or out of range) */     \
                T *dr = dw + v * D;                                                                \
                const T *sr = dy + p * D;                                                          \
                for (int64_t i = 0; i < D; i++) dr[i] += sr[i];                                    \
            }                                                                                      \
        }                                                                                          \
    }

KL_FOR_REAL(EMB_BWD_KERNEL)

static kl_status emb_bwd_cpu(const kl_exec *ex, const kl_tensor *t)
{
    int64_t V = t->ne[0], D = t->ne[1], P = kl_numel(t->src[1]);
    const int32_t *idx = kl_data(ex, t->src[1]);
    if (t->dtype == KL_F32) emb_bwd_float(kl_data(ex, t->src[0]), idx, kl_data(ex, t), V, D, P);
    else emb_bwd_double(kl_data(ex, t->src[0]), idx, kl_data(ex, t), V, D, P);
    return KL_OK;
}

static kl_status emb_bwd_shape(kl_tensor *t)
{
    const kl_tensor *dy = t->src[0], *idx = t->src[1];
    int64_t V = KL_ATTR(t, emb_attr)->V;
    if (dy->ndim != idx->ndim + 1 || kl_numel(dy) != kl_numel(idx) * dy->ne[dy->ndim - 1])
        return kl_fail(KL_EINTERNAL, "embedding_bwd: dy %s vs indices %s", kl_desc(dy), kl_desc(idx));
    t->dtype = dy->dtype;
    t->ndim = 2;
    t->ne[0] = V;
    t->ne[1] = dy->ne[dy->ndim - 1];
    if (t->g->ctx->backend == KL_BACKEND_CUDA && kl_numel(idx) > 0) { /* the GPU sorts positions by row */
        if (kl_numel(idx) > INT32_MAX || V > INT32_MAX) /* 32-bit sort keys, V itself marking bad indices */
            return kl_fail(KL_EUNSUPPORTED, "embedding_bwd: %lld positions into %lld rows, the CUDA kernel takes at "
                           "most %d of each", (long long)kl_numel(idx), (long long)V, INT32_MAX);
        t->scratch_bytes = kl_cuda_embedding_bwd_scratch(kl_numel(idx), V, t->ne[1], kl_calc_size(t->dtype));
        if (!t->scratch_bytes)
            return kl_fail(KL_EDEVICE, "embedding_bwd: cannot size the CUDA sort of %lld positions",
                           (long long)kl_numel(idx));
    }
    return KL_OK;
}

static kl_status emb_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    kl_tensor *w = t->src[0], *dw;
    if (!w->requires_grad) return KL_OK;
    kl_tensor *src[2] = {dy, t->src[1]};
    KL_TRY(kl_contiguous(g, dy, &src[0]));
    emb_attr a = {w->ne[0]};
    KL_TRY(kl_node_new(g, KL_OP_embedding_bwd, 2, src, &a, sizeof a, &dw));
    return kl_grad_acc(g, w, dw);
}

const kl_op_def kl_op_embedding = {.name = "embedding",
                                   .shape = emb_shape,
                                   .backward = emb_backward,
                                   .fwd = {[KL_BACKEND_CPU] = emb_cpu},
                                   .half_native = KL_HALF_ALL}; /* rows moved as bytes */
const kl_op_def kl_op_embedding_bwd = {
    .name = "embedding_bwd", .shape = emb_bwd_shape, .fwd = {[KL_BACKEND_CPU] = emb_bwd_cpu}};

kl_status kl_embedding(kl_graph *g, kl_tensor *weight, kl_tensor *idx, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "embedding: out is NULL");
    *out = NULL;
    kl_tensor *src[2] = {weight, idx};
    KL_TRY(kl_check_args(g, "embedding", 2, src));
    KL_TRY(kl_contiguous(g, weight, &src[0]));
    KL_TRY(kl_contiguous(g, idx, &src[1]));
    return kl_node_new(g, KL_OP_embedding, 2, src, NULL, 0, out);
}
