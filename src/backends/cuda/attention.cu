/* Scaled dot-product attention on CUDA, flash style: out = softmax(q k^T s) v
 * per batch and head, s = 1/sqrt(D), causal or not (ops/attention.h). The
 * CPU kernel's semantics and layouts (src/ops/attention.c): q [B,H,Tq,D],
 * k [B,H,Tk,D], v [B,H,Tk,Dv] read in place with their strides (permuted or
 * sliced views too); out [B,H,Tq,Dv] overwritten; aux: lse [B,H,Tq].
 *
 * Forward (att_fwd_k): a block per (batch-head, tile of N queries, chunk of
 * W output columns); key tiles streamed in order with an online softmax in
 * registers, probabilities through shared memory into P v. Never the
 * Tq x Tk matrix.
 * attention_bwd (sources dO, q, k, v, forward node) recomputes
 * P = exp(S - lse): att_di_k Di = rowsum(dO * O) into scratch [B,H,Tq];
 * att_dq_k per query tile: dQ = sum over key tiles dS k, dS = P (dO v^T - Di) s;
 * att_dkv_k per key tile: dV = sum over query tiles P^T dO, dK = dS^T q.
 * Each output row is owned by one block: no atomics, fixed order. Primary
 * output dq; extras dk, dv; all overwritten. Tile machinery: attention_tile.cuh. */
#include "backends/cuda/attention_tile.cuh"

#include <limits.h>

template <typename T> struct att_args {
    const T *q, *k, *v, *dO, *o, *lse, *di;
    T *out, *lse_out, *dk, *dv, *di_out;
    int64_t sq[4], sk[4], sv[4], so[4]; /* so: dO and O, contiguous [B,H,Tq,Dv] */
    int64_t H, Tq, Tk, D, Dv;
    T scale;
    int causal;
};

/* (batch, head) bh of x [B, H, rows, cols] with strides st */
template <typename T>
__device__ __forceinline__ att_mat<T> att_at(const T *p, const int64_t *st, int64_t H, int64_t bh, int64_t rows,
                                             int64_t cols)
{
    att_mat<T> m = {p + kl_att_base(st, H, bh), st[2], st[3], rows, cols};
    return m;
}

/* Block (bh, query tile i0) = blockIdx.x, output chunk z = blockIdx.y;
 * thread (ty, tx): queries i0 + ty + 16 i, keys j0 + tx + 16 j of each key
 * tile, output columns kl_att_out_col(z, W, c, tx). Running max m and sum l
 * per row are the same in the 16 threads of a row. */
template <typename T, int W> __global__ void __launch_bounds__(KL_ATT_THREADS) att_fwd_k(att_args<T> a)
{
    const int R = att_geo<T>::R, N = att_geo<T>::N, NC = W / KL_ATT_TX;
    __shared__ att_smem<T> sm;
    const int ty = threadIdx.x / KL_ATT_TX, tx = threadIdx.x % KL_ATT_TX;
    int64_t nqt = (a.Tq + N - 1) / N, bh = blockIdx.x / nqt, i0 = (blockIdx.x % nqt) * N, z = blockIdx.y;
    att_mat<T> q = att_at(a.q, a.sq, a.H, bh, a.Tq, a.D), k = att_at(a.k, a.sk, a.H, bh, a.Tk, a.D);
    att_mat<T> v = att_at(a.v, a.sv, a.H, bh, a.Tk, a.Dv);
    T m[R], acc[R][NC];
    double l[R];
#pragma unroll
    for (int i = 0; i < R; i++) {
        m[i] = (T)-INFINITY, l[i] = 0;
#pragma unroll
        for (int c = 0; c < NC; c++) acc[i][c] = 0;
    }
    int64_t kend = kl_att_key_end(i0, a.Tq - i0 < N ? a.Tq - i0 : N, a.Tk, a.causal);
    for (int64_t j0 = 0; j0 < kend; j0 += N) {
        T s[R][R];
        att_dot(sm, q, i0, k, j0, s);
#pragma unroll
        for (int i = 0; i < R; i++) {
            int64_t row = i0 + kl_att_tile_row(ty, i);
            T mt = (T)-INFINITY;
#pragma unroll
            for (int j = 0; j < R; j++) {
                int64_t key = j0 + kl_att_tile_row(tx, j);
                s[i][j] = key < a.Tk && kl_att_visible(row, key, a.causal) ? s[i][j] * a.scale : (T)-INFINITY;
                mt = s[i][j] > mt ? s[i][j] : mt;
            }
            mt = att_row_max(mt);
            T mn = mt > m[i] ? mt : m[i]; /* finite: key 0 is in the first tile of every row */
            T f = att_rescale(m[i], mn);
            double ps = 0;
#pragma unroll
            for (int j = 0; j < R; j++) {
                T p = att_prob(s[i][j], mn);
                sm.p[kl_att_tile_row(ty, i)][kl_att_tile_row(tx, j)] = p;
                ps += (double)p;
            }
            l[i] = l[i] * (double)f + att_row_sum(ps);
#pragma unroll
            for (int c = 0; c < NC; c++) acc[i][c] *= f;
            m[i] = mn;
        }
        __syncthreads();
        att_acc<T, W>(sm, v, j0, z, acc);
    }
#pragma unroll
    for (int i = 0; i < R; i++) {
        int64_t row = i0 + kl_att_tile_row(ty, i);
        if (row >= a.Tq) continue;
        T inv = (T)(1.0 / l[i]);
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int64_t col = kl_att_out_col(z, W, c, tx);
            if (col < a.Dv) a.out[(bh * a.Tq + row) * a.Dv + col] = acc[i][c] * inv;
        }
        if (z == 0 && tx == 0) a.lse_out[bh * a.Tq + row] = att_lse(m[i], l[i]);
    }
}

