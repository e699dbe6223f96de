/* Batch normalisation over x [N, C, S...] (S: any trailing dims, maybe none),
 * per channel c over the M = N * prod(S) values of that channel:
 *   training: mean, var = biased batch variance; y = (x - mean) / sqrt(var + eps) * gamma + beta;
 *             running_mean = (1 - m) running_mean + m mean,
 *             running_var  = (1 - m) running_var  + m var * M / (M - 1)   (unbiased, as PyTorch)
 *             updated in place in the ctx's buffers on every run.
 *   eval:     mean, var = running_mean, running_var (nothing updated).
 * Forward saves mean and invstd per channel in aux ([2, C] of the dtype).
 * batchnorm_bwd (srcs dy, x, forward node, gamma?) writes dx (primary output)
 * and dgamma, dbeta (extras) in one pass; see ops/norm.h for the formulas.
 * kl_batchnorm_act fuses relu, tanh or sigmoid into the output pass (y =
 * act(norm(x))); its backward forms dz = act'(y) dy in a unary_bwd node
 * first (fusing that into batchnorm_bwd's two passes read y and dy twice,
 * which measured slower on the CPU).
 * Per-channel sums are each made by one thread in a fixed order, so results
 * do not depend on the thread count. */
#include "ops/ops.h"
#include "ops/elem.h"   /* kl_unary_*, kl_unary_grad_*: the fused activation */
#include "ops/norm.h"
#include "ops/norm_grad.h"
#include "ops/cpu_kernel.h"
#include "backends/cpu/cpu.h"

#include <math.h>

#include "ops/attrs.h" /* the attribute structs */

/* channels per block for the statistics pass: one when each (n, c) plane is
 * long, else enough that the inner loop over channels is contiguous */
#define BN_CBLK(S) ((S) >= 32 ? 1 : 64)

/* gamma, beta and the running statistics: x's dtype; the statistics may
 * stay f32 for a 16-bit x (mixed precision: they are updated in place) */
static kl_status check_channel_vec(const kl_tensor *x, const kl_tensor *v, const char *what, bool stat)
{
    bool f32_stat = stat && v->dtype == KL_F32 && (x->dtype == KL_BF16 || x->dtype == KL_F16);
    if ((v->dtype != x->dtype && !f32_stat) || v->ndim != 1 || v->ne[0] != x->ne[1])
        return kl_fail(KL_EINVAL, "batchnorm: %s is %s, expected [%lld] %s for input %s (%lld channels)", what,
                       kl_desc(v), (long long)x->ne[1], kl_dtype_name(x->dtype), kl_desc(x), (long long)x->ne[1]);
    return KL_OK;
}

static kl_status bn_shape(kl_tensor *t)
{
    const bn_attr *a = KL_ATTR(t, bn_attr);
    const kl_tensor *x = t->src[0];
    if (!kl_is_float(x->dtype))
        return kl_fail(KL_EINVAL, "batchnorm: expected floating-point input, got %s", kl_desc(x));
    if (x->ndim < 2) return kl_fail(KL_EINVAL, "batchnorm: input must be [N, C, ...], got %s", kl_desc(x));
    if (a->ig >= 0) KL_TRY(check_channel_vec(x, t->src[a->ig], "gamma", false));
    if (a->ib >= 0) KL_TRY(check_channel_vec(x, t->src[a->ib], "beta", false));
    if (a->irm >= 0) KL_TRY(check_channel_vec(x, t->src[a->irm], "running_mean", true));
    if (a->irv >= 0) KL_TRY(check_channel_vec(x, t->src[a->irv], "running_var", true));
    int64_t M = kl_numel(x) / x->ne[1];
    if (a->training && M < 2)
        return kl_fail(KL_EINVAL, "batchnorm: training needs more than 1 value per channel, input %s has %lld",
                       kl_desc(x), (long long)M);
    t->dtype = x->dtype;
    t->ndim = x->ndim;
    memcpy(t->ne, x->ne, sizeof t->ne);
    t->aux_bytes = 2 * (size_t)x->ne[1] * kl_calc_size(x->dtype);
    return KL_OK;
}

