/* conv2d, max/avg pooling and global average pooling: finite-difference
 * gradient checks (f64) over stride / padding / dilation / groups / kernel
 * shape combinations and strided-view inputs; f32 forward values and
 * gradients against naive direct loops (batches larger than the kernels'
 * worker slots); thread-count independence; error messages. */
#include "gradcheck.h"
#include "testutil.h"
#include "ops/conv2d.h" /* kl_conv2d_act: conv with a fused activation */

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct { kl_conv2d_opts o; int bias, act, nhwc; } conv_case;
typedef struct { kl_pool2d_opts o; int max; } pool_case;

static kl_status b_conv(kl_graph *g, kl_tensor **x, void *u, kl_tensor **y)
{
    const conv_case *c = u;
    kl_tensor *in = x[0];
    if (c->nhwc) { /* x given as [N, H, W, C]: a permuted (strided) NCHW view */
        int p[4] = {0, 3, 1, 2};
        kl_status s = kl_permute(g, x[0], p, &in);
        if (s) return s;
    }
    return kl_conv2d_act(g, in, x[1], c->bias ? x[2] : NULL, &c->o, (kl_act)c->act, y);
}

static kl_status b_pool(kl_graph *g, kl_tensor **x, void *u, kl_tensor **y)
{
    const pool_case *c = u;
    return c->max ? kl_maxpool2d(g, x[0], &c->o, y) : kl_avgpool2d(g, x[0], &c->o, y);
}

static kl_status b_pool_t(kl_graph *g, kl_tensor **x, void *u, kl_tensor **y) /* pooled transposed view */
{
    kl_tensor *t;
    kl_status s = kl_transpose(g, x[0], 2, 3, &t);
    return s ? s : b_pool(g, &t, u, y);
}

static kl_status b_gap(kl_graph *g, kl_tensor **x, void *u, kl_tensor **y) { return kl_global_avgpool(g, x[0], y); }

#define CONV(s0, s1, p0, p1, d0, d1, gr) {.stride = {s0, s1}, .padding = {p0, p1}, .dilation = {d0, d1}, .groups = gr}

