/* CPU kernels of conv2d, conv2d_bwd_data and conv2d_bwd_filter: im2col /
 * col2im per sample and group plus one GEMM (see conv2d.h). Samples run in
 * parallel, each worker with its own im2col buffer in the node's scratch and
 * BLAS single-threaded; bwd_filter sums into fixed batch chunks (independent
 * of the thread count) that are then added in order, so results do not depend
 * on the number of threads. */
#include "ops/conv2d.h"
#include "ops/elem.h"
#include "backends/cpu/cpu.h"

#include <omp.h>

/* Output positions o in [0, n) with 0 <= o*step + start < lim: [*lo, *hi). */
static void valid_range(int64_t start, int64_t step, int64_t n, int64_t lim, int64_t *lo, int64_t *hi)
{
    int64_t l = start >= 0 ? 0 : (-start + step - 1) / step;
    int64_t h = start >= lim ? 0 : (lim - 1 - start) / step + 1;
    if (h > n) h = n;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

/* Worker count for a batch loop, and BLAS threads to match. */
static int workers_begin(const kl_exec *ex, int nslots, int64_t N)
{
    int nt = ex->threads < nslots ? ex->threads : nslots;
    if (nt > N) nt = (int)N;
    if (nt < 1) nt = 1;
    if (nt > 1) kl_blas_set_threads(1); /* the parallelism is across samples */
    return nt;
}

static void workers_end(const kl_exec *ex, int nt)
{
    if (nt > 1) kl_blas_set_threads(ex->threads);
}

static kl_conv_span span_of(const kl_conv_attr *a, int64_t k)
{
    int64_t kw = k % a->KW, kh = k / a->KW % a->KH, c = k / (a->KW * a->KH), iw0 = kw * a->dw - a->pw;
    kl_conv_span s;
    valid_range(kh * a->dh - a->ph, a->sh, a->OH, a->H, &s.oh0, &s.oh1);
    valid_range(iw0, a->sw, a->OW, a->W, &s.ow0, &s.ow1);
    s.xo = (c * a->H + kh * a->dh - a->ph) * a->W + iw0; /* x offset at oh = ow = 0 */
    return s;
}

/* The node's col spans (ops/conv2d.h), in its scratch; NULL for direct 1x1. */
static const kl_conv_span *spans_fill(const kl_conv_attr *a, int op, size_t dsize, unsigned char *scratch)
{
    kl_conv_geom g = kl_conv_geom_of(a);
    if (g.direct) return NULL;
    kl_conv_span *sp = (kl_conv_span *)(void *)(scratch + kl_conv_spans_off(a, op, dsize));
    for (int64_t k = 0; k < g.Kg; k++) sp[k] = span_of(a, k);
    return sp;
}

#define CONV_KERNELS(T)                                                                            \
    /* dy_n itself, or dz = act'(y_n) * dy_n formed in buf (fused activation) */                   \
    static const T *grad_in_##T(const kl_conv_attr *a, int64_t n, const T *dy, const T *y, T *buf) \
    {                                                                                              \
        int64_t m = a->O * a->OH * a->OW;                                                          \
        const T *d = dy + n * m;                                                                   \
        if (a->act == KL_ACT_NONE) return d;                                                       \
        const T *yn = y + n * m;                                                                   \
        if (a->act == KL_ACT_RELU)                                                                 \
            for (int64_t i = 0; i < m; i++) buf[i] = kl_relu_grad_##T(yn[i], d[i]);               \
        else                                                                                       \
            for (int64_t i = 0; i < m; i++)                                                        \
                buf[i] = kl_unary_grad_##T(kl_act_unary(a->act), yn[i], d[i], 0);                  \
        return buf;                                                                                \
    }                                                                                              \
    /* sum of a row in 16 independent lanes (vectorises; fixed order) */                           \
    static T rowsum_##T(const T *r, int64_t n)                                                     \
    {                                                                                              \
        T acc[16] = {0}, s = 0;                                                                    \
        int64_t p = 0;                                                                             \
        for (; p + 16 <= n; p += 16)                                                               \
            for (int j = 0; j < 16; j++) acc[j] += r[p + j];                                       \
        for (; p < n; p++) s += r[p];                                                              \
        for (int j = 0; j < 16; j++) s += acc[j];                                                  \
        return s;                                                                                  \
    }                                                                                              \
    /* zeros a flat col row's columns outside [ow0, ow1) of its valid rows (the values that        \
     * wrapped in from the neighbouring image rows) */                                             \
    static void zero_edges_##T(T *row, int64_t OW, kl_conv_span s)                                     \
    {                                                                                              \
        for (int64_t oh = s.oh0; oh < s.oh1; oh++) {                                               \
            for (int64_t ow = 0; ow < s.ow0; ow++) row[oh * OW + ow] = 0;                          \
            for (int64_t ow = s.ow1; ow < OW; ow++) row[oh * OW + ow] = 0;                         \
        }                                                                                          \
    }                                                                                              \
    /* col [Cg*KH*KW, P] from x_g [Cg, H, W] (zeros where the window is in the padding).           \
     * flat (stride 1, OW == W): a col row is the plane shifted by a constant, so it is one        \
     * contiguous copy with the wrapped edge columns zeroed afterwards. */                         \
    static void im2col_##T(const kl_conv_attr *a, const kl_conv_span *sp, int64_t Cg, const T *x, T *col)                  \
    {                                                                                              \
        int64_t OW = a->OW, P = a->OH * a->OW;                                                     \
        bool flat = a->sh == 1 && a->sw == 1 && a->OW == a->W;                                     \
        for (int64_t k = 0; k < Cg * a->KH * a->KW; k++) {                                         \
            T *row = col + k * P;                                                                  \
            kl_conv_span s = sp[k];                                                        \
            if (s.oh0 >= s.oh1 || s.ow0 >= s.ow1) {                                                \
                memset(row, 0, (size_t)P * sizeof(T));                                             \
            } else if (flat) {                                                                     \
                int64_t f0 = s.oh0 * OW + s.ow0, f1 = (s.oh1 - 1) * OW + s.ow1;                    \
                for (int64_t f = 0; f < f0; f++) row[f] = 0; /* short: no call */                  \
                memcpy(row + f0, x + (s.xo + f0), (size_t)(f1 - f0) * sizeof(T));                  \
                for (int64_t f = f1; f < P; f++) row[f] = 0;                                       \
                zero_edges_##T(row, OW, s);                                                        \
            } else {                                                                               \
                memset(row, 0, (size_t)(s.oh0 * OW) * sizeof(T));                                  \
                for (int64_t oh = s.oh0; oh < s.oh1; oh++) {                                       \
                    T *r = row + oh * OW;                                                          \
                    const T *xr = x + (s.xo + oh * a->sh * a->W + s.ow0 * a->sw);                  \
                    for (int64_t ow = 0; ow < s.ow0; ow++) r[ow] = 0;                              \
                    for (int64_t ow = s.ow0; ow < s.ow1; ow++) r[ow] = xr[(ow - s.ow0) * a->sw];   \
                    for (int64_t ow = s.ow1; ow < OW; ow++) r[ow] = 0;                             \
                }                                                                                  \
                memset(row + s.oh1 * OW, 0, (size_t)((a->OH - s.oh1) * OW) * sizeof(T));           \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
    /* dx_g [Cg, H, W] = col2im(col): written (zeroed first), overlaps summed. flat: one           \
     * contiguous add per col row after zeroing its wrapped edge columns (col is consumed). */     \
    static void col2im_##T(const kl_conv_attr *a, const kl_conv_span *sp, int64_t Cg, T *col, T *dx)                       \
    {                                                                                              \
        int64_t OW = a->OW, P = a->OH * a->OW;                                                     \
        bool flat = a->sh == 1 && a->sw == 1 && a->OW == a->W;                                     \
        memset(dx, 0, (size_t)(Cg * a->H * a->W) * sizeof(T));                                     \
        for (int64_t k = 0; k < Cg * a->KH * a->KW; k++) {                                         \
            T *row = col + k * P;                                                                  \
            kl_conv_span s = sp[k];                                                        \
            if (s.oh0 >= s.oh1 || s.ow0 >= s.ow1) continue;                                        \
            if (flat) {                                                                            \
                int64_t f0 = s.oh0 * OW + s.ow0, f1 = (s.oh1 - 1) * OW + s.ow1;                    \
                zero_edges_##T(row, OW, s);                                                        \
                for (int64_t f = f0; f < f1; f++) dx[s.xo + f] += row[f];                          \
                continue;                                                                          \
            }                                                                                      \
            for (int64_t oh = s.oh0; oh < s.oh1; oh++) {                                           \
                const T *r = row + oh * OW;                                                        \
                T *xr = dx + (s.xo + oh * a->sh * a->W + s.ow0 * a->sw);                           \
                for (int64_t ow = s.ow0; ow < s.ow1; ow++) xr[(ow - s.ow0) * a->sw] += r[ow];      \
            }                                                                                      \
        }                                                                                          \
    }                                                                                              \
    static void conv_fwd_##T(const kl_exec *ex, const kl_conv_attr *a, const T *x, const T *w,     \
                             const T *bias, T *y, unsigned char *scratch)                          \
    {                                                                                              \
        kl_conv_geom g = kl_conv_geom_of(a);                                                       \
        size_t colb = g.direct ? 0 : kl_conv_round64((size_t)(g.Kg * g.P) * sizeof(T));            \
        int kind = kl_act_unary(a->act);                                                           \
        const kl_conv_span *sp = spans_fill(a, KL_OP_conv2d, sizeof(T), scratch);                  \
        int nt = workers_begin(ex, a->nslots, a->N);                                               \
        _Pragma("omp parallel for num_threads(nt) schedule(static)")                               \
        for (int64_t n = 0; n < a->N; n++) {                                                       \
            T *col = (T *)(void *)(scratch + (size_t)omp_get_thread_num() * colb);                 \
            for (int gi = 0; gi < a->groups; gi++) {                                               \
                const T *xg = x + (n * a->C + gi * g.Cg) * g.HW;                                   \
                if (!g.direct) im2col_##T(a, sp, g.Cg, xg, col);                                       \
                kl_gemm_##T(false, false, g.Og, g.P, g.Kg, 1, w + gi * g.Og * g.Kg, g.Kg,          \
                            g.direct ? xg : col, g.P, 0, y + (n * a->O + gi * g.Og) * g.P, g.P);   \
            }                                                                                      \
            if (!bias && a->act == KL_ACT_NONE) continue;                                          \
            for (int64_t o = 0; o < a->O; o++) { /* output pass while y_n is in cache */           \
                T *yr = y + (n * a->O + o) * g.P, b = bias ? bias[o] : 0;                          \
                if (a->act == KL_ACT_NONE)                                                         \
                    for (int64_t p = 0; p < g.P; p++) yr[p] += b;                                  \
                else if (a->act == KL_ACT_RELU)                                                    \
                    for (int64_t p = 0; p < g.P; p++) yr[p] = kl_relu_##T(yr[p] + b);             \
                else                                                                               \
                    for (int64_t p = 0; p < g.P; p++) yr[p] = kl_unary_##T(kind, yr[p] + b, 0);    \
            }                                                                                      \
        }                                                                                          \
        workers_end(ex, nt);                                                                       \
    }                                                                                              \
    static void conv_bwd_data_##T(const kl_exec *ex, const kl_conv_attr *a, const T *dy, const T *w, \
                                  const T *y, T *dx, unsigned char *scratch)                       \
    {                                                                                              \
        kl_conv_geom g = kl_conv_geom_of(a);                                                       \
        size_t colb = g.direct ? 0 : kl_conv_round64((size_t)(g.Kg * g.P) * sizeof(T));            \
        size_t slotb = kl_conv_slot_bytes(a, KL_OP_conv2d_bwd_data, sizeof(T));                    \
        const kl_conv_span *sp = spans_fill(a, KL_OP_conv2d_bwd_data, sizeof(T), scratch);         \
        int nt = workers_begin(ex, a->nslots, a->N);                                               \
        _Pragma("omp parallel for num_threads(nt) schedule(static)")                               \
        for (int64_t n = 0; n < a->N; n++) {                                                       \
            unsigned char *slot = scratch + (size_t)omp_get_thread_num() * slotb;                  \
            T *col = (T *)(void *)slot;                                                            \
            const T *dyn = grad_in_##T(a, n, dy, y, (T *)(void *)(slot + colb));                   \
            for (int gi = 0; gi < a->groups; gi++) {                                               \
                const T *dyg = dyn + gi * g.Og * g.P, *wg = w + gi * g.Og * g.Kg;                  \
                T *dxg = dx + (n * a->C + gi * g.Cg) * g.HW;                                       \
                kl_gemm_##T(true, false, g.Kg, g.P, g.Og, 1, wg, g.Kg, dyg, g.P, 0, g.direct ? dxg : col, g.P); \
                if (!g.direct) col2im_##T(a, sp, g.Cg, col, dxg);                                      \
            }                                                                                      \
        }                                                                                          \
        workers_end(ex, nt);                                                                       \
    }                                                                                              \
    static void conv_bwd_filter_##T(const kl_exec *ex, const kl_conv_attr *a, const T *dy, const T *x, \
                                    const T *y, T *dw, T *db, unsigned char *scratch)              \
    {                                                                                              \
        kl_conv_geom g = kl_conv_geom_of(a);                                                       \
        int64_t nw = a->O * g.Kg, nch = a->nchunks;                                                \
        size_t colb = g.direct ? 0 : kl_conv_round64((size_t)(g.Kg * g.P) * sizeof(T));            \
        size_t slotb = kl_conv_slot_bytes(a, KL_OP_conv2d_bwd_filter, sizeof(T));                  \
        size_t partb = kl_conv_round64((size_t)nw * sizeof(T));                                    \
        unsigned char *parts = scratch + (size_t)a->nslots * slotb;                                \
        double *bsum = (double *)(void *)(parts + (nch > 1 ? (size_t)nch * partb : 0));            \
        const kl_conv_span *sp = spans_fill(a, KL_OP_conv2d_bwd_filter, sizeof(T), scratch);       \
        int nt = workers_begin(ex, a->nslots, nch);                                                \
        _Pragma("omp parallel for num_threads(nt) schedule(static)")                               \
        for (int64_t c = 0; c < nch; c++) {                                                        \
            unsigned char *slot = scratch + (size_t)omp_get_thread_num() * slotb;                  \
            T *col = (T *)(void *)slot;                                                            \
            T *pw = nch > 1 ? (T *)(void *)(parts + (size_t)c * partb) : dw;                       \
            double *pb = bsum + c * a->O;                                                          \
            int64_t n0 = c * a->N / nch, n1 = (c + 1) * a->N / nch;                                \
            for (int64_t n = n0; n < n1; n++) {                                                    \
                const T *dyn = grad_in_##T(a, n, dy, y, (T *)(void *)(slot + colb));               \
                for (int gi = 0; gi < a->groups; gi++) {                                           \
                    const T *xg = x + (n * a->C + gi * g.Cg) * g.HW;                               \
                    if (!g.direct) im2col_##T(a, sp, g.Cg, xg, col);                                   \
                    kl_gemm_##T(false, true, g.Og, g.Kg, g.P, 1, dyn + gi * g.Og * g.P, g.P,       \
                                g.direct ? xg : col, g.P, n == n0 ? 0 : 1, pw + gi * g.Og * g.Kg, g.Kg); \
                }                                                                                  \
                for (int64_t o = 0; db && o < a->O; o++) /* per row in T, across rows in double */ \
                    pb[o] = (n == n0 ? 0 : pb[o]) + (double)rowsum_##T(dyn + o * g.P, g.P);        \
            }                                                                                      \
        }                                                                                          \
        workers_end(ex, nt);                                                                       \
        if (nch > 1) {                                                                             \
            _Pragma("omp parallel for schedule(static) if (nw * nch > KL_PAR_MIN)")                \
            for (int64_t i = 0; i < nw; i++) {                                                     \
                T s = 0;                                                                           \
                for (int64_t c = 0; c < nch; c++) s += ((const T *)(const void *)(parts + (size_t)c * partb))[i]; \
                dw[i] = s;                                                                         \
            }                                                                                      \
        }                                                                                          \
        for (int64_t o = 0; db && o < a->O; o++) {                                                 \
            double s = 0;                                                                          \
            for (int64_t c = 0; c < nch; c++) s += bsum[c * a->O + o];                             \
            db[o] = (T)s;                                                                          \
        }                                                                                          \
    }
