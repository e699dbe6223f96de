/* Scaled dot-product attention, flash style: out = softmax(q k^T * s) v per
 * batch and head, s = 1/sqrt(D), optionally causal (query i sees keys
 * j <= i, top-left aligned as PyTorch's is_causal).
 *
 * Forward: query rows in blocks of ATT_QB; per block one GEMM gives the
 * scores against the keys it may see, a row pass turns them into
 * probabilities, one GEMM multiplies by v. Only the per-row logsumexp
 * [B,H,Tq] is kept (aux), never the Tq x Tk matrix; scratch is one
 * ATT_QB x Tk block per worker.
 * attention_bwd (sources dO, q, k, v, forward node) recomputes each block's
 * probabilities P = exp(S - lse) and, with Di = rowsum(dO * O):
 *   dV += P^T dO;  dP = dO V^T;  dS = P (dP - Di) s;  dQ = dS K;  dK += dS^T Q
 * Its primary output is dq; dk and dv are extras. Blocks of one (batch, head)
 * run in order on one worker, so dK and dV do not depend on the thread count.
 * q, k, v are read in place when each row is contiguous (st[3] == 1), e.g. a
 * permuted view of a fused qkv projection; otherwise copied first. */
#include "ops/ops.h"
#include "ops/attrs.h"
#include "ops/seq.h"
#include "ops/attention.h"
#include "backends/cpu/cpu.h"

#include <limits.h>
#include <math.h>
#include <omp.h>

#define ATT_QB 64                               /* query rows per block */
#define ATT_MAX_SLOTS 16                        /* parallel workers with own scratch */
#define ATT_SCRATCH_BUDGET ((size_t)256 << 20)  /* cap on all workers' scratch */


/* Whether GEMM can read x [B,H,T,D] in place; ld: its row stride. */
static bool att_direct(const kl_tensor *x)
{
    return x->st[3] == 1 && (x->ne[2] == 1 || x->st[2] >= x->ne[3]) && x->st[2] <= INT_MAX && x->st[0] >= 0 &&
           x->st[1] >= 0;
}
static int64_t att_ld(const kl_tensor *x) { return x->ne[2] == 1 ? x->ne[3] : x->st[2]; }

static int att_slots(int64_t tasks, size_t per_slot)
{
    int64_t n = tasks < ATT_MAX_SLOTS ? tasks : ATT_MAX_SLOTS;
    if ((size_t)n * per_slot > ATT_SCRATCH_BUDGET) n = (int64_t)(ATT_SCRATCH_BUDGET / per_slot);
    return n < 1 ? 1 : (int)n;
}