static void gradchecks(void)
{
    static const struct { const char *name; conv_case c; gc_input in[3]; } cc[] = {
        {"conv_plain", {CONV(0, 0, 0, 0, 0, 0, 0), 1, 0, 0}, {GC_IN(2, 3, 6, 5), GC_IN(4, 3, 3, 3), GC_IN(4)}},
        {"conv_stride2", {CONV(2, 2, 1, 1, 1, 1, 1), 1, 0, 0}, {GC_IN(2, 2, 7, 8), GC_IN(3, 2, 3, 3), GC_IN(3)}},
        {"conv_pad2", {CONV(1, 1, 2, 2, 1, 1, 1), 1, 0, 0}, {GC_IN(1, 2, 4, 5), GC_IN(3, 2, 3, 3), GC_IN(3)}},
        {"conv_dilation2", {CONV(1, 1, 1, 1, 2, 2, 1), 1, 0, 0}, {GC_IN(2, 2, 7, 6), GC_IN(2, 2, 3, 3), GC_IN(2)}},
        {"conv_groups2", {CONV(1, 1, 1, 1, 1, 1, 2), 1, 0, 0}, {GC_IN(2, 4, 5, 5), GC_IN(6, 2, 3, 3), GC_IN(6)}},
        {"conv_depthwise", {CONV(1, 1, 1, 1, 1, 1, 3), 1, 0, 0}, {GC_IN(2, 3, 5, 4), GC_IN(6, 1, 3, 3), GC_IN(6)}},
        {"conv_1x1", {CONV(0, 0, 0, 0, 0, 0, 0), 1, 0, 0}, {GC_IN(2, 5, 3, 4), GC_IN(3, 5, 1, 1), GC_IN(3)}},
        {"conv_1x1_stride2", {CONV(2, 2, 0, 0, 0, 0, 0), 1, 0, 0}, {GC_IN(2, 3, 5, 4), GC_IN(2, 3, 1, 1), GC_IN(2)}},
        {"conv_nonsquare", {CONV(2, 1, 1, 0, 1, 2, 1), 1, 0, 0}, {GC_IN(2, 2, 7, 9), GC_IN(3, 2, 2, 3), GC_IN(3)}},
        {"conv_no_bias", {CONV(1, 1, 1, 1, 1, 1, 1), 0, 0, 0}, {GC_IN(2, 3, 4, 4), GC_IN(2, 3, 3, 3)}},
        {"conv_batch1", {CONV(1, 1, 1, 1, 1, 1, 1), 1, 0, 0}, {GC_IN(1, 2, 5, 6), GC_IN(3, 2, 3, 3), GC_IN(3)}},
        {"conv_size1_dims", {CONV(1, 1, 0, 1, 1, 1, 1), 1, 0, 0}, {GC_IN(1, 1, 1, 3), GC_IN(1, 1, 1, 3), GC_IN(1)}},
        {"conv_strided_view", {CONV(1, 2, 1, 1, 1, 1, 1), 1, 0, 1}, {GC_IN(2, 5, 6, 3), GC_IN(4, 3, 3, 3), GC_IN(4)}},
        {"conv_relu_fused", {CONV(1, 1, 1, 1, 1, 1, 1), 1, KL_ACT_RELU, 0}, {GC_IN(2, 2, 5, 5), GC_IN(3, 2, 3, 3), GC_IN(3)}},
        {"conv_tanh_fused", {CONV(2, 2, 1, 1, 1, 1, 1), 1, KL_ACT_TANH, 0}, {GC_IN(2, 2, 5, 5), GC_IN(3, 2, 3, 3), GC_IN(3)}},
    };
    for (size_t i = 0; i < sizeof cc / sizeof cc[0]; i++) {
        int bad = gradcheck(cc[i].name, cc[i].c.bias ? 3 : 2, cc[i].in, b_conv, (void *)&cc[i].c);
        printf("%-28s %s\n", cc[i].name, bad ? "FAIL" : "ok");
    }
    static const struct { const char *name; pool_case c; gc_input in; gc_build fn; } pc[] = {
        {"maxpool_2x2", {{{2, 2}, {0, 0}, {0, 0}}, 1}, GC_IN(2, 3, 6, 6), b_pool},
        {"maxpool_2x2_odd", {{{2, 2}, {0, 0}, {0, 0}}, 1}, GC_IN(1, 2, 5, 7), b_pool},
        {"maxpool_3x3_s2_p1", {{{3, 3}, {2, 2}, {1, 1}}, 1}, GC_IN(2, 2, 7, 6), b_pool},
        {"maxpool_nonsquare", {{{2, 3}, {1, 2}, {1, 0}}, 1}, GC_IN(1, 2, 5, 8), b_pool},
        {"maxpool_big_window_i32", {{{16, 17}, {1, 1}, {0, 0}}, 1}, GC_IN(1, 1, 17, 18), b_pool},
        {"maxpool_strided_view", {{{2, 2}, {0, 0}, {0, 0}}, 1}, GC_IN(2, 2, 4, 6), b_pool_t},
        {"avgpool_2x2", {{{2, 2}, {0, 0}, {0, 0}}, 0}, GC_IN(2, 3, 6, 5), b_pool},
        {"avgpool_3x3_s2_p1", {{{3, 3}, {2, 2}, {1, 1}}, 0}, GC_IN(2, 2, 7, 6), b_pool},
        {"avgpool_nonsquare", {{{3, 2}, {2, 1}, {1, 1}}, 0}, GC_IN(1, 2, 6, 5), b_pool},
        {"avgpool_strided_view", {{{2, 3}, {0, 0}, {0, 0}}, 0}, GC_IN(2, 2, 6, 4), b_pool_t},
        {"global_avgpool", {{{0, 0}, {0, 0}, {0, 0}}, 0}, GC_IN(2, 3, 4, 5), b_gap},
    };
    for (size_t i = 0; i < sizeof pc / sizeof pc[0]; i++) {
        int bad = gradcheck(pc[i].name, 1, &pc[i].in, pc[i].fn, (void *)&pc[i].c);
        printf("%-28s %s\n", pc[i].name, bad ? "FAIL" : "ok");
    }
}

