/* Whole-step CUDA graphs and the machinery around them, on a GPU:
 *  - an MLP with dropout and clipping trained 6 steps with capture on and
 *    off: identical losses, parameters and norms, bit for bit, and the
 *    captured graph is really replayed; against the CPU within TF32 bounds;
 *  - read-back records equal the tensors; the ring-full error;
 *  - the non-finite guard on the device;
 *  - gather_rows and argmax_match against the CPU; kl_device_data;
 *  - streamed data: 50 batches through 3 slots, copies on the copy stream
 *    overlapping captured replays, against the host;
 *  - small (kernel-argument) and large host-to-device copies;
 *  - per-op profile times from CUDA events; capture dropped when the plan
 *    changes;
 *  - gradient accumulation (tests/lib/accum_case.h): cycles replayed from
 *    one captured graph against the CPU, a short cycle, the NaN guard;
 *  - two threads training their own nets at once (one stream: the issue
 *    lock keeps each capture to its own run): each equals a lone run.
 * Without a usable GPU: "skipped: <reason>", exit 77. */
#include "kiln/kiln.h"
#include "testutil.h"
#include "cuda_parity.h"
#include "stream_case.h"
#include "accum_case.h"
#include "backends/backend.h" /* kl_cuda_available */

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { B = 64, IN = 20, HID = 32, OUT = 5, STEPS = 6 };

typedef struct {
    kl_ctx *ctx;
    kl_graph *g;
    kl_optim *opt;
    kl_tensor *x, *y, *loss, *correct, *norm;
    kl_readback *rb;
} net;

static kl_status net_build(net *m, kl_device dev, int capture)
{
    memset(m, 0, sizeof *m);
    kl_ctx_opts co = {.device = dev, .seed = 99};
    kl_tensor *w1, *b1, *w2, *b2, *h, *lg;
    TRY(kl_ctx_new(&co, &m->ctx));
    TRY(kl_graph_new(m->ctx, &m->g));
    kl_graph *g = m->g;
    TRY(kl_graph_set_capture(g, capture));
    TRY(kl_input(g, "x", KL_F32, 2, (int64_t[]){B, IN}, &m->x));
    TRY(kl_input(g, "y", KL_I32, 1, (int64_t[]){B}, &m->y));
    TRY(kl_param(g, "fc1.weight", KL_F32, 2, (int64_t[]){HID, IN}, NULL, &w1));
    TRY(kl_param(g, "fc1.bias", KL_F32, 1, (int64_t[]){HID}, NULL, &b1));
    TRY(kl_param(g, "fc2.weight", KL_F32, 2, (int64_t[]){OUT, HID}, NULL, &w2));
    TRY(kl_param(g, "fc2.bias", KL_F32, 1, (int64_t[]){OUT}, NULL, &b2));
    TRY(kl_linear(g, m->x, w1, b1, KL_ACT_RELU, &h));
    TRY(kl_dropout(g, h, 0.25, &h));
    TRY(kl_linear(g, h, w2, b2, KL_ACT_NONE, &lg));
    TRY(kl_softmax_cross_entropy(g, lg, m->y, &m->loss));
    TRY(kl_argmax_match(g, lg, m->y, &m->correct));
    TRY(kl_output(g, m->correct));
    TRY(kl_backward(g, m->loss));
    kl_optim_opts oo = {.kind = KL_OPTIM_ADAMW, .lr = 3e-3, .weight_decay = 0.01, .max_grad_norm = 0.5};
    TRY(kl_optim_new(m->ctx, &oo, &m->opt));
    TRY(kl_optim_step(g, m->opt, &m->norm));
    kl_tensor *ts[3] = {m->loss, m->correct, m->norm};
    return kl_readback_new(g, 3, ts, 16, &m->rb);
}

static void net_free(net *m)
{
    kl_graph_free(m->g);
    kl_optim_free(m->opt);
    kl_ctx_free(m->ctx);
}

static void batch(int step, float *x, int32_t *y)
{
    uint32_t s = 12345u + 977u * (uint32_t)step;
    for (int i = 0; i < B * IN; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = (float)((s >> 8) / 16777216.0) * 2 - 1;
    }
    for (int i = 0; i < B; i++) y[i] = (int32_t)((x[i * IN] > 0) + (x[i * IN + 1] > 0) + (x[i * IN + 2] > 0.5f));
}

/* Trains STEPS steps (a new batch each, the learning rate changing every
 * step) and records every step's read-back values. */
