/* 2-D max and average pooling (NCHW, floor mode as PyTorch) and their
 * gradient op, plus global average pooling (a mean over H and W).
 *   max:  y = max over the window (padding ignored); the forward saves the
 *         argmax's position within the window in aux (u8 when the window has
 *         <= 255 elements, else i32), so backward scatters dy without
 *         recomputing: dx[argmax] += dy. Ties go to the first maximum; the
 *         first NaN wins on every path (PyTorch keeps the last of several).
 *   avg:  y = sum over the window / (KH*KW) (padding counts as zeros, like
 *         PyTorch's count_include_pad=True); dx += dy / (KH*KW) over the window.
 * pool2d_bwd: src {dy, forward node} (max: reads the forward node's aux) or
 * {dy} (avg). Planes (n, c) run in parallel; each is written by one thread.
 * The general path's window math is ops/pool2d.h, shared with the CUDA
 * kernels (backends/cuda/pool.cu). */
#include "ops/ops.h"
#include "ops/pool2d.h" /* pool_attr (ops/attrs.h) and the window math shared with CUDA */
#include "backends/cpu/cpu.h"

#include <limits.h>
#include <math.h>

#define POOL_BLOCK 256 /* outputs per block of the 2x2 fast path's int32 index buffer */

static const char *pool_name(const pool_attr *a) { return a->kind == POOL_MAX ? "maxpool2d" : "avgpool2d"; }

static kl_status pool2d_shape(kl_tensor *t)
{
    pool_attr *a = KL_ATTR(t, pool_attr);
    const kl_tensor *x = t->src[0];
    const char *nm = pool_name(a);
    if (!kl_is_float(x->dtype))
        return kl_fail(KL_EINVAL, "%s: expected floating-point input, got %s", nm, kl_desc(x));
    if (x->ndim != 4) return kl_fail(KL_EINVAL, "%s: input must be 4-D [N, C, H, W], got %s", nm, kl_desc(x));
    if (a->kh < 1 || a->kw < 1 || a->sh < 1 || a->sw < 1 || a->ph < 0 || a->pw < 0)
        return kl_fail(KL_EINVAL, "%s: kernel %dx%d and stride %dx%d must be >= 1 and padding %dx%d >= 0", nm, a->kh,
                       a->kw, a->sh, a->sw, a->ph, a->pw);
    if ((int64_t)a->kh * a->kw > INT32_MAX)
        return kl_fail(KL_EINVAL, "%s: kernel %dx%d has more than %d elements", nm, a->kh, a->kw, INT32_MAX);
    if (a->ph > a->kh / 2 || a->pw > a->kw / 2)
        return kl_fail(KL_EINVAL, "%s: padding %dx%d must be at most half the kernel %dx%d", nm, a->ph, a->pw, a->kh,
                       a->kw);
    int64_t H = x->ne[2], W = x->ne[3];
    int64_t OH = kl_window_out(H, a->ph, 1, a->kh, a->sh), OW = kl_window_out(W, a->pw, 1, a->kw, a->sw);
    if (OH <= 0 || OW <= 0)
        return kl_fail(KL_EINVAL,
                       "%s: output size <= 0: input %s (HxW %lldx%lld) is smaller than kernel %dx%d with padding %dx%d",
                       nm, kl_desc(x), (long long)H, (long long)W, a->kh, a->kw, a->ph, a->pw);
    a->N = x->ne[0], a->C = x->ne[1], a->H = H, a->W = W, a->OH = OH, a->OW = OW;
    a->idx32 = (int64_t)a->kh * a->kw > 255;
    t->dtype = x->dtype;
    t->ndim = 4;
    int64_t ne[4] = {a->N, a->C, OH, OW};
    memcpy(t->ne, ne, sizeof ne);
    if (a->kind == POOL_MAX) t->aux_bytes = (size_t)(a->N * a->C * OH * OW) * (a->idx32 ? 4 : 1);
    return KL_OK;
}

static kl_status pool2d_bwd_shape(kl_tensor *t)
{
    const pool_attr *a = KL_ATTR(t, pool_attr);
    const kl_tensor *dy = t->src[0];
    if (dy->ndim != 4 || dy->ne[0] != a->N || dy->ne[1] != a->C || dy->ne[2] != a->OH || dy->ne[3] != a->OW ||
        !kl_is_contiguous(dy))
        return kl_fail(KL_EINTERNAL, "pool2d_bwd: dy %s does not match [%lld,%lld,%lld,%lld]", kl_desc(dy),
                       (long long)a->N, (long long)a->C, (long long)a->OH, (long long)a->OW);
    int64_t ne[4] = {a->N, a->C, a->H, a->W};
    t->dtype = dy->dtype;
    t->ndim = 4;
    memcpy(t->ne, ne, sizeof ne);
    return KL_OK;
}