/* ---- f32 values against naive loops ---- */

static uint64_t rs = 0x2545F4914F6CDD1Dull;
static float frand(void)
{
    rs ^= rs << 13, rs ^= rs >> 7, rs ^= rs << 17;
    return (float)((double)(rs >> 11) / 9007199254740992.0 * 2 - 1);
}
static void fill_rand(float *v, int64_t n)
{
    for (int64_t i = 0; i < n; i++) v[i] = frand();
}

typedef struct { int64_t N, C, H, W, O, KH, KW; kl_conv2d_opts o; int act, x_param, w_fixed; } ref_case;

/* |got - want| <= tol * scale per element (scale: sum of |terms|); counts failures. */
static int close_all(const char *what, const float *got, const double *want, const double *scale, int64_t n, double tol)
{
    int bad = 0;
    for (int64_t i = 0; i < n; i++)
        if (!(fabs(got[i] - want[i]) <= tol * (scale[i] + 1e-30))) {
            if (bad++ < 3) fprintf(stderr, "%s[%lld]: got %.9g want %.9g\n", what, (long long)i, got[i], want[i]);
        }
    return bad;
}

/* Builds y = conv(x, w, b), loss = sum(y * R); checks y, dW, db (and dx when
 * x is a parameter) against direct loops; returns dW for the thread test. */
