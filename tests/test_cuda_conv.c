/* CUDA convolution and pooling against the CPU (needs a GPU; without one it
 * prints "skipped: <reason>" and exits 77).
 *
 * Parity cases (tests/lib/cuda_parity.h: forward, backward of sum(y * r),
 * every gradient and buffer, f32 with TF32-sized tolerances and f64):
 * conv2d with and without bias, each fused activation, stride 2, padding,
 * dilation, groups 2, depthwise, 1x1, odd non-square geometry, an input
 * without a gradient (no bwd_data node), a frozen weight with a trainable
 * bias (the bias gradient then comes from unary_bwd + reduce), a batch in
 * chunks that do not divide it (kl_conv_cu_budget lowered); max pooling
 * (2x2 s2, overlapping 3x3 s2 p1, non-square, a 16x17 window with i32
 * argmax), average pooling, global average pooling. Then a small CNN
 * (conv-relu-maxpool-conv(groups 2)-relu-avgpool-linear-CE) trained for 3
 * Adam steps on both devices, f32 and f64, parameters compared. Every
 * comparison runs; failures are counted and printed. */
#include "kiln/kiln.h"
#include "testutil.h"
#include "cuda_parity.h"
#include "backends/backend.h" /* kl_cuda_available */
#include "ops/conv2d.h"       /* kl_conv2d_act, kl_conv_cu_budget */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TF32_TOL 1e-2 /* TF32 rounds GEMM inputs to 10-bit mantissas */

/* ---- conv2d cases ---- */

enum { X_PARAM = 0, X_INPUT = 1, W_FROZEN = 2 };
typedef struct {
    int64_t N, C, H, W, O, KH, KW;
    kl_conv2d_opts o;
    int bias, act, kind;
} conv_cfg;

#define OPTS(s0, s1, p0, p1, d0, d1, gr) {.stride = {s0, s1}, .padding = {p0, p1}, .dilation = {d0, d1}, .groups = gr}
static const conv_cfg convs[] = {
    {3, 3, 7, 6, 5, 3, 3, OPTS(1, 1, 1, 1, 1, 1, 1), 1, KL_ACT_NONE, X_PARAM},    /* 0 bias */
    {3, 3, 7, 6, 5, 3, 3, OPTS(1, 1, 1, 1, 1, 1, 1), 0, KL_ACT_NONE, X_PARAM},    /* 1 no bias */
    {4, 2, 9, 8, 3, 3, 3, OPTS(2, 2, 1, 1, 1, 1, 1), 1, KL_ACT_RELU, X_PARAM},    /* 2 stride 2 */
    {3, 2, 8, 7, 4, 3, 3, OPTS(1, 1, 2, 2, 2, 2, 1), 1, KL_ACT_TANH, X_PARAM},    /* 3 dilation */
    {3, 4, 6, 7, 6, 3, 3, OPTS(1, 1, 1, 1, 1, 1, 2), 1, KL_ACT_SIGMOID, X_PARAM}, /* 4 groups 2 */
    {3, 5, 4, 5, 3, 1, 1, OPTS(1, 1, 0, 0, 1, 1, 1), 1, KL_ACT_NONE, X_PARAM},    /* 5 1x1 */
    {3, 2, 7, 9, 3, 2, 3, OPTS(2, 1, 1, 0, 1, 2, 1), 0, KL_ACT_RELU, X_PARAM},    /* 6 odd, non-square */
    {2, 3, 5, 6, 6, 3, 3, OPTS(1, 1, 1, 1, 1, 1, 3), 1, KL_ACT_NONE, X_PARAM},    /* 7 depthwise */
    {3, 3, 6, 6, 4, 3, 3, OPTS(1, 1, 1, 1, 1, 1, 1), 1, KL_ACT_RELU, X_INPUT},    /* 8 x without grad */
    {3, 3, 6, 6, 4, 3, 3, OPTS(2, 2, 1, 1, 1, 1, 1), 1, KL_ACT_TANH, W_FROZEN},   /* 9 frozen w */
    {7, 4, 9, 9, 6, 3, 3, OPTS(2, 2, 1, 1, 1, 1, 2), 1, KL_ACT_RELU, X_PARAM},    /* 10 chunked (main) */
    {9, 3, 32, 32, 4, 3, 3, OPTS(1, 1, 1, 1, 1, 1, 1), 1, KL_ACT_RELU, X_PARAM},  /* 11 db in 3 chunks a channel */
};
#define CONV_CHUNKED 10
#define CHUNK_BUDGET 10000 /* bytes: case 10 runs in chunks of 2 samples (f32) or 1 (f64) */

static float g_xf[4096];
static double g_xd[4096];

