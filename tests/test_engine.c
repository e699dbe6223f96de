/* Engine tests: an MLP learns the two-spiral task; planning on and off give
 * bit-identical training; the plan reuses memory and never overlaps live
 * tensors; bad input is refused with a readable message; allocation
 * failures while building are reported, not crashed on; parameter storage
 * grows to what is needed (a large parameter does not round up to a power
 * of two; a reservation takes a model's parameters in one buffer); the
 * gradient buffer exists only once a backward pass or optimizer needs it;
 * initial values are the same for any thread count. */
#include "kiln/kiln.h"
#include "core/graph.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>

#define NPTS 200

static void spirals(float *x, int32_t *y)
{
    for (int i = 0; i < NPTS; i++) {
        int cls = i & 1;
        double t = (double)(i / 2) / (NPTS / 2) * 3.0 * M_PI + 0.3;
        double r = t / (3.0 * M_PI) * 1.0;
        x[2 * i] = (float)((cls ? -1 : 1) * r * cos(t));
        x[2 * i + 1] = (float)((cls ? -1 : 1) * r * sin(t));
        y[i] = cls;
    }
}

typedef struct {
    kl_ctx *ctx;
    kl_graph *g;
    kl_optim *opt;
    kl_tensor *x, *y, *logits, *loss;
} mlp;

static void mlp_build(mlp *m, uint64_t seed, double lr)
{
    kl_ctx_opts co = {.seed = seed};
    int64_t xd[2] = {NPTS, 2}, yd[1] = {NPTS}, w1[2] = {64, 2}, b1[1] = {64}, w2[2] = {64, 64}, w3[2] = {2, 64}, b3[1] = {2};
    kl_tensor *W1, *B1, *W2, *B2, *W3, *B3, *h;
    CHECK_OK(kl_ctx_new(&co, &m->ctx));
    CHECK_OK(kl_graph_new(m->ctx, &m->g));
    kl_graph *g = m->g;
    CHECK_OK(kl_input(g, "x", KL_F32, 2, xd, &m->x));
    CHECK_OK(kl_input(g, "y", KL_I32, 1, yd, &m->y));
    CHECK_OK(kl_param(g, "fc1.weight", KL_F32, 2, w1, NULL, &W1));
    CHECK_OK(kl_param(g, "fc1.bias", KL_F32, 1, b1, NULL, &B1));
    CHECK_OK(kl_param(g, "fc2.weight", KL_F32, 2, w2, NULL, &W2));
    CHECK_OK(kl_param(g, "fc2.bias", KL_F32, 1, b1, NULL, &B2));
    CHECK_OK(kl_param(g, "fc3.weight", KL_F32, 2, w3, NULL, &W3));
    CHECK_OK(kl_param(g, "fc3.bias", KL_F32, 1, b3, NULL, &B3));
    CHECK_OK(kl_linear(g, m->x, W1, B1, KL_ACT_TANH, &h));
    CHECK_OK(kl_linear(g, h, W2, B2, KL_ACT_RELU, &h));
    CHECK_OK(kl_linear(g, h, W3, B3, KL_ACT_NONE, &m->logits));
    CHECK_OK(kl_output(g, m->logits));
    CHECK_OK(kl_softmax_cross_entropy(g, m->logits, m->y, &m->loss));
    CHECK_OK(kl_backward(g, m->loss));
    kl_optim_opts oo = {.kind = KL_OPTIM_ADAM, .lr = lr};
    CHECK_OK(kl_optim_new(m->ctx, &oo, &m->opt));
    CHECK_OK(kl_optim_step(g, m->opt, NULL));
}

static void mlp_free(mlp *m)
{
    kl_graph_free(m->g);
    kl_optim_free(m->opt);
    kl_ctx_free(m->ctx);
}

static double accuracy(mlp *m, const int32_t *y)
{
    float lg[NPTS * 2];
    CHECK_OK(kl_tensor_get(m->logits, lg, sizeof lg));
    int ok = 0;
    for (int i = 0; i < NPTS; i++) ok += (lg[2 * i + 1] > lg[2 * i]) == (y[i] == 1);
    return (double)ok / NPTS;
}

