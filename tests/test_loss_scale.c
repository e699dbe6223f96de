/* Loss scaling (kl_optim_opts.loss_scale, kl_optim_scale_loss):
 *  1. scaling by powers of two changes nothing in f32: static and dynamic
 *     (growing) scales give parameters bit-identical to no scaling, with
 *     Adam and clipping;
 *  2. f16 gradients of a tiny loss flush to zero without scaling and match
 *     f32's with it;
 *  3. dynamic scaling from a scale that overflows f16: the overflowing runs
 *     change no parameter and halve the scale, and the run that applies is
 *     Adam's first step (skipped runs do not count in t): the parameters
 *     equal those of a run started at the scale that fitted, bit for bit;
 *     a static scale that overflows halts instead;
 *  4. misuse: a scaling optimizer on a graph without kl_optim_scale_loss,
 *     bad options, kl_optim_set_scaler round trip.
 * On a GPU 1-3 run again with captured step graphs, plus: capture on and
 * off bit-identical through the overflowing runs, and the GPU's skips,
 * scale and parameters against the CPU's. Without one that part says
 * "skipped" and the CPU part still counts.
 * Step graphs come from src/cli/evaluator.c (compiled in). */
#include "testutil.h"
#include "../src/cli/evaluator.c"
#include "io/config.h"
#include "cuda_parity.h"
#include "backends/backend.h" /* kl_cuda_available */

#include <math.h>
#include <stdlib.h>

static const char *const MLP = "model:\n"
                               "  input: [1, 8, 8]\n"
                               "  layers:\n"
                               "    - {type: flatten}\n"
                               "    - {type: linear, out: 32}\n"
                               "    - {type: gelu}\n"
                               "    - {type: linear, out: 5}\n";

#define B 16

static kl_model *parse(kl_dtype calc)
{
    kl_model *m = kl_test_model(MLP, "loss_scale.yaml");
    CHECK_OK(kl_model_set_precision(m, calc));
    return m;
}

/* One fixed batch of random inputs and labels. */
static void batch(float *x, int32_t *y)
{
    uint32_t s = 12345;
    for (int i = 0; i < B * 64; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = (float)((s >> 8) % 2001) / 1000.0f - 1.0f;
    }
    for (int i = 0; i < B; i++) y[i] = (int32_t)((i * 7 + 3) % 5);
}

static float *params(kl_ctx *ctx, int64_t *n) { return kl_test_params(ctx, n, NULL, NULL); }

/* g: a new graph of ctx with inputs x [B,1,8,8] and y [B] and m's
 * cross-entropy loss *ce. */
static void loss_graph(kl_ctx *ctx, kl_model *m, kl_graph **g, kl_tensor **x, kl_tensor **y, kl_tensor **ce)
{
    kl_tensor *logits;
    int64_t xd[4] = {B, 1, 8, 8}, bd = B;
    CHECK_OK(kl_graph_new(ctx, g));
    CHECK_OK(kl_input(*g, "x", KL_F32, 4, xd, x));
    CHECK_OK(kl_input(*g, "y", KL_I32, 1, &bd, y));
    CHECK_OK(kl_model_forward(m, *g, *x, 1, &logits));
    CHECK_OK(kl_softmax_cross_entropy(*g, logits, *y, ce));
}

typedef struct {
    kl_model *m;
    kl_ctx *ctx;
    kl_optim *opt;
    step_graph sg;
    float x[B * 64];
    int32_t y[B];
    double last_loss;
} trainer;

static kl_device g_dev; /* where the trainers run */
static int g_capture = 1;

static void trainer_new(trainer *t, kl_dtype calc, const kl_optim_opts *oo)
{
    memset(t, 0, sizeof *t);
    t->m = parse(calc);
    kl_ctx_opts co = {.threads = 2, .seed = 3, .device = g_dev};
    CHECK_OK(kl_ctx_new(&co, &t->ctx));
    CHECK_OK(kl_optim_new(t->ctx, oo, &t->opt));
    CHECK_OK(step_graph_build(&t->sg, t->m, t->ctx, t->opt, B));
    CHECK_OK(kl_graph_set_capture(t->sg.g, g_capture));
    batch(t->x, t->y);
}