static kl_status att_shape(kl_tensor *t)
{
    att_attr *a = KL_ATTR(t, att_attr);
    bool bwd = t->op == KL_OP_attention_bwd;
    const kl_tensor *q = t->src[bwd], *k = t->src[bwd + 1], *v = t->src[bwd + 2];
    if (!kl_is_float(q->dtype) || q->ndim != 4)
        return kl_fail(KL_EINVAL, "attention: q must be [B, H, T, D] floating-point, got %s", kl_desc(q));
    int64_t B = q->ne[0], H = q->ne[1], Tq = q->ne[2], D = q->ne[3];
    if (k->ndim != 4 || k->dtype != q->dtype || k->ne[0] != B || k->ne[1] != H || k->ne[3] != D)
        return kl_fail(KL_EINVAL, "attention: k must be [%lld, %lld, Tk, %lld] %s to match q %s, got %s",
                       (long long)B, (long long)H, (long long)D, kl_dtype_name(q->dtype), kl_desc(q), kl_desc(k));
    int64_t Tk = k->ne[2], Dv = v->ndim == 4 ? v->ne[3] : 0;
    if (v->ndim != 4 || v->dtype != q->dtype || v->ne[0] != B || v->ne[1] != H || v->ne[2] != Tk)
        return kl_fail(KL_EINVAL, "attention: v must be [%lld, %lld, %lld, Dv] %s to match k %s, got %s",
                       (long long)B, (long long)H, (long long)Tk, kl_dtype_name(q->dtype), kl_desc(k), kl_desc(v));
    int64_t blk[2] = {2 * ATT_QB + 1, Tk}, rows[2] = {Tq, D > Dv ? D : Dv};
    if (!kl_seq_fits(2, blk, INT_MAX) || !kl_seq_fits(2, rows, INT_MAX))
        return kl_fail(KL_EINVAL, "attention: q %s, k %s, v %s too large (sizes must fit a 32-bit int)", kl_desc(q),
                       kl_desc(k), kl_desc(v));
    size_t es = kl_calc_size(q->dtype);
    int64_t nqb = (Tq + ATT_QB - 1) / ATT_QB;
    t->dtype = q->dtype;
    t->ndim = 4;
    t->ne[0] = B, t->ne[1] = H, t->ne[2] = Tq, t->ne[3] = bwd ? D : Dv;
    a->scale = 1.0 / sqrt((double)D);
    bool cuda = t->g->ctx->backend == KL_BACKEND_CUDA; /* CUDA: no score blocks; the backward's Di [B,H,Tq] */
    if (!bwd) {
        size_t per = (size_t)ATT_QB * (size_t)Tk * es;
        a->slots = att_slots(B * H * nqb, per);
        t->aux_bytes = (size_t)(B * H * Tq) * es;
        t->scratch_bytes = cuda ? 0 : (size_t)a->slots * per;
        return KL_OK;
    }
    const kl_tensor *dO = t->src[0], *fw = t->src[4];
    if (fw->op != KL_OP_attention || !kl_same_shape(dO, fw) || dO->dtype != fw->dtype)
        return kl_fail(KL_EINTERNAL, "attention_bwd: dO %s vs forward %s", kl_desc(dO), kl_desc(fw));
    size_t per = (size_t)(2 * ATT_QB * Tk + ATT_QB) * es;
    a->slots = att_slots(B * H, per);
    t->scratch_bytes = cuda ? (size_t)(B * H * Tq) * es : (size_t)a->slots * per;
    kl_tensor *e;
    KL_TRY(kl_node_add_extra(t, t->dtype, 4, k->ne, &e)); /* dk */
    return kl_node_add_extra(t, t->dtype, 4, v->ne, &e);  /* dv */
}

/* Worker count for a task loop of about `work` multiply-adds; BLAS runs
 * single-threaded inside workers. Small problems stay on one thread. */
static int workers_begin(const kl_exec *ex, int slots, int64_t tasks, double work)
{
    int nt = ex->threads < slots ? ex->threads : slots;
    if (nt > tasks) nt = (int)tasks;
    if (work < 64.0 * KL_PAR_MIN) nt = 1;
    if (nt < 1) nt = 1;
    if (nt > 1) kl_blas_set_threads(1);
    return nt;
}
static void workers_end(const kl_exec *ex, int nt)
{
    if (nt > 1) kl_blas_set_threads(ex->threads);
}

/* Pointer to row 0 of (b, h) of a [B,H,T,D] operand read in place. */
#define ATT_AT(p, x, bh) ((p) + kl_att_base((x)->st, (x)->ne[1], (bh)))