static void fill_inputs(void)
{
    uint32_t s = 4242;
    for (int i = 0; i < 4096; i++) {
        s = s * 1664525u + 1013904223u;
        g_xd[i] = ((double)(s >> 8) / 16777216.0) * 2 - 1;
        g_xf[i] = (float)g_xd[i];
    }
}

static kl_status b_conv(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    const conv_cfg *c = &convs[arg];
    kl_tensor *x, *w, *b = NULL;
    int64_t xs[4] = {c->N, c->C, c->H, c->W}, ws[4] = {c->O, c->C / (c->o.groups ? c->o.groups : 1), c->KH, c->KW};
    if (c->kind == X_INPUT) { /* f32 data for 16-bit runs too, cast in the graph */
        kl_dtype in_dt = dt == KL_F64 ? KL_F64 : KL_F32;
        KL_TRY(kl_input(g, "x", in_dt, 4, xs, &x));
        size_t n = (size_t)(xs[0] * xs[1] * xs[2] * xs[3]);
        in->v[in->n++] = (kl_in_set){x, dt == KL_F64 ? (const void *)g_xd : (const void *)g_xf, n * kl_dtype_size(in_dt)};
        KL_TRY(kl_cast(g, x, dt, &x));
    } else {
        KL_TRY(kl_parity_param(g, "x", dt, 4, xs, &x));
    }
    if (c->kind == W_FROZEN) KL_TRY(kl_buffer(g, "w", dt, 4, ws, &kl_parity_u1, &w));
    else KL_TRY(kl_parity_param(g, "w", dt, 4, ws, &w));
    if (c->bias) KL_TRY(kl_parity_param(g, "b", dt, 1, &c->O, &b));
    return kl_conv2d_act(g, x, w, b, &c->o, (kl_act)c->act, y);
}

/* ---- pooling cases ---- */

typedef struct {
    int64_t N, C, H, W;
    kl_pool2d_opts o;
    int max;
} pool_cfg;

static const pool_cfg pools[] = {
    {2, 3, 7, 9, {{2, 2}, {0, 0}, {0, 0}}, 1},     /* 0 max 2x2 s2, odd sizes */
    {2, 3, 7, 6, {{3, 3}, {2, 2}, {1, 1}}, 1},     /* 1 max 3x3 s2 p1: overlapping */
    {1, 2, 18, 19, {{16, 17}, {1, 1}, {0, 0}}, 1}, /* 2 window > 255: i32 argmax */
    {2, 2, 5, 8, {{2, 3}, {1, 2}, {1, 0}}, 1},     /* 3 max non-square */
    {2, 3, 6, 5, {{2, 2}, {0, 0}, {0, 0}}, 0},     /* 4 avg 2x2 */
    {2, 2, 7, 6, {{3, 3}, {2, 2}, {1, 1}}, 0},     /* 5 avg 3x3 s2 p1 */
};

static kl_status b_pool(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    const pool_cfg *c = &pools[arg];
    kl_tensor *x;
    KL_TRY(kl_parity_param(g, "x", dt, 4, (int64_t[]){c->N, c->C, c->H, c->W}, &x));
    return c->max ? kl_maxpool2d(g, x, &c->o, y) : kl_avgpool2d(g, x, &c->o, y);
}

static kl_status b_gap(kl_graph *g, kl_dtype dt, int arg, kl_in_list *in, kl_tensor **y)
{
    kl_tensor *x;
    KL_TRY(kl_parity_param(g, "x", dt, 4, (int64_t[]){3, 4, 5, 7}, &x));
    return kl_global_avgpool(g, x, y);
}

static const kl_parity_case cases[] = {
    {"conv_bias", b_conv, 0, TF32_TOL, 1e-12, 0, KL_H16_EXACT},        {"conv_no_bias", b_conv, 1, TF32_TOL, 1e-12, 0, KL_H16_EXACT},
    {"conv_stride2_relu", b_conv, 2, TF32_TOL, 1e-12, 0, KL_H16_EXACT}, {"conv_dilation_tanh", b_conv, 3, TF32_TOL, 1e-12, 0, KL_H16_EXACT},
    {"conv_groups2_sigmoid", b_conv, 4, TF32_TOL, 1e-12, 0, KL_H16_EXACT}, {"conv_1x1", b_conv, 5, TF32_TOL, 1e-12, 0, KL_H16_EXACT},
    {"conv_odd_nonsquare", b_conv, 6, TF32_TOL, 1e-12, 0, KL_H16_EXACT}, {"conv_depthwise", b_conv, 7, TF32_TOL, 1e-12, 0, KL_H16_EXACT},
    {"conv_x_no_grad", b_conv, 8, TF32_TOL, 1e-12, 0, KL_H16_ROUNDED},    {"conv_w_frozen", b_conv, 9, TF32_TOL, 1e-12, 0, KL_H16_ROUNDED},
    {"maxpool_2x2", b_pool, 0, 1e-6, 1e-13, 0, KL_H16_EXACT},           {"maxpool_3x3_s2_p1", b_pool, 1, 1e-6, 1e-13, 0, KL_H16_EXACT},
    {"maxpool_16x17_i32", b_pool, 2, 1e-6, 1e-13, 0, KL_H16_EXACT},     {"maxpool_nonsquare", b_pool, 3, 1e-6, 1e-13, 0, KL_H16_EXACT},
    {"avgpool_2x2", b_pool, 4, 1e-6, 1e-13, 0, KL_H16_EXACT},           {"avgpool_3x3_s2_p1", b_pool, 5, 1e-6, 1e-13, 0, KL_H16_EXACT},
    {"global_avgpool", b_gap, 0, 1e-6, 1e-13, 0, KL_H16_EXACT},         {"conv_long_channels", b_conv, 11, TF32_TOL, 1e-12, 0, KL_H16_EXACT},
};
static const kl_parity_case chunked = {"conv_chunked", b_conv, CONV_CHUNKED, TF32_TOL, 1e-12, 0, KL_H16_EXACT};

