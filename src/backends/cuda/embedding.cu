/* Embedding lookup and its gradient on CUDA.
 *
 * Forward: y[p, d] = w[idx[p], d]; a bad index is reported (KL_CUERR_INDEX)
 * and its row zeroed.
 *
 * Backward, deterministically and without float atomics:
 *   emb_keys_k   keys[p] = idx[p] (V for a bad one), pos[p] = p;
 *   CUB's stable radix sort of (key, pos) pairs: equal rows end up adjacent,
 *                their positions still ascending;
 *   emb_piece_k, emb_join_k  the sorted array in pieces (ops/emb_grad.h): a
 *                row's positions summed in ascending order, a long run (a
 *                padding row) piece by piece and then the pieces in order;
 *                rows no position names stay zero (memset). Rows whose
 *                sorted run lies inside one piece come out bit-equal to
 *                the CPU (ops/embedding.c sums each row in position order);
 *                a run across pieces adds the pieces' sums.
 * The scratch (keys, pos, sorted keys, sorted pos, the pieces' head and
 * tail sums, CUB's temporary storage) is planned with the node:
 * kl_cuda_embedding_bwd_scratch. */
#include "backends/cuda/cuda_internal.cuh"
/* CUB includes <iostream> for an unused operator<<; its static initialiser
 * would make C programs linking libkiln statically need libstdc++ (see
 * CMakeLists.txt): std::ostream comes from <ostream>, <iostream> is skipped. */
#include <ostream>
#define _GLIBCXX_IOSTREAM 1
#include <cub/device/device_radix_sort.cuh>
#include "ops/emb_grad.h"

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
    /* rows are moved, not computed: any float dtype by its width (16-bit
     * storage as it is) */
    const void *wp = kl_data(ex, w);
    void *y = kl_data(ex, t);
    switch (kl_dtype_size(t->dtype)) {
    case 2: emb_k<uint16_t><<<nb, KL_CU_THREADS, 0, s>>>((const uint16_t *)wp, idx, (uint16_t *)y, P, D, V, kl_cu_err()); break;
    case 4: emb_k<float><<<nb, KL_CU_THREADS, 0, s>>>((const float *)wp, idx, (float *)y, P, D, V, kl_cu_err()); break;
    case 8: emb_k<double><<<nb, KL_CU_THREADS, 0, s>>>((const double *)wp, idx, (double *)y, P, D, V, kl_cu_err()); break;
    default: return kl_cu_bad_dtype(t);
    }
    KL_CUDA_LAUNCHED(t, "emb_k");
    return KL_OK;
}

/* ---- backward ---- */

/* The scratch: four arrays of P u32, the head and tail sums [pieces, D] of
 * the dtype, then CUB's storage, each at a 256-byte offset. */
typedef struct emb_layout {
    size_t arr, sums, cub_off, cub_bytes, total;
    int end_bit; /* keys are in [0, V]: the sort looks at these low bits only */
} emb_layout;

static size_t al256(size_t n) { return (n + 255) & ~(size_t)255; }

static cudaError_t emb_layout_of(int64_t P, int64_t V, int64_t D, size_t es, emb_layout *l)
{
    memset(l, 0, sizeof *l);
    l->end_bit = 1;
    while (l->end_bit < 32 && ((uint64_t)1 << l->end_bit) <= (uint64_t)V) l->end_bit++;
    l->arr = al256((size_t)P * sizeof(uint32_t));
    l->sums = al256((size_t)(kl_emb_pieces(P) * D) * es);
    l->cub_off = 4 * l->arr + 2 * l->sums;
    cudaError_t e = cub::DeviceRadixSort::SortPairs(NULL, l->cub_bytes, (const uint32_t *)NULL, (uint32_t *)NULL,
                                                    (const uint32_t *)NULL, (uint32_t *)NULL, (int)P, 0, l->end_bit);
    l->total = l->cub_off + al256(l->cub_bytes);
    return e;
}