#define ATT_KERNELS(T_)                                                                            \
    static void att_fwd_##T_(const kl_exec *ex, const kl_tensor *t)                                \
    {                                                                                              \
        const att_attr *a = KL_ATTR_C(t, att_attr);                                                \
        const kl_tensor *tq = t->src[0], *tk = t->src[1], *tv = t->src[2];                         \
        const T_ *q = kl_data(ex, tq), *k = kl_data(ex, tk), *v = kl_data(ex, tv);                 \
        T_ *o = kl_data(ex, t), *lse = kl_aux(ex, t);                                              \
        unsigned char *scr = kl_scratch(ex, t);                                                    \
        int64_t Tq = tq->ne[2], D = tq->ne[3], Tk = tk->ne[2], Dv = tv->ne[3];                     \
        int64_t ldq = att_ld(tq), ldk = att_ld(tk), ldv = att_ld(tv);                              \
        int64_t nqb = (Tq + ATT_QB - 1) / ATT_QB, ntask = tq->ne[0] * tq->ne[1] * nqb;             \
        double work = (double)ntask * ATT_QB * (double)Tk * (double)(D + Dv);                      \
        int nt = workers_begin(ex, a->slots, ntask, work);                                         \
        _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                   \
        for (int64_t task = 0; task < ntask; task++) {                                             \
            T_ *S = (T_ *)(void *)(scr + (size_t)omp_get_thread_num() * ATT_QB * (size_t)Tk * sizeof(T_)); \
            int64_t bh = task / nqb, i0 = (task % nqb) * ATT_QB;                                   \
            int64_t nq = Tq - i0 < ATT_QB ? Tq - i0 : ATT_QB;                                      \
            int64_t nk = kl_att_key_end(i0, nq, Tk, a->causal);                                    \
            kl_gemm_##T_(false, true, nq, nk, D, (T_)a->scale, ATT_AT(q, tq, bh) + i0 * ldq, ldq,  \
                         ATT_AT(k, tk, bh), ldk, 0, S, nk);                                        \
            for (int64_t r = 0; r < nq; r++) {                                                     \
                T_ *sr = S + r * nk, mx = sr[0];                                                   \
                int64_t lim = kl_att_key_end(i0 + r, 1, nk, a->causal);                            \
                for (int64_t j = 1; j < lim; j++) mx = sr[j] > mx ? sr[j] : mx;                    \
                double s = 0;                                                                      \
                for (int64_t j = 0; j < lim; j++) sr[j] = kl_att_prob_##T_(sr[j], mx); /* vectorised */ \
                _Pragma("omp simd reduction(+ : s)")                                               \
                for (int64_t j = 0; j < lim; j++) s += (double)sr[j];                              \
                T_ inv = (T_)(1 / s);                                                              \
                for (int64_t j = 0; j < lim; j++) sr[j] *= inv;                                    \
                for (int64_t j = lim; j < nk; j++) sr[j] = 0;                                      \
                lse[bh * Tq + i0 + r] = kl_att_lse_##T_(mx, s);                                    \
            }                                                                                      \
            kl_gemm_##T_(false, false, nq, Dv, nk, 1, S, nk, ATT_AT(v, tv, bh), ldv, 0,            \
                         o + (bh * Tq + i0) * Dv, Dv);                                             \
        }                                                                                          \
        workers_end(ex, nt);                                                                       \
    }                                                                                              \
    static void att_bwd_##T_(const kl_exec *ex, const kl_tensor *t)                                \
    {                                                                                              \
        const att_attr *a = KL_ATTR_C(t, att_attr);                                                \
        const kl_tensor *tq = t->src[1], *tk = t->src[2], *tv = t->src[3], *fw = t->src[4];        \
        const T_ *dO = kl_data(ex, t->src[0]), *q = kl_data(ex, tq), *k = kl_data(ex, tk);         \
        const T_ *v = kl_data(ex, tv), *O = kl_data(ex, fw), *lse = kl_aux(ex, fw);                \
        T_ *dq = kl_data(ex, t), *dk = kl_data(ex, t->extra[0]), *dv = kl_data(ex, t->extra[1]);   \
        unsigned char *scr = kl_scratch(ex, t);                                                    \
        int64_t Tq = tq->ne[2], D = tq->ne[3], Tk = tk->ne[2], Dv = tv->ne[3], nbh = tq->ne[0] * tq->ne[1]; \
        int64_t ldq = att_ld(tq), ldk = att_ld(tk), ldv = att_ld(tv);                              \
        size_t per = (size_t)(2 * ATT_QB * Tk + ATT_QB) * sizeof(T_);                              \
        T_ sc = (T_)a->scale;                                                                      \
        double work = 2.0 * (double)nbh * (double)Tq * (double)Tk * (double)(D + Dv);              \
        int nt = workers_begin(ex, a->slots, nbh, work);                                           \
        _Pragma("omp parallel for num_threads(nt) schedule(static) if (nt > 1)")                   \
        for (int64_t bh = 0; bh < nbh; bh++) {                                                     \
            T_ *P = (T_ *)(void *)(scr + (size_t)omp_get_thread_num() * per), *dP = P + ATT_QB * Tk; \
            T_ *Di = dP + ATT_QB * Tk, *dkp = dk + bh * Tk * D, *dvp = dv + bh * Tk * Dv;          \
            const T_ *qp = ATT_AT(q, tq, bh), *kp = ATT_AT(k, tk, bh), *vp = ATT_AT(v, tv, bh);    \
            memset(dkp, 0, (size_t)(Tk * D) * sizeof(T_));                                         \
            memset(dvp, 0, (size_t)(Tk * Dv) * sizeof(T_));                                        \
            for (int64_t i0 = 0; i0 < Tq; i0 += ATT_QB) {                                          \
                int64_t nq = Tq - i0 < ATT_QB ? Tq - i0 : ATT_QB;                                  \
                int64_t nk = kl_att_key_end(i0, nq, Tk, a->causal);                                \
                const T_ *dOb = dO + (bh * Tq + i0) * Dv, *Ob = O + (bh * Tq + i0) * Dv;           \
                kl_gemm_##T_(false, true, nq, nk, D, sc, qp + i0 * ldq, ldq, kp, ldk, 0, P, nk);   \
                for (int64_t r = 0; r < nq; r++) {                                                 \
                    T_ *pr = P + r * nk, l = lse[bh * Tq + i0 + r];                                \
                    double s = 0;                                                                  \
                    int64_t lim = kl_att_key_end(i0 + r, 1, nk, a->causal);                        \
                    for (int64_t j = 0; j < lim; j++) pr[j] = kl_att_prob_##T_(pr[j], l);          \
                    for (int64_t j = lim; j < nk; j++) pr[j] = 0;                                  \
                    for (int64_t d = 0; d < Dv; d++) s += (double)dOb[r * Dv + d] * Ob[r * Dv + d]; \
                    Di[r] = (T_)s;                                                                 \
                }                                                                                  \
                kl_gemm_##T_(true, false, nk, Dv, nq, 1, P, nk, dOb, Dv, 1, dvp, Dv);              \
                kl_gemm_##T_(false, true, nq, nk, Dv, 1, dOb, Dv, vp, ldv, 0, dP, nk);             \
                for (int64_t r = 0; r < nq; r++)                                                   \
                    for (int64_t j = 0; j < nk; j++)                                               \
                        dP[r * nk + j] = kl_att_dscore_##T_(P[r * nk + j], dP[r * nk + j], Di[r], sc); \
                kl_gemm_##T_(false, false, nq, D, nk, 1, dP, nk, kp, ldk, 0, dq + (bh * Tq + i0) * D, D); \
                kl_gemm_##T_(true, false, nk, D, nq, 1, dP, nk, qp + i0 * ldq, ldq, 1, dkp, D);    \
            }                                                                                      \
        }                                                                                          \
        workers_end(ex, nt);                                                                       \
    }
