/* copy (make contiguous), fill (a constant) and cast (change dtype).
 * copy and cast read any strided view and write contiguous output. */
#include "ops/ops.h"
#include "core/half.h"
#include "backends/cpu/cpu.h"
#include "backends/cpu/iter.h"

/* Copies a strided src into dst laid out with strides dst_st (same shape). */
kl_status kl_copy_strided(const kl_exec *ex, const kl_tensor *src, void *dst, const int64_t *dst_st)
{
    int64_t st[2][8];
    memcpy(st[0], dst_st, sizeof st[0]);
    memcpy(st[1], src->st, sizeof st[1]);
    kl_iter it;
    kl_iter_init(&it, src->ndim, src->ne, 2, (const int64_t(*)[8])st);
    size_t es = kl_dtype_size(src->dtype);
    const unsigned char *x = kl_data(ex, src);
    unsigned char *y = dst;
    int64_t sy = kl_iter_inner_st(&it, 0), sx = kl_iter_inner_st(&it, 1);
    kl_iter_blocks bl = kl_iter_split(&it);
#pragma omp parallel for schedule(static) if (it.rows * it.inner > KL_PAR_MIN)
    for (int64_t w = 0; w < bl.items; w++) {
        int64_t o[2], i0, i1;
        kl_iter_item(&it, &bl, w, o, &i0, &i1);
        if (sx == 1 && sy == 1) {
            memcpy(y + (o[0] + i0) * es, x + (o[1] + i0) * es, (size_t)(i1 - i0) * es);
            continue;
        }
        for (int64_t i = i0; i < i1; i++) memcpy(y + (o[0] + i * sy) * es, x + (o[1] + i * sx) * es, es);
    }
    return KL_OK;
}

static kl_status copy_shape(kl_tensor *t)
{
    const kl_tensor *x = t->src[0];
    t->dtype = x->dtype;
    t->ndim = x->ndim;
    memcpy(t->ne, x->ne, sizeof t->ne);
    return KL_OK;
}

static kl_status copy_cpu(const kl_exec *ex, const kl_tensor *t)
{
    return kl_copy_strided(ex, t->src[0], kl_data(ex, t), t->st);
}

static kl_status pass_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy) { return kl_grad_acc(g, t->src[0], dy); }

const kl_op_def kl_op_copy = {
    .name = "copy", .shape = copy_shape, .backward = pass_backward, .fwd = {[KL_BACKEND_CPU] = copy_cpu}, .half_native = KL_HALF_ALL};

kl_status kl_contiguous(kl_graph *g, kl_tensor *x, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "contiguous: out is NULL");
    *out = NULL;
    KL_TRY(kl_check_args(g, "contiguous", 1, &x));
    if (kl_is_contiguous(x)) {
        *out = x;
        return KL_OK;
    }
    return kl_node_new(g, KL_OP_copy, 1, &x, NULL, 0, out);
}

/* ---- fill ---- */

#include "ops/attrs.h" /* the attribute structs */

static kl_status fill_shape(kl_tensor *t)
{
    const fill_attr *a = KL_ATTR(t, fill_attr);
    t->dtype = a->dt;
    t->ndim = a->ndim;
    memcpy(t->ne, a->ne, sizeof t->ne);
    return KL_OK;
}

static kl_status fill_cpu(const kl_exec *ex, const kl_tensor *t)
{
    double v = KL_ATTR_C(t, fill_attr)->v;
    int64_t n = kl_numel(t);
    void *y = kl_data(ex, t);
    switch (t->dtype) {
    case KL_F32: for (int64_t i = 0; i < n; i++) ((float *)y)[i] = (float)v; break;
    case KL_F64: for (int64_t i = 0; i < n; i++) ((double *)y)[i] = v; break;
    case KL_I32: for (int64_t i = 0; i < n; i++) ((int32_t *)y)[i] = (int32_t)v; break;
    case KL_F16:
    case KL_BF16: {
        uint16_t h = t->dtype == KL_F16 ? kl_f32_to_f16((float)v) : kl_f32_to_bf16((float)v);
        for (int64_t i = 0; i < n; i++) ((uint16_t *)y)[i] = h;
        break;
    }
    default: return kl_fail(KL_EUNSUPPORTED, "fill: dtype %s", kl_dtype_name(t->dtype));
    }
    return KL_OK;
}

const kl_op_def kl_op_fill = {
    .name = "fill", .shape = fill_shape, .fwd = {[KL_BACKEND_CPU] = fill_cpu}, .half_native = KL_HALF_ALL};

/* ---- cast ---- */