/* warp per row of dO, O [rows, Dv]: Di in double, lanes striding the row */
template <typename T> __global__ void att_di_k(const T *dO, const T *o, T *di, int64_t rows, int64_t Dv)
{
    int lane = threadIdx.x % 32;
    int64_t w0 = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32, nw = (int64_t)gridDim.x * blockDim.x / 32;
    for (int64_t r = w0; r < rows; r += nw) { /* r is the same in the whole warp */
        double s = 0;
        for (int64_t d = lane; d < Dv; d += 32) s += (double)dO[r * Dv + d] * (double)o[r * Dv + d];
        s = kl_cu_warp_sum(s);
        if (lane == 0) di[r] = (T)s;
    }
}

/* dq: block and thread mapping as att_fwd_k (chunk z of D); dq [B,H,Tq,D] */
template <typename T, int W> __global__ void __launch_bounds__(KL_ATT_THREADS) att_dq_k(att_args<T> a)
{
    const int R = att_geo<T>::R, N = att_geo<T>::N, NC = W / KL_ATT_TX;
    __shared__ att_smem<T> sm;
    const int ty = threadIdx.x / KL_ATT_TX, tx = threadIdx.x % KL_ATT_TX;
    int64_t nqt = (a.Tq + N - 1) / N, bh = blockIdx.x / nqt, i0 = (blockIdx.x % nqt) * N, z = blockIdx.y;
    att_mat<T> q = att_at(a.q, a.sq, a.H, bh, a.Tq, a.D), k = att_at(a.k, a.sk, a.H, bh, a.Tk, a.D);
    att_mat<T> v = att_at(a.v, a.sv, a.H, bh, a.Tk, a.Dv), dO = att_at(a.dO, a.so, a.H, bh, a.Tq, a.Dv);
    T lse[R], di[R], acc[R][NC];
#pragma unroll
    for (int i = 0; i < R; i++) {
        int64_t row = i0 + kl_att_tile_row(ty, i);
        lse[i] = row < a.Tq ? a.lse[bh * a.Tq + row] : (T)0; /* rows past Tq: q, dO rows read 0, dS 0 */
        di[i] = row < a.Tq ? a.di[bh * a.Tq + row] : (T)0;
#pragma unroll
        for (int c = 0; c < NC; c++) acc[i][c] = 0;
    }
    int64_t kend = kl_att_key_end(i0, a.Tq - i0 < N ? a.Tq - i0 : N, a.Tk, a.causal);
    for (int64_t j0 = 0; j0 < kend; j0 += N) {
        T s[R][R], dp[R][R];
        att_dot(sm, q, i0, k, j0, s);
        att_dot(sm, dO, i0, v, j0, dp);
#pragma unroll
        for (int i = 0; i < R; i++)
#pragma unroll
            for (int j = 0; j < R; j++) {
                int64_t row = i0 + kl_att_tile_row(ty, i), key = j0 + kl_att_tile_row(tx, j);
                T p = key < a.Tk && kl_att_visible(row, key, a.causal) ? att_prob(s[i][j] * a.scale, lse[i]) : (T)0;
                sm.p[kl_att_tile_row(ty, i)][kl_att_tile_row(tx, j)] = att_dscore(p, dp[i][j], di[i], a.scale);
            }
        __syncthreads();
        att_acc<T, W>(sm, k, j0, z, acc);
    }
#pragma unroll
    for (int i = 0; i < R; i++) {
        int64_t row = i0 + kl_att_tile_row(ty, i);
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int64_t col = kl_att_out_col(z, W, c, tx);
            if (row < a.Tq && col < a.D) a.out[(bh * a.Tq + row) * a.D + col] = acc[i][c];
        }
    }
}