static void test_spirals(void)
{
    float x[NPTS * 2];
    int32_t y[NPTS];
    spirals(x, y);
    mlp m;
    mlp_build(&m, 1, 0.01);
    CHECK_OK(kl_graph_plan(m.g, NULL));
    CHECK_OK(kl_tensor_set(m.x, x, sizeof x));
    CHECK_OK(kl_tensor_set(m.y, y, sizeof y));
    double acc = 0;
    float loss = 0;
    for (int step = 0; step < 3000 && acc < 1.0; step++) {
        CHECK_OK(kl_graph_run(m.g));
        if (step % 50 == 49) acc = accuracy(&m, y);
    }
    CHECK_OK(kl_tensor_get(m.loss, &loss, sizeof loss));
    printf("two spirals: accuracy %.3f, loss %.4f\n", acc, loss);
    CHECK(acc == 1.0);
    mlp_free(&m);
}

static void test_plan_on_off(void)
{
    float x[NPTS * 2];
    int32_t y[NPTS];
    spirals(x, y);
    float losses[2][20];
    kl_graph_stats st[2];
    for (int mode = 0; mode < 2; mode++) {
        mlp m;
        mlp_build(&m, 3, 0.01);
        kl_plan_opts po = {.no_reuse = mode, .check = 1};
        CHECK_OK(kl_graph_plan(m.g, &po));
        CHECK_OK(kl_tensor_set(m.x, x, sizeof x));
        CHECK_OK(kl_tensor_set(m.y, y, sizeof y));
        for (int s = 0; s < 20; s++) {
            CHECK_OK(kl_graph_run(m.g));
            CHECK_OK(kl_tensor_get(m.loss, &losses[mode][s], sizeof(float)));
        }
        CHECK_OK(kl_graph_stats_get(m.g, &st[mode]));
        mlp_free(&m);
    }
    CHECK(memcmp(losses[0], losses[1], sizeof losses[0]) == 0);
    CHECK(st[0].arena_bytes < st[1].arena_bytes);
    CHECK(st[1].arena_bytes == st[1].tensor_bytes);
    printf("plan: arena %zu bytes with reuse, %zu without (sum of tensors %zu)\n", st[0].arena_bytes,
           st[1].arena_bytes, st[0].tensor_bytes);
}

/* An input set before the graph is complete keeps its value when later
 * nodes (and inputs) grow the arena at the next plan. */