static void ref_check(const char *name, const ref_case *rc, int threads, float *dw_out)
{
    int s = rc->o.stride[0] ? rc->o.stride[0] : 1, s1 = rc->o.stride[1] ? rc->o.stride[1] : 1;
    int d = rc->o.dilation[0] ? rc->o.dilation[0] : 1, d1 = rc->o.dilation[1] ? rc->o.dilation[1] : 1;
    int p = rc->o.padding[0], p1 = rc->o.padding[1], G = rc->o.groups ? rc->o.groups : 1;
    int64_t N = rc->N, C = rc->C, H = rc->H, W = rc->W, O = rc->O, KH = rc->KH, KW = rc->KW, Cg = C / G, Og = O / G;
    int64_t OH = (H + 2 * p - d * (KH - 1) - 1) / s + 1, OW = (W + 2 * p1 - d1 * (KW - 1) - 1) / s1 + 1;
    int64_t nx = N * C * H * W, nw = O * Cg * KH * KW, ny = N * O * OH * OW;
    float *x = malloc(nx * 4), *w = malloc(nw * 4), *b = malloc(O * 4), *r = malloc(ny * 4), *y = malloc(ny * 4);
    float *gx = malloc(nx * 4), *gw = malloc(nw * 4), *gb = malloc(O * 4);
    double *ry = calloc(ny, 8), *sy = calloc(ny, 8), *rx = calloc(nx, 8), *sx = calloc(nx, 8);
    double *rw = calloc(nw, 8), *sw = calloc(nw, 8), *rb = calloc(O, 8), *sb = calloc(O, 8);
    rs = 0x2545F4914F6CDD1Dull ^ (uint64_t)(N * 131 + C * 17 + O); /* same data for the same case */
    fill_rand(x, nx), fill_rand(w, nw), fill_rand(b, O), fill_rand(r, ny);
    /* forward reference (pre-activation) */
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++)
            for (int64_t oh = 0; oh < OH; oh++)
                for (int64_t ow = 0; ow < OW; ow++) {
                    int64_t yi = ((n * O + o) * OH + oh) * OW + ow;
                    double acc = b[o], sc = fabs(b[o]);
                    for (int64_t c = 0; c < Cg; c++)
                        for (int64_t kh = 0; kh < KH; kh++)
                            for (int64_t kw = 0; kw < KW; kw++) {
                                int64_t ih = oh * s - p + kh * d, iw = ow * s1 - p1 + kw * d1;
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                double xv = x[((n * C + (o / Og) * Cg + c) * H + ih) * W + iw];
                                double wv = w[((o * Cg + c) * KH + kh) * KW + kw];
                                acc += xv * wv, sc += fabs(xv * wv);
                            }
                    ry[yi] = acc, sy[yi] = sc;
                }
    /* gradient references with dz = R * act'(y) (act none, relu, tanh or sigmoid) */
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++)
            for (int64_t oh = 0; oh < OH; oh++)
                for (int64_t ow = 0; ow < OW; ow++) {
                    int64_t yi = ((n * O + o) * OH + oh) * OW + ow;
                    double th = tanh(ry[yi]), sg = 1 / (1 + exp(-ry[yi]));
                    double dz = rc->act == KL_ACT_RELU && ry[yi] <= 0 ? 0
                                : rc->act == KL_ACT_TANH    ? r[yi] * (1 - th * th)
                                : rc->act == KL_ACT_SIGMOID ? r[yi] * sg * (1 - sg)
                                                            : r[yi];
                    rb[o] += dz, sb[o] += fabs(dz);
                    for (int64_t c = 0; c < Cg; c++)
                        for (int64_t kh = 0; kh < KH; kh++)
                            for (int64_t kw = 0; kw < KW; kw++) {
                                int64_t ih = oh * s - p + kh * d, iw = ow * s1 - p1 + kw * d1;
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                int64_t xi = ((n * C + (o / Og) * Cg + c) * H + ih) * W + iw;
                                int64_t wi = ((o * Cg + c) * KH + kh) * KW + kw;
                                rw[wi] += dz * x[xi], sw[wi] += fabs(dz * x[xi]);
                                rx[xi] += dz * w[wi], sx[xi] += fabs(dz * w[wi]);
                            }
                }
    for (int64_t i = 0; i < ny; i++)
        ry[i] = rc->act == KL_ACT_RELU      ? (ry[i] > 0 ? ry[i] : 0)
                : rc->act == KL_ACT_TANH    ? tanh(ry[i])
                : rc->act == KL_ACT_SIGMOID ? 1 / (1 + exp(-ry[i]))
                                            : ry[i];
    kl_ctx *ctx = NULL;
    kl_graph *g = NULL;
    kl_ctx_opts co = {.seed = 3, .threads = threads};
    kl_tensor *tx, *tw, *tb, *tr, *ty, *loss;
    int64_t xd[4] = {N, C, H, W}, wd[4] = {O, Cg, KH, KW}, yd[4] = {N, O, OH, OW};
    CHECK_OK(kl_ctx_new(&co, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(rc->x_param ? kl_param(g, "x", KL_F32, 4, xd, NULL, &tx) : kl_input(g, "x", KL_F32, 4, xd, &tx));
    CHECK_OK(rc->w_fixed ? kl_buffer(g, "w", KL_F32, 4, wd, NULL, &tw) : kl_param(g, "w", KL_F32, 4, wd, NULL, &tw));
    CHECK_OK(kl_param(g, "b", KL_F32, 1, &O, NULL, &tb));
    CHECK_OK(kl_input(g, "R", KL_F32, 4, yd, &tr));
    CHECK_OK(kl_conv2d_act(g, tx, tw, tb, &rc->o, (kl_act)rc->act, &ty));
    CHECK_OK(kl_output(g, ty));
    CHECK_OK(kl_mul(g, ty, tr, &loss));
    CHECK_OK(kl_sum(g, loss, 0, NULL, 0, &loss));
    CHECK_OK(kl_backward(g, loss));
    int ix = kl_ctx_param_find(ctx, "x"), iw = kl_ctx_param_find(ctx, "w"), ib = kl_ctx_param_find(ctx, "b");
    CHECK_OK(rc->x_param ? kl_ctx_param_set(ctx, ix, x, nx * 4) : kl_tensor_set(tx, x, nx * 4));
    CHECK_OK(kl_ctx_param_set(ctx, iw, w, nw * 4));
    CHECK_OK(kl_ctx_param_set(ctx, ib, b, O * 4));
    CHECK_OK(kl_tensor_set(tr, r, ny * 4));
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_graph_run(g)); /* a second run must give the same (written, not accumulated) gradients */
    CHECK_OK(kl_tensor_get(ty, y, ny * 4));
    if (rc->w_fixed) memcpy(gw, w, nw * 4); /* not trained: no gradient */
    else CHECK_OK(kl_ctx_grad_get(ctx, iw, gw, nw * 4));
    CHECK_OK(kl_ctx_grad_get(ctx, ib, gb, O * 4));
    int bad = close_all("y", y, ry, sy, ny, 1e-5) + (rc->w_fixed ? 0 : close_all("dW", gw, rw, sw, nw, 1e-5)) +
              close_all("db", gb, rb, sb, O, 1e-5);
    if (rc->x_param) {
        CHECK_OK(kl_ctx_grad_get(ctx, ix, gx, nx * 4));
        bad += close_all("dx", gx, rx, sx, nx, 1e-5);
    }
    CHECK(bad == 0);
    printf("%-28s %s (threads %d)\n", name, bad ? "FAIL" : "ok", threads);
    if (dw_out) memcpy(dw_out, gw, nw * 4);
    kl_graph_free(g);
    kl_ctx_free(ctx);
    free(x), free(w), free(b), free(r), free(y), free(gx), free(gw), free(gb);
    free(ry), free(sy), free(rx), free(sx), free(rw), free(sw), free(rb), free(sb);
}

