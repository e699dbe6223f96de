/* f16/bf16 storage for kernels that compute in f32 only.
 *
 * A node that reads or writes a 16-bit tensor, on a backend whose kernel
 * for that op does not take 16-bit storage itself (kl_op_def.half_native),
 * runs its f32 kernel on widened copies: each 16-bit input is cast into a
 * contiguous f32 copy, the kernel writes f32 copies of its 16-bit outputs,
 * and those are rounded back. The copies live in the node's planned
 * scratch (after the kernel's own), so a step still allocates nothing and
 * a CUDA graph captures the casts with the kernel. The result is exactly
 * the f32 kernel's on the 16-bit values, rounded once per output: every
 * op has a 16-bit path on every backend, and native kernels (which keep
 * the same f32 arithmetic, loading and storing 16-bit) replace it where
 * memory traffic matters. */
#include "core/graph.h"

static bool is_half(kl_dtype d) { return d == KL_F16 || d == KL_BF16; }

static size_t wide_bytes(const kl_tensor *x)
{
    return ((size_t)kl_numel(x) * sizeof(float) + KL_ALIGN - 1) / KL_ALIGN * KL_ALIGN;
}

/* The tensors the kernel writes: the node and its extras; 16-bit buffers
 * among the inputs are updated in place (batchnorm's running statistics). */
static bool written_src(const kl_tensor *x) { return x->base->sk == KL_ST_BUFFER; }

/* src[k] of t goes to the kernel as an f32 copy */
static bool widened_src(const kl_tensor *t, int k)
{
    return is_half(t->src[k]->dtype) && !(kl_ops[t->op]->aux_srcs & (1u << k));
}

bool kl_widen_needed(kl_backend_id b, const kl_tensor *t)
{
    const kl_op_def *d = kl_ops[t->op];
    if (!kl_backend_kernel(b, t->op) || (d->half_native & (1u << b))) return false;
    bool any = is_half(t->dtype);
    for (int k = 0; k < t->n_src; k++) any |= is_half(t->src[k]->dtype);
    for (int k = 0; k < t->n_extra; k++) any |= is_half(t->extra[k]->dtype);
    return any && !(d->half_native_if && d->half_native_if(b, t));
}

size_t kl_widen_bytes(kl_backend_id b, const kl_tensor *t)
{
    if (!kl_widen_needed(b, t)) return 0;
    size_t n = is_half(t->dtype) ? wide_bytes(t) : 0;
    for (int k = 0; k < t->n_src; k++)
        if (widened_src(t, k)) n += wide_bytes(t->src[k]);
    for (int k = 0; k < t->n_extra; k++)
        if (is_half(t->extra[k]->dtype)) n += wide_bytes(t->extra[k]);
    return n;
}

/* w becomes an f32, contiguous twin of x whose data is at p. */
static void make_wide(kl_tensor *w, const kl_tensor *x, unsigned char *p)
{
    *w = *x;
    w->dtype = KL_F32;
    w->offs = 0;
    w->base = w;
    w->sk = KL_ST_EXTERNAL;
    w->ext = p;
    kl_set_contiguous(w);
}

/* Casts src into dst (same shape, any strides) with the backend's cast
 * kernel; dst names the node in a failure. */
static kl_status cast_into(const kl_exec *ex, kl_kernel_fn cast, const kl_tensor *dst, const kl_tensor *src)
{
    kl_tensor c = *dst;
    c.op = KL_OP_cast;
    c.n_src = 1;
    c.src[0] = (kl_tensor *)src;
    c.n_extra = 0;
    return cast(ex, &c);
}

kl_status kl_widen_run(const kl_exec *ex, const kl_tensor *t, kl_kernel_fn fn)
{
    kl_kernel_fn cast = kl_backend_kernel(ex->ctx->backend, KL_OP_cast);
    if (!cast) return kl_fail(KL_EUNSUPPORTED, "no cast kernel for 16-bit storage");
    /* the node, its inputs and its extras, as the kernel will see them */
    kl_tensor node, src[KL_MAX_SRC], extra[KL_MAX_EXTRA];
    unsigned char *p = ex->arena + t->scratch_off + (t->scratch_bytes + KL_ALIGN - 1) / KL_ALIGN * KL_ALIGN;
    if (is_half(t->dtype)) {
        make_wide(&node, t, p);
        p += wide_bytes(t);
    } else {
        node = *t;
    }
    for (int k = 0; k < t->n_src; k++) {
        const kl_tensor *x = t->src[k];
        if (!widened_src(t, k)) continue;
        make_wide(&src[k], x, p);
        p += wide_bytes(x);
        if (kl_numel(x)) KL_TRY(cast_into(ex, cast, &src[k], x));
        node.src[k] = &src[k];
    }
    for (int k = 0; k < t->n_extra; k++) {
        if (!is_half(t->extra[k]->dtype)) continue;
        make_wide(&extra[k], t->extra[k], p);
        p += wide_bytes(t->extra[k]);
        node.extra[k] = &extra[k];
    }
    KL_TRY(fn(ex, &node));
    if (is_half(t->dtype) && kl_numel(t)) KL_TRY(cast_into(ex, cast, t, &node));
    for (int k = 0; k < t->n_extra; k++)
        if (node.extra[k] != t->extra[k] && kl_numel(t->extra[k])) KL_TRY(cast_into(ex, cast, t->extra[k], &extra[k]));
    for (int k = 0; k < t->n_src; k++)
        if (node.src[k] != t->src[k] && written_src(t->src[k]) && kl_numel(t->src[k]))
            KL_TRY(cast_into(ex, cast, t->src[k], &src[k]));
    return KL_OK;
}