static void test_set_then_grow(void)
{
    kl_ctx *ctx = NULL;
    kl_graph *g = NULL;
    kl_ctx_opts co = {.threads = 1};
    CHECK_OK(kl_ctx_new(&co, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    int64_t n = 4, big = 1 << 16;
    float xv[4] = {1, -2, 3.5f, 4}, bv[4] = {0.5f, 0.25f, -1, 2}, y[4], back[4];
    kl_tensor *x, *b, *w, *t, *out;
    CHECK_OK(kl_input(g, "x", KL_F32, 1, &n, &x));
    CHECK_OK(kl_tensor_set(x, xv, sizeof xv)); /* plans the one-node graph */
    CHECK_OK(kl_input(g, "b", KL_F32, 1, &n, &b));
    CHECK_OK(kl_tensor_set(b, bv, sizeof bv)); /* plans again: x's value stays */
    CHECK_OK(kl_input(g, "wide", KL_F32, 1, &big, &w)); /* a large block: the arena grows */
    CHECK_OK(kl_sum(g, w, 0, NULL, 0, &t));
    CHECK_OK(kl_scale(g, t, 0.0, &t));
    CHECK_OK(kl_add(g, x, b, &out));
    CHECK_OK(kl_add(g, out, t, &out)); /* + 0 * sum(wide): wide's contents do not matter */
    CHECK_OK(kl_output(g, out));
    float *wv = calloc((size_t)big, sizeof *wv);
    CHECK(wv != NULL);
    if (wv) CHECK_OK(kl_tensor_set(w, wv, (size_t)big * sizeof *wv));
    free(wv);
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_tensor_get(out, y, sizeof y));
    CHECK_OK(kl_tensor_get(x, back, sizeof back));
    for (int i = 0; i < 4; i++) CHECK(y[i] == xv[i] + bv[i] && back[i] == xv[i]);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

static void test_errors(void)
{
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *a, *b, *c, *out = (kl_tensor *)1;
    int64_t ad[2] = {128, 784}, bd[2] = {512, 10}, cd[1] = {10};
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "a", KL_F32, 2, ad, &a));
    CHECK_OK(kl_input(g, "b", KL_F32, 2, bd, &b));
    CHECK_OK(kl_input(g, "labels", KL_I32, 1, cd, &c));
    CHECK_ERR(kl_matmul(g, a, b, &out), KL_EINVAL, "matmul: inner dims differ: [128,784] f32 x [512,10] f32");
    CHECK(out == NULL);
    CHECK_ERR(kl_add(g, a, b, &out), KL_EINVAL, "add: shapes do not broadcast: [128,784] f32 vs [512,10] f32");
    CHECK_ERR(kl_add(g, a, c, &out), KL_EINVAL, "add: dtypes must match and be floating-point: [128,784] f32, [10] i32");
    CHECK_ERR(kl_relu(g, NULL, &out), KL_EMISUSE, "relu: input 0 is NULL");
    CHECK_ERR(kl_relu(NULL, a, &out), KL_EMISUSE, "relu: graph is NULL");
    CHECK_ERR(kl_softmax_cross_entropy(g, a, c, &out), KL_EINVAL, "softmax_cross_entropy: labels must be i32 [128], got [10] i32");
    CHECK_ERR(kl_reshape(g, a, 2, bd, &out), KL_EINVAL, "reshape: cannot view [128,784] f32 (100352 elements) as [512,10]");
    int64_t wrap[2] = {((int64_t)1 << 50) + 1, 100352}; /* the product wraps to 100352 mod 2^64 ... almost: refused by size */
    CHECK_ERR(kl_reshape(g, a, 2, wrap, &out), KL_EINVAL, "reshape: cannot view [128,784] f32");
    int64_t wrap2[2] = {((int64_t)1 << 61) + 1, 8}; /* 2^64 + 8 wraps to 8: must not pass for an 8-element x */
    kl_tensor *x8;
    int64_t d8[1] = {8};
    CHECK_OK(kl_input(g, "x8", KL_F32, 1, d8, &x8));
    CHECK_ERR(kl_reshape(g, x8, 2, wrap2, &out), KL_EINVAL, "reshape: cannot view [8] f32 (8 elements)");
    kl_tensor *parts[3];
    CHECK_ERR(kl_split(g, a, 1, 3, (int64_t[]){392, 0, 392}, parts), KL_EINVAL, "split: size 1 is 0; sizes must be > 0");
    CHECK_ERR(kl_split(g, a, 1, 2, (int64_t[]){INT64_MAX, INT64_MIN + 785}, parts), KL_EINVAL, "split: size 0 is");
    CHECK_ERR(kl_linear(g, a, b, NULL, KL_ACT_NONE, &out), KL_EINVAL, "linear: input [128,784] f32 does not match weight [512,10] f32");
    CHECK_ERR(kl_transpose(g, a, 0, 2, &out), KL_EINVAL, "transpose: axis 2 out of range for [128,784] f32");
    CHECK_ERR(kl_backward(g, a), KL_EINVAL, "backward: loss 'a' must be a float scalar, got [128,784] f32");
    CHECK_ERR(kl_tensor_set(a, ad, sizeof ad), KL_EINVAL, "kl_tensor_set: tensor 'a' [128,784] f32 holds 401408 bytes, got 16");
    int64_t bad[2] = {3, 0};
    CHECK_ERR(kl_input(g, "z", KL_F32, 2, bad, &out), KL_EINVAL, "input 'z': dim 1 is 0 in [3,0]; dims must be positive");
    CHECK_ERR(kl_param(g, "w", KL_I32, 2, ad, NULL, &out), KL_EUNSUPPORTED, "parameter 'w': trainable parameters must be f32 or f64, got i32");
    CHECK_OK(kl_param(g, "w", KL_F32, 2, ad, NULL, &out));
    CHECK_ERR(kl_param(g, "w", KL_F32, 2, bd, NULL, &out), KL_EINVAL, "param 'w': exists as param [128,784] f32, asked for param [512,10] f32");
    kl_ctx_opts co = {.device = {KL_DEVICE_CUDA, 0}};
    kl_ctx *cc = (kl_ctx *)1;
    CHECK(kl_ctx_new(&co, &cc) != KL_OK && cc == NULL);
    CHECK(strstr(kl_last_error(), "cuda:0") != NULL);
    /* intermediates are not readable unless marked as outputs */
    kl_tensor *r;
    CHECK_OK(kl_relu(g, a, &r));
    CHECK_OK(kl_tanh(g, r, &r));
    CHECK_OK(kl_graph_run(g));
    CHECK_ERR(kl_tensor_get(r, NULL, 0), KL_EMISUSE, "kl_tensor_get: dst is NULL");
    float *big = malloc(kl_tensor_numel(r) * sizeof(float));
    CHECK_ERR(kl_tensor_get(r, big, kl_tensor_numel(r) * sizeof(float)), KL_EMISUSE, "is an intermediate whose memory is reused");
    free(big);
    CHECK(strcmp(kl_status_str(KL_EFORMAT), "KL_EFORMAT") == 0);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

static char g_handled[2048]; /* the error handler's last message */
static void record_error(kl_status s, const char *msg, void *user)
{
    (void)s, (void)user;
    snprintf(g_handled, sizeof g_handled, "%s", msg);
}

/* Misuse that was accepted: shapes whose size wraps, NULL host buffers,
 * meaningless inits, reads of values no run has computed; and the error
 * handler seeing the message as it ends. */
static void test_misuse(void)
{
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *t, *x, *y, *z, *u8, *p;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    /* a wrapped element count planned a small block for a huge tensor */
    int64_t wraps[2] = {(int64_t)1 << 62, 4}, max2[2] = {INT64_MAX, INT64_MAX}, over[1] = {(int64_t)1 << 61};
    CHECK_ERR(kl_input(g, "h", KL_F32, 2, wraps, &t), KL_EINVAL, "input 'h': [4611686018427387904,4] f32 is too large");
    CHECK_ERR(kl_param(g, "hp", KL_F32, 2, max2, NULL, &t), KL_EINVAL,
              "param 'hp': [9223372036854775807,9223372036854775807] f32 is too large");
    CHECK_ERR(kl_buffer(g, "hb", KL_I32, 1, over, NULL, &t), KL_EINVAL, "buffer 'hb': [2305843009213693952] i32 is too large");
    CHECK(kl_ctx_param_count(ctx) == 0);
    CHECK_OK(kl_input(g, "s", KL_F32, 0, NULL, &t)); /* a scalar needs no dims */
    CHECK(kl_tensor_numel(t) == 1);
    /* NULL host buffers */
    float w[6] = {0};
    CHECK_OK(kl_param(g, "w", KL_F32, 2, (int64_t[]){2, 3}, NULL, &p));
    CHECK_ERR(kl_ctx_param_get(ctx, 0, NULL, sizeof w), KL_EMISUSE, "kl_ctx_param_get: the host buffer is NULL");
    CHECK_ERR(kl_ctx_param_set(ctx, 0, NULL, sizeof w), KL_EMISUSE, "kl_ctx_param_set: the host buffer is NULL");
    CHECK_ERR(kl_ctx_grad_get(ctx, 0, NULL, sizeof w), KL_EMISUSE, "kl_ctx_grad_get: the host buffer is NULL");
    /* inits: a u8 buffer takes its init; a NaN, infinite or negative scale is refused */
    uint8_t ones[4] = {0};
    CHECK_OK(kl_buffer(g, "mask", KL_U8, 1, (int64_t[]){4}, &(kl_init){KL_INIT_ONES, 0}, &u8));
    CHECK_OK(kl_tensor_get(u8, ones, sizeof ones));
    CHECK(ones[0] == 1 && ones[3] == 1);
    int64_t d3[1] = {3};
    CHECK_ERR(kl_param(g, "pn", KL_F32, 1, d3, &(kl_init){KL_INIT_NORMAL, NAN}, &t), KL_EINVAL,
              "parameter 'pn': init parameter a is nan; it must be finite");
    CHECK_ERR(kl_param(g, "pk", KL_F32, 2, (int64_t[]){3, 3}, &(kl_init){KL_INIT_KAIMING_UNIFORM, INFINITY}, &t),
              KL_EINVAL, "parameter 'pk': init parameter a is inf");
    CHECK_ERR(kl_param(g, "pu", KL_F32, 1, d3, &(kl_init){KL_INIT_UNIFORM, -1}, &t), KL_EINVAL,
              "parameter 'pu': init UNIFORM with a = -1; a (the range) must be >= 0");
    CHECK_ERR(kl_param(g, "pv", KL_F32, 1, d3, &(kl_init){KL_INIT_NORMAL, -0.5}, &t), KL_EINVAL, "a (the std) must be >= 0");
    CHECK_OK(kl_param(g, "pz", KL_F32, 1, d3, &(kl_init){KL_INIT_ZEROS, NAN}, &t)); /* a unused */
    CHECK_OK(kl_param(g, "pd", KL_F32, 2, (int64_t[]){3, 3}, &(kl_init){KL_INIT_DEFAULT, -1}, &t)); /* fan_in computed */
    /* an arena value is readable once a run of the current plan computed it */
    int64_t d2[1] = {2};
    float xv[2] = {-1, 2}, yv[2];
    CHECK_OK(kl_input(g, "x", KL_F32, 1, d2, &x));
    CHECK_OK(kl_relu(g, x, &y));
    CHECK_OK(kl_tensor_set_name(y, "y"));
    CHECK_OK(kl_output(g, y));
    CHECK_OK(kl_tensor_set(x, xv, sizeof xv)); /* plans */
    CHECK_ERR(kl_tensor_get(y, yv, sizeof yv), KL_EMISUSE,
              "tensor 'y': the graph has not run since it was planned (call kl_graph_run first)");
    CHECK_OK(kl_tensor_get(x, yv, sizeof yv)); /* an input holds what was set */
    CHECK(yv[0] == -1 && yv[1] == 2);
    CHECK_OK(kl_tensor_get(p, w, sizeof w)); /* parameters live in the ctx */
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_tensor_get(y, yv, sizeof yv));
    CHECK(yv[0] == 0 && yv[1] == 2);
    CHECK_OK(kl_relu(g, y, &z));
    CHECK_OK(kl_output(g, z));
    CHECK_OK(kl_graph_plan(g, NULL)); /* a new plan: y's block may have moved */
    CHECK_ERR(kl_tensor_get(y, yv, sizeof yv), KL_EMISUSE, "the graph has not run since it was planned");
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_tensor_get(z, yv, sizeof yv));
    kl_graph_print(NULL, NULL); /* a no-op */
    kl_graph_free(g);
    /* the handler's last message is kl_last_error's, context included */
    kl_tensor *emb, *ids, *e;
    int32_t id = 9;
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_param(g, "emb", KL_F32, 2, (int64_t[]){5, 2}, NULL, &emb));
    CHECK_OK(kl_input(g, "ids", KL_I32, 1, (int64_t[]){1}, &ids));
    CHECK_OK(kl_embedding(g, emb, ids, &e));
    CHECK_OK(kl_output(g, e));
    CHECK_OK(kl_tensor_set(ids, &id, sizeof id));
    kl_set_error_handler(record_error, NULL);
    CHECK(kl_graph_run(g) != KL_OK);
    kl_set_error_handler(NULL, NULL);
    CHECK(strstr(kl_last_error(), "embedding '") == kl_last_error()); /* the prefix names the node */
    CHECK(strcmp(g_handled, kl_last_error()) == 0);
    kl_graph_free(g);
    kl_ctx_free(ctx);
    /* one CPU device: index 0 */
    kl_ctx_opts co = {.device = {KL_DEVICE_CPU, 3}};
    CHECK_ERR(kl_ctx_new(&co, &ctx), KL_EINVAL, "kl_ctx_new: the CPU device has index 0, got 3");
}

