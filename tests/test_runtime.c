/* The run-time machinery a captured GPU step relies on, checked on the CPU:
 * per-run values (dropout's counter), read-back rings, external tensors,
 * gather_rows, argmax_match, the optimizer's gradient-norm output and its
 * non-finite guard, the capture switch (a no-op on the CPU), and streamed
 * data (slots put and read in turn; its misuses). */
#include "kiln/kiln.h"
#include "testutil.h"
#include "stream_case.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

static uint32_t g_rng = 2463534242u;
static float frand(void)
{
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 17, g_rng ^= g_rng << 5;
    return (float)(g_rng >> 8) / 16777216.0f * 2 - 1;
}

/* ---- gather_rows over an external table, the order and offset as inputs ---- */
static void test_gather(void)
{
    enum { M = 11, D = 3, K = 9, R = 4 };
    float table[M * D];
    int32_t order[K] = {10, 2, 7, 7, 0, 5, 9, 1, 3};
    for (int i = 0; i < M * D; i++) table[i] = frand();
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *src, *idx, *start, *y;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_external(g, "table", KL_F32, 2, (int64_t[]){M, D}, table, &src));
    CHECK_OK(kl_input(g, "order", KL_I32, 1, (int64_t[]){K}, &idx));
    CHECK_OK(kl_input(g, "start", KL_I32, 1, (int64_t[]){1}, &start));
    CHECK_OK(kl_gather_rows(g, src, idx, start, R, &y));
    CHECK_OK(kl_output(g, y));
    CHECK_OK(kl_tensor_set(idx, order, sizeof order));
    for (int32_t at = 0; at + R <= K; at += 2) {
        float got[R * D];
        CHECK_OK(kl_tensor_set(start, &at, sizeof at));
        CHECK_OK(kl_graph_run(g));
        CHECK_OK(kl_tensor_get(y, got, sizeof got));
        for (int r = 0; r < R; r++) CHECK(!memcmp(got + r * D, table + order[at + r] * D, D * sizeof(float)));
    }
    /* the external memory is read in place: a change shows in the next run */
    table[order[0] * D] = 42;
    int32_t zero = 0;
    float first;
    CHECK_OK(kl_tensor_set(start, &zero, sizeof zero));
    CHECK_OK(kl_graph_run(g));
    float all[R * D];
    CHECK_OK(kl_tensor_get(y, all, sizeof all));
    first = all[0];
    CHECK(first == 42);
    /* out of range: the offset, then an index */
    int32_t past = K - R + 1;
    CHECK_OK(kl_tensor_set(start, &past, sizeof past));
    CHECK_ERR(kl_graph_run(g), KL_EINVAL, "rows [6, 10) are not within the 9 indices");
    order[2] = M;
    CHECK_OK(kl_tensor_set(idx, order, sizeof order));
    CHECK_OK(kl_tensor_set(start, &zero, sizeof zero));
    CHECK_ERR(kl_graph_run(g), KL_EINVAL, "index 11 at position 2 out of range [0,11)");
    /* bad builds */
    kl_tensor *bad;
    CHECK_ERR(kl_gather_rows(g, src, idx, start, K + 1, &bad), KL_EINVAL, "10 rows from 9 indices");
    CHECK_ERR(kl_gather_rows(g, src, src, start, 2, &bad), KL_EINVAL, "indices must be i32 [K]");
    CHECK_ERR(kl_external(g, "nil", KL_F32, 1, (int64_t[]){3}, NULL, &bad), KL_EMISUSE, "data is NULL");
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* ---- argmax_match against a scan written here ---- */
static void test_argmax_match(void)
{
    enum { N = 37, C = 10 };
    float x[N * C];
    int32_t lab[N];
    for (int i = 0; i < N * C; i++) x[i] = frand();
    x[3 * C + 4] = x[3 * C + 7] = 5;      /* a tie: the first wins */
    x[5 * C + 0] = NAN;                     /* NaN in column 0: the CPU scan answers 0 */
    x[6 * C + 2] = NAN, x[6 * C + 8] = 9;  /* NaN elsewhere never wins */
    int want = 0;
    for (int n = 0; n < N; n++) {
        int best = 0;
        for (int c = 1; c < C; c++)
            if (x[n * C + c] > x[n * C + best]) best = c;
        lab[n] = n % 3 ? best : (best + 1) % C; /* two thirds right */
        want += lab[n] == best;
    }
    lab[3] = 4, lab[5] = 0, lab[6] = 8;
    want = 0;
    for (int n = 0; n < N; n++) {
        int best = 0;
        for (int c = 1; c < C; c++)
            if (x[n * C + c] > x[n * C + best]) best = c;
        want += lab[n] == best;
    }
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *lg, *lb, *cnt;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "logits", KL_F32, 2, (int64_t[]){N, C}, &lg));
    CHECK_OK(kl_input(g, "labels", KL_I32, 1, (int64_t[]){N}, &lb));
    CHECK_OK(kl_argmax_match(g, lg, lb, &cnt));
    CHECK_OK(kl_output(g, cnt));
    CHECK_OK(kl_tensor_set(lg, x, sizeof x));
    CHECK_OK(kl_tensor_set(lb, lab, sizeof lab));
    CHECK_OK(kl_graph_run(g));
    int32_t got = -1;
    CHECK_OK(kl_tensor_get(cnt, &got, sizeof got));
    CHECK(got == want && want > N / 2);
    CHECK_ERR(kl_argmax_match(g, lb, lb, &cnt), KL_EINVAL, "logits must be [N, C] floating-point");
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* ---- training: norm output, read-back ring, guard ---- */
typedef struct {
    kl_ctx *ctx;
    kl_graph *g;
    kl_optim *opt;
    kl_tensor *x, *y, *loss, *correct, *norm;
    kl_readback *rb;
} net;

