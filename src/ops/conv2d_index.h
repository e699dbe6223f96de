/* Index math of the CUDA convolution kernels (backends/cuda/conv.cu),
 * compiled for the host too: tests/test_conv_index.c runs every kernel's
 * per-thread function over all indices, the GEMMs as described by
 * kl_conv_gemm_of and the chunk loop, and compares with the CPU ops (CI has
 * no GPU, so this is what covers the CUDA arithmetic there).
 *
 * The CUDA ops take the batch in chunks of m <= nc samples [n0, n0 + m)
 * (nc = a->cu_nc, chosen at shape time so a chunk's buffers fit
 * kl_conv_cu_budget). G groups, Cg = C/G, Og = O/G, Kg = Cg*KH*KW, P = OH*OW:
 *   col [G, Kg, m*P]  col[g][k][j*P + p] = x[n0 + j, g*Cg + c, ih, iw] with
 *                     k = (c*KH + kh)*KW + kw, p = oh*OW + ow,
 *                     ih = oh*sh - ph + kh*dh, iw = ow*sw - pw + kw*dw
 *                     (0 where (ih, iw) lies in the padding)
 *   cn  [O, m*P]      cn[o][j*P + p]: sample n0 + j, channel o, pixel p (CNHW:
 *                     the GEMM side of y and of dz; row o = g*Og + o' is group g's)
 * One GEMM per chunk, a strided batch over the groups (kl_conv_gemm_of):
 *   forward     cn_g [Og, m*P]    = W_g [Og, Kg] @ col_g [Kg, m*P]
 *   bwd_data    dcol_g [Kg, m*P]  = W_g^T @ dz_g (cn)
 *   bwd_filter  dW_g [Og, Kg]    (+)= dz_g (cn) @ col_g^T   (beta 0 on the first chunk)
 * Element-wise passes around them (one thread per element, functions below):
 *   forward   y = act(cn + bias) back to NCHW; backward dz (cn) = act'(y) dy
 *   from NCHW; bwd_data col2im gathers each dx element's taps from dcol. */
#ifndef KL_OPS_CONV2D_INDEX_H
#define KL_OPS_CONV2D_INDEX_H

#include "ops/conv2d.h"
#include "ops/elem.h"
#include "core/philox.h" /* KL_HD */
#include "ops/sum_chunks.h"

/* The geometry a kernel needs, all int64 (passed by value to kernels). */
typedef struct kl_conv_ix {
    int64_t N, C, H, W, O, OH, OW, KH, KW, sh, sw, ph, pw, dh, dw;
    int64_t G, Cg, Og, Kg, P;
    int act; /* kl_unary_kind of the fused activation; -1: none */
} kl_conv_ix;

static inline kl_conv_ix kl_conv_ix_of(const kl_conv_attr *a)
{
    kl_conv_ix c;
    c.N = a->N, c.C = a->C, c.H = a->H, c.W = a->W, c.O = a->O, c.OH = a->OH, c.OW = a->OW;
    c.KH = a->KH, c.KW = a->KW, c.sh = a->sh, c.sw = a->sw, c.ph = a->ph, c.pw = a->pw, c.dh = a->dh, c.dw = a->dw;
    c.G = a->groups, c.Cg = a->C / a->groups, c.Og = a->O / a->groups, c.Kg = c.Cg * a->KH * a->KW;
    c.P = a->OH * a->OW;
    c.act = kl_act_unary(a->act);
    return c;
}

/* Input index o*s - p + k*d of output o at kernel tap k; -1 outside [0, n). */
KL_HD static inline int64_t kl_conv_in_at(int64_t o, int64_t k, int64_t s, int64_t p, int64_t d, int64_t n)
{
    int64_t i = o * s - p + k * d;
    return i >= 0 && i < n ? i : -1;
}

/* Output o in [0, n_out) whose tap k reads input i (o*s - p + k*d == i); -1: none. */
KL_HD static inline int64_t kl_conv_out_at(int64_t i, int64_t k, int64_t s, int64_t p, int64_t d, int64_t n_out)
{
    int64_t q = i + p - k * d;
    if (q < 0 || q % s) return -1;
    return q / s < n_out ? q / s : -1;
}

/* Offset in x of col element i of the chunk (n0, m); -1 in the padding. */
KL_HD static inline int64_t kl_conv_col_src(const kl_conv_ix *c, int64_t n0, int64_t m, int64_t i)
{
    int64_t mp = m * c->P, gk = i / mp, jp = i - gk * mp; /* gk = g*Kg + k */
    int64_t g = gk / c->Kg, k = gk - g * c->Kg, j = jp / c->P, p = jp - j * c->P;
    int64_t kw = k % c->KW, kh = k / c->KW % c->KH, ch = k / (c->KW * c->KH), oh = p / c->OW, ow = p - oh * c->OW;
    int64_t ih = kl_conv_in_at(oh, kh, c->sh, c->ph, c->dh, c->H), iw = kl_conv_in_at(ow, kw, c->sw, c->pw, c->dw, c->W);
    if (ih < 0 || iw < 0) return -1;
    return (((n0 + j) * c->C + g * c->Cg + ch) * c->H + ih) * c->W + iw;
}