/* y = act(y) over a plane, switched on outside the loops so each inlines
 * its math (as ops/unary.c); the values are the unary op's, bit for bit. */
#define BN_ACT_ROW(T)                                                                              \
    static void bn_act_row_##T(int act, T *y, int64_t n)                                           \
    {                                                                                              \
        switch (act) {                                                                             \
        case KL_UN_RELU: for (int64_t i = 0; i < n; i++) y[i] = kl_unary_##T(KL_UN_RELU, y[i], (T)0); break; \
        case KL_UN_TANH: for (int64_t i = 0; i < n; i++) y[i] = kl_unary_##T(KL_UN_TANH, y[i], (T)0); break; \
        default: for (int64_t i = 0; i < n; i++) y[i] = kl_unary_##T(KL_UN_SIGMOID, y[i], (T)0); break; \
        }                                                                                          \
    }
KL_FOR_REAL(BN_ACT_ROW)

/* Sums over channel c's values of f(x) (and of dy * (x - k) for bwd), each
 * channel by one thread: s1 = sum(x - k), s2 = sum((x - k)^2) with k a value
 * of the channel (shifting keeps the variance free of cancellation), or for
 * bwd s1 = sum(dy), s2 = sum(dy * (x - k)) with k = mean. */
#define BN_KERNELS(T)                                                                              \
    static void bn_sums_##T(const T *x, const T *dy, const T *k, double *s1, double *s2, int64_t N, \
                            int64_t C, int64_t S)                                                  \
    {                                                                                              \
        int64_t cb = BN_CBLK(S), nblk = (C + cb - 1) / cb;                                         \
        _Pragma("omp parallel for schedule(static) if (N * C * S > KL_PAR_MIN && nblk > 1)")       \
        for (int64_t blk = 0; blk < nblk; blk++) {                                                 \
            int64_t c0 = blk * cb, c1 = c0 + cb < C ? c0 + cb : C;                                 \
            for (int64_t c = c0; c < c1; c++) s1[c] = s2[c] = 0;                                   \
            for (int64_t n = 0; n < N; n++)                                                        \
                for (int64_t c = c0; c < c1; c++) {                                                \
                    const T *xr = x + (n * C + c) * S, *dr = dy ? dy + (n * C + c) * S : NULL;     \
                    double a1 = 0, a2 = 0, kc = (double)k[c];                                      \
                    if (dr) {                                                                      \
                        _Pragma("omp simd reduction(+ : a1, a2)")                                  \
                        for (int64_t s = 0; s < S; s++) {                                          \
                            a1 += (double)dr[s];                                                   \
                            a2 += (double)dr[s] * ((double)xr[s] - kc);                            \
                        }                                                                          \
                    } else {                                                                       \
                        _Pragma("omp simd reduction(+ : a1, a2)")                                  \
                        for (int64_t s = 0; s < S; s++) {                                          \
                            double d = (double)xr[s] - kc;                                         \
                            a1 += d;                                                               \
                            a2 += d * d;                                                           \
                        }                                                                          \
                    }                                                                              \
                    s1[c] += a1;                                                                   \
                    s2[c] += a2;                                                                   \
                }                                                                                  \
        }                                                                                          \
    }                                                                                              \
    static void bn_fwd_##T(const kl_exec *ex, const kl_tensor *t)                                  \
    {                                                                                              \
        const bn_attr *a = KL_ATTR_C(t, bn_attr);                                                  \
        const T *x = kl_data(ex, t->src[0]);                                                       \
        const T *gm = a->ig >= 0 ? kl_data(ex, t->src[a->ig]) : NULL;                              \
        const T *bt = a->ib >= 0 ? kl_data(ex, t->src[a->ib]) : NULL;                              \
        T *rm = a->irm >= 0 ? kl_data(ex, t->src[a->irm]) : NULL;                                  \
        T *rv = a->irv >= 0 ? kl_data(ex, t->src[a->irv]) : NULL;                                  \
        T *y = kl_data(ex, t), *mean = kl_aux(ex, t);                                              \
        int64_t N = t->ne[0], C = t->ne[1], S = kl_numel(t) / (N * C), M = N * S;                  \
        T *invstd = mean + C;                                                                      \
        if (a->training) {                                                                         \
            double *s = kl_scratch(ex, t);                                                         \
            for (int64_t c = 0; c < C; c++) mean[c] = x[c * S]; /* the shift: x[0, c, 0] */        \
            bn_sums_##T(x, NULL, mean, s, s + C, N, C, S);                                         \
            double mom = a->momentum;                                                              \
            for (int64_t c = 0; c < C; c++) {                                                      \
                double d = s[c] / (double)M, var = s[C + c] / (double)M - d * d;                   \
                if (var < 0) var = 0;                                                              \
                double mu = (double)mean[c] + d;                                                   \
                mean[c] = (T)mu;                                                                   \
                invstd[c] = (T)(1.0 / sqrt(var + a->eps));                                         \
                if (rm) rm[c] = (T)((1 - mom) * (double)rm[c] + mom * mu);                         \
                if (rv) rv[c] = (T)((1 - mom) * (double)rv[c] + mom * var * (double)M / (double)(M - 1)); \
            }                                                                                      \
        } else {                                                                                   \
            for (int64_t c = 0; c < C; c++) {                                                      \
                mean[c] = rm[c];                                                                   \
                invstd[c] = (T)(1.0 / sqrt((double)rv[c] + a->eps));                               \
            }                                                                                      \
        }                                                                                          \
        _Pragma("omp parallel for collapse(2) schedule(static) if (N * C * S > KL_PAR_MIN)")       \
        for (int64_t n = 0; n < N; n++)                                                            \
            for (int64_t c = 0; c < C; c++) {                                                      \
                const T *xr = x + (n * C + c) * S;                                                 \
                T *yr = y + (n * C + c) * S, mu = mean[c], is = invstd[c];                         \
                T g = gm ? gm[c] : (T)1, b = bt ? bt[c] : (T)0;                                    \
                for (int64_t s = 0; s < S; s++) yr[s] = kl_norm_fwd_##T(xr[s], mu, is, g, b);       \
                if (a->act >= 0) bn_act_row_##T(a->act, yr, S); /* while the plane is in cache */  \
            }                                                                                      \
    }                                                                                              \
    static void bn_bwd_##T(const kl_exec *ex, const kl_tensor *t)                                  \
    {                                                                                              \
        const bn_attr *a = KL_ATTR_C(t, bn_attr);                                                  \
        const kl_tensor *fw = t->src[2];                                                           \
        const T *dy = kl_data(ex, t->src[0]), *x = kl_data(ex, t->src[1]);                         \
        const T *mean = kl_aux(ex, fw), *invstd = mean + fw->ne[1];                                \
        const T *gm = t->n_src > 3 ? kl_data(ex, t->src[3]) : NULL;                                \
        int e = 0;                                                                                 \
        T *dg = a->need_dg ? kl_data(ex, t->extra[e++]) : NULL;                                    \
        T *db = a->need_db ? kl_data(ex, t->extra[e++]) : NULL;                                    \
        T *dx = kl_data(ex, t);                                                                    \
        int64_t N = t->ne[0], C = t->ne[1], S = kl_numel(t) / (N * C), M = N * S;                  \
        double *sdy = kl_scratch(ex, t), *sdyx = sdy + C;                                          \
        bool sums = a->training || dg || db;                                                       \
        if (sums) bn_sums_##T(x, dy, mean, sdy, sdyx, N, C, S);                                    \
        for (int64_t c = 0; sums && c < C; c++) {                                                  \
            sdyx[c] *= (double)invstd[c]; /* sum(dy * xhat) */                                     \
            if (dg) dg[c] = (T)sdyx[c];                                                            \
            if (db) db[c] = (T)sdy[c];                                                             \
        }                                                                                          \
        if (!a->need_dx) return;                                                                   \
        _Pragma("omp parallel for collapse(2) schedule(static) if (N * C * S > KL_PAR_MIN)")       \
        for (int64_t n = 0; n < N; n++)                                                            \
            for (int64_t c = 0; c < C; c++) {                                                      \
                const T *xr = x + (n * C + c) * S, *dr = dy + (n * C + c) * S;                     \
                T *or_ = dx + (n * C + c) * S, g = gm ? gm[c] : (T)1, mu = mean[c], is = invstd[c]; \
                if (!a->training) {                                                                \
                    T k = g * is;                                                                  \
                    for (int64_t s = 0; s < S; s++) or_[s] = dr[s] * k;                            \
                } else {                                                                           \
                    T mg = (T)(sdy[c] / (double)M) * g, mgx = (T)(sdyx[c] / (double)M) * g;        \
                    kl_norm_bwd_run_##T(xr, dr, gm ? gm + c : NULL, 0, mu, is, mg, mgx, S, or_);   \
                }                                                                                  \
            }                                                                                      \
    }