enum { B = 16, IN = 6, HID = 8, OUT = 3 };

static kl_status net_build(net *m, double max_norm, double dropout)
{
    memset(m, 0, sizeof *m);
    kl_ctx_opts co = {.seed = 7};
    kl_tensor *w1, *w2, *h, *lg;
    TRY(kl_ctx_new(&co, &m->ctx));
    TRY(kl_graph_new(m->ctx, &m->g));
    kl_graph *g = m->g;
    TRY(kl_input(g, "x", KL_F32, 2, (int64_t[]){B, IN}, &m->x));
    TRY(kl_input(g, "y", KL_I32, 1, (int64_t[]){B}, &m->y));
    TRY(kl_param(g, "w1", KL_F32, 2, (int64_t[]){HID, IN}, NULL, &w1));
    TRY(kl_param(g, "w2", KL_F32, 2, (int64_t[]){OUT, HID}, NULL, &w2));
    TRY(kl_linear(g, m->x, w1, NULL, KL_ACT_RELU, &h));
    if (dropout > 0) TRY(kl_dropout(g, h, dropout, &h));
    TRY(kl_linear(g, h, w2, NULL, KL_ACT_NONE, &lg));
    TRY(kl_softmax_cross_entropy(g, lg, m->y, &m->loss));
    TRY(kl_argmax_match(g, lg, m->y, &m->correct));
    TRY(kl_output(g, m->correct));
    TRY(kl_backward(g, m->loss));
    kl_optim_opts oo = {.kind = KL_OPTIM_ADAM, .lr = 0.05, .max_grad_norm = max_norm};
    TRY(kl_optim_new(m->ctx, &oo, &m->opt));
    TRY(kl_optim_step(g, m->opt, &m->norm));
    kl_tensor *ts[3] = {m->loss, m->correct, m->norm};
    return kl_readback_new(g, 3, ts, 4, &m->rb);
}

static void net_free(net *m)
{
    kl_graph_free(m->g);
    kl_optim_free(m->opt);
    kl_ctx_free(m->ctx);
}

static void net_data(float *x, int32_t *y)
{
    for (int i = 0; i < B * IN; i++) x[i] = frand();
    for (int i = 0; i < B; i++) y[i] = (x[i * IN] > 0) + (x[i * IN + 1] > 0);
}

