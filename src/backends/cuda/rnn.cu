/* LSTM and GRU layers on CUDA, forward and backward: the CPU kernels'
 * algorithm step for step (src/ops/lstm.c, gru.c; sources and extras in
 * ops/rnn.h), the per-unit work of each step in ops/seq.h (the functions
 * the CPU loops call), GEMMs on cuBLASLt (kl_cu_gemm_run, TF32 for f32).
 *
 * Forward: one GEMM A = x W_ih^T [B*T, G*H]; per step t one GEMM
 * h_{t-1} W_hh^T (LSTM: added into A[:, t] in place, beta 1; GRU: into gh
 * [B,3H], scratch) unless h_{t-1} is zero, then one kernel over the B*H
 * units (biases, gates, c_t, h_t = y[:, t]; h_n and c_n at the last step).
 * Aux as on the CPU: the activated gates [B,T,G*H], then the cell states c
 * (LSTM) or W_hn h + b_hn (GRU) [B,T,H].
 *
 * Backward (sources dy, forward node, w_hh, then h0, c0, dh_n, dc_n where
 * present), steps in reverse: one kernel over the units writes dG[:, t]
 * (and dc, LSTM; the hidden-side dGh[:, t], GRU), then one GEMM gives
 * dh_{t-1}: LSTM dh = dG_t W_hh (overwrite), GRU dh = z dh + dGh_t W_hh
 * (accumulate onto the kernel's z dh). At the end dh0, dc0 are copied out
 * and dW_hh = dG^T [h0; y[:, :-1]] (GRU: dGh^T) is one GEMM over the B*T
 * rows, the right factor built in scratch. Every output is overwritten.
 * Scratch (ops/seq.h kl_rnn_bwd_scratch_cuda, 256-byte offsets): dh [B,H],
 * dc [B,H] (LSTM), then rows [B*T,H] (dW_hh) or the GRU step's dGh [B,3H]
 * (when no dGh extra is asked). */
#include "backends/cuda/cuda_internal.cuh"
#include "ops/seq.h"

template <typename T> struct rnn_ty;
template <> struct rnn_ty<float> {
    typedef kl_rnn_fwd_float fwd;
    typedef kl_rnn_bwd_float bwd;
};
template <> struct rnn_ty<double> {
    typedef kl_rnn_fwd_double fwd;
    typedef kl_rnn_bwd_double bwd;
};