static void value_checks(void)
{
    printf("oneDNN convolutions: %s\n", kl_dnnl_conv_mode() < 0 ? "not loaded (kiln's kernels)"
                                         : kl_dnnl_conv_mode() ? "every f32 conv (KILN_CONV=dnnl)"
                                                               : "f32 convs with >= 16 channels a group");
    static const struct { const char *name; ref_case c; } rc[] = {
        {"ref_3x3_pad1_n19", {19, 4, 9, 8, 6, 3, 3, CONV(1, 1, 1, 1, 1, 1, 1), 0, 1, 0}},
        {"ref_input_no_dx", {18, 1, 12, 11, 8, 3, 3, CONV(1, 1, 1, 1, 1, 1, 1), 0, 0, 0}},
        {"ref_mixed_groups2", {3, 4, 11, 10, 6, 3, 2, CONV(2, 1, 2, 0, 2, 1, 2), 0, 1, 0}},
        {"ref_depthwise", {4, 6, 7, 7, 12, 3, 3, CONV(1, 1, 1, 1, 1, 1, 6), 0, 1, 0}},
        {"ref_1x1_direct", {17, 8, 6, 5, 8, 1, 1, CONV(1, 1, 0, 0, 1, 1, 1), 0, 1, 0}},
        {"ref_1x1_stride2", {5, 3, 7, 6, 4, 1, 1, CONV(2, 2, 0, 0, 1, 1, 1), 0, 1, 0}},
        {"ref_relu_fused", {20, 3, 8, 8, 5, 3, 3, CONV(1, 1, 1, 1, 1, 1, 1), KL_ACT_RELU, 1, 0}},
        {"ref_relu_fixed_w", {6, 3, 7, 9, 4, 3, 3, CONV(1, 1, 1, 1, 1, 1, 1), KL_ACT_RELU, 1, 1}},
        {"ref_fixed_w", {3, 2, 5, 6, 4, 3, 3, CONV(2, 1, 0, 1, 1, 1, 1), 0, 1, 1}},
        {"ref_5x5_stride3", {2, 3, 13, 12, 4, 5, 5, CONV(3, 3, 2, 1, 1, 1, 1), 0, 1, 0}},
        /* 16 channels and more: oneDNN's kernels where libdnnl.so.2 is loaded */
        {"ref_wide_relu", {5, 16, 9, 10, 24, 3, 3, CONV(1, 1, 1, 1, 1, 1, 1), KL_ACT_RELU, 1, 0}},
        {"ref_wide_groups2_stride2", {3, 32, 11, 9, 32, 3, 3, CONV(2, 2, 1, 1, 1, 1, 2), 0, 1, 0}},
        {"ref_wide_dilated", {2, 16, 12, 12, 16, 3, 3, CONV(1, 1, 2, 2, 2, 2, 1), KL_ACT_TANH, 1, 0}},
        {"ref_wide_sigmoid_fixed_w", {4, 16, 8, 8, 16, 3, 3, CONV(1, 1, 1, 1, 1, 1, 1), KL_ACT_SIGMOID, 1, 1}},
    };
    for (size_t i = 0; i < sizeof rc / sizeof rc[0]; i++) ref_check(rc[i].name, &rc[i].c, 2, NULL);
    /* kiln's own dW does not depend on the thread count (fixed batch chunks);
     * oneDNN's (KILN_CONV=dnnl sends this small case there) may */
    float a[6 * 4 * 9], b[6 * 4 * 9];
    ref_check("ref_threads1", &rc[0].c, 1, a);
    ref_check("ref_threads2", &rc[0].c, 2, b);
    const char *mode = getenv("KILN_CONV");
    if (!mode || strcmp(mode, "dnnl")) CHECK(memcmp(a, b, sizeof a) == 0);
}