static void trainer_run(trainer *t, int runs)
{
    for (int r = 0; r < runs; r++) {
        double sum = 0;
        int64_t correct = 0;
        CHECK_OK(step_graph_run(&t->sg, t->m, t->x, t->y, &sum, &correct, NULL, NULL));
        t->last_loss = sum / B;
    }
}

static void trainer_free(trainer *t)
{
    step_graph_free(&t->sg);
    kl_optim_free(t->opt);
    kl_ctx_free(t->ctx);
    kl_model_free(t->m);
}

/* Whether a and b hold the same bits (n floats). */
static int same(const float *a, const float *b, int64_t n) { return !memcmp(a, b, (size_t)n * sizeof *a); }

static void test_exact_in_f32(void)
{
    kl_optim_opts base = {.kind = KL_OPTIM_ADAM, .lr = 1e-2, .max_grad_norm = 0.5};
    kl_optim_opts fixed = base, dyn = base;
    fixed.loss_scale = 1024;
    dyn.loss_scale = 1024, dyn.scale_window = 2; /* doubles after every second update */
    trainer a, b, c;
    trainer_new(&a, KL_F32, &base);
    trainer_new(&b, KL_F32, &fixed);
    trainer_new(&c, KL_F32, &dyn);
    int64_t n, n2, n3;
    float *p0 = params(a.ctx, &n);
    trainer_run(&a, 7), trainer_run(&b, 7), trainer_run(&c, 7);
    float *pa = params(a.ctx, &n), *pb = params(b.ctx, &n2), *pc = params(c.ctx, &n3);
    CHECK(n == n2 && n == n3 && !same(p0, pa, n)); /* it trained */
    CHECK(same(pa, pb, n));                        /* a static power of two: exact */
    CHECK(same(pa, pc, n));                        /* and a growing one */
    CHECK(a.last_loss == b.last_loss && a.last_loss == c.last_loss);
    CHECK(fabs(kl_optim_last_grad_norm(a.opt) - kl_optim_last_grad_norm(c.opt)) == 0); /* the unscaled norm */
    double S;
    int64_t good, skipped;
    CHECK_OK(kl_optim_scaler(c.opt, &S, &good, &skipped));
    CHECK(S == 1024 * 8 && good == 1 && skipped == 0); /* 7 updates: doubled after 2, 4 and 6 */
    CHECK_OK(kl_optim_scaler(a.opt, &S, &good, &skipped));
    CHECK(S == 1 && skipped == 0);
    /* the gradient buffer carries the scale of the last run's backward (the
     * 7th ran at 8192, set by the 6th update's doubling) */
    CHECK(kl_optim_grad_scale(c.opt) == 8192 && kl_optim_grad_scale(a.opt) == 1);
    for (int i = 0; i < kl_ctx_param_count(a.ctx); i++) {
        float ga[64 * 32], gc[64 * 32];
        const char *name;
        kl_dtype dt;
        int nd, tr;
        int64_t ne[KL_MAX_DIMS], m = 1;
        CHECK_OK(kl_ctx_param_info(a.ctx, i, &name, &dt, &nd, ne, &tr));
        for (int d = 0; d < nd; d++) m *= ne[d];
        CHECK(m <= 64 * 32);
        CHECK_OK(kl_ctx_grad_get(a.ctx, i, ga, (size_t)m * sizeof(float)));
        CHECK_OK(kl_ctx_grad_get(c.ctx, i, gc, (size_t)m * sizeof(float)));
        for (int64_t k = 0; k < m; k++) gc[k] = (float)(gc[k] / kl_optim_grad_scale(c.opt));
        CHECK(same(ga, gc, m)); /* unscaled: the same bits */
        CHECK_OK(kl_optim_grad_get(c.opt, i, gc, (size_t)m * sizeof(float))); /* unscales itself */
        CHECK(same(ga, gc, m));
    }
    /* and with accumulation: cycles of 3 runs, the scale constant within one */
    kl_optim_opts acc = base, acc_dyn = dyn;
    acc.accumulate = acc_dyn.accumulate = 3;
    trainer d, e;
    trainer_new(&d, KL_F32, &acc);
    trainer_new(&e, KL_F32, &acc_dyn);
    trainer_run(&d, 12), trainer_run(&e, 12);
    float *pd = params(d.ctx, &n2), *pe = params(e.ctx, &n3);
    CHECK(n == n2 && n == n3 && !same(p0, pd, n) && same(pd, pe, n));
    CHECK_OK(kl_optim_scaler(e.opt, &S, &good, &skipped));
    CHECK(S == 1024 * 4 && good == 0 && skipped == 0); /* 4 updates */
    for (int i = 0; i < kl_ctx_param_count(d.ctx); i++) { /* the cycles' mean gradients, unscaled */
        float gd[64 * 32], ge[64 * 32];
        int64_t ne[KL_MAX_DIMS], m = 1;
        int nd;
        CHECK_OK(kl_ctx_param_info(d.ctx, i, NULL, NULL, &nd, ne, NULL));
        for (int k = 0; k < nd; k++) m *= ne[k];
        CHECK_OK(kl_optim_grad_get(d.opt, i, gd, (size_t)m * sizeof(float)));
        CHECK_OK(kl_optim_grad_get(e.opt, i, ge, (size_t)m * sizeof(float)));
        CHECK(same(gd, ge, m));
    }
    printf("  ok f32: scaled by 2^10 (static) and 2^10..2^13 (dynamic) bit-identical to unscaled, also accumulating\n");
    free(p0), free(pa), free(pb), free(pc), free(pd), free(pe);
    trainer_free(&a), trainer_free(&b), trainer_free(&c), trainer_free(&d), trainer_free(&e);
}