static void test_training_readback(void)
{
    net m;
    CHECK_OK(net_build(&m, 0.5, 0));
    float x[B * IN];
    int32_t y[B];
    net_data(x, y);
    CHECK_OK(kl_tensor_set(m.x, x, sizeof x));
    CHECK_OK(kl_tensor_set(m.y, y, sizeof y));
    double v[3], first_loss = 0;
    int ready;
    CHECK_OK(kl_readback_pop(m.rb, 0, v, &ready));
    CHECK(ready == 0); /* nothing ran yet */
    for (int step = 0; step < 4; step++) CHECK_OK(kl_graph_run(m.g));
    CHECK(kl_readback_pending(m.rb) == 4);
    CHECK_ERR(kl_graph_run(m.g), KL_EMISUSE, "holds 4 records nobody popped");
    for (int step = 0; step < 4; step++) {
        CHECK_OK(kl_readback_pop(m.rb, step % 2, v, &ready));
        CHECK(ready == 1);
        if (step == 0) first_loss = v[0];
        CHECK(v[0] > 0 && isfinite(v[0]));
        CHECK(v[1] >= 0 && v[1] <= B && v[1] == floor(v[1]));
        CHECK(v[2] > 0); /* clipping on: the norm is computed */
    }
    CHECK(v[0] < first_loss); /* it learns */
    /* the record matches what the tensors say after the same run */
    CHECK_OK(kl_graph_run(m.g));
    float l;
    int32_t c;
    double n;
    CHECK_OK(kl_tensor_get(m.loss, &l, sizeof l));
    CHECK_OK(kl_tensor_get(m.correct, &c, sizeof c));
    CHECK_OK(kl_tensor_get(m.norm, &n, sizeof n));
    CHECK_OK(kl_readback_pop(m.rb, 0, v, &ready));
    CHECK(ready && v[0] == l && v[1] == c && v[2] == n && n == kl_optim_last_grad_norm(m.opt));
    CHECK(kl_graph_captured(m.g) == 0); /* the CPU has no graphs to capture */
    CHECK_OK(kl_graph_set_capture(m.g, 0));

    /* the guard: a NaN weight makes the loss NaN; nothing changes, the optimizer halts */
    int np = kl_ctx_param_count(m.ctx);
    float before[HID * IN], after[HID * IN], w2[OUT * HID], w2nan[OUT * HID];
    CHECK_OK(kl_ctx_param_get(m.ctx, 0, before, sizeof before));
    CHECK_OK(kl_ctx_param_get(m.ctx, 1, w2, sizeof w2));
    memcpy(w2nan, w2, sizeof w2);
    w2nan[0] = NAN;
    CHECK_OK(kl_ctx_param_set(m.ctx, 1, w2nan, sizeof w2nan));
    CHECK_OK(kl_graph_run(m.g));
    CHECK_OK(kl_readback_pop(m.rb, 1, v, &ready));
    CHECK(ready && isnan(v[0]) && kl_optim_halted(m.opt) == 1);
    CHECK_OK(kl_ctx_param_set(m.ctx, 1, w2, sizeof w2)); /* finite again: still halted */
    CHECK_OK(kl_graph_run(m.g));
    CHECK_OK(kl_readback_pop(m.rb, 1, v, &ready));
    CHECK(ready && isfinite(v[0]));
    CHECK_OK(kl_ctx_param_get(m.ctx, 0, after, sizeof after));
    CHECK(!memcmp(before, after, sizeof before) && np == 2);
    CHECK_OK(kl_optim_clear_halt(m.opt));
    CHECK(kl_optim_halted(m.opt) == 0);
    CHECK_OK(kl_graph_run(m.g));
    CHECK_OK(kl_ctx_param_get(m.ctx, 0, after, sizeof after));
    CHECK(memcmp(before, after, sizeof before) != 0);
    net_free(&m);
}

/* ---- a NaN input behind linear+ReLU, no clipping (no norm computed): the
 * ReLU keeps the NaN, so the loss is NaN and the guard halts before w1
 * takes a NaN gradient (a ReLU zeroing NaN left the loss finite) ---- */
static void test_nan_input_halts(void)
{
    net m;
    CHECK_OK(net_build(&m, 0, 0));
    float x[B * IN], before[HID * IN], after[HID * IN];
    int32_t y[B];
    net_data(x, y);
    x[3] = NAN;
    CHECK_OK(kl_ctx_param_get(m.ctx, 0, before, sizeof before));
    CHECK_OK(kl_tensor_set(m.x, x, sizeof x));
    CHECK_OK(kl_tensor_set(m.y, y, sizeof y));
    CHECK_OK(kl_graph_run(m.g));
    float l;
    CHECK_OK(kl_tensor_get(m.loss, &l, sizeof l));
    CHECK(isnan(l) && kl_optim_halted(m.opt) == 1);
    CHECK_OK(kl_ctx_param_get(m.ctx, 0, after, sizeof after));
    CHECK(!memcmp(before, after, sizeof before));
    net_free(&m);
}

/* ---- kl_optim_free before the graph using it (and kl_ctx_free before
 * both): both stay until the graph goes; it runs and updates meanwhile
 * (ASan builds see a use after free or a leak otherwise) ---- */
static void test_free_order(void)
{
    net m;
    CHECK_OK(net_build(&m, 1.0, 0));
    float x[B * IN], w0[HID * IN], w1[HID * IN];
    int32_t y[B];
    net_data(x, y);
    CHECK_OK(kl_tensor_set(m.x, x, sizeof x));
    CHECK_OK(kl_tensor_set(m.y, y, sizeof y));
    CHECK_OK(kl_ctx_param_get(m.ctx, 0, w0, sizeof w0));
    kl_optim_free(m.opt);
    CHECK_OK(kl_graph_run(m.g));
    CHECK_OK(kl_ctx_param_get(m.ctx, 0, w1, sizeof w1));
    CHECK(memcmp(w0, w1, sizeof w0) != 0); /* the update ran */
    kl_ctx_free(m.ctx);
    CHECK_OK(kl_graph_run(m.g));
    float l;
    CHECK_OK(kl_tensor_get(m.loss, &l, sizeof l));
    CHECK(isfinite(l));
    kl_graph_free(m.g);
}