KL_FOR_REAL(BN_KERNELS)

KL_CPU_REAL_KERNEL(bn_cpu, bn_fwd)
KL_CPU_REAL_KERNEL(bn_bwd_cpu, bn_bwd)

/* Scratch in doubles: two per channel on the CPU; on CUDA two per chunk
 * of each channel (kl_sum_chunks), and for the backward two more per
 * channel (its finished sums). */
static size_t bn_scratch(const kl_tensor *t, int bwd)
{
    int64_t C = t->ne[1], M = kl_numel(t) / C;
    if (t->g->ctx->backend != KL_BACKEND_CUDA) return 2 * (size_t)C * sizeof(double);
    return (size_t)(2 * C * kl_sum_chunks(M) + (bwd ? 2 * C : 0)) * sizeof(double);
}

/* srcs: dy, x, forward node, gamma (if any); extras dgamma, dbeta as asked */
static kl_status bn_bwd_shape(kl_tensor *t)
{
    const bn_attr *a = KL_ATTR(t, bn_attr);
    KL_TRY(kl_norm_bwd_shape(t, "batchnorm_bwd", &t->src[1]->ne[1], a->need_dg, a->need_db));
    t->scratch_bytes = bn_scratch(t, 1);
    return KL_OK;
}

static kl_status bn_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    bn_attr a = *KL_ATTR(t, bn_attr);
    if (a.act >= 0) { /* dz = act'(y) dy, then the plain backward on dz */
        KL_TRY(kl_fused_act_grad(g, a.act, dy, t, &dy));
        a.act = -1;
    }
    return kl_norm_backward(g, t, dy, KL_OP_batchnorm_bwd, a.ig, a.ib, &a, sizeof a, &a.need_dx, &a.need_dg,
                            &a.need_db);
}