/* Offset in an NCHW [N, O, OH, OW] tensor (y, dy) of cn element i of the chunk (n0, m). */
KL_HD static inline int64_t kl_conv_cn_nchw(const kl_conv_ix *c, int64_t n0, int64_t m, int64_t i)
{
    int64_t mp = m * c->P, o = i / mp, jp = i - o * mp, j = jp / c->P, p = jp - j * c->P;
    return ((n0 + j) * c->O + o) * c->P + p;
}

#define KL_DEF_CONV_IX(T)                                                                          \
    /* forward: output value v of channel o after the bias and the fused activation */           \
    KL_HD static inline T kl_conv_post_##T(const kl_conv_ix *c, T v, const T *bias, int64_t o)     \
    {                                                                                              \
        if (bias) v += bias[o];                                                                    \
        return c->act < 0 ? v : kl_unary_##T(c->act, v, (T)0);                                     \
    }                                                                                              \
    /* backward: dz = act'(y) * dy of one element (dy without an activation) */                    \
    KL_HD static inline T kl_conv_dzv_##T(const kl_conv_ix *c, T dy, T y)                          \
    {                                                                                              \
        return c->act < 0 ? dy : kl_unary_grad_##T(c->act, y, dy, (T)0);                          \
    }                                                                                              \
    /* im2col thread i: col element i of the chunk (n0, m) */                                      \
    KL_HD static inline T kl_conv_im2col_##T(const kl_conv_ix *c, const T *x, int64_t n0, int64_t m, int64_t i) \
    {                                                                                              \
        int64_t s = kl_conv_col_src(c, n0, m, i);                                                  \
        return s >= 0 ? x[s] : (T)0;                                                               \
    }                                                                                              \
    /* forward output thread i: y element i of the chunk ([m, O, P] from y + n0*O*P) =             \
     * act(cn + bias), as the CPU's output pass */                                                 \
    KL_HD static inline T kl_conv_out_##T(const kl_conv_ix *c, const T *cn, const T *bias, int64_t m, int64_t i) \
    {                                                                                              \
        int64_t OP = c->O * c->P, j = i / OP, r = i - j * OP, o = r / c->P, p = r - o * c->P;      \
        return kl_conv_post_##T(c, cn[(o * m + j) * c->P + p], bias, o);                           \
    }                                                                                              \
    /* dz thread i: cn element i of the chunk (n0, m) = act'(y) * dy (dy without an activation) */ \
    KL_HD static inline T kl_conv_dz_##T(const kl_conv_ix *c, const T *dy, const T *y, int64_t n0, int64_t m, \
                                         int64_t i)                                                \
    {                                                                                              \
        int64_t s = kl_conv_cn_nchw(c, n0, m, i);                                                  \
        return kl_conv_dzv_##T(c, dy[s], c->act < 0 ? (T)0 : y[s]);                                \
    }                                                                                              \
    /* col2im thread i: dx element i of the chunk ([m, C, H, W] from dx + n0*C*H*W) = the sum of   \
     * the dcol elements of every tap (kh, kw) that reads it, in the CPU's order (kh, then kw) */  \
    KL_HD static inline T kl_conv_col2im_##T(const kl_conv_ix *c, const T *dcol, int64_t m, int64_t i) \
    {                                                                                              \
        int64_t HW = c->H * c->W, CHW = c->C * HW;                                                 \
        int64_t j = i / CHW, r = i - j * CHW, ch = r / HW, q = r - ch * HW, ih = q / c->W, iw = q - ih * c->W; \
        int64_t g = ch / c->Cg, mp = m * c->P;                                                     \
        const T *d = dcol + (g * c->Kg + (ch - g * c->Cg) * c->KH * c->KW) * mp + j * c->P; /* tap (0, 0) */ \
        T s = 0;                                                                                   \
        for (int64_t kh = 0; kh < c->KH; kh++) {                                                   \
            int64_t oh = kl_conv_out_at(ih, kh, c->sh, c->ph, c->dh, c->OH);                       \
            if (oh < 0) continue;                                                                  \
            for (int64_t kw = 0; kw < c->KW; kw++) {                                               \
                int64_t ow = kl_conv_out_at(iw, kw, c->sw, c->pw, c->dw, c->OW);                   \
                if (ow >= 0) s += d[(kh * c->KW + kw) * mp + oh * c->OW + ow];                     \
            }                                                                                      \
        }                                                                                          \
        return s;                                                                                  \
    }