/* SGD (lr 2^24) from the gradient of 2^-24 * cross-entropy of the MLP in
 * calc, loss scale S (0: none): the parameters' update (malloc'd). */
static float *tiny_loss_update(kl_dtype calc, double S, int64_t *n)
{
    kl_model *m = parse(calc);
    kl_ctx *ctx;
    kl_ctx_opts co = {.threads = 2, .seed = 3, .device = g_dev};
    CHECK_OK(kl_ctx_new(&co, &ctx));
    kl_optim_opts oo = {.kind = KL_OPTIM_SGD, .lr = 16777216.0, .loss_scale = S};
    kl_optim *opt;
    CHECK_OK(kl_optim_new(ctx, &oo, &opt));
    kl_graph *g;
    kl_tensor *x, *y, *ce, *loss;
    loss_graph(ctx, m, &g, &x, &y, &ce);
    CHECK_OK(kl_scale(g, ce, 0x1p-24, &loss));
    CHECK_OK(kl_output(g, loss));
    CHECK_OK(kl_optim_minimize(g, opt, loss, NULL));
    CHECK_OK(kl_graph_plan(g, NULL));
    float xv[B * 64];
    int32_t yv[B];
    batch(xv, yv);
    CHECK_OK(kl_tensor_set(x, xv, sizeof xv));
    CHECK_OK(kl_tensor_set(y, yv, sizeof yv));
    float *p0 = params(ctx, n);
    CHECK_OK(kl_graph_run(g));
    float *p1 = params(ctx, n);
    for (int64_t i = 0; i < *n; i++) p1[i] -= p0[i];
    free(p0);
    kl_graph_free(g);
    kl_optim_free(opt);
    kl_ctx_free(ctx);
    kl_model_free(m);
    return p1;
}

static double rel_err(const float *a, const float *ref, int64_t n)
{
    double d = 0, r = 0;
    for (int64_t i = 0; i < n; i++) d += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]), r += (double)ref[i] * ref[i];
    return sqrt(d / r);
}

static void test_f16_underflow(void)
{
    int64_t n, n2, n3;
    float *ref = tiny_loss_update(KL_F32, 0, &n);
    float *raw = tiny_loss_update(KL_F16, 0, &n2);
    float *scaled = tiny_loss_update(KL_F16, 65536.0 * 256, &n3);
    CHECK(n == n2 && n == n3);
    double e_raw = rel_err(raw, ref, n), e_scaled = rel_err(scaled, ref, n);
    CHECK(e_raw > 0.9);     /* the f16 gradients flushed to zero */
    CHECK(e_scaled < 0.01); /* a few f16 roundings */
    printf("  ok f16, loss 2^-24 CE: update error %.3g unscaled, %.3g scaled by 2^24\n", e_raw, e_scaled);
    free(ref), free(raw), free(scaled);
}