/* scratch for the training statistics */
static kl_status bn_fwd_shape(kl_tensor *t)
{
    KL_TRY(bn_shape(t));
    if (KL_ATTR(t, bn_attr)->training) t->scratch_bytes = bn_scratch(t, 0);
    return KL_OK;
}

/* The CUDA kernels take 16-bit x, gamma and beta themselves where the
 * running statistics are f32 (mixed precision) or absent: they keep the
 * statistics in the compute type. 16-bit statistics widen. */
static bool bn_half_native(kl_backend_id b, const kl_tensor *t)
{
    const bn_attr *a = KL_ATTR_C(t, bn_attr);
    if (b != KL_BACKEND_CUDA) return false;
    return (a->irm < 0 || t->src[a->irm]->dtype == KL_F32) && (a->irv < 0 || t->src[a->irv]->dtype == KL_F32);
}

const kl_op_def kl_op_batchnorm = {.name = "batchnorm",
                                   .shape = bn_fwd_shape,
                                   .backward = bn_backward,
                                   .fwd = {[KL_BACKEND_CPU] = bn_cpu},
                                   .half_native_if = bn_half_native};
const kl_op_def kl_op_batchnorm_bwd = {
    .name = "batchnorm_bwd", .shape = bn_bwd_shape, .fwd = {[KL_BACKEND_CPU] = bn_bwd_cpu}, .half_native = KL_HALF_CUDA,
    .aux_srcs = 1u << 2};

