/* Embedding lookup and its gradient on CUDA.
 *
 * Forward: y[p, d] = w[idx[p], d]; a bad index is reported (KL_CUERR_INDEX)
 * and its row zeroed.
 *
 * Backward, deterministically and in the CPU's order (ops/embedding.c: zero,
 * then dW[idx[p]] += dy[p] for ascending p), without float atomics:
 *   emb_keys_k   keys[p] = idx[p] (V for a bad one), pos[p] = p;
 *   CUB's stable radix sort of (key, pos) pairs: equal rows end up adjacent,
 *                their positions still ascending;
 *   emb_sum_k    a thread per (sorted slot i, d) that starts a run of equal
 *                keys sums dy[pos[j], d] over the run from 0 and writes
 *                dW[key, d]; rows no position names stay zero (memset).
 * The scratch (keys, pos, sorted keys, sorted pos, CUB's temporary storage)
 * is planned with the node: kl_cuda_embedding_bwd_scratch. PERF: a row
 * named by very many positions (padding) is one serial sum per column;
 * splitting long runs into pieces summed in a fixed order would keep the
 * results deterministic but no longer bit-equal to the CPU. */
#include "backends/cuda/cuda_internal.cuh"
/* CUB includes <iostream> for an unused operator<<; its static initialiser
 * would make C programs linking libkiln statically need libstdc++ (see
 * CMakeLists.txt): std::ostream comes from <ostream>, <iostream> is skipped. */
#include <ostream>
#define _GLIBCXX_IOSTREAM 1
#include <cub/device/device_radix_sort.cuh>

template <typename T>
__global__ void emb_k(const T *w, const int32_t *idx, T *y, int64_t P, int64_t D, int64_t V, kl_cuda_err *err)
{
    KL_CU_FOR(e, P * D)
    {
        int64_t p = e / D, d = e - p * D;
        int32_t v = idx[p];
        if (v < 0 || v >= V) {
            if (d == 0) kl_cu_report(err, KL_CUERR_INDEX, v, p, V);
            y[e] = (T)0;
        } else {
            y[e] = w[(int64_t)v * D + d];
        }
    }
}

extern "C" kl_status kl_cuda_embedding(const kl_exec *ex, const kl_tensor *t)
{
    const kl_tensor *w = t->src[0];
    int64_t V = w->ne[0], D = w->ne[1], P = kl_numel(t->src[1]);
    const int32_t *idx = (const int32_t *)kl_data(ex, t->src[1]);
    unsigned nb = kl_cu_blocks(P * D, KL_CU_THREADS);
    cudaStream_t s = kl_cu_stream();
    if (t->dtype == KL_F32)
        emb_k<float><<<nb, KL_CU_THREADS, 0, s>>>((const float *)kl_data(ex, w), idx, (float *)kl_data(ex, t), P, D, V,
                                                 kl_cu_err());
    else if (t->dtype == KL_F64)
        emb_k<double><<<nb, KL_CU_THREADS, 0, s>>>((const double *)kl_data(ex, w), idx, (double *)kl_data(ex, t), P, D, V,
                                                  kl_cu_err());
    else
        return kl_cu_bad_dtype(t);
    KL_CUDA_LAUNCHED(t, "emb_k");
    return KL_OK;
}

/* ---- backward ---- */

/* The scratch: four arrays of P u32 at 256-byte offsets, then CUB's storage. */
typedef struct emb_layout {
    size_t arr, cub_off, cub_bytes, total;
    int end_bit; /* keys are in [0, V]: the sort looks at these low bits only */
} emb_layout;

static size_t al256(size_t n) { return (n + 255) & ~(size_t)255; }

static cudaError_t emb_layout_of(int64_t P, int64_t V, emb_layout *l)
{
    memset(l, 0, sizeof *l);
    l->end_bit = 1;
    while (l->end_bit < 32 && ((uint64_t)1 << l->end_bit) <= (uint64_t)V) l->end_bit++;
    l->arr = al256((size_t)P * sizeof(uint32_t));
    l->cub_off = 4 * l->arr;
    cudaError_t e = cub::DeviceRadixSort::SortPairs(NULL, l->cub_bytes, (const uint32_t *)NULL, (uint32_t *)NULL,
                                                    (const uint32_t *)NULL, (uint32_t *)NULL, (int)P, 0, l->end_bit);
    l->total = l->cub_off + al256(l->cub_bytes);
    return e;
}