static void test_overflow(void)
{
    /* 2^40 times the logits' gradients (~1/16) overflows f16 (65504) */
    kl_optim_opts big = {.kind = KL_OPTIM_ADAM, .lr = 1e-2, .loss_scale = 0x1p40, .scale_window = 1000};
    trainer a;
    trainer_new(&a, KL_F16, &big);
    int64_t n;
    float *p0 = params(a.ctx, &n);
    int runs = 0;
    double S = 0;
    int64_t good, skipped = 0;
    for (; runs < 40; runs++) {
        trainer_run(&a, 1);
        CHECK_OK(kl_optim_scaler(a.opt, &S, &good, &skipped));
        if (skipped <= runs) break; /* this run applied */
        float *p = params(a.ctx, &n);
        CHECK(same(p0, p, n)); /* skipped: nothing changed */
        free(p);
        CHECK(S == ldexp(1, 40 - (runs + 1)) && !isfinite(kl_optim_last_grad_norm(a.opt)));
    }
    int k = (int)skipped;
    CHECK(k >= 5 && k < 40 && runs == k && !kl_optim_halted(a.opt) && kl_optim_steps(a.opt) == k + 1);
    trainer_run(&a, 3);
    /* the same from the scale that fitted: Adam's t starts at 1 in both */
    kl_optim_opts fit = big;
    fit.loss_scale = S;
    trainer b;
    trainer_new(&b, KL_F16, &fit);
    trainer_run(&b, 4);
    int64_t n2;
    float *pa = params(a.ctx, &n), *pb = params(b.ctx, &n2);
    CHECK(n == n2 && same(pa, pb, n) && !same(p0, pa, n));
    CHECK(a.last_loss == b.last_loss);
    printf("  ok f16 from 2^40: %d updates skipped down to 2^%d, then bit-identical to a run started there\n", k,
           (int)log2(S));
    /* set_steps below the skipped count restarts Adam's t at 1 (t <= 0 made bc2 < 0: NaN parameters) */
    CHECK_OK(kl_optim_set_steps(a.opt, 0));
    trainer_run(&a, 1);
    float *pr = params(a.ctx, &n);
    int finite = 1;
    for (int64_t i = 0; i < n; i++) finite &= isfinite(pr[i]) != 0;
    CHECK(finite && !same(pa, pr, n));
    free(pr);
    free(p0), free(pa), free(pb);
    trainer_free(&a), trainer_free(&b);

    /* a static scale that overflows halts */
    kl_optim_opts fixed = big;
    fixed.scale_window = 0;
    trainer c;
    trainer_new(&c, KL_F16, &fixed);
    float *q0 = params(c.ctx, &n);
    trainer_run(&c, 2);
    float *q1 = params(c.ctx, &n);
    CHECK(kl_optim_halted(c.opt) && same(q0, q1, n));
    free(q0), free(q1);
    trainer_free(&c);
}