KL_FOR_REAL(CONV_KERNELS)

/* Runs kernel fn_float or fn_double by t's dtype on (ex, a, ...) (the data
 * pointers convert from void *). */
#define CONV_RUN(t, fn, ...)                                                                       \
    do {                                                                                           \
        if ((t)->dtype == KL_F32) fn##_float(ex, a, __VA_ARGS__);                                  \
        else fn##_double(ex, a, __VA_ARGS__);                                                      \
    } while (0)

/* The forward's activated output y (src 2) that a backward node reads; NULL
 * without an activation. */
static const void *act_out(const kl_exec *ex, const kl_tensor *t, const kl_conv_attr *a)
{
    return a->act != KL_ACT_NONE ? kl_data(ex, t->src[2]) : NULL;
}

/* oneDNN's kernel where it takes the node, else kiln's */
#define KL_DNNL_FIRST(ex, t, a)                                                                    \
    do {                                                                                           \
        kl_status s_ = kl_dnnl_conv_ok(a, t) ? kl_dnnl_conv_run(ex, t) : KL_EUNSUPPORTED;           \
        if (s_ != KL_EUNSUPPORTED) return s_;                                                      \
    } while (0)

kl_status kl_conv2d_fwd_cpu(const kl_exec *ex, const kl_tensor *t)
{
    const kl_conv_attr *a = KL_ATTR_C(t, kl_conv_attr);
    KL_DNNL_FIRST(ex, t, a);
    const void *b = t->n_src > 2 ? kl_data(ex, t->src[2]) : NULL;
    CONV_RUN(t, conv_fwd, kl_data(ex, t->src[0]), kl_data(ex, t->src[1]), b, kl_data(ex, t), kl_scratch(ex, t));
    return KL_OK;
}

kl_status kl_conv2d_bwd_data_cpu(const kl_exec *ex, const kl_tensor *t)
{
    const kl_conv_attr *a = KL_ATTR_C(t, kl_conv_attr);
    KL_DNNL_FIRST(ex, t, a);
    CONV_RUN(t, conv_bwd_data, kl_data(ex, t->src[0]), kl_data(ex, t->src[1]), act_out(ex, t, a), kl_data(ex, t),
             kl_scratch(ex, t));
    return KL_OK;
}

kl_status kl_conv2d_bwd_filter_cpu(const kl_exec *ex, const kl_tensor *t)
{
    const kl_conv_attr *a = KL_ATTR_C(t, kl_conv_attr);
    KL_DNNL_FIRST(ex, t, a);
    void *db = a->has_bias ? kl_data(ex, t->extra[0]) : NULL;
    CONV_RUN(t, conv_bwd_filter, kl_data(ex, t->src[0]), kl_data(ex, t->src[1]), act_out(ex, t, a), kl_data(ex, t),
             db, kl_scratch(ex, t));
    return KL_OK;
}