extern "C" size_t kl_cuda_embedding_bwd_scratch(int64_t P, int64_t V, int64_t D, size_t es)
{
    emb_layout l;
    /* CUB sizes for the current device: the graph may be built in a thread
     * that never selected kiln's */
    if (P <= 0 || P > INT32_MAX || cudaSetDevice(kl_cu_device()) != cudaSuccess ||
        emb_layout_of(P, V, D, es, &l) != cudaSuccess)
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

static __device__ __forceinline__ void emb_piece(const float *dy, const uint32_t *key, const uint32_t *pos, int64_t P,
                                                 int64_t D, int64_t V, int64_t p, int64_t d, float *dw, float *h, float *t)
{
    kl_emb_piece_float(dy, key, pos, P, D, V, p, d, dw, h, t);
}
static __device__ __forceinline__ void emb_piece(const double *dy, const uint32_t *key, const uint32_t *pos, int64_t P,
                                                 int64_t D, int64_t V, int64_t p, int64_t d, double *dw, double *h, double *t)
{
    kl_emb_piece_double(dy, key, pos, P, D, V, p, d, dw, h, t);
}
static __device__ __forceinline__ void emb_join(const uint32_t *key, int64_t P, int64_t D, int64_t V, int64_t p, int64_t d,
                                                const float *h, const float *t, float *dw)
{
    kl_emb_join_float(key, P, D, V, p, d, h, t, dw);
}
static __device__ __forceinline__ void emb_join(const uint32_t *key, int64_t P, int64_t D, int64_t V, int64_t p, int64_t d,
                                                const double *h, const double *t, double *dw)
{
    kl_emb_join_double(key, P, D, V, p, d, h, t, dw);
}

/* thread per (piece, column) */
template <typename T>
__global__ void emb_piece_k(const T *dy, const uint32_t *key, const uint32_t *pos, int64_t P, int64_t D, int64_t V,
                            T *dw, T *head, T *tail)
{
    KL_CU_FOR(e, kl_emb_pieces(P) * D) emb_piece(dy, key, pos, P, D, V, e / D, e % D, dw, head, tail);
}

template <typename T>
__global__ void emb_join_k(const uint32_t *key, int64_t P, int64_t D, int64_t V, const T *head, const T *tail, T *dw)
{
    KL_CU_FOR(e, kl_emb_pieces(P) * D) emb_join(key, P, D, V, e / D, e % D, head, tail, dw);
}

/* the pieces' sums, then the runs that cross pieces */
template <typename T>
static kl_status emb_sums(const kl_exec *ex, const kl_tensor *t, const emb_layout &l, unsigned char *scr,
                          const uint32_t *skey, const uint32_t *spos, cudaStream_t s)
{
    int64_t V = t->ne[0], D = t->ne[1], P = kl_numel(t->src[1]);
    const T *dy = (const T *)kl_data(ex, t->src[0]);
    T *dw = (T *)kl_data(ex, t), *head = (T *)(void *)(scr + 4 * l.arr), *tail = (T *)(void *)(scr + 4 * l.arr + l.sums);
    unsigned nb = kl_cu_blocks(kl_emb_pieces(P) * D, KL_CU_THREADS);
    emb_piece_k<T><<<nb, KL_CU_THREADS, 0, s>>>(dy, skey, spos, P, D, V, dw, head, tail);
    KL_CUDA_LAUNCHED(t, "emb_piece_k");
    emb_join_k<T><<<nb, KL_CU_THREADS, 0, s>>>(skey, P, D, V, head, tail, dw);
    KL_CUDA_LAUNCHED(t, "emb_join_k");
    return KL_OK;
}

extern "C" kl_status kl_cuda_embedding_bwd(const kl_exec *ex, const kl_tensor *t)
{
    int64_t V = t->ne[0], D = t->ne[1], P = kl_numel(t->src[1]);
    const int32_t *idx = (const int32_t *)kl_data(ex, t->src[1]);
    cudaStream_t s = kl_cu_stream();
    if (t->dtype != KL_F32 && t->dtype != KL_F64) return kl_cu_bad_dtype(t);
    KL_CUDA_CHECK(cudaMemsetAsync(kl_data(ex, t), 0, kl_nbytes(t), s), "embedding_bwd", "cudaMemsetAsync");
    if (P == 0) return KL_OK;
    emb_layout l;
    KL_CUDA_CHECK(emb_layout_of(P, V, D, kl_dtype_size(t->dtype), &l), "embedding_bwd", "cub::DeviceRadixSort (size)");
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
    return t->dtype == KL_F32 ? emb_sums<float>(ex, t, l, scr, skey, spos, s) : emb_sums<double>(ex, t, l, scr, skey, spos, s);
}