/* max/avg pool values (f32) against direct loops, and ties going to the first element */
static void pool_values(void)
{
    enum { N = 3, C = 5, H = 9, W = 8 };
    static const kl_pool2d_opts po[] = {{{2, 2}, {0, 0}, {0, 0}}, {{3, 3}, {2, 2}, {1, 1}}, {{3, 2}, {1, 2}, {1, 0}}};
    float *x = malloc(N * C * H * W * 4);
    fill_rand(x, N * C * H * W);
    for (int k = 0; k < 3; k++)
        for (int mx = 0; mx < 2; mx++) {
            const kl_pool2d_opts *o = &po[k];
            int kh = o->kernel[0], kw = o->kernel[1], sh = o->stride[0] ? o->stride[0] : kh;
            int sw = o->stride[1] ? o->stride[1] : kw, ph = o->padding[0], pw = o->padding[1];
            int64_t OH = (H + 2 * ph - kh) / sh + 1, OW = (W + 2 * pw - kw) / sw + 1, xd[4] = {N, C, H, W};
            kl_ctx *ctx = NULL;
            kl_graph *g = NULL;
            kl_tensor *tx, *ty;
            CHECK_OK(kl_ctx_new(NULL, &ctx));
            CHECK_OK(kl_graph_new(ctx, &g));
            CHECK_OK(kl_input(g, "x", KL_F32, 4, xd, &tx));
            CHECK_OK(mx ? kl_maxpool2d(g, tx, o, &ty) : kl_avgpool2d(g, tx, o, &ty));
            CHECK(kl_tensor_dim(ty, 2) == OH && kl_tensor_dim(ty, 3) == OW);
            CHECK_OK(kl_output(g, ty));
            CHECK_OK(kl_tensor_set(tx, x, sizeof(float) * N * C * H * W));
            CHECK_OK(kl_graph_run(g));
            float *y = malloc(N * C * OH * OW * 4);
            CHECK_OK(kl_tensor_get(ty, y, N * C * OH * OW * 4));
            int bad = 0;
            for (int64_t pl = 0; pl < N * C; pl++)
                for (int64_t oh = 0; oh < OH; oh++)
                    for (int64_t ow = 0; ow < OW; ow++) {
                        double acc = mx ? -INFINITY : 0;
                        for (int i = 0; i < kh; i++)
                            for (int j = 0; j < kw; j++) {
                                int64_t ih = oh * sh - ph + i, iw = ow * sw - pw + j;
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                                double v = x[(pl * H + ih) * W + iw];
                                acc = mx ? fmax(acc, v) : acc + v;
                            }
                        if (!mx) acc /= kh * kw;
                        float got = y[(pl * OH + oh) * OW + ow];
                        if (!(fabs(got - acc) <= 1e-6 * (fabs(acc) + 1))) bad++;
                    }
            CHECK(bad == 0);
            printf("pool_values k%d %s %s\n", k, mx ? "max" : "avg", bad ? "FAIL" : "ok");
            free(y);
            kl_graph_free(g);
            kl_ctx_free(ctx);
        }
    free(x);
    /* ties: every window equal -> the gradient goes to the window's first element */
    kl_ctx *ctx = NULL;
    kl_graph *g = NULL;
    kl_tensor *tx, *ty, *loss, *gx;
    int64_t xd[4] = {1, 1, 4, 5};
    kl_pool2d_opts o = {{2, 2}, {0, 0}, {0, 0}};
    kl_init one = {KL_INIT_ONES, 0};
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_param(g, "x", KL_F32, 4, xd, &one, &tx));
    CHECK_OK(kl_maxpool2d(g, tx, &o, &ty));
    CHECK_OK(kl_sum(g, ty, 0, NULL, 0, &loss));
    CHECK_OK(kl_backward(g, loss));
    CHECK_OK(kl_grad(g, tx, &gx));
    CHECK_OK(kl_graph_run(g));
    float gv[20], want[20] = {1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0};
    CHECK_OK(kl_ctx_grad_get(ctx, kl_ctx_param_find(ctx, "x"), gv, sizeof gv));
    CHECK(memcmp(gv, want, sizeof gv) == 0);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