static void test_misuse(void)
{
    kl_ctx *ctx;
    kl_ctx_opts co = {.threads = 1, .seed = 1};
    CHECK_OK(kl_ctx_new(&co, &ctx));
    kl_optim *opt = NULL;
    kl_optim_opts bad = {.kind = KL_OPTIM_SGD, .lr = 0.1, .loss_scale = -1};
    CHECK_ERR(kl_optim_new(ctx, &bad, &opt), KL_EINVAL, "loss_scale must be in [0, 2^64]");
    bad.loss_scale = 1e39; /* inf as the kernels' float */
    CHECK_ERR(kl_optim_new(ctx, &bad, &opt), KL_EINVAL, "loss_scale must be in [0, 2^64] (0: none), got 1e+39");
    bad.loss_scale = 0, bad.scale_window = 10;
    CHECK_ERR(kl_optim_new(ctx, &bad, &opt), KL_EINVAL, "scale_window 10 needs loss_scale > 0");
    kl_model *m = parse(KL_F32);
    kl_optim_opts oo = {.kind = KL_OPTIM_SGD, .lr = 0.1, .loss_scale = 8, .scale_window = 10};
    CHECK_OK(kl_optim_new(ctx, &oo, &opt));
    kl_graph *g;
    kl_tensor *x, *y, *loss, *same_loss;
    loss_graph(ctx, m, &g, &x, &y, &loss);
    CHECK_OK(kl_backward(g, loss));
    CHECK_ERR(kl_optim_step(g, opt, NULL), KL_EMISUSE, "pass the loss through kl_optim_scale_loss");
    kl_graph_free(g);
    CHECK_ERR(kl_optim_scale_loss(NULL, opt, loss, &same_loss), KL_EMISUSE, "");
    /* kl_optim_minimize: the loss (not the scaled node) stays readable */
    loss_graph(ctx, m, &g, &x, &y, &loss);
    CHECK_OK(kl_optim_minimize(g, opt, loss, NULL));
    CHECK_OK(kl_graph_plan(g, NULL));
    float xv[B * 64], lv = 0;
    int32_t yv[B];
    batch(xv, yv);
    CHECK_OK(kl_tensor_set(x, xv, sizeof xv));
    CHECK_OK(kl_tensor_set(y, yv, sizeof yv));
    CHECK_OK(kl_graph_run(g));
    CHECK_OK(kl_tensor_get(loss, &lv, sizeof lv));
    CHECK(lv > 1 && lv < 3); /* about ln 5, unscaled */
    kl_graph_free(g);
    /* composition: each of these multiplied the update (by S, S^2 or 2) */
    kl_optim *other;
    kl_tensor *scaled, *twice;
    CHECK_OK(kl_optim_new(ctx, &(kl_optim_opts){.kind = KL_OPTIM_SGD, .lr = 0.1}, &other));
    loss_graph(ctx, m, &g, &x, &y, &loss);
    CHECK_OK(kl_optim_scale_loss(g, opt, loss, &scaled));
    CHECK_ERR(kl_optim_scale_loss(g, opt, scaled, &twice), KL_EMISUSE, "is already scaled; pass the unscaled loss");
    CHECK_OK(kl_backward(g, scaled));
    CHECK_ERR(kl_optim_scale_loss(g, opt, loss, &twice), KL_EMISUSE, "scale the loss before kl_backward");
    CHECK_ERR(kl_optim_step(g, other, NULL), KL_EMISUSE, "scaled by another optimizer");
    CHECK_OK(kl_optim_step(g, opt, NULL));
    CHECK_ERR(kl_optim_step(g, opt, NULL), KL_EMISUSE, "the graph already has an update");
    kl_graph_free(g);
    loss_graph(ctx, m, &g, &x, &y, &loss); /* twice unscaled too */
    CHECK_OK(kl_optim_minimize(g, other, loss, NULL));
    CHECK_ERR(kl_optim_step(g, other, NULL), KL_EMISUSE, "call kl_optim_step (or kl_optim_minimize) once per graph");
    kl_graph_free(g);
    kl_optim_free(other);
    /* the scaler's state round trip (checkpoints) */
    CHECK_OK(kl_optim_set_scaler(opt, 256, 3, 2));
    double S;
    int64_t good, skipped;
    CHECK_OK(kl_optim_scaler(opt, &S, &good, &skipped));
    CHECK(S == 256 && good == 3 && skipped == 2);
    CHECK_ERR(kl_optim_set_scaler(opt, 0, 0, 0), KL_EINVAL, "scale must be in (0, 2^64]");
    kl_optim_free(opt);
    /* without scaling kl_optim_scale_loss hands the loss back */
    kl_optim_opts plain = {.kind = KL_OPTIM_SGD, .lr = 0.1};
    CHECK_OK(kl_optim_new(ctx, &plain, &opt));
    loss_graph(ctx, m, &g, &x, &y, &loss);
    CHECK_OK(kl_optim_scale_loss(g, opt, loss, &same_loss));
    CHECK(same_loss == loss);
    CHECK_OK(kl_optim_set_scaler(opt, 256, 0, 0));
    CHECK_OK(kl_optim_scaler(opt, &S, NULL, NULL));
    CHECK(S == 1); /* an unscaled optimizer keeps 1 */
    kl_graph_free(g);
    kl_optim_free(opt);
    kl_model_free(m);
    kl_ctx_free(ctx);
}