/* ---- training: a small CNN, 3 Adam steps on both devices ---- */

#define TB 8
#define TC 5
typedef struct {
    kl_ctx *ctx;
    kl_graph *g;
    kl_optim *opt;
    kl_tensor *x, *y, *loss;
} cnn;

static kl_status cnn_build(cnn *m, kl_device dev, kl_dtype dt, const kl_optim_opts *oo)
{
    memset(m, 0, sizeof *m);
    kl_ctx_opts co = {.device = dev, .seed = 7};
    kl_tensor *w1, *b1, *w2, *b2, *w3, *b3, *h;
    KL_TRY(kl_ctx_new(&co, &m->ctx));
    KL_TRY(kl_graph_new(m->ctx, &m->g));
    kl_graph *g = m->g;
    KL_TRY(kl_input(g, "x", dt, 4, (int64_t[]){TB, 3, 10, 10}, &m->x));
    KL_TRY(kl_input(g, "y", KL_I32, 1, (int64_t[]){TB}, &m->y));
    KL_TRY(kl_param(g, "conv1.weight", dt, 4, (int64_t[]){6, 3, 3, 3}, NULL, &w1));
    KL_TRY(kl_param(g, "conv1.bias", dt, 1, (int64_t[]){6}, &kl_parity_u1, &b1));
    KL_TRY(kl_param(g, "conv2.weight", dt, 4, (int64_t[]){8, 3, 3, 3}, NULL, &w2));
    KL_TRY(kl_param(g, "conv2.bias", dt, 1, (int64_t[]){8}, &kl_parity_u1, &b2));
    KL_TRY(kl_param(g, "fc.weight", dt, 2, (int64_t[]){TC, 72}, NULL, &w3));
    KL_TRY(kl_param(g, "fc.bias", dt, 1, (int64_t[]){TC}, &kl_parity_u1, &b3));
    kl_conv2d_opts c1 = {.padding = {1, 1}}, c2 = {.padding = {1, 1}, .groups = 2};
    kl_pool2d_opts p1 = {.kernel = {2, 2}}, p2 = {.kernel = {3, 3}, .stride = {2, 2}, .padding = {1, 1}};
    KL_TRY(kl_conv2d_act(g, m->x, w1, b1, &c1, KL_ACT_RELU, &h)); /* [8, 6, 10, 10], relu fused */
    KL_TRY(kl_maxpool2d(g, h, &p1, &h));                             /* [8, 6, 5, 5] */
    KL_TRY(kl_conv2d(g, h, w2, b2, &c2, &h));                        /* [8, 8, 5, 5] */
    KL_TRY(kl_relu(g, h, &h));                                        /* unfused */
    KL_TRY(kl_avgpool2d(g, h, &p2, &h));                             /* [8, 8, 3, 3] */
    KL_TRY(kl_reshape(g, h, 2, (int64_t[]){TB, 72}, &h));
    KL_TRY(kl_linear(g, h, w3, b3, KL_ACT_NONE, &h));
    KL_TRY(kl_softmax_cross_entropy(g, h, m->y, &m->loss));
    KL_TRY(kl_backward(g, m->loss));
    KL_TRY(kl_optim_new(m->ctx, oo, &m->opt));
    return kl_optim_step(g, m->opt, NULL);
}

static void cnn_free(cnn *m)
{
    kl_graph_free(m->g);
    kl_optim_free(m->opt);
    kl_ctx_free(m->ctx);
}