static kl_status train(net *m, double rec[STEPS][3])
{
    float x[B * IN];
    int32_t y[B];
    for (int s = 0; s < STEPS; s++) {
        batch(s, x, y);
        TRY(kl_tensor_set(m->x, x, sizeof x));
        TRY(kl_tensor_set(m->y, y, sizeof y));
        TRY(kl_optim_set_lr(m->opt, 3e-3 * (1.0 + 0.1 * s)));
        TRY(kl_graph_set_runs(m->g, (uint64_t)s));
        TRY(kl_graph_run(m->g));
    }
    for (int s = 0; s < STEPS; s++) {
        int ready;
        TRY(kl_readback_pop(m->rb, 1, rec[s], &ready));
        if (!ready) return KL_EINTERNAL;
    }
    return KL_OK;
}

static void test_capture(kl_device gpu)
{
    net cap, eag, cpu;
    double rc[STEPS][3], re[STEPS][3], rp[STEPS][3];
    CHECK_OK(net_build(&cap, gpu, 1));
    CHECK_OK(net_build(&eag, gpu, 0));
    CHECK_OK(net_build(&cpu, (kl_device){KL_DEVICE_CPU, 0}, 1));
    CHECK_OK(train(&cap, rc));
    CHECK(kl_graph_captured(cap.g) == 1);
    CHECK_OK(train(&eag, re));
    CHECK(kl_graph_captured(eag.g) == 0);
    CHECK_OK(train(&cpu, rp));
    CHECK(!memcmp(rc, re, sizeof rc)); /* replay == eager, bit for bit */
    kl_parity_params("capture vs eager", cap.ctx, eag.ctx, 0, 0);
    for (int s = 0; s < STEPS; s++) {
        printf("  step %d: loss %.6f/%.6f (gpu/cpu), correct %g/%g, norm %.5f/%.5f\n", s + 1, rc[s][0], rp[s][0],
               rc[s][1], rp[s][1], rc[s][2], rp[s][2]);
        CHECK(fabs(rc[s][0] - rp[s][0]) <= 2e-3 * fabs(rp[s][0]));
        CHECK(fabs(rc[s][2] - rp[s][2]) <= 2e-3 * fabs(rp[s][2]));
        CHECK(fabs(rc[s][1] - rp[s][1]) <= 2); /* a near tie may flip under TF32 */
    }
    kl_parity_params("gpu vs cpu", cap.ctx, cpu.ctx, 5e-3, 0.05); /* Adam turns tiny TF32 differences into +-lr steps */
    /* the record agrees with the tensors, and the norm with the optimizer */
    float l;
    double n;
    CHECK_OK(kl_tensor_get(cap.loss, &l, sizeof l));
    CHECK_OK(kl_tensor_get(cap.norm, &n, sizeof n));
    CHECK(l == (float)rc[STEPS - 1][0] && n == rc[STEPS - 1][2] && n == kl_optim_last_grad_norm(cap.opt));
    /* a full ring refuses the run */
    for (int s = 0; s < 16; s++) CHECK_OK(kl_graph_run(cap.g));
    CHECK_ERR(kl_graph_run(cap.g), KL_EMISUSE, "holds 16 records nobody popped");
    double v[3];
    int ready = 0;
    for (int s = 0; s < 16; s++) CHECK_OK(kl_readback_pop(cap.rb, 1, v, &ready));
    CHECK(ready && kl_readback_pending(cap.rb) == 0);

    /* the guard on the device: NaN weight -> NaN loss, nothing updated, halted */
    float w2[OUT * HID], w2n[OUT * HID], w1a[HID * IN], w1b[HID * IN];
    CHECK_OK(kl_ctx_param_get(cap.ctx, 2, w2, sizeof w2));
    memcpy(w2n, w2, sizeof w2);
    w2n[3] = NAN;
    CHECK_OK(kl_ctx_param_get(cap.ctx, 0, w1a, sizeof w1a));
    CHECK_OK(kl_ctx_param_set(cap.ctx, 2, w2n, sizeof w2n));
    CHECK_OK(kl_graph_run(cap.g));
    CHECK_OK(kl_ctx_param_set(cap.ctx, 2, w2, sizeof w2));
    CHECK_OK(kl_graph_run(cap.g)); /* finite again, but halted */
    CHECK_OK(kl_readback_pop(cap.rb, 1, v, &ready));
    CHECK(ready && isnan(v[0]));
    CHECK_OK(kl_readback_pop(cap.rb, 1, v, &ready));
    CHECK(ready && isfinite(v[0]) && kl_optim_halted(cap.opt) == 1);
    CHECK_OK(kl_ctx_param_get(cap.ctx, 0, w1b, sizeof w1b));
    CHECK(!memcmp(w1a, w1b, sizeof w1a));
    CHECK_OK(kl_optim_clear_halt(cap.opt));
    CHECK_OK(kl_graph_run(cap.g));
    CHECK_OK(kl_readback_pop(cap.rb, 1, v, &ready));
    CHECK_OK(kl_ctx_param_get(cap.ctx, 0, w1b, sizeof w1b));
    CHECK(kl_optim_halted(cap.opt) == 0 && memcmp(w1a, w1b, sizeof w1a) != 0);

    /* a new op changes the plan: the next run is eager, the one after captured again */
    kl_tensor *extra;
    CHECK_OK(kl_scale(cap.g, cap.loss, 2.0, &extra));
    CHECK_OK(kl_output(cap.g, extra));
    CHECK_OK(kl_graph_run(cap.g));
    CHECK(kl_graph_captured(cap.g) == 0);
    CHECK_OK(kl_graph_run(cap.g));
    CHECK(kl_graph_captured(cap.g) == 1);
    float l2, e2;
    CHECK_OK(kl_tensor_get(cap.loss, &l2, sizeof l2));
    CHECK_OK(kl_tensor_get(extra, &e2, sizeof e2));
    CHECK(e2 == 2 * l2);
    for (int s = 0; s < 2; s++) CHECK_OK(kl_readback_pop(cap.rb, 1, v, &ready));

    /* profiling runs eagerly with CUDA-event times per op */
    CHECK_OK(kl_graph_profile(cap.g, 1));
    CHECK_OK(kl_graph_run(cap.g));
    CHECK(kl_graph_captured(cap.g) == 0);
    CHECK_OK(kl_readback_pop(cap.rb, 1, v, &ready));
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    kl_graph_profile_print(cap.g, mem);
    fclose(mem);
    CHECK(text && strstr(text, "matmul") && strstr(text, "optim"));
    printf("%s", text ? text : "");
    free(text);
    net_free(&cap);
    net_free(&eag);
    net_free(&cpu);
}