static kl_status cast_shape(kl_tensor *t)
{
    const kl_tensor *x = t->src[0];
    kl_dtype to = KL_ATTR(t, cast_attr)->to;
    bool ok = (x->dtype == KL_F32 && kl_is_float(to)) || (kl_is_float(x->dtype) && to == KL_F32) ||
              (x->dtype == KL_U8 && to == KL_F32) || (x->dtype == KL_I32 && to == KL_F32);
    if (!ok)
        return kl_fail(KL_EUNSUPPORTED, "cast: %s to %s is not supported (f32 <-> f16/bf16/f64, u8/i32 -> f32)",
                       kl_desc(x), kl_dtype_name(to));
    copy_shape(t);
    t->dtype = to;
    return KL_OK;
}

/* Elements [i0, i1) of a row: y[i] = x[i * sx] converted. Each dtype pair
 * has its own loop (the conversion inlined, so it vectorises); f64 and the
 * integer sources go through double. */
#define CAST_LOOP(TX, TY, CONV)                                                                    \
    for (int64_t i = i0; i < i1; i++) ((TY *)y)[i] = CONV(((const TX *)x)[i * sx]);               \
    return;
#define AS_F32(v) ((float)(v))
#define CAST_PAIR(a, b) ((a) * 16 + (b))
static void cast_row(void *y, kl_dtype ty, const void *x, kl_dtype tx, int64_t sx, int64_t i0, int64_t i1)
{
    switch (CAST_PAIR(tx, ty)) {
    case CAST_PAIR(KL_F32, KL_BF16): CAST_LOOP(float, uint16_t, kl_f32_to_bf16)
    case CAST_PAIR(KL_F32, KL_F16): CAST_LOOP(float, uint16_t, kl_f32_to_f16)
    case CAST_PAIR(KL_BF16, KL_F32): CAST_LOOP(uint16_t, float, kl_bf16_to_f32)
    case CAST_PAIR(KL_F16, KL_F32): CAST_LOOP(uint16_t, float, kl_f16_to_f32)
    case CAST_PAIR(KL_F32, KL_F32): CAST_LOOP(float, float, AS_F32)
    case CAST_PAIR(KL_F64, KL_F32): CAST_LOOP(double, float, AS_F32)
    case CAST_PAIR(KL_U8, KL_F32): CAST_LOOP(uint8_t, float, AS_F32)
    default: break;
    }
    for (int64_t i = i0; i < i1; i++) {
        double v = kl_load_double(x, tx, i * sx);
        switch (ty) {
        case KL_F32: ((float *)y)[i] = (float)v; break;
        case KL_F64: ((double *)y)[i] = v; break;
        case KL_F16: ((uint16_t *)y)[i] = kl_f32_to_f16((float)v); break;
        default: ((uint16_t *)y)[i] = kl_f32_to_bf16((float)v); break;
        }
    }
}

static kl_status cast_cpu(const kl_exec *ex, const kl_tensor *t)
{
    const kl_tensor *x = t->src[0];
    int64_t st[2][8];
    memcpy(st[0], t->st, sizeof st[0]);
    memcpy(st[1], x->st, sizeof st[1]);
    kl_iter it;
    kl_iter_init(&it, t->ndim, t->ne, 2, (const int64_t(*)[8])st);
    kl_iter_blocks bl = kl_iter_split(&it);
    const unsigned char *xp = kl_data(ex, x);
    unsigned char *yp = kl_data(ex, t);
    int64_t sx = kl_iter_inner_st(&it, 1);
    size_t ex_ = kl_dtype_size(x->dtype), ey = kl_dtype_size(t->dtype);
#pragma omp parallel for schedule(static) if (it.rows * it.inner > KL_PAR_MIN)
    for (int64_t w = 0; w < bl.items; w++) {
        int64_t o[2], i0, i1;
        kl_iter_item(&it, &bl, w, o, &i0, &i1);
        cast_row(yp + o[0] * ey, t->dtype, xp + o[1] * ex_, x->dtype, sx, i0, i1);
    }
    return KL_OK;
}

static kl_status cast_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    kl_tensor *x = t->src[0], *dx;
    if (!kl_is_float(x->dtype)) return KL_OK;
    KL_TRY(kl_cast(g, dy, x->dtype, &dx));
    return kl_grad_acc(g, x, dx);
}

const kl_op_def kl_op_cast = {
    .name = "cast", .shape = cast_shape, .backward = cast_backward, .fwd = {[KL_BACKEND_CPU] = cast_cpu}, .half_native = KL_HALF_ALL};

kl_status kl_cast(kl_graph *g, kl_tensor *x, kl_dtype dt, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "cast: out is NULL");
    *out = NULL;
    KL_TRY(kl_check_args(g, "cast", 1, &x));
    if (x->dtype == dt) {
        *out = x;
        return KL_OK;
    }
    cast_attr a = {dt};
    return kl_node_new(g, KL_OP_cast, 1, &x, &a, sizeof a, out);
}