/* An f16 run from an overflowing scale on the GPU against the CPU, the
 * scaler's state (scale, good, skipped, steps) compared after every run
 * (and on the GPU, with capture against without). With accumulation the
 * decisions fall on cycle ends: overflow inside a cycle skips it. */
static void gpu_vs_cpu_case(kl_device gpu, const char *what, const kl_optim_opts *oo, int runs, int64_t min_skips,
                            int min_growths)
{
    trainer r[3];
    for (int k = 0; k < 3; k++) {
        g_dev = k ? gpu : (kl_device){KL_DEVICE_CPU, 0};
        g_capture = k != 2;
        trainer_new(&r[k], KL_F16, oo);
    }
    int diverged = -1, growths = 0;
    double S[3], prev = oo->loss_scale;
    int64_t good[3], skipped[3];
    for (int i = 0; i < runs; i++) {
        for (int k = 0; k < 3; k++) {
            trainer_run(&r[k], 1);
            CHECK_OK(kl_optim_scaler(r[k].opt, &S[k], &good[k], &skipped[k]));
        }
        for (int k = 1; k < 3 && diverged < 0; k++)
            if (S[k] != S[0] || good[k] != good[0] || skipped[k] != skipped[0] ||
                kl_optim_steps(r[k].opt) != kl_optim_steps(r[0].opt) || kl_optim_pending(r[k].opt) != kl_optim_pending(r[0].opt))
                diverged = i;
        growths += S[0] > prev;
        prev = S[0];
    }
    if (diverged >= 0) fprintf(stderr, "  %s: the scaler's state differs from the CPU's after run %d\n", what, diverged + 1);
    CHECK(diverged < 0 && skipped[0] >= min_skips && growths >= min_growths); /* the case reaches both decisions */
    int64_t n1, n2;
    float *p1 = params(r[1].ctx, &n1), *p2 = params(r[2].ctx, &n2);
    CHECK(n1 == n2 && same(p1, p2, n1) && r[1].last_loss == r[2].last_loss); /* capture changes nothing */
    kl_parity_params(what, r[0].ctx, r[1].ctx, 1e-2, 5e-2);
    printf("  ok GPU %s: %lld skipped and %d growths as on the CPU, run by run, scale %g; captured = eager bit for bit; "
           "parameters near the CPU's\n", what, (long long)skipped[1], growths, S[1]);
    free(p1), free(p2);
    for (int k = 0; k < 3; k++) trainer_free(&r[k]);
    g_dev = gpu;
    g_capture = 1;
}

static void test_gpu_vs_cpu(kl_device gpu)
{
    kl_optim_opts big = {.kind = KL_OPTIM_ADAM, .lr = 1e-2, .loss_scale = 0x1p40, .scale_window = 4};
    gpu_vs_cpu_case(gpu, "f16 from 2^40", &big, 30, 6, 1);
    kl_optim_opts acc = {.kind = KL_OPTIM_ADAM, .lr = 1e-2, .loss_scale = 0x1p22, .scale_window = 2, .accumulate = 3};
    gpu_vs_cpu_case(gpu, "f16 from 2^22, accumulate 3", &acc, 24, 2, 1);
}

int main(void)
{
    g_dev = (kl_device){KL_DEVICE_CPU, 0};
    test_exact_in_f32();
    test_f16_underflow();
    test_overflow();
    test_misuse();
    if (kl_cuda_available(0) != KL_OK) {
        printf("  GPU part skipped: %s\n", kl_last_error());
        return kl_test_done("test_loss_scale");
    }
    kl_device gpu = {KL_DEVICE_CUDA, 0};
    g_dev = gpu;
    test_exact_in_f32();
    test_f16_underflow();
    test_overflow();
    test_gpu_vs_cpu(gpu);
    return kl_test_done("test_loss_scale");
}