/* Fault loop: fail the n-th allocation while building and planning a graph,
 * for n = 1, 2, ... until building succeeds; every failure must be KL_ENOMEM
 * with a message, and everything stays freeable (ASan checks for leaks). */
void kl_test_fail_alloc(long n);
static kl_status build_once(void)
{
    kl_ctx *ctx = NULL;
    kl_graph *g = NULL;
    kl_optim *opt = NULL;
    kl_tensor *x, *w, *h, *l;
    int64_t xd[2] = {4, 3}, wd[2] = {5, 3};
    kl_status s = kl_ctx_new(NULL, &ctx);
    if (!s) s = kl_graph_new(ctx, &g);
    if (!s) s = kl_input(g, "x", KL_F32, 2, xd, &x);
    if (!s) s = kl_param(g, "w", KL_F32, 2, wd, NULL, &w);
    if (!s) s = kl_linear(g, x, w, NULL, KL_ACT_RELU, &h);
    if (!s) s = kl_sum(g, h, 0, NULL, 0, &l);
    if (!s) s = kl_backward(g, l);
    if (!s) s = kl_optim_new(ctx, &(kl_optim_opts){.kind = KL_OPTIM_ADAM, .lr = 0.1}, &opt);
    if (!s) s = kl_optim_step(g, opt, NULL);
    if (!s) s = kl_graph_plan(g, NULL);
    if (!s) s = kl_graph_run(g);
    kl_graph_free(g);
    kl_optim_free(opt);
    kl_ctx_free(ctx);
    return s;
}