/* ---- per-run values: dropout's mask follows the run counter ---- */
static void test_run_values(void)
{
    net a, b;
    CHECK_OK(net_build(&a, 0, 0.5));
    CHECK_OK(net_build(&b, 0, 0.5));
    float x[B * IN];
    int32_t y[B];
    net_data(x, y);
    double va[3], vb[3];
    int ra, rb;
    for (int k = 0; k < 2; k++) {
        CHECK_OK(kl_tensor_set(k ? b.x : a.x, x, sizeof x));
        CHECK_OK(kl_tensor_set(k ? b.y : a.y, y, sizeof y));
    }
    /* b skips run 0: its run 1 draws a's run-1 mask only after a ran twice */
    CHECK_OK(kl_graph_run(a.g));
    CHECK_OK(kl_readback_pop(a.rb, 1, va, &ra));
    CHECK_OK(kl_graph_set_runs(b.g, 1));
    CHECK_OK(kl_graph_run(b.g));
    CHECK_OK(kl_readback_pop(b.rb, 1, vb, &rb));
    CHECK(ra && rb && va[0] != vb[0]); /* different masks, same parameters: different losses */
    net_free(&a);
    net_free(&b);
    CHECK_OK(net_build(&a, 0, 0.5));
    CHECK_OK(net_build(&b, 0, 0.5));
    for (int k = 0; k < 2; k++) {
        CHECK_OK(kl_tensor_set(k ? b.x : a.x, x, sizeof x));
        CHECK_OK(kl_tensor_set(k ? b.y : a.y, y, sizeof y));
    }
    CHECK_OK(kl_graph_set_runs(a.g, 5));
    CHECK_OK(kl_graph_set_runs(b.g, 5));
    CHECK_OK(kl_graph_run(a.g));
    CHECK_OK(kl_graph_run(b.g));
    CHECK_OK(kl_readback_pop(a.rb, 1, va, &ra));
    CHECK_OK(kl_readback_pop(b.rb, 1, vb, &rb));
    CHECK(ra && rb && va[0] == vb[0]); /* the same run number: the same mask */
    net_free(&a);
    net_free(&b);
}

static void test_readback_errors(void)
{
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *x;
    kl_readback *rb;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "x", KL_F32, 1, (int64_t[]){2}, &x));
    CHECK_ERR(kl_readback_new(g, 1, &x, 8, &rb), KL_EINVAL, "only single values can be read back");
    CHECK_ERR(kl_readback_new(g, 0, &x, 8, &rb), KL_EINVAL, "between 1 and 8");
    CHECK_ERR(kl_readback_new(g, 1, &x, 0, &rb), KL_EINVAL, "capacity 0");
    CHECK(rb == NULL);
    kl_graph_free(g);
    kl_ctx_free(ctx);
}