static void errors(void)
{
    kl_ctx *ctx = NULL;
    kl_graph *g = NULL;
    kl_tensor *x, *w, *w4, *wg, *w3, *b, *x3, *xs, *xd64, *y;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    int64_t xd[4] = {8, 3, 32, 32}, wd[4] = {16, 3, 3, 3}, w4d[4] = {16, 4, 3, 3}, wgd[4] = {4, 1, 3, 3};
    int64_t w3d[3] = {16, 3, 3}, bd[1] = {15}, x3d[3] = {3, 32, 32}, xsd[4] = {1, 3, 2, 2};
    CHECK_OK(kl_input(g, "x", KL_F32, 4, xd, &x));
    CHECK_OK(kl_input(g, "x3", KL_F32, 3, x3d, &x3));
    CHECK_OK(kl_input(g, "xs", KL_F32, 4, xsd, &xs));
    CHECK_OK(kl_input(g, "xd", KL_F64, 4, xd, &xd64));
    CHECK_OK(kl_param(g, "w", KL_F32, 4, wd, NULL, &w));
    CHECK_OK(kl_param(g, "w4", KL_F32, 4, w4d, NULL, &w4));
    CHECK_OK(kl_param(g, "wg", KL_F32, 4, wgd, NULL, &wg));
    CHECK_OK(kl_param(g, "w3", KL_F32, 3, w3d, NULL, &w3));
    CHECK_OK(kl_param(g, "b", KL_F32, 1, bd, NULL, &b));
    kl_conv2d_opts g2 = {.groups = 2}, gneg = {.groups = -1}, sneg = {.stride = {-1, 1}}, pneg = {.padding = {0, -2}};
    CHECK_ERR(kl_conv2d(g, x, w4, NULL, NULL, &y), KL_EINVAL,
              "conv2d: input [8,3,32,32] f32 has 3 channels, weight [16,4,3,3] f32 expects 4 (groups 1)");
    CHECK(y == NULL);
    CHECK_ERR(kl_conv2d(g, xs, w, NULL, NULL, &y), KL_EINVAL,
              "conv2d: output size 0x0 <= 0: input [1,3,2,2] f32 (HxW 2x2) with kernel 3x3, padding 0x0, dilation 1x1, stride 1x1");
    kl_conv2d_opts dil = {.padding = {1, 1}, .dilation = {2, 1}};
    CHECK_ERR(kl_conv2d(g, xs, w, NULL, &dil, &y), KL_EINVAL, "output size 0x2 <= 0");
    CHECK_ERR(kl_conv2d(g, x, w, NULL, &g2, &y), KL_EINVAL,
              "conv2d: groups 2 must be >= 1 and divide both the input channels of [8,3,32,32] f32");
    CHECK_ERR(kl_conv2d(g, x, w, NULL, &gneg, &y), KL_EINVAL, "groups -1 must be >= 1");
    CHECK_ERR(kl_conv2d(g, x, wg, NULL, &(kl_conv2d_opts){.groups = 3}, &y), KL_EINVAL,
              "output channels of weight [4,1,3,3] f32");
    CHECK_ERR(kl_conv2d(g, x, w, NULL, &sneg, &y), KL_EINVAL, "stride -1x1 and dilation 1x1 must be >= 1");
    CHECK_ERR(kl_conv2d(g, x, w, NULL, &pneg, &y), KL_EINVAL, "padding 0x-2 >= 0");
    CHECK_ERR(kl_conv2d(g, x, w, b, NULL, &y), KL_EINVAL, "conv2d: bias must be [16] f32 for weight [16,3,3,3] f32, got [15] f32");
    CHECK_ERR(kl_conv2d(g, x3, w, NULL, NULL, &y), KL_EINVAL, "conv2d: input must be 4-D [N, C, H, W], got [3,32,32] f32");
    CHECK_ERR(kl_conv2d(g, x, w3, NULL, NULL, &y), KL_EINVAL, "got [16,3,3] f32");
    CHECK_ERR(kl_conv2d(g, xd64, w, NULL, NULL, &y), KL_EINVAL, "weight must be 4-D [O, C/groups, KH, KW] f64");
    CHECK_ERR(kl_conv2d(g, x, NULL, NULL, NULL, &y), KL_EMISUSE, "conv2d: input 1 is NULL");
    CHECK_ERR(kl_conv2d(g, x, w, NULL, NULL, NULL), KL_EMISUSE, "conv2d: out is NULL");
    CHECK_ERR(kl_conv2d_act(g, x, w, NULL, NULL, KL_ACT_GELU, &y), KL_EINVAL, "activation 2 cannot be fused");
    kl_pool2d_opts big = {{5, 5}, {0, 0}, {0, 0}}, pad = {{3, 3}, {1, 1}, {2, 0}}, zero = {{0, 2}, {0, 0}, {0, 0}};
    CHECK_ERR(kl_maxpool2d(g, xs, &big, &y), KL_EINVAL,
              "maxpool2d: output size <= 0: input [1,3,2,2] f32 (HxW 2x2) is smaller than kernel 5x5 with padding 0x0");
    CHECK_ERR(kl_avgpool2d(g, x, &pad, &y), KL_EINVAL, "avgpool2d: padding 2x0 must be at most half the kernel 3x3");
    CHECK_ERR(kl_maxpool2d(g, x, &zero, &y), KL_EINVAL, "maxpool2d: kernel 0x2 and stride 0x2 must be >= 1");
    CHECK_ERR(kl_maxpool2d(g, x, NULL, &y), KL_EMISUSE, "maxpool2d: opts is NULL");
    CHECK_ERR(kl_avgpool2d(g, x3, &big, &y), KL_EINVAL, "avgpool2d: input must be 4-D [N, C, H, W], got [3,32,32] f32");
    CHECK_ERR(kl_global_avgpool(g, x3, &y), KL_EINVAL, "global_avgpool: input must be 4-D [N, C, H, W] floating-point, got [3,32,32] f32");
    CHECK_OK(kl_global_avgpool(g, x, &y));
    CHECK(kl_tensor_ndim(y) == 2 && kl_tensor_dim(y, 0) == 8 && kl_tensor_dim(y, 1) == 3);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

int main(void)
{
    gradchecks();
    value_checks();
    pool_values();
    errors();
    return kl_test_done("test_gradcheck_conv");
}