static void test_alloc_failures(void)
{
    int n;
    for (n = 1; n < 1000; n++) {
        kl_test_fail_alloc(n);
        kl_status s = build_once();
        kl_test_fail_alloc(0);
        if (s == KL_OK) break;
        CHECK(s == KL_ENOMEM);
        CHECK(strstr(kl_last_error(), "out of host memory") != NULL);
    }
    printf("alloc fault loop: succeeded after %d injected failures\n", n - 1);
    CHECK(n > 5);
}

static void test_param_storage(void)
{
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *p;
    int64_t big[1] = {3 << 20}, small[1] = {10}; /* 12 MiB: the next power of two would be 16 */
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_param(g, "big", KL_F32, 1, big, NULL, &p));
    CHECK(ctx->params_cap == ctx->params_bytes && ctx->params_bytes == ((size_t)12 << 20));
    CHECK_OK(kl_param(g, "small", KL_F32, 1, small, NULL, &p)); /* past it: doubling, amortised */
    CHECK(ctx->params_cap == ((size_t)24 << 20));
    kl_graph_free(g);
    kl_ctx_free(ctx);
    /* reserved: both parameters in the one buffer, its contents kept */
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_param(g, "small", KL_F32, 1, small, NULL, &p));
    float v[10], w[10];
    for (int i = 0; i < 10; i++) v[i] = (float)i - 4.5f;
    CHECK_OK(kl_tensor_set(p, v, sizeof v));
    size_t want = ((size_t)12 << 20) + 2 * KL_ALIGN;
    CHECK_OK(kl_ctx_reserve_params(ctx, want));
    CHECK(ctx->params_cap == want);
    CHECK_OK(kl_param(g, "big", KL_F32, 1, big, NULL, &p));
    CHECK(ctx->params_cap == want);
    CHECK_OK(kl_ctx_param_get(ctx, 0, w, sizeof w));
    CHECK(memcmp(v, w, sizeof v) == 0);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

