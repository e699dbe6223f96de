/* Shape helpers shared by all ops. */
#include "core/graph.h"

#include <stdio.h>

int64_t kl_numel(const kl_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->ne[i];
    return n;
}

size_t kl_nbytes(const kl_tensor *t) { return (size_t)kl_numel(t) * kl_dtype_size(t->dtype); }

bool kl_shape_bytes(kl_dtype dt, int ndim, const int64_t *ne, size_t *bytes)
{
    uint64_t b = kl_dtype_size(dt);
    for (int i = 0; i < ndim; i++)
        if (ne[i] <= 0 || __builtin_mul_overflow(b, (uint64_t)ne[i], &b) || b > KL_MAX_TENSOR_BYTES) return false;
    *bytes = (size_t)b;
    return true;
}

void kl_set_contiguous(kl_tensor *t)
{
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        t->st[i] = s;
        s *= t->ne[i];
    }
}

bool kl_is_contiguous(const kl_tensor *t)
{
    int64_t s = 1;
    for (int i = t->ndim - 1; i >= 0; i--) {
        if (t->ne[i] != 1 && t->st[i] != s) return false;
        s *= t->ne[i];
    }
    return true;
}

bool kl_same_shape(const kl_tensor *a, const kl_tensor *b)
{
    if (a->ndim != b->ndim) return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->ne[i] != b->ne[i]) return false;
    return true;
}

bool kl_is_float(kl_dtype dt)
{
    return dt == KL_F32 || dt == KL_F16 || dt == KL_BF16 || dt == KL_F64;
}

size_t kl_calc_size(kl_dtype dt) { return dt == KL_F16 || dt == KL_BF16 ? sizeof(float) : kl_dtype_size(dt); }

const char *kl_desc(const kl_tensor *t)
{
    static _Thread_local char bufs[4][160];
    static _Thread_local int k;
    char *b = bufs[k++ & 3], shape[128];
    if (!t) return "(null)";
    kl_shape_str(shape, sizeof shape, t->ndim, t->ne);
    snprintf(b, 160, "%s %s", shape, kl_dtype_name(t->dtype));
    return b;
}

kl_status kl_axis(const char *op, const kl_tensor *t, int axis, int *out)
{
    int a = axis < 0 ? axis + t->ndim : axis;
    if (a < 0 || a >= t->ndim)
        return kl_fail(KL_EINVAL, "%s: axis %d out of range for %s", op, axis, kl_desc(t));
    *out = a;
    return KL_OK;
}