KL_FOR_REAL(ATT_KERNELS)

static kl_status att_cpu(const kl_exec *ex, const kl_tensor *t)
{
    if (t->dtype == KL_F32) att_fwd_float(ex, t);
    else att_fwd_double(ex, t);
    return KL_OK;
}

static kl_status att_bwd_cpu(const kl_exec *ex, const kl_tensor *t)
{
    if (t->dtype == KL_F32) att_bwd_float(ex, t);
    else att_bwd_double(ex, t);
    return KL_OK;
}

static kl_status att_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    kl_tensor *q = t->src[0], *k = t->src[1], *v = t->src[2], *dq;
    if (!q->requires_grad && !k->requires_grad && !v->requires_grad) return KL_OK;
    kl_tensor *src[5] = {dy, q, k, v, t};
    KL_TRY(kl_contiguous(g, dy, &src[0]));
    KL_TRY(kl_node_new(g, KL_OP_attention_bwd, 5, src, t->attr, sizeof(att_attr), &dq));
    KL_TRY(kl_grad_acc(g, q, dq));
    KL_TRY(kl_grad_acc(g, k, dq->extra[0]));
    return kl_grad_acc(g, v, dq->extra[1]);
}

const kl_op_def kl_op_attention = {
    .name = "attention", .shape = att_shape, .backward = att_backward, .fwd = {[KL_BACKEND_CPU] = att_cpu}};
const kl_op_def kl_op_attention_bwd = {
    .name = "attention_bwd", .shape = att_shape, .fwd = {[KL_BACKEND_CPU] = att_bwd_cpu}};

kl_status kl_attention(kl_graph *g, kl_tensor *q, kl_tensor *k, kl_tensor *v, int causal, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "attention: out is NULL");
    *out = NULL;
    kl_tensor *src[3] = {q, k, v};
    KL_TRY(kl_check_args(g, "attention", 3, src));
    for (int i = 0; i < 3; i++)
        if (src[i]->ndim == 4 && !att_direct(src[i])) KL_TRY(kl_contiguous(g, src[i], &src[i]));
    att_attr a = {.causal = causal != 0};
    return kl_node_new(g, KL_OP_attention, 3, src, &a, sizeof a, out);
}
