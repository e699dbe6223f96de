/* Tile machinery of the CUDA attention kernels (attention.cu). Geometry in
 * ops/attention.h: blocks of 16 x 16 threads, square tiles of N = 16 R rows
 * and columns (R = 4 for f32, 2 for f64), thread (ty, tx) holds tile rows
 * ty + 16 i and columns tx + 16 j. Two products, both through shared
 * memory in chunks of KL_ATT_DC:
 *   att_dot: s = A B^T for N rows of A and N rows of B over their common
 *            depth (scores q k^T, dO v^T, and transposed in the dK/dV pass);
 *   att_acc: acc += P C for the tile P in shared memory and N rows of C,
 *            over one chunk of W output columns (P v, dS k, P^T dO, dS^T q).
 * Every sum runs in a fixed order (depth in order per entry; no atomics).
 * Shared memory: 33.5 KB (f32), 24.8 KB (f64), below the 48 KB static limit. */
#ifndef KL_CUDA_ATTENTION_TILE_CUH
#define KL_CUDA_ATTENTION_TILE_CUH

#include "backends/cuda/cuda_internal.cuh"
#include "ops/attention.h"

#include <math.h>

/* One (batch, head)'s operand: element (r, c) at p[r * rs + c * cs], rows x
 * cols; reads outside it give 0. */
template <typename T> struct att_mat {
    const T *p;
    int64_t rs, cs, rows, cols;
};

template <typename T> struct att_geo {
    enum { R = KL_ATT_R(sizeof(T)), N = KL_ATT_TX * KL_ATT_R(sizeof(T)) };
};

template <typename T> struct att_smem {
    T a[att_geo<T>::N][KL_ATT_DC + 1];     /* att_dot: A's depth chunk (+1: no bank conflicts down a column) */
    T b[att_geo<T>::N][KL_ATT_DC + 1];     /* att_dot: B's depth chunk; att_acc: C's column chunk */
    T p[att_geo<T>::N][att_geo<T>::N + 1]; /* probabilities or score gradients */
};
static_assert(sizeof(att_smem<float>) <= 48 * 1024 && sizeof(att_smem<double>) <= 48 * 1024,
              "attention tiles must fit the 48 KB of static shared memory");

#define ATT_FNS(T_)                                                                                \
    static __device__ __forceinline__ T_ att_rescale(T_ m, T_ mn) { return kl_att_rescale_##T_(m, mn); } \
    static __device__ __forceinline__ T_ att_prob(T_ s, T_ m) { return kl_att_prob_##T_(s, m); }   \
    static __device__ __forceinline__ T_ att_lse(T_ m, double l) { return kl_att_lse_##T_(m, l); } \
    static __device__ __forceinline__ T_ att_dscore(T_ p, T_ dp, T_ di, T_ sc) { return kl_att_dscore_##T_(p, dp, di, sc); }
ATT_FNS(float)
ATT_FNS(double)

/* Max and sum over the 16 lanes sharing ty (xor offsets < 16 stay inside
 * the half-warp); every lane gets the same value. */
template <typename T> __device__ __forceinline__ T att_row_max(T v)
{
#pragma unroll
    for (int o = KL_ATT_TX / 2; o > 0; o >>= 1) {
        T w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v;
}
template <typename T> __device__ __forceinline__ T att_row_sum(T v)
{
#pragma unroll
    for (int o = KL_ATT_TX / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* dst[r][c] = m(r0 + r, c0 + c) for r < N, c < KL_ATT_DC; consecutive
 * threads read consecutive c (coalesced when m.cs == 1). */
template <typename T>
__device__ __forceinline__ void att_load(T (*dst)[KL_ATT_DC + 1], const att_mat<T> &m, int64_t r0, int64_t c0)
{
    for (int e = threadIdx.x; e < att_geo<T>::N * KL_ATT_DC; e += KL_ATT_THREADS) {
        int r = e / KL_ATT_DC, c = e % KL_ATT_DC;
        int64_t gr = r0 + r, gc = c0 + c;
        dst[r][c] = gr < m.rows && gc < m.cols ? m.p[gr * m.rs + gc * m.cs] : (T)0;
    }
}

/* s[i][j] = sum_d A(r0 + ty + 16 i, d) B(c0 + tx + 16 j, d), d < A.cols (= B.cols) */
template <typename T>
__device__ void att_dot(att_smem<T> &sm, const att_mat<T> &A, int64_t r0, const att_mat<T> &B, int64_t c0,
                        T (&s)[att_geo<T>::R][att_geo<T>::R])
{
    const int R = att_geo<T>::R, ty = threadIdx.x / KL_ATT_TX, tx = threadIdx.x % KL_ATT_TX;
#pragma unroll
    for (int i = 0; i < R; i++)
#pragma unroll
        for (int j = 0; j < R; j++) s[i][j] = 0;
    for (int64_t d0 = 0; d0 < A.cols; d0 += KL_ATT_DC) {
        att_load(sm.a, A, r0, d0);
        att_load(sm.b, B, c0, d0);
        __syncthreads();
#pragma unroll 8
        for (int d = 0; d < KL_ATT_DC; d++) {
            T av[R], bv[R];
#pragma unroll
            for (int i = 0; i < R; i++) av[i] = sm.a[kl_att_tile_row(ty, i)][d];
#pragma unroll
            for (int j = 0; j < R; j++) bv[j] = sm.b[kl_att_tile_row(tx, j)][d];
#pragma unroll
            for (int i = 0; i < R; i++)
#pragma unroll
                for (int j = 0; j < R; j++) s[i][j] += av[i] * bv[j];
        }
        __syncthreads(); /* the chunk buffers are refilled next */
    }
}

/* acc[i][c] += sum_k sm.p[ty + 16 i][k] C(k0 + k, col c) over k < N, col c =
 * kl_att_out_col(z, W, c, tx) (< C.cols). The caller has written sm.p and
 * synchronised; returns synchronised (sm.p and sm.b free again), except
 * when chunk z holds no column of C: then it returns at once, and sm.p is
 * only free for each thread to rewrite its own entries. */
template <typename T, int W>
__device__ void att_acc(att_smem<T> &sm, const att_mat<T> &C, int64_t k0, int64_t z,
                        T (&acc)[att_geo<T>::R][W / KL_ATT_TX])
{
    const int R = att_geo<T>::R, N = att_geo<T>::N, ty = threadIdx.x / KL_ATT_TX, tx = threadIdx.x % KL_ATT_TX;
#pragma unroll
    for (int cc = 0; cc < W / KL_ATT_DC; cc++) {
        int64_t col0 = z * W + cc * KL_ATT_DC;
        if (col0 >= C.cols) break; /* the same in every thread of the block */
        att_load(sm.b, C, k0, col0);
        __syncthreads();
        for (int k = 0; k < N; k++) {
            T c0 = sm.b[k][tx], c1 = sm.b[k][tx + KL_ATT_TX];
#pragma unroll
            for (int i = 0; i < R; i++) {
                T pv = sm.p[kl_att_tile_row(ty, i)][k];
                acc[i][2 * cc] += pv * c0;
                acc[i][2 * cc + 1] += pv * c1;
            }
        }
        __syncthreads();
    }
}

#endif