extern "C" size_t kl_cuda_embedding_bwd_scratch(int64_t P, int64_t V)
{
    emb_layout l;
    /* CUB sizes for the current device: the graph may be built in a thread
     * that never selected kiln's */
    if (P <= 0 || P > INT32_MAX || cudaSetDevice(kl_cu_device()) != cudaSuccess || emb_layout_of(P, V, &l) != cudaSuccess)
        return 0;
    return l.total;
}

__global__ void emb_keys_k(const int32_t *idx, uint32_t *key, uint32_t *pos, int64_t P, int64_t V)
{
    KL_CU_FOR(p, P)
    {
        int32_t v = idx[p];
        key[p] = (v < 0 || v >= V) ? (uint32_t)V : (uint32_t)v;
        pos[p] = (uint32_t)p;
    }
}

template <typename T>
__global__ void emb_sum_k(const T *dy, const uint32_t *key, const uint32_t *pos, T *dw, int64_t P, int64_t D, int64_t V)
{
    KL_CU_FOR(e, P * D)
    {
        int64_t i = e / D, d = e - i * D;
        uint32_t v = key[i];
        if ((i > 0 && key[i - 1] == v) || v >= (uint64_t)V) continue; /* not a run's start, or a bad index */
        T s = (T)0;
        for (int64_t j = i; j < P && key[j] == v; j++) s += dy[(int64_t)pos[j] * D + d];
        dw[(int64_t)v * D + d] = s;
    }
}

extern "C" kl_status kl_cuda_embedding_bwd(const kl_exec *ex, const kl_tensor *t)
{
    int64_t V = t->ne[0], D = t->ne[1], P = kl_numel(t->src[1]);
    const int32_t *idx = (const int32_t *)kl_data(ex, t->src[1]);
    void *dw = kl_data(ex, t);
    cudaStream_t s = kl_cu_stream();
    if (t->dtype != KL_F32 && t->dtype != KL_F64) return kl_cu_bad_dtype(t);
    KL_CUDA_CHECK(cudaMemsetAsync(dw, 0, kl_nbytes(t), s), "embedding_bwd", "cudaMemsetAsync");
    if (P == 0) return KL_OK;
    emb_layout l;
    KL_CUDA_CHECK(emb_layout_of(P, V, &l), "embedding_bwd", "cub::DeviceRadixSort (size)");
    if (l.total > t->scratch_bytes)
        return kl_fail(KL_EINTERNAL, "embedding_bwd %s: sort needs %zu bytes of scratch, %zu planned", kl_desc(t),
                       l.total, t->scratch_bytes);
    unsigned char *scr = (unsigned char *)kl_scratch(ex, t);
    uint32_t *key = (uint32_t *)scr, *pos = (uint32_t *)(scr + l.arr);
    uint32_t *skey = (uint32_t *)(scr + 2 * l.arr), *spos = (uint32_t *)(scr + 3 * l.arr);
    emb_keys_k<<<kl_cu_blocks(P, KL_CU_THREADS), KL_CU_THREADS, 0, s>>>(idx, key, pos, P, V);
    KL_CUDA_LAUNCHED(t, "emb_keys_k");
    size_t cub_bytes = l.cub_bytes;
    KL_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(scr + l.cub_off, cub_bytes, key, skey, pos, spos, (int)P, 0,
                                                  l.end_bit, s),
                  "embedding_bwd", "cub::DeviceRadixSort::SortPairs");
    unsigned nb = kl_cu_blocks(P * D, KL_CU_THREADS);
    if (t->dtype == KL_F32)
        emb_sum_k<float><<<nb, KL_CU_THREADS, 0, s>>>((const float *)kl_data(ex, t->src[0]), skey, spos, (float *)dw,
                                                     P, D, V);
    else
        emb_sum_k<double><<<nb, KL_CU_THREADS, 0, s>>>((const double *)kl_data(ex, t->src[0]), skey, spos,
                                                      (double *)dw, P, D, V);
    KL_CUDA_LAUNCHED(t, "emb_sum_k");
    return KL_OK;
}