static kl_status cnn_step(cnn *m, kl_dtype dt, double *loss)
{
    static int32_t lab[TB];
    for (int i = 0; i < TB; i++) lab[i] = (i * 3 + 1) % TC;
    KL_TRY(kl_tensor_set(m->x, dt == KL_F64 ? (void *)g_xd : (void *)g_xf, (size_t)(TB * 300) * kl_dtype_size(dt)));
    KL_TRY(kl_tensor_set(m->y, lab, sizeof lab));
    KL_TRY(kl_graph_run(m->g));
    if (dt == KL_F64) return kl_tensor_get(m->loss, loss, sizeof *loss);
    float l;
    KL_TRY(kl_tensor_get(m->loss, &l, sizeof l));
    *loss = l;
    return KL_OK;
}

static void test_cnn(kl_device gpu, kl_dtype dt)
{
    bool f64 = dt == KL_F64;
    const char *cs = f64 ? "cnn adam f64" : "cnn adam f32";
    kl_optim_opts oo = {.kind = KL_OPTIM_ADAM, .lr = 1e-3};
    cnn c, g;
    kl_status s = cnn_build(&c, (kl_device){KL_DEVICE_CPU, 0}, dt, &oo);
    kl_conv_cu_budget = 40000; /* several chunks per conv on the GPU (sizes vary by conv and dtype) */
    if (s == KL_OK) s = cnn_build(&g, gpu, dt, &oo);
    kl_conv_cu_budget = KL_CONV_SCRATCH_BUDGET;
    CHECK_OK(s);
    if (s != KL_OK) return;
    for (int i = 0; i < 3; i++) {
        double lc = 0, lg = 0;
        CHECK_OK(cnn_step(&c, dt, &lc));
        CHECK_OK(cnn_step(&g, dt, &lg));
        double e = fabs(lc - lg) / fabs(lc);
        if (!(e <= (f64 ? 1e-12 : 1e-3))) fprintf(stderr, "  %s step %d loss cpu %.9g gpu %.9g\n", cs, i, lc, lg);
        CHECK(e <= (f64 ? 1e-12 : 1e-3));
    }
    kl_check_captured(cs, g.g); /* steps 2 and 3 replayed a captured graph */
    /* f32: TF32 GEMMs, and Adam turns tiny gradient differences into +-lr */
    kl_parity_params(cs, c.ctx, g.ctx, f64 ? 1e-11 : 5e-3, f64 ? 1e-11 : 10 * oo.lr);
    printf("  done %s\n", cs);
    cnn_free(&c);
    cnn_free(&g);
}

/* KILN_CUDA_CONV=cudnn (ctest's test_cuda_conv_cudnn): libcudnn.so.9 loads
 * with every call kiln uses, or is absent and the engine says so; checked
 * also without a GPU. */
static int want_cudnn(void)
{
    const char *m = getenv("KILN_CUDA_CONV"), *e = kl_cuda_conv_engine();
    int want = m && !strcmp(m, "cudnn");
    printf("  convolutions by %s\n", e);
#ifdef KILN_HAVE_CUDA
    if (want) CHECK(!strncmp(e, "cuDNN 9.", 8) || strstr(e, "but: "));
    else CHECK(!strncmp(e, "im2col", 6));
#endif
    return want && !strncmp(e, "cuDNN", 5);
}

int main(int argc, char **argv)
{
    kl_parity_fp32_default();
    int cudnn = want_cudnn();
    size_t ncases = sizeof cases / sizeof *cases;
    fill_inputs();
    if (kl_parity_half_cpu_mode(argc, argv)) { /* 16-bit storage on the CPU against f32 */
        for (size_t i = 0; i < ncases; i++) kl_parity_half_both(&cases[i], (kl_device){KL_DEVICE_CPU, 0});
        return kl_test_done("test_cuda_conv --half-cpu");
    }
    if (kl_cuda_available(0) != KL_OK) {
        if (kl_test_failures) return kl_test_done("test_cuda_conv");
        printf("skipped: %s\n", kl_last_error());
        return 77;
    }
    kl_device gpu = {KL_DEVICE_CUDA, 0};
    for (size_t i = 0; i < ncases; i++) kl_parity_case_run(&cases[i], gpu);
    for (size_t i = 0; i < ncases; i++) kl_parity_half_both(&cases[i], gpu);
    kl_conv_cu_budget = CHUNK_BUDGET; /* read when nodes are made: the forward and kl_backward's nodes */
    kl_parity_case_run(&chunked, gpu);
    kl_parity_half_both(&chunked, gpu);
    kl_conv_cu_budget = KL_CONV_SCRATCH_BUDGET;
    test_cnn(gpu, KL_F32);
    test_cnn(gpu, KL_F64);
    if (cudnn) { /* the f32 cases went through cuDNN, not all back to im2col */
        printf("  %lld conv nodes ran on cuDNN\n", kl_cuda_conv_cudnn_runs());
        CHECK(kl_cuda_conv_cudnn_runs() > 0);
    }
    return kl_test_done("test_cuda_conv");
}