/* ---- streamed data: the shared case against the host, then misuse ---- */
static void test_stream(void)
{
    enum { S = 40 };
    double loss[S], corr[S], el[S], ec[S];
    CHECK_OK(stream_case_run((kl_device){KL_DEVICE_CPU, 0}, S, loss, corr));
    stream_case_expect(S, el, ec);
    for (int k = 0; k < S; k++) CHECK(fabs(loss[k] - el[k]) <= 1e-5 * fabs(el[k]) + 1e-6 && corr[k] == ec[k]);

    float xs[12 * 2];
    int32_t ys[12] = {0}, at;
    for (int i = 0; i < 24; i++) xs[i] = frand();
    kl_ctx *ctx;
    kl_dataset *ds;
    kl_device_data *dd, *res;
    kl_graph *g;
    kl_tensor *st, *x, *y;
    const float *hx;
    const int32_t *hy;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_dataset_from_memory(12, 1, (int64_t[]){2}, xs, ys, &ds));
    CHECK_ERR(kl_device_data_stream_new(ctx, ds, 4, 1, &dd), KL_EINVAL, "1 slots of 4 rows; 2 to 64 slots");
    CHECK_ERR(kl_device_data_stream_new(ctx, ds, 0, 2, &dd), KL_EINVAL, "2 slots of 0 rows");
    /* rows * slots used to overflow (2^62 * 4 wrapped to 0 and was accepted) */
    CHECK_ERR(kl_device_data_stream_new(ctx, ds, (int64_t)1 << 62, 4, &dd), KL_EINVAL, "4 slots of 4611686018427387904 rows");
    CHECK_ERR(kl_device_data_stream_new(ctx, ds, INT32_MAX / 2 + 1, 2, &dd), KL_EINVAL, "2 slots of 1073741824 rows");
    CHECK(dd == NULL);
    kl_dataset *wide; /* no samples, so nothing checked its sample size against many rows */
    CHECK_OK(kl_dataset_from_memory(0, 2, (int64_t[]){(int64_t)1 << 31, (int64_t)1 << 31}, NULL, ys, &wide));
    CHECK_ERR(kl_device_data_stream_new(ctx, wide, 1 << 20, 2, &dd), KL_ENOMEM, "do not fit in memory");
    kl_dataset_free(wide);
    CHECK_OK(kl_device_data_stream_new(ctx, ds, 4, 2, &dd));
    CHECK(kl_device_data_streamed(dd) && kl_device_data_count(dd) == 8);
    CHECK_ERR(kl_device_data_order(dd, 1, 1, 0), KL_EMISUSE, "streamed data is read in the order put");
    CHECK_ERR(kl_device_data_put(dd, xs, ys, 5, &at), KL_EINVAL, "5 rows into slots of 4");
    CHECK_OK(kl_device_data_put(dd, xs, ys, 3, &at));
    CHECK(at == 0);
    CHECK_OK(kl_device_data_put(dd, xs + 6, ys, 4, &at));
    CHECK(at == 4);
    CHECK_OK(kl_device_data_slot_host(dd, 4, &hx, &hy));
    CHECK(!memcmp(hx, xs + 6, 4 * 2 * sizeof *hx));
    CHECK_ERR(kl_device_data_slot_host(dd, 2, &hx, &hy), KL_EINVAL, "2 is not a slot's start");
    CHECK_OK(kl_device_data_put(dd, xs + 8, ys, 1, &at));
    CHECK(at == 0); /* round robin */
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_ERR(kl_device_data_batch(g, dd, 5, &st, &x, &y), KL_EINVAL, "5 rows from streamed slots of 4");
    kl_graph_free(g);
    CHECK_OK(kl_device_data_new(ctx, ds, &res));
    CHECK(!kl_device_data_streamed(res) && kl_device_data_count(res) == 12);
    CHECK_ERR(kl_device_data_put(res, xs, ys, 1, &at), KL_EMISUSE, "the data is not streamed");
    CHECK_ERR(kl_device_data_slot_host(res, 0, &hx, &hy), KL_EINVAL, "0 is not a slot's start");
    kl_device_data_free(res);
    kl_device_data_free(dd);
    kl_dataset_free(ds);
    kl_ctx_free(ctx);
}

/* ---- a run leaves the calling program's OpenMP thread count as it was;
 * kl_ctx_free before kl_graph_free is safe ---- */
static void test_host_threads(void)
{
    kl_ctx *ctx;
    kl_graph *g;
    kl_tensor *x, *y;
    CHECK_OK(kl_ctx_new(NULL, &ctx));
    CHECK_OK(kl_ctx_set_threads(ctx, 1));
    CHECK_OK(kl_graph_new(ctx, &g));
    CHECK_OK(kl_input(g, "x", KL_F32, 2, (int64_t[]){64, 64}, &x));
    CHECK_OK(kl_matmul(g, x, x, &y));
    CHECK_OK(kl_output(g, y));
    float v[64 * 64];
    for (int i = 0; i < 64 * 64; i++) v[i] = frand();
    CHECK_OK(kl_tensor_set(x, v, sizeof v));
    omp_set_num_threads(3);
    CHECK_OK(kl_graph_run(g));
    CHECK(omp_get_max_threads() == 3);
    int team = 0;
#pragma omp parallel
    {
#pragma omp single
        team = omp_get_num_threads();
    }
    CHECK(team == 3);
    /* freed out of order: the ctx stays until its last graph goes (ASan
     * builds see a use after free or a leak otherwise) */
    kl_ctx_free(ctx);
    CHECK_OK(kl_graph_run(g));
    float w[64 * 64];
    CHECK_OK(kl_tensor_get(y, w, sizeof w));
    kl_graph_free(g);
}

int main(void)
{
    test_host_threads();
    test_gather();
    test_argmax_match();
    test_training_readback();
    test_nan_input_halts();
    test_free_order();
    test_run_values();
    test_readback_errors();
    test_stream();
    return kl_test_done("test_runtime");
}