KL_DEF_CONV_IX(float)
KL_DEF_CONV_IX(double)

/* ---- host side: GEMM shapes and the scratch layout ---- */

/* One conv GEMM on a chunk of m samples as kl_cu_gemm_run takes it (row-major
 * y[M, N] = a[M, K] @ b[K, N] + beta*y; ta: a stored as [K, M] with ld lda;
 * tb: b stored as [N, K] with ld ldb; matrix i of the batch at a + i*sa, b +
 * i*sb, y + i*sy). Operands, by op:
 *   conv2d             a = w,  b = col, y = cn
 *   conv2d_bwd_data    a = w,  b = cn,  y = dcol
 *   conv2d_bwd_filter  a = cn, b = col, y = dw */
typedef struct kl_conv_gemm {
    int64_t M, N, K, lda, ldb, ldy, batch, sa, sb, sy;
    int ta, tb;
} kl_conv_gemm;

static inline kl_conv_gemm kl_conv_gemm_of(const kl_conv_ix *c, int op, int64_t m)
{
    int64_t mp = m * c->P;
    kl_conv_gemm g;
    g.batch = c->G;
    if (op == KL_OP_conv2d) {
        g.M = c->Og, g.N = mp, g.K = c->Kg, g.ta = 0, g.tb = 0, g.lda = c->Kg, g.ldb = mp, g.ldy = mp;
        g.sa = c->Og * c->Kg, g.sb = c->Kg * mp, g.sy = c->Og * mp;
    } else if (op == KL_OP_conv2d_bwd_data) { /* w_g is [Og, Kg]: W_g^T is a stored transposed */
        g.M = c->Kg, g.N = mp, g.K = c->Og, g.ta = 1, g.tb = 0, g.lda = c->Kg, g.ldb = mp, g.ldy = mp;
        g.sa = c->Og * c->Kg, g.sb = c->Og * mp, g.sy = c->Kg * mp;
    } else { /* col_g is [Kg, m*P]: col_g^T is b stored transposed */
        g.M = c->Og, g.N = c->Kg, g.K = mp, g.ta = 0, g.tb = 1, g.lda = mp, g.ldb = mp, g.ldy = c->Kg;
        g.sa = c->Og * mp, g.sb = c->Kg * mp, g.sy = c->Og * c->Kg;
    }
    return g;
}

static inline size_t kl_conv_round256(size_t n) { return (n + 255) & ~(size_t)255; }

/* A CUDA conv node's scratch: col (conv2d, bwd_filter) or dcol (bwd_data)
 * [G, Kg, nc*P], then cn [O, nc*P] (conv2d: the GEMM's output; gradients:
 * dz), then (bwd_filter with a bias) db's running sums over the batch
 * chunks [O] and its partial sums [O, kl_sum_chunks(nc*P)], doubles. Each
 * at a 256-byte offset: cuBLASLt's plans are made for the operands'
 * alignment. */
typedef struct kl_conv_cu_layout {
    int64_t nc;
    size_t col, cn, dbsum, bytes; /* byte offsets; total */
} kl_conv_cu_layout;

static inline kl_conv_cu_layout kl_conv_cu_layout_of(const kl_conv_attr *a, int op, size_t es, int64_t nc)
{
    kl_conv_ix c = kl_conv_ix_of(a);
    kl_conv_cu_layout l;
    l.nc = nc;
    l.col = 0;
    l.cn = kl_conv_round256((size_t)(c.G * c.Kg * nc * c.P) * es);
    l.dbsum = l.cn + kl_conv_round256((size_t)(c.O * nc * c.P) * es);
    size_t db = (size_t)(c.O * (1 + kl_sum_chunks(nc * c.P))) * sizeof(double);
    l.bytes = l.dbsum + (op == KL_OP_conv2d_bwd_filter && a->has_bias ? kl_conv_round256(db) : 0);
    return l;
}

/* A conv's bias gradient on CUDA (backends/cuda/conv_db.cuh): value j of
 * channel o's m*P values of dz, sample j / P, pixel j % P, with the
 * layout's strides: the cn layout (sn P, so m*P) or NCHW (sn O*P, so P). */
KL_HD static inline int64_t kl_conv_db_src(int64_t j, int64_t o, int64_t P, int64_t sn, int64_t so)
{
    int64_t n = j / P;
    return n * sn + o * so + (j - n * P);
}

/* Samples per chunk: as many as fit budget bytes (at least 1, at most N). */
static inline int64_t kl_conv_cu_chunk(const kl_conv_attr *a, size_t es, size_t budget)
{
    kl_conv_ix c = kl_conv_ix_of(a);
    size_t per = (size_t)((c.G * c.Kg + c.O) * c.P) * es;
    int64_t nc = per ? (int64_t)(budget / per) : c.N;
    return nc < 1 ? 1 : nc > c.N ? c.N : nc;
}

#endif
