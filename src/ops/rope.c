/* Rotary position embeddings, GPT-NeoX style: x [..., T, D], position p =
 * index along axis -2, pairs (x[i], x[i + D/2]) for i < D/2 rotated by
 * angle p * base^(-2i/D) (ops/seq.h). Angles, cosines and sines are computed
 * in double into a [T, D/2] table in scratch, then rounded to the dtype
 * (cosines, then sines; the CUDA kernel uses the same table and functions).
 * A rotation's gradient is the inverse rotation, so the backward is this op
 * again with `inverse` set (and its backward the forward). */
#include "ops/ops.h"
#include "ops/attrs.h"
#include "ops/seq.h"
#include "backends/cpu/cpu.h"

#include <math.h>


static kl_status rope_shape(kl_tensor *t)
{
    const kl_tensor *x = t->src[0];
    if (!kl_is_float(x->dtype) || x->ndim < 2)
        return kl_fail(KL_EINVAL, "rope: input must be [..., T, D] floating-point, got %s", kl_desc(x));
    int64_t T = x->ne[x->ndim - 2], D = x->ne[x->ndim - 1];
    if (D % 2) return kl_fail(KL_EINVAL, "rope: head size D = %lld of %s must be even", (long long)D, kl_desc(x));
    t->dtype = x->dtype;
    t->ndim = x->ndim;
    memcpy(t->ne, x->ne, sizeof t->ne);
    t->scratch_bytes = (size_t)(T * D) * kl_calc_size(x->dtype); /* cos and sin [T, D/2] */
    return KL_OK;
}

#define ROPE_KERNEL(T_)                                                                            \
    static void rope_##T_(const kl_exec *ex, const kl_tensor *t)                                   \
    {                                                                                              \
        const rope_attr *a = KL_ATTR_C(t, rope_attr);                                              \
        const T_ *x = kl_data(ex, t->src[0]);                                                      \
        T_ *y = kl_data(ex, t), *cs = kl_scratch(ex, t);                                           \
        int64_t T = t->ne[t->ndim - 2], D = t->ne[t->ndim - 1], half = D / 2;                      \
        int64_t rows = kl_numel(t) / D; /* (sequence, position) rows */                            \
        T_ *sn = cs + T * half;                                                                    \
        for (int64_t i = 0; i < T * half; i++) kl_rope_table_##T_(cs, sn, half, D, a->base, a->inverse, i); \
        _Pragma("omp parallel for schedule(static) if (rows * D > KL_PAR_MIN)")                    \
        for (int64_t r = 0; r < rows; r++)                                                         \
            for (int64_t i = 0; i < half; i++) kl_rope_at_##T_(x, y, cs, sn, T, half, r, i);       \
    }
KL_FOR_REAL(ROPE_KERNEL)

static kl_status rope_cpu(const kl_exec *ex, const kl_tensor *t)
{
    if (t->dtype == KL_F32) rope_float(ex, t);
    else rope_double(ex, t);
    return KL_OK;
}

static kl_status rope_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    rope_attr a = *KL_ATTR(t, rope_attr);
    a.inverse = !a.inverse;
    kl_tensor *d, *dx;
    KL_TRY(kl_contiguous(g, dy, &d));
    KL_TRY(kl_node_new(g, KL_OP_rope, 1, &d, &a, sizeof a, &dx));
    return kl_grad_acc(g, t->src[0], dx);
}

const kl_op_def kl_op_rope = {
    .name = "rope", .shape = rope_shape, .backward = rope_backward, .fwd = {[KL_BACKEND_CPU] = rope_cpu}};

kl_status kl_rope(kl_graph *g, kl_tensor *x, double base, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "rope: out is NULL");
    *out = NULL;
    KL_TRY(kl_check_args(g, "rope", 1, &x));
    if (!(base >= 0) || isinf(base))
        return kl_fail(KL_EINVAL, "rope: base must be finite and > 0 (0 means 10000), got %g", base);
    rope_attr a = {.base = base > 0 ? base : 10000.0};
    kl_tensor *xc;
    KL_TRY(kl_contiguous(g, x, &xc));
    return kl_node_new(g, KL_OP_rope, 1, &xc, &a, sizeof a, out);
}