static void test_grads_on_demand(void)
{
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *x, *w, *h, *l;
    int64_t xd[2] = {4, 3}, wd[2] = {5, 3}, big[1] = {1 << 20};
    CHECK_OK(kl_ctx_new(&(kl_ctx_opts){.seed = 3}, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "x", KL_F32, 2, xd, &x));
    CHECK_OK(kl_param(g, "w", KL_F32, 2, wd, NULL, &w));
    CHECK_OK(kl_linear(g, x, w, NULL, KL_ACT_NONE, &h));
    CHECK_OK(kl_sum(g, h, 0, NULL, 0, &l));
    CHECK_OK(kl_output(g, l));
    float xv[12], gv[15], gw[15];
    for (int i = 0; i < 12; i++) xv[i] = 0.25f * (float)i - 1.0f;
    CHECK_OK(kl_tensor_set(x, xv, sizeof xv));
    CHECK_OK(kl_graph_run(g)); /* forward only: no gradient memory */
    CHECK(ctx->grads == NULL && ctx->grads_cap == 0);
    for (int i = 0; i < 15; i++) gv[i] = 7;
    CHECK_OK(kl_ctx_grad_get(ctx, 0, gv, sizeof gv));
    for (int i = 0; i < 15; i++) CHECK(gv[i] == 0);
    CHECK_OK(kl_backward(g, l));
    CHECK(ctx->grads != NULL && ctx->grads_cap == ctx->params_cap);
    CHECK_OK(kl_tensor_set(x, xv, sizeof xv)); /* the graph is planned again */
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_ctx_grad_get(ctx, 0, gv, sizeof gv));
    for (int j = 0; j < 3; j++) /* d sum(x w^T) / d w[o][j] = sum over rows of x[.][j] */
        CHECK(fabsf(gv[j] - (xv[j] + xv[3 + j] + xv[6 + j] + xv[9 + j])) < 1e-6f);
    /* a parameter added later: the gradient buffer grows with it, keeping what it held */
    CHECK_OK(kl_param(g, "big", KL_F32, 1, big, NULL, &h));
    CHECK(ctx->grads_cap == ctx->params_cap && ctx->params_cap >= ((size_t)4 << 20));
    CHECK_OK(kl_ctx_grad_get(ctx, 0, gw, sizeof gw));
    CHECK(memcmp(gv, gw, sizeof gv) == 0);
    kl_graph_free(g);
    kl_ctx_free(ctx);
    /* an optimizer's state before any backward pass makes the buffer too */
    kl_optim *opt;
    void *data;
    size_t bytes;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_param(g, "w", KL_F32, 2, wd, NULL, &w));
    CHECK_OK(kl_optim_new(ctx, &(kl_optim_opts){.kind = KL_OPTIM_ADAM, .lr = 0.1}, &opt));
    CHECK(ctx->grads == NULL);
    CHECK_OK(kl_optim_state(opt, 0, NULL, &data, &bytes));
    CHECK(ctx->grads != NULL && ctx->grads_cap == ctx->params_cap);
    kl_optim_free(opt);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* Initial values do not depend on the thread count; no_init leaves zeros. */