/* ---- rows ops and device data against the CPU ---- */

static kl_status gather_run(kl_device dev, const kl_dataset *ds, int32_t at, float *x, int32_t *y, int32_t *correct)
{
    kl_ctx *ctx;
    kl_graph *g;
    kl_device_data *dd;
    kl_tensor *start, *tx, *ty, *c, *xc;
    kl_ctx_opts co = {.device = dev};
    TRY(kl_ctx_new(&co, &ctx));
    TRY(kl_graph_new(ctx, &g));
    TRY(kl_device_data_new(ctx, ds, &dd));
    TRY(kl_device_data_batch(g, dd, 48, &start, &tx, &ty));
    TRY(kl_reshape(g, tx, 2, (int64_t[]){48, 30}, &xc));
    TRY(kl_argmax_match(g, xc, ty, &c));
    TRY(kl_output(g, tx));
    TRY(kl_output(g, ty));
    TRY(kl_output(g, c));
    TRY(kl_device_data_order(dd, 1, 77, 3));
    TRY(kl_tensor_set(start, &at, sizeof at));
    TRY(kl_graph_run(g));
    TRY(kl_tensor_get(tx, x, 48 * 30 * sizeof *x));
    TRY(kl_tensor_get(ty, y, 48 * sizeof *y));
    TRY(kl_tensor_get(c, correct, sizeof *correct));
    /* a start past the end: reported at the next synchronisation */
    int32_t bad = 100 - 47;
    TRY(kl_tensor_set(start, &bad, sizeof bad));
    kl_status s = kl_graph_run(g);
    if (s == KL_OK) s = kl_tensor_get(c, correct + 1, sizeof *correct);
    correct[2] = s;
    kl_graph_free(g);
    kl_device_data_free(dd);
    kl_ctx_free(ctx);
    return KL_OK;
}