static kl_status check_buffer(const kl_tensor *v, const char *what)
{
    if (v->sk != KL_ST_BUFFER)
        return kl_fail(KL_EINVAL, "batchnorm: %s '%s' %s must be a buffer (kl_buffer) to be updated in training",
                       what, v->name, kl_desc(v));
    return KL_OK;
}

kl_status kl_batchnorm(kl_graph *g, kl_tensor *x, kl_tensor *gamma, kl_tensor *beta, kl_tensor *running_mean,
                       kl_tensor *running_var, const kl_batchnorm_opts *opts, kl_tensor **out)
{
    return kl_batchnorm_act(g, x, gamma, beta, running_mean, running_var, opts, KL_ACT_NONE, out);
}

kl_status kl_batchnorm_act(kl_graph *g, kl_tensor *x, kl_tensor *gamma, kl_tensor *beta, kl_tensor *running_mean,
                           kl_tensor *running_var, const kl_batchnorm_opts *opts, kl_act act, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "batchnorm: out is NULL");
    *out = NULL;
    if (act != KL_ACT_NONE && act != KL_ACT_RELU && act != KL_ACT_TANH && act != KL_ACT_SIGMOID)
        return kl_fail(KL_EINVAL, "batchnorm: a fused activation must be relu, tanh or sigmoid (got %d)", (int)act);
    KL_TRY(kl_check_args(g, "batchnorm", 1, &x));
    if (!opts)
        return kl_fail(KL_EMISUSE, "batchnorm: opts is NULL; pass {.training = 1} for batch statistics or "
                                   "{.training = 0} for running statistics");
    if (!(opts->eps >= 0) || !(opts->momentum >= 0 && opts->momentum <= 1))
        return kl_fail(KL_EINVAL, "batchnorm: eps %g must be >= 0 and momentum %g in [0, 1]", opts->eps,
                       opts->momentum);
    if (!running_mean != !running_var)
        return kl_fail(KL_EINVAL, "batchnorm: pass both running_mean and running_var or neither (got %s only)",
                       running_mean ? "running_mean" : "running_var");
    if (running_mean && running_mean == running_var)
        return kl_fail(KL_EINVAL, "batchnorm: running_mean and running_var are the same tensor '%s'", running_mean->name);
    if (!opts->training && !running_mean)
        return kl_fail(KL_EINVAL, "batchnorm: eval mode (training 0) needs running_mean and running_var");
    bn_attr a = {.eps = opts->eps > 0 || opts->exact ? opts->eps : 1e-5,
                 .momentum = opts->momentum > 0 || opts->exact ? opts->momentum : 0.1,
                 .training = opts->training != 0,
                 .ig = -1, .ib = -1, .irm = -1, .irv = -1,
                 .act = kl_act_unary(act)};
    kl_tensor *src[5] = {x};
    int n = 1;
    if (gamma) a.ig = n, src[n++] = gamma;
    if (beta) a.ib = n, src[n++] = beta;
    if (running_mean) a.irm = n, src[n++] = running_mean;
    if (running_var) a.irv = n, src[n++] = running_var;
    KL_TRY(kl_check_args(g, "batchnorm", n, src));
    if (a.training && running_mean) {
        KL_TRY(check_buffer(running_mean, "running_mean"));
        KL_TRY(check_buffer(running_var, "running_var"));
    }
    for (int i = 0; i < n; i++) KL_TRY(kl_contiguous(g, src[i], &src[i]));
    return kl_node_new(g, KL_OP_batchnorm, n, src, &a, sizeof a, out);
}