#define RNN_FNS(T_)                                                                                \
    static __device__ __forceinline__ void step(const kl_rnn_fwd_##T_ *a, bool lstm, int64_t s, int64_t n) \
    {                                                                                              \
        if (lstm) kl_lstm_step_##T_(a, s, n);                                                      \
        else kl_gru_step_##T_(a, s, n);                                                            \
    }                                                                                              \
    static __device__ __forceinline__ void step(const kl_rnn_bwd_##T_ *a, bool lstm, int64_t s, int64_t n) \
    {                                                                                              \
        if (lstm) kl_lstm_step_bwd_##T_(a, s, n);                                                  \
        else kl_gru_step_bwd_##T_(a, s, n);                                                        \
    }                                                                                              \
    static __device__ __forceinline__ T_ prev_h(const T_ *h0, const T_ *y, int64_t steps, int64_t H, int64_t i) \
    {                                                                                              \
        return kl_rnn_prev_h_##T_(h0, y, steps, H, i);                                             \
    }
RNN_FNS(float)
RNN_FNS(double)

/* thread per unit n = b*H + j of step s (A: the forward or backward arguments) */
template <bool LSTM, typename A> __global__ void rnn_step_k(A a, int64_t s)
{
    KL_CU_FOR(n, a.B * a.H) step(&a, LSTM, s, n);
}

/* thread per element of rows = [h0; y[:, :-1]] [B,T,H] */
template <typename T> __global__ void rnn_prev_h_k(const T *h0, const T *y, T *rows, int64_t steps, int64_t H, int64_t n)
{
    KL_CU_FOR(i, n) rows[i] = prev_h(h0, y, steps, H, i);
}

/* y[M,N] (ld ldy) = a[M,K] (ta: stored [K,M]) @ b[K,N] (tb: stored [N,K]) + beta y */
static kl_status gemm(const kl_tensor *t, int64_t M, int64_t N, int64_t K, const void *a, int64_t lda, int ta,
                      const void *b, int64_t ldb, int tb, void *y, int64_t ldy, double beta)
{
    kl_cu_gemm g;
    memset(&g, 0, sizeof g);
    g.dt = t->dtype;
    g.M = M, g.N = N, g.K = K;
    g.a = a, g.lda = lda, g.ta = ta;
    g.b = b, g.ldb = ldb, g.tb = tb;
    g.y = y, g.ldy = ldy, g.beta = beta;
    g.batch = 1;
    return kl_cu_gemm_run(t, &g);
}

template <typename T> static const T *src_or_null(const kl_exec *ex, const kl_tensor *t, int i)
{
    return i >= 0 ? (const T *)kl_data(ex, t->src[i]) : NULL;
}

template <typename T> static kl_status rnn_fwd(const kl_exec *ex, const kl_tensor *t)
{
    const kl_rnn_attr *at = KL_ATTR_C(t, kl_rnn_attr);
    bool lstm = t->op == KL_OP_lstm;
    int64_t B = t->ne[0], T_ = t->ne[1], H = t->ne[2], NI = t->src[0]->ne[2], GH = at->gates * H;
    const T *x = (const T *)kl_data(ex, t->src[0]), *wih = (const T *)kl_data(ex, t->src[1]);
    const T *whh = (const T *)kl_data(ex, t->src[2]), *h0 = src_or_null<T>(ex, t, at->ih0);
    typename rnn_ty<T>::fwd a;
    memset(&a, 0, sizeof a);
    a.A = (T *)kl_aux(ex, t);
    a.S = a.A + B * T_ * GH;
    a.y = (T *)kl_data(ex, t);
    a.bih = src_or_null<T>(ex, t, at->ib_ih);
    a.bhh = src_or_null<T>(ex, t, at->ib_hh);
    a.h0 = h0;
    a.c0 = src_or_null<T>(ex, t, at->ic0);
    a.gh = lstm ? NULL : (const T *)kl_scratch(ex, t);
    a.hn = (T *)kl_data(ex, t->extra[0]);
    a.cn = lstm ? (T *)kl_data(ex, t->extra[1]) : NULL;
    a.B = B, a.steps = T_, a.H = H;
    KL_TRY(gemm(t, B * T_, GH, NI, x, NI, 0, wih, NI, 1, a.A, GH, 0));
    unsigned nb = kl_cu_blocks(B * H, KL_CU_THREADS);
    for (int64_t s = 0; s < T_; s++) {
        const T *hp = s ? a.y + (s - 1) * H : h0;
        int64_t ldh = s ? T_ * H : H;
        if (hp && lstm) KL_TRY(gemm(t, B, GH, H, hp, ldh, 0, whh, H, 1, a.A + s * GH, T_ * GH, 1));
        if (hp && !lstm) KL_TRY(gemm(t, B, GH, H, hp, ldh, 0, whh, H, 1, (void *)a.gh, GH, 0));
        if (lstm) rnn_step_k<true><<<nb, KL_CU_THREADS, 0, kl_cu_stream()>>>(a, s);
        else rnn_step_k<false><<<nb, KL_CU_THREADS, 0, kl_cu_stream()>>>(a, s);
        KL_CUDA_LAUNCHED(t, "rnn_step_k");
    }
    return KL_OK;
}

template <typename T> static kl_status rnn_bwd(const kl_exec *ex, const kl_tensor *t)
{
    const kl_rnn_bwd_attr *at = KL_ATTR_C(t, kl_rnn_bwd_attr);
    const kl_tensor *fw = t->src[1];
    const char *op = kl_ops[t->op]->name;
    bool lstm = t->op == KL_OP_lstm_bwd;
    int64_t B = fw->ne[0], T_ = fw->ne[1], H = fw->ne[2], GH = (lstm ? 4 : 3) * H;
    size_t bh_bytes = (size_t)(B * H) * sizeof(T), more_off;
    kl_rnn_bwd_scratch_cuda(lstm, B, T_, H, sizeof(T), at->need_dwhh, at->need_dgh, &more_off);
    unsigned char *scr = (unsigned char *)kl_scratch(ex, t);
    const T *whh = (const T *)kl_data(ex, t->src[2]);
    const T *dhn = src_or_null<T>(ex, t, at->idhn), *dcn = src_or_null<T>(ex, t, at->idcn);
    typename rnn_ty<T>::bwd a;
    memset(&a, 0, sizeof a);
    a.dy = (const T *)kl_data(ex, t->src[0]);
    a.y = (const T *)kl_data(ex, fw);
    a.A = (const T *)kl_aux(ex, fw);
    a.S = a.A + B * T_ * GH;
    a.h0 = src_or_null<T>(ex, t, at->ih0);
    a.c0 = src_or_null<T>(ex, t, at->ic0);
    a.dG = (T *)kl_data(ex, t);
    a.dh = (T *)scr;
    a.dc = lstm ? (T *)(scr + kl_seq_al256(bh_bytes)) : NULL;
    a.B = B, a.steps = T_, a.H = H;
    T *more = (T *)(scr + more_off); /* rows for dW_hh, or the GRU step's dGh */
    int e = 0;
    T *dGh = at->need_dgh ? (T *)kl_data(ex, t->extra[e++]) : NULL;
    T *dh0 = at->need_dh0 ? (T *)kl_data(ex, t->extra[e++]) : NULL;
    T *dc0 = at->need_dc0 ? (T *)kl_data(ex, t->extra[e++]) : NULL;
    T *dwhh = at->need_dwhh ? (T *)kl_data(ex, t->extra[e++]) : NULL;
    a.ldg = dGh ? T_ * GH : GH;
    cudaStream_t st = kl_cu_stream();
    if (dhn) KL_CUDA_CHECK(cudaMemcpyAsync(a.dh, dhn, bh_bytes, cudaMemcpyDeviceToDevice, st), op, "cudaMemcpyAsync");
    else KL_CUDA_CHECK(cudaMemsetAsync(a.dh, 0, bh_bytes, st), op, "cudaMemsetAsync");
    if (lstm && dcn) KL_CUDA_CHECK(cudaMemcpyAsync(a.dc, dcn, bh_bytes, cudaMemcpyDeviceToDevice, st), op, "cudaMemcpyAsync");
    else if (lstm) KL_CUDA_CHECK(cudaMemsetAsync(a.dc, 0, bh_bytes, st), op, "cudaMemsetAsync");
    unsigned nb = kl_cu_blocks(B * H, KL_CU_THREADS);
    for (int64_t s = T_ - 1; s >= 0; s--) {
        if (!lstm) a.dgh = dGh ? dGh + s * GH : more;
        if (lstm) rnn_step_k<true><<<nb, KL_CU_THREADS, 0, st>>>(a, s);
        else rnn_step_k<false><<<nb, KL_CU_THREADS, 0, st>>>(a, s);
        KL_CUDA_LAUNCHED(t, "rnn_step_k");
        if (s == 0 && !dh0) break; /* dh_{-1} is not needed */
        if (lstm) KL_TRY(gemm(t, B, H, GH, a.dG + s * GH, T_ * GH, 0, whh, H, 0, a.dh, H, 0));
        else KL_TRY(gemm(t, B, H, GH, a.dgh, a.ldg, 0, whh, H, 0, a.dh, H, 1));
    }
    if (dh0) KL_CUDA_CHECK(cudaMemcpyAsync(dh0, a.dh, bh_bytes, cudaMemcpyDeviceToDevice, st), op, "cudaMemcpyAsync");
    if (dc0) KL_CUDA_CHECK(cudaMemcpyAsync(dc0, a.dc, bh_bytes, cudaMemcpyDeviceToDevice, st), op, "cudaMemcpyAsync");
    if (dwhh) {
        int64_t n = B * T_ * H;
        rnn_prev_h_k<T><<<kl_cu_blocks(n, KL_CU_THREADS), KL_CU_THREADS, 0, st>>>(a.h0, a.y, more, T_, H, n);
        KL_CUDA_LAUNCHED(t, "rnn_prev_h_k");
        KL_TRY(gemm(t, GH, H, B * T_, lstm ? a.dG : dGh, GH, 1, more, H, 0, dwhh, H, 0));
    }
    return KL_OK;
}


static kl_status rnn_fwd_run(const kl_exec *ex, const kl_tensor *t)
{
    return t->dtype == KL_F32 ? rnn_fwd<float>(ex, t) : t->dtype == KL_F64 ? rnn_fwd<double>(ex, t) : kl_cu_bad_dtype(t);
}

static kl_status rnn_bwd_run(const kl_exec *ex, const kl_tensor *t)
{
    return t->dtype == KL_F32 ? rnn_bwd<float>(ex, t) : t->dtype == KL_F64 ? rnn_bwd<double>(ex, t) : kl_cu_bad_dtype(t);
}

extern "C" kl_status kl_cuda_lstm(const kl_exec *ex, const kl_tensor *t) { return rnn_fwd_run(ex, t); }
extern "C" kl_status kl_cuda_gru(const kl_exec *ex, const kl_tensor *t) { return rnn_fwd_run(ex, t); }
extern "C" kl_status kl_cuda_lstm_bwd(const kl_exec *ex, const kl_tensor *t) { return rnn_bwd_run(ex, t); }
extern "C" kl_status kl_cuda_gru_bwd(const kl_exec *ex, const kl_tensor *t) { return rnn_bwd_run(ex, t); }