static void test_init_threads(void)
{
    int64_t d[2] = {300, 400}; /* 120000 elements: drawn in parallel */
    float *v[3];
    for (int k = 0; k < 3; k++) {
        kl_ctx *ctx;
        kl_graph *g;
        kl_tensor *p;
        CHECK_OK(kl_ctx_new(&(kl_ctx_opts){.seed = 11, .threads = k == 0 ? 1 : 3, .no_init = k == 2}, &ctx));
        CHECK_OK(kl_graph_new(ctx, &g));
        kl_init in = {.kind = KL_INIT_NORMAL, .a = 0.5};
        CHECK_OK(kl_param(g, "w", KL_F32, 2, d, &in, &p));
        v[k] = malloc(sizeof(float) * 120000);
        CHECK_OK(kl_ctx_param_get(ctx, 0, v[k], sizeof(float) * 120000));
        kl_graph_free(g);
        kl_ctx_free(ctx);
    }
    CHECK(memcmp(v[0], v[1], sizeof(float) * 120000) == 0);
    double sq = 0;
    int zeros = 0;
    for (int i = 0; i < 120000; i++) sq += (double)v[0][i] * v[0][i], zeros += v[2][i] == 0;
    CHECK(fabs(sqrt(sq / 120000) - 0.5) < 0.01 && zeros == 120000);
    for (int k = 0; k < 3; k++) free(v[k]);
}

int main(void)
{
    test_param_storage();
    test_init_threads();
    test_grads_on_demand();
    test_spirals();
    test_plan_on_off();
    test_set_then_grow();
    test_errors();
    test_misuse();
    test_alloc_failures();
    return kl_test_done("test_engine");
}