static void test_rows(kl_device gpu)
{
    enum { N = 100, D = 30 };
    float xs[N * D];
    int32_t ys[N];
    uint32_t r = 7;
    for (int i = 0; i < N * D; i++) {
        r = r * 1664525u + 1013904223u;
        xs[i] = (float)(r >> 8) / 16777216.0f;
    }
    for (int i = 0; i < N; i++) ys[i] = i % D;
    kl_dataset *ds;
    CHECK_OK(kl_dataset_from_memory(N, 3, (int64_t[]){1, 5, 6}, xs, ys, &ds));
    float xc[48 * D], xg[48 * D];
    int32_t yc[48], yg[48], cc[3] = {0}, cg[3] = {0};
    CHECK_OK(gather_run((kl_device){KL_DEVICE_CPU, 0}, ds, 40, xc, yc, cc));
    CHECK_OK(gather_run(gpu, ds, 40, xg, yg, cg));
    CHECK(!memcmp(xc, xg, sizeof xc) && !memcmp(yc, yg, sizeof yc));
    CHECK(cc[0] == cg[0]);
    CHECK(cc[2] == KL_EINVAL && cg[2] == KL_EINVAL);
    printf("  gather_rows, argmax_match (%d correct), device data: cpu == gpu\n", cg[0]);
    kl_dataset_free(ds);
}

/* ---- copies: kernel-argument (small) and cudaMemcpy (large) ---- */

static void test_copies(kl_device gpu)
{
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *a, *b, *sa, *sb;
    kl_ctx_opts co = {.device = gpu};
    CHECK_OK(kl_ctx_new(&co, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "small", KL_F32, 1, (int64_t[]){511}, &a)); /* 2044 bytes: one kernel argument */
    CHECK_OK(kl_input(g, "large", KL_F32, 1, (int64_t[]){100003}, &b));
    CHECK_OK(kl_scale(g, a, 3.0, &sa));
    CHECK_OK(kl_scale(g, b, 3.0, &sb));
    CHECK_OK(kl_output(g, sa));
    CHECK_OK(kl_output(g, sb));
    float *va = malloc(511 * sizeof *va), *vb = malloc(100003 * sizeof *vb), *oa = malloc(511 * sizeof *oa),
          *ob = malloc(100003 * sizeof *ob);
    int bad = 0;
    for (int round = 0; round < 3; round++) { /* the host buffers change right after each set */
        for (int i = 0; i < 511; i++) va[i] = (float)(i * 7 + round);
        for (int i = 0; i < 100003; i++) vb[i] = (float)(i % 1000 - round);
        CHECK_OK(kl_tensor_set(a, va, 511 * sizeof *va));
        CHECK_OK(kl_tensor_set(b, vb, 100003 * sizeof *vb));
        memset(va, 0, 511 * sizeof *va);
        CHECK_OK(kl_graph_run(g));
        CHECK_OK(kl_tensor_get(sa, oa, 511 * sizeof *oa));
        CHECK_OK(kl_tensor_get(sb, ob, 100003 * sizeof *ob));
        for (int i = 0; i < 511; i++) bad += oa[i] != 3.0f * (float)(i * 7 + round);
        for (int i = 0; i < 100003; i++) bad += ob[i] != 3.0f * (float)(i % 1000 - round);
    }
    CHECK(bad == 0);
    free(va), free(vb), free(oa), free(ob);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* ---- streamed data: slots rewritten while earlier replays may still read them ---- */
static void test_stream(kl_device gpu)
{
    enum { S = 50 };
    double loss[S], corr[S], el[S], ec[S];
    CHECK_OK(stream_case_run(gpu, S, loss, corr));
    stream_case_expect(S, el, ec);
    int bad = 0;
    for (int k = 0; k < S; k++) bad += !(fabs(loss[k] - el[k]) <= 1e-5 * fabs(el[k]) + 1e-6 && corr[k] == ec[k]);
    CHECK(bad == 0);
    if (bad) printf("  streamed data: %d of %d steps differ from the host\n", bad, S);
}

/* ---- gradient accumulation: the same cases on the GPU and the CPU ---- */
static void test_accumulate(kl_device gpu)
{
    static const struct { int acc, rows, runs, end_at, nan_run, last_rows; } cases[] = {
        {3, 4, 6, -1, -1, 0}, {0, 12, 2, -1, -1, 0}, {4, 4, 3, 2, -1, 0}, {3, 4, 6, -1, 3, 0}, {3, 4, 2, -1, -1, 0},
        {3, 5, 3, -1, -1, 2}}; /* the last: a partial batch weighted by its rows */
    for (int f32 = 0; f32 < 2; f32++)
        for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
            accum_case c[2];
            for (int d = 0; d < 2; d++) {
                c[d] = (accum_case){.dev = d ? gpu : (kl_device){KL_DEVICE_CPU, 0}, .dt = f32 ? KL_F32 : KL_F64,
                                    .accumulate = cases[k].acc, .rows = cases[k].rows, .runs = cases[k].runs,
                                    .end_cycle_at = cases[k].end_at, .nan_run = cases[k].nan_run,
                                    .last_rows = cases[k].last_rows, .weighted = cases[k].last_rows > 0};
                CHECK_OK(accum_case_run(&c[d]));
            }
            double worst = 0, tol = f32 ? 2e-3 : 1e-10; /* f32: TF32 GEMMs */
            for (int i = 0; i < ACCUM_CASE_PARAMS; i++) { /* and the gradient the last update used */
                worst = fmax(worst, fabs(c[1].params[i] - c[0].params[i]) / (1e-2 + fabs(c[0].params[i])));
                if (!c[0].pending) worst = fmax(worst, fabs(c[1].grads[i] - c[0].grads[i]) / (1e-2 + fabs(c[0].grads[i])));
            }
            if (!(worst <= tol)) printf("  accumulation case %zu (%s): GPU vs CPU off by %.3g\n", k, f32 ? "f32" : "f64", worst);
            CHECK(worst <= tol);
            CHECK(c[1].steps == c[0].steps && c[1].pending == c[0].pending && c[1].halted == c[0].halted);
            if (cases[k].nan_run == 3) CHECK(c[1].halted == 1);
        }
}

