/* Dropout: y_i = x_i / (1 - p) if kept, else 0. Element i (row-major) is kept
 * iff Philox word i of stream (ctx seed, salt, graph run) >= floor(p * 2^32)
 * (kl_dropout_keep in ops/norm.h, shared with the CUDA kernel). salt is the
 * layer's ordinal among the graph's dropout layers, so two layers draw
 * different masks, and a layer keeps its mask when other nodes come and go
 * (the casts of 16-bit storage, a metric, a debugging copy); the run
 * counter gives each step a new mask; it is a per-run value (prepare), read
 * from memory by the kernels, so a replayed CUDA graph draws each run's
 * mask. No mask is stored: the gradient is
 * the same op with the same salt applied to dy (dx = dy * mask / (1 - p)),
 * which redraws the identical mask in the same run. */
#include "ops/ops.h"
#include "ops/norm.h"
#include "backends/cpu/cpu.h"

#include <math.h>

#include "ops/attrs.h" /* the attribute structs */

static kl_status dropout_shape(kl_tensor *t)
{
    const kl_tensor *x = t->src[0];
    if (!kl_is_float(x->dtype))
        return kl_fail(KL_EINVAL, "dropout: expected floating-point input, got %s", kl_desc(x));
    t->dtype = x->dtype;
    t->ndim = x->ndim;
    memcpy(t->ne, x->ne, sizeof t->ne);
    t->run_bytes = sizeof(uint64_t);
    return KL_OK;
}

static kl_status dropout_prepare(const kl_exec *ex, const kl_tensor *t, void *vals)
{
    memcpy(vals, &ex->run, sizeof ex->run);
    return KL_OK;
}

/* Philox4x32-10 (core/philox.h) for DROP_BQ consecutive counters at once,
 * lanes in separate arrays so the rounds vectorise: w[l][j] is word l of
 * counter q0 + j, i.e. kl_philox_word(seed, salt, run, 4 (q0 + j) + l). */
#define DROP_BQ 64
static void philox_block(uint32_t w[4][DROP_BQ], uint64_t q0, uint32_t salt, uint64_t run, uint64_t seed)
{
    for (int j = 0; j < DROP_BQ; j++) {
        w[0][j] = (uint32_t)(q0 + (uint64_t)j);
        w[1][j] = salt;
        w[2][j] = (uint32_t)run;
        w[3][j] = (uint32_t)(run >> 32);
    }
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int r = 0; r < 10; r++) {
        for (int j = 0; j < DROP_BQ; j++) {
            uint64_t p0 = (uint64_t)0xD2511F53u * w[0][j], p1 = (uint64_t)0xCD9E8D57u * w[2][j];
            uint32_t n0 = (uint32_t)(p1 >> 32) ^ w[1][j] ^ k0, n2 = (uint32_t)(p0 >> 32) ^ w[3][j] ^ k1;
            w[1][j] = (uint32_t)p1;
            w[3][j] = (uint32_t)p0;
            w[0][j] = n0;
            w[2][j] = n2;
        }
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
}

/* Blocks of 4 * DROP_BQ elements in parallel; y = x * (keep ? scale : 0)
 * without branches (a branch per element mispredicts at p near 0.5). */
#define DROPOUT_KERNEL(T)                                                                          \
    static void dropout_##T(const T *x, T *y, int64_t n, uint64_t seed, uint64_t run, const dropout_attr *a) \
    {                                                                                              \
        T scale = (T)(1.0 / (1.0 - a->p));                                                         \
        uint32_t thr = a->threshold;                                                               \
        int64_t per = 4 * DROP_BQ, nblk = (n + per - 1) / per;                                     \
        _Pragma("omp parallel for schedule(static) if (n > KL_PAR_MIN / 4)")                        \
        for (int64_t b = 0; b < nblk; b++) {                                                       \
            uint32_t w[4][DROP_BQ], word[4 * DROP_BQ];                                             \
            philox_block(w, (uint64_t)b * DROP_BQ, a->salt, run, seed);                            \
            for (int j = 0; j < DROP_BQ; j++)                                                      \
                for (int l = 0; l < 4; l++) word[4 * j + l] = w[l][j];                             \
            int64_t i0 = b * per, m = n - i0 < per ? n - i0 : per;                                 \
            const T *xb = x + i0;                                                                  \
            T *yb = y + i0;                                                                        \
            for (int64_t k = 0; k < m; k++) {                                                      \
                T s = word[k] >= thr ? scale : (T)0; /* this form vectorises */                    \
                yb[k] = xb[k] * s;                                                                 \
            }                                                                                      \
        }                                                                                          \
    }
KL_FOR_REAL(DROPOUT_KERNEL)

static kl_status dropout_cpu(const kl_exec *ex, const kl_tensor *t)
{
    const dropout_attr *a = KL_ATTR_C(t, dropout_attr);
    int64_t n = kl_numel(t);
    uint64_t run = *(const uint64_t *)kl_run_vals(ex, t);
    if (t->dtype == KL_F32) dropout_float(kl_data(ex, t->src[0]), kl_data(ex, t), n, ex->ctx->seed, run, a);
    else dropout_double(kl_data(ex, t->src[0]), kl_data(ex, t), n, ex->ctx->seed, run, a);
    return KL_OK;
}

static kl_status dropout_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    kl_tensor *src = dy, *dx;
    KL_TRY(kl_contiguous(g, dy, &src));
    KL_TRY(kl_node_new(g, KL_OP_dropout, 1, &src, t->attr, sizeof(dropout_attr), &dx)); /* same salt */
    return kl_grad_acc(g, t->src[0], dx);
}

const kl_op_def kl_op_dropout = {.name = "dropout",
                                  .shape = dropout_shape,
                                  .backward = dropout_backward,
                                  .prepare = dropout_prepare,
                                  .fwd = {[KL_BACKEND_CPU] = dropout_cpu},
                                  .half_native = KL_HALF_CUDA};

kl_status kl_dropout(kl_graph *g, kl_tensor *x, double p, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "dropout: out is NULL");
    *out = NULL;
    KL_TRY(kl_check_args(g, "dropout", 1, &x));
    if (!(p >= 0 && p < 1)) return kl_fail(KL_EINVAL, "dropout: p must be in [0, 1), got %g", p);
    if (p == 0) {
        *out = x;
        return KL_OK;
    }
    dropout_attr a = {.p = p, .threshold = kl_dropout_threshold(p)};
    for (int i = 0; i < g->n_nodes; i++) /* one past the layers so far (gradient nodes repeat their salt) */
        if (g->nodes[i]->op == KL_OP_dropout && KL_ATTR_C(g->nodes[i], dropout_attr)->salt >= a.salt)
            a.salt = KL_ATTR_C(g->nodes[i], dropout_attr)->salt + 1;
    KL_TRY(kl_contiguous(g, x, &x));
    return kl_node_new(g, KL_OP_dropout, 1, &x, &a, sizeof a, out);
}