#define POOL_KERNELS(T)                                                                            \
    /* 2x2 stride 2 (the common CNN case), written so GCC vectorises it: branch-free selects       \
     * and int32 indices in a block buffer, narrowed to u8 in a second loop. First maximum wins    \
     * ties. The selects drop NaNs, so a block holding one is redone with the general path's rule \
     * (the first NaN wins); testing for NaN in the selects themselves stops the vectorisation.  */ \
    static void max2x2_row_##T(const T *restrict r0, const T *restrict r1, T *restrict y,          \
                               uint8_t *restrict idx, int64_t OW)                                  \
    {                                                                                              \
        int32_t k[POOL_BLOCK];                                                                     \
        for (int64_t b = 0; b < OW; b += POOL_BLOCK) {                                             \
            int64_t n = OW - b < POOL_BLOCK ? OW - b : POOL_BLOCK;                                 \
            const T *p0 = r0 + 2 * b, *p1 = r1 + 2 * b;                                            \
            int nan = 0;                                                                           \
            for (int64_t i = 0; i < n; i++) {                                                      \
                T v0 = p0[2 * i], v1 = p0[2 * i + 1], v2 = p1[2 * i], v3 = p1[2 * i + 1];          \
                int32_t c01 = v1 > v0, c23 = v3 > v2;                                              \
                T m01 = v1 > v0 ? v1 : v0, m23 = v3 > v2 ? v3 : v2;                                \
                int32_t c = m23 > m01;                                                             \
                y[b + i] = m23 > m01 ? m23 : m01;                                                  \
                k[i] = c01 + c * (2 + c23 - c01);                                                  \
                nan |= v0 != v0 || v1 != v1 || v2 != v2 || v3 != v3;                               \
            }                                                                                      \
            for (int64_t i = 0; nan && i < n; i++) {                                               \
                T v[4] = {p0[2 * i], p0[2 * i + 1], p1[2 * i], p1[2 * i + 1]}, m = v[0];           \
                int32_t bk = 0;                                                                    \
                for (int32_t j = 1; j < 4; j++)                                                    \
                    if (KL_POOL_TAKES(v[j], m)) m = v[j], bk = j;                                  \
                y[b + i] = m, k[i] = bk;                                                           \
            }                                                                                      \
            for (int64_t i = 0; i < n; i++) idx[b + i] = (uint8_t)k[i];                            \
        }                                                                                          \
    }                                                                                              \
    /* one input row r of a 2x2/2 window row: r[2i + j] = dy[i] where the argmax is base + j */    \
    static void max2x2_bwd_half_##T(const T *restrict g, const int32_t *restrict k, int32_t base,  \
                                    T *restrict r, int64_t n)                                      \
    {                                                                                              \
        for (int64_t i = 0; i < n; i++) {                                                          \
            T gv = g[i];                                                                           \
            int32_t d = k[i] - base;                                                               \
            T a = d == 0 ? gv : (T)0, b = d == 1 ? gv : (T)0;                                      \
            r[2 * i] = a;                                                                          \
            r[2 * i + 1] = b;                                                                      \
        }                                                                                          \
    }                                                                                              \
    static void max2x2_bwd_row_##T(const T *restrict g, const uint8_t *restrict idx, T *restrict r0, \
                                   T *restrict r1, int64_t OW)                                     \
    {                                                                                              \
        int32_t k[POOL_BLOCK];                                                                     \
        for (int64_t b = 0; b < OW; b += POOL_BLOCK) {                                             \
            int64_t n = OW - b < POOL_BLOCK ? OW - b : POOL_BLOCK;                                 \
            for (int64_t i = 0; i < n; i++) k[i] = idx[b + i];                                     \
            max2x2_bwd_half_##T(g + b, k, 0, r0 + 2 * b, n);                                       \
            max2x2_bwd_half_##T(g + b, k, 2, r1 + 2 * b, n);                                       \
        }                                                                                          \
    }                                                                                              \
    static void maxpool_##T(const pool_attr *a, const T *x, T *y, void *idx)                       \
    {                                                                                              \
        int64_t planes = a->N * a->C, H = a->H, W = a->W, OH = a->OH, OW = a->OW;                  \
        bool fast = a->kh == 2 && a->kw == 2 && a->sh == 2 && a->sw == 2 && a->ph == 0 && a->pw == 0; \
        _Pragma("omp parallel for schedule(static) if (planes * H * W > KL_PAR_MIN)")              \
        for (int64_t pl = 0; pl < planes; pl++) {                                                  \
            const T *xp = x + pl * H * W;                                                          \
            T *yp = y + pl * OH * OW;                                                              \
            uint8_t *i8 = a->idx32 ? NULL : (uint8_t *)idx + pl * OH * OW;                         \
            int32_t *i32 = a->idx32 ? (int32_t *)idx + pl * OH * OW : NULL;                        \
            for (int64_t oh = 0; oh < OH; oh++) {                                                  \
                if (fast) {                                                                        \
                    max2x2_row_##T(xp + 2 * oh * W, xp + (2 * oh + 1) * W, yp + oh * OW, i8 + oh * OW, OW); \
                    continue;                                                                      \
                }                                                                                  \
                for (int64_t ow = 0; ow < OW; ow++) { /* ops/pool2d.h, as the CUDA kernel */       \
                    int32_t bk;                                                                    \
                    yp[oh * OW + ow] = kl_pool_max_win_##T(a, xp, oh, ow, &bk);                    \
                    if (a->idx32) i32[oh * OW + ow] = bk;                                          \
                    else i8[oh * OW + ow] = (uint8_t)bk;                                           \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
    static void avgpool_##T(const pool_attr *a, const T *x, T *y)                                  \
    {                                                                                              \
        int64_t planes = a->N * a->C, H = a->H, W = a->W, OH = a->OH, OW = a->OW;                  \
        _Pragma("omp parallel for schedule(static) if (planes * H * W > KL_PAR_MIN)")              \
        for (int64_t pl = 0; pl < planes; pl++) {                                                  \
            const T *xp = x + pl * H * W;                                                          \
            T *yp = y + pl * OH * OW;                                                              \
            for (int64_t oh = 0; oh < OH; oh++)                                                    \
                for (int64_t ow = 0; ow < OW; ow++) yp[oh * OW + ow] = kl_pool_avg_win_##T(a, xp, oh, ow); \
        }                                                                                          \
    }                                                                                              \
    static void pool_bwd_##T(const pool_attr *a, const T *dy, const void *idx, T *dx)              \
    {                                                                                              \
        int64_t planes = a->N * a->C, H = a->H, W = a->W, OH = a->OH, OW = a->OW;                  \
        bool fast = a->kind == POOL_MAX && a->kh == 2 && a->kw == 2 && a->sh == 2 && a->sw == 2 && \
                    a->ph == 0 && a->pw == 0;                                                      \
        T inv = (T)1 / (T)((int64_t)a->kh * a->kw);                                                \
        _Pragma("omp parallel for schedule(static) if (planes * H * W > KL_PAR_MIN)")              \
        for (int64_t pl = 0; pl < planes; pl++) {                                                  \
            const T *gp = dy + pl * OH * OW;                                                       \
            T *xp = dx + pl * H * W;                                                               \
            const uint8_t *i8 = idx && !a->idx32 ? (const uint8_t *)idx + pl * OH * OW : NULL;     \
            const int32_t *i32 = idx && a->idx32 ? (const int32_t *)idx + pl * OH * OW : NULL;     \
            if (fast) { /* windows tile the plane: write every element once, no zero-fill */       \
                for (int64_t oh = 0; oh < OH; oh++) {                                              \
                    T *r0 = xp + 2 * oh * W, *r1 = r0 + W;                                         \
                    max2x2_bwd_row_##T(gp + oh * OW, i8 + oh * OW, r0, r1, OW);                    \
                    for (int64_t w = 2 * OW; w < W; w++) r0[w] = r1[w] = 0;                        \
                }                                                                                  \
                if (2 * OH < H) memset(xp + 2 * OH * W, 0, (size_t)((H - 2 * OH) * W) * sizeof(T)); \
                continue;                                                                          \
            }                                                                                      \
            memset(xp, 0, (size_t)(H * W) * sizeof(T));                                            \
            for (int64_t oh = 0; oh < OH; oh++) {                                                  \
                int64_t h0, h1;                                                                    \
                kl_pool_win(oh, a->sh, a->ph, a->kh, H, &h0, &h1);                                 \
                for (int64_t ow = 0; ow < OW; ow++) {                                              \
                    int64_t xo = (oh * a->sh - a->ph) * W + ow * a->sw - a->pw;                    \
                    T gv = gp[oh * OW + ow];                                                       \
                    if (a->kind == POOL_MAX) {                                                     \
                        int64_t k = a->idx32 ? i32[oh * OW + ow] : i8[oh * OW + ow];               \
                        xp[xo + (k / a->kw) * W + k % a->kw] += gv;                                \
                        continue;                                                                  \
                    }                                                                              \
                    int64_t w0, w1;                                                                \
                    kl_pool_win(ow, a->sw, a->pw, a->kw, W, &w0, &w1);                             \
                    for (int64_t i = h0; i < h1; i++)                                              \
                        for (int64_t j = w0; j < w1; j++) xp[xo + i * W + j] += gv * inv;          \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
    }
KL_FOR_REAL(POOL_KERNELS)

static kl_status pool2d_cpu(const kl_exec *ex, const kl_tensor *t)
{
    const pool_attr *a = KL_ATTR_C(t, pool_attr);
    const void *x = kl_data(ex, t->src[0]);
    bool f32 = t->dtype == KL_F32;
    if (a->kind == POOL_MAX) {
        if (f32) maxpool_float(a, x, kl_data(ex, t), kl_aux(ex, t));
        else maxpool_double(a, x, kl_data(ex, t), kl_aux(ex, t));
    } else {
        if (f32) avgpool_float(a, x, kl_data(ex, t));
        else avgpool_double(a, x, kl_data(ex, t));
    }
    return KL_OK;
}

static kl_status pool2d_bwd_cpu(const kl_exec *ex, const kl_tensor *t)
{
    const pool_attr *a = KL_ATTR_C(t, pool_attr);
    const void *idx = a->kind == POOL_MAX ? kl_aux(ex, t->src[1]) : NULL;
    if (t->dtype == KL_F32) pool_bwd_float(a, kl_data(ex, t->src[0]), idx, kl_data(ex, t));
    else pool_bwd_double(a, kl_data(ex, t->src[0]), idx, kl_data(ex, t));
    return KL_OK;
}

static kl_status pool2d_backward(kl_graph *g, kl_tensor *t, kl_tensor *dy)
{
    const pool_attr *a = KL_ATTR(t, pool_attr);
    kl_tensor *src[2] = {dy, t}, *dx;
    KL_TRY(kl_contiguous(g, dy, &src[0]));
    KL_TRY(kl_node_new(g, KL_OP_pool2d_bwd, a->kind == POOL_MAX ? 2 : 1, src, a, sizeof *a, &dx));
    return kl_grad_acc(g, t->src[0], dx);
}

const kl_op_def kl_op_pool2d = {
    .name = "pool2d", .shape = pool2d_shape, .backward = pool2d_backward, .fwd = {[KL_BACKEND_CPU] = pool2d_cpu}};
const kl_op_def kl_op_pool2d_bwd = {
    .name = "pool2d_bwd", .shape = pool2d_bwd_shape, .fwd = {[KL_BACKEND_CPU] = pool2d_bwd_cpu}, .aux_srcs = 1u << 1};

static kl_status pool_pub(kl_graph *g, kl_tensor *x, const kl_pool2d_opts *o, int kind, kl_tensor **out)
{
    const char *nm = kind == POOL_MAX ? "maxpool2d" : "avgpool2d";
    if (!out) return kl_fail(KL_EMISUSE, "%s: out is NULL", nm);
    *out = NULL;
    KL_TRY(kl_check_args(g, nm, 1, &x));
    if (!o) return kl_fail(KL_EMISUSE, "%s: opts is NULL (the kernel size is required)", nm);
    pool_attr a = {.kind = kind, .kh = o->kernel[0], .kw = o->kernel[1],
                   .sh = o->stride[0] ? o->stride[0] : o->kernel[0], .sw = o->stride[1] ? o->stride[1] : o->kernel[1],
                   .ph = o->padding[0], .pw = o->padding[1]};
    KL_TRY(kl_contiguous(g, x, &x));
    return kl_node_new(g, KL_OP_pool2d, 1, &x, &a, sizeof a, out);
}

kl_status kl_maxpool2d(kl_graph *g, kl_tensor *x, const kl_pool2d_opts *opts, kl_tensor **out)
{
    return pool_pub(g, x, opts, POOL_MAX, out);
}

kl_status kl_avgpool2d(kl_graph *g, kl_tensor *x, const kl_pool2d_opts *opts, kl_tensor **out)
{
    return pool_pub(g, x, opts, POOL_AVG, out);
}

kl_status kl_global_avgpool(kl_graph *g, kl_tensor *x, kl_tensor **out)
{
    if (!out) return kl_fail(KL_EMISUSE, "global_avgpool: out is NULL");
    *out = NULL;
    KL_TRY(kl_check_args(g, "global_avgpool", 1, &x));
    if (x->ndim != 4 || !kl_is_float(x->dtype))
        return kl_fail(KL_EINVAL, "global_avgpool: input must be 4-D [N, C, H, W] floating-point, got %s", kl_desc(x));
    int axes[2] = {2, 3};
    return kl_mean(g, x, 2, axes, 0, out);
}