/* ---- two host threads, one stream ---- */

enum { ROUNDS = 8 };

typedef struct {
    kl_device dev;
    double rec[ROUNDS][STEPS][3];
    kl_status s;
    char err[256];
} thread_job;

/* ROUNDS times: a new net (so each round captures anew), STEPS steps */
static void *thread_train(void *arg)
{
    thread_job *j = arg;
    j->s = KL_OK;
    for (int r = 0; r < ROUNDS && j->s == KL_OK; r++) {
        net m;
        j->s = net_build(&m, j->dev, 1);
        if (j->s == KL_OK) j->s = train(&m, j->rec[r]);
        if (j->s == KL_OK && j->dev.type == KL_DEVICE_CUDA && !kl_graph_captured(m.g)) j->s = KL_EINTERNAL;
        if (j->s != KL_OK) snprintf(j->err, sizeof j->err, "round %d: %s", r, kl_last_error());
        net_free(&m);
    }
    return NULL;
}

static void test_threads(kl_device gpu)
{
    net ref;
    double rr[STEPS][3];
    CHECK_OK(net_build(&ref, gpu, 1));
    CHECK_OK(train(&ref, rr));
    net_free(&ref);
    thread_job *jobs = calloc(2, sizeof *jobs);
    pthread_t th[2];
    int started[2] = {0};
    for (int i = 0; i < 2; i++) {
        jobs[i].dev = gpu;
        started[i] = pthread_create(&th[i], NULL, thread_train, &jobs[i]) == 0;
        CHECK(started[i]);
    }
    for (int i = 0; i < 2; i++)
        if (started[i]) pthread_join(th[i], NULL);
    for (int i = 0; i < 2; i++) {
        if (jobs[i].s != KL_OK) fprintf(stderr, "  thread %d: %s\n", i, jobs[i].err);
        CHECK(jobs[i].s == KL_OK);
        int same = 1;
        for (int r = 0; r < ROUNDS; r++) same &= !memcmp(jobs[i].rec[r], rr, sizeof rr);
        if (!same) fprintf(stderr, "  thread %d: a round's records differ from the lone run's\n", i);
        CHECK(same); /* another thread's kernels captured into a graph would change them */
    }
    printf("  two threads x %d rounds of %d captured steps: records equal a lone run's\n", ROUNDS, STEPS);
    free(jobs);
}

int main(void)
{
    kl_parity_fp32_default();
    if (kl_cuda_available(0) != KL_OK) {
        printf("skipped: %s\n", kl_last_error());
        return 77;
    }
    kl_device gpu = {KL_DEVICE_CUDA, 0};
    test_capture(gpu);
    test_rows(gpu);
    test_copies(gpu);
    test_stream(gpu);
    test_accumulate(gpu);
    test_threads(gpu);
    return kl_test_done("test_cuda_graph");
}