/* dk, dv: block (bh, key tile j0) = blockIdx.x, chunk z of max(D, Dv);
 * thread (ty, tx): keys j0 + ty + 16 i, queries i0 + tx + 16 j of each
 * query tile (from the first query that sees j0). dk, dv [B,H,Tk,.] */
template <typename T, int W> __global__ void __launch_bounds__(KL_ATT_THREADS) att_dkv_k(att_args<T> a)
{
    const int R = att_geo<T>::R, N = att_geo<T>::N, NC = W / KL_ATT_TX;
    __shared__ att_smem<T> sm;
    const int ty = threadIdx.x / KL_ATT_TX, tx = threadIdx.x % KL_ATT_TX;
    int64_t nkt = (a.Tk + N - 1) / N, bh = blockIdx.x / nkt, j0 = (blockIdx.x % nkt) * N, z = blockIdx.y;
    att_mat<T> q = att_at(a.q, a.sq, a.H, bh, a.Tq, a.D), k = att_at(a.k, a.sk, a.H, bh, a.Tk, a.D);
    att_mat<T> v = att_at(a.v, a.sv, a.H, bh, a.Tk, a.Dv), dO = att_at(a.dO, a.so, a.H, bh, a.Tq, a.Dv);
    T dk[R][NC], dv[R][NC];
#pragma unroll
    for (int i = 0; i < R; i++)
#pragma unroll
        for (int c = 0; c < NC; c++) dk[i][c] = dv[i][c] = 0;
    for (int64_t i0 = kl_att_query_begin(j0, a.causal); i0 < a.Tq; i0 += N) {
        T st[R][R], dpt[R][R], lq[R], dq[R];
        att_dot(sm, k, j0, q, i0, st);   /* S^T: keys x queries */
        att_dot(sm, v, j0, dO, i0, dpt); /* dP^T */
#pragma unroll
        for (int j = 0; j < R; j++) {
            int64_t qi = i0 + kl_att_tile_row(tx, j);
            lq[j] = qi < a.Tq ? a.lse[bh * a.Tq + qi] : (T)0;
            dq[j] = qi < a.Tq ? a.di[bh * a.Tq + qi] : (T)0;
        }
#pragma unroll
        for (int i = 0; i < R; i++)
#pragma unroll
            for (int j = 0; j < R; j++) {
                int64_t key = j0 + kl_att_tile_row(ty, i), qi = i0 + kl_att_tile_row(tx, j);
                T p = qi < a.Tq && key < a.Tk && kl_att_visible(qi, key, a.causal)
                          ? att_prob(st[i][j] * a.scale, lq[j]) : (T)0;
                sm.p[kl_att_tile_row(ty, i)][kl_att_tile_row(tx, j)] = p;
                st[i][j] = att_dscore(p, dpt[i][j], dq[j], a.scale); /* dS^T */
            }
        __syncthreads();
        att_acc<T, W>(sm, dO, i0, z, dv);
#pragma unroll
        for (int i = 0; i < R; i++)
#pragma unroll
            for (int j = 0; j < R; j++) sm.p[kl_att_tile_row(ty, i)][kl_att_tile_row(tx, j)] = st[i][j];
        __syncthreads();
        att_acc<T, W>(sm, q, i0, z, dk);
    }
#pragma unroll
    for (int i = 0; i < R; i++) {
        int64_t key = j0 + kl_att_tile_row(ty, i);
        if (key >= a.Tk) continue;
#pragma unroll
        for (int c = 0; c < NC; c++) {
            int64_t col = kl_att_out_col(z, W, c, tx);
            if (col < a.D) a.dk[(bh * a.Tk + key) * a.D + col] = dk[i][c];
            if (col < a.Dv) a.dv[(bh * a.Tk + key) * a.Dv + col] = dv[i][c];
        }
    }
}

/* ---- launchers ---- */

template <typename T> static att_args<T> att_make(const kl_exec *ex, const kl_tensor *t, int bwd)
{
    const att_attr *at = KL_ATTR_C(t, att_attr);
    const kl_tensor *tq = t->src[bwd], *tk = t->src[bwd + 1], *tv = t->src[bwd + 2];
    att_args<T> a;
    memset(&a, 0, sizeof a);
    a.q = (const T *)kl_data(ex, tq), a.k = (const T *)kl_data(ex, tk), a.v = (const T *)kl_data(ex, tv);
    memcpy(a.sq, tq->st, sizeof a.sq), memcpy(a.sk, tk->st, sizeof a.sk), memcpy(a.sv, tv->st, sizeof a.sv);
    a.H = tq->ne[1], a.Tq = tq->ne[2], a.D = tq->ne[3], a.Tk = tk->ne[2], a.Dv = tv->ne[3];
    a.so[3] = 1, a.so[2] = a.Dv, a.so[1] = a.Tq * a.Dv, a.so[0] = a.H * a.Tq * a.Dv;
    a.scale = (T)at->scale;
    a.causal = at->causal;
    return a;
}

/* Grid (blocks of bh and row tiles, output chunks of width w); 0: too many blocks */
static dim3 att_grid(int64_t nbh, int64_t rows, int64_t n, int64_t w)
{
    int64_t bx = nbh * ((rows + n - 1) / n), by = (w + kl_att_wmax(w) - 1) / kl_att_wmax(w);
    return bx > INT_MAX || by > 65535 ? dim3(0) : dim3((unsigned)bx, (unsigned)by);
}

#define ATT_LAUNCH(kern, T, w, grid, a)                                                            \
    do {                                                                                           \
        if (kl_att_wmax(w) == 64) kern<T, 64><<<grid, KL_ATT_THREADS, 0, kl_cu_stream()>>>(a);    \
        else kern<T, 128><<<grid, KL_ATT_THREADS, 0, kl_cu_stream()>>>(a);                        \
        KL_CUDA_LAUNCHED(t, #kern);                                                                \
    } while (0)

template <typename T> static kl_status att_fwd(const kl_exec *ex, const kl_tensor *t)
{
    att_args<T> a = att_make<T>(ex, t, 0);
    a.out = (T *)kl_data(ex, t), a.lse_out = (T *)kl_aux(ex, t);
    int64_t nbh = t->ne[0] * t->ne[1], N = att_geo<T>::N;
    dim3 g = att_grid(nbh, a.Tq, N, a.Dv);
    if (!g.x) return kl_fail(KL_EUNSUPPORTED, "attention: %s is too large for the CUDA grid", kl_desc(t));
    ATT_LAUNCH(att_fwd_k, T, a.Dv, g, a);
    return KL_OK;
}

template <typename T> static kl_status att_bwd(const kl_exec *ex, const kl_tensor *t)
{
    att_args<T> a = att_make<T>(ex, t, 1);
    const kl_tensor *fw = t->src[4];
    a.dO = (const T *)kl_data(ex, t->src[0]), a.o = (const T *)kl_data(ex, fw), a.lse = (const T *)kl_aux(ex, fw);
    a.di_out = (T *)kl_scratch(ex, t), a.di = a.di_out;
    a.out = (T *)kl_data(ex, t), a.dk = (T *)kl_data(ex, t->extra[0]), a.dv = (T *)kl_data(ex, t->extra[1]);
    int64_t nbh = t->ne[0] * t->ne[1], N = att_geo<T>::N, rows = nbh * a.Tq, wkv = a.D > a.Dv ? a.D : a.Dv;
    dim3 gq = att_grid(nbh, a.Tq, N, a.D), gkv = att_grid(nbh, a.Tk, N, wkv);
    if (!gq.x || !gkv.x) return kl_fail(KL_EUNSUPPORTED, "attention_bwd: %s is too large for the CUDA grid", kl_desc(t));
    att_di_k<T><<<kl_cu_blocks(rows * 32, KL_CU_THREADS), KL_CU_THREADS, 0, kl_cu_stream()>>>(a.dO, a.o, a.di_out,
                                                                                              rows, a.Dv);
    KL_CUDA_LAUNCHED(t, "att_di_k");
    ATT_LAUNCH(att_dq_k, T, a.D, gq, a);
    ATT_LAUNCH(att_dkv_k, T, wkv, gkv, a);
    return KL_OK;
}


extern "C" kl_status kl_cuda_attention(const kl_exec *ex, const kl_tensor *t)
{
    return t->dtype == KL_F32 ? att_fwd<float>(ex, t) : t->dtype == KL_F64 ? att_fwd<double>(ex, t) : kl_cu_bad_dtype(t);
}

extern "C" kl_status kl_cuda_attention_bwd(const kl_exec *ex, const kl_tensor *t)
{
    return t->dtype == KL_F32 ? att_bwd<float>(ex, t) : t->dtype == KL_F64 ? att_bwd<double>(ex, t) : kl_cu_bad_dtype(t);
}
