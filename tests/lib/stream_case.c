#include "stream_case.h"
#include "testutil.h"

#include <math.h>
#include <string.h>

enum { N = 37, C = 5, ROWS = 8, SLOTS = 3, SHORT = 5 };

static void make_data(float *xs, int32_t *ys)
{
    for (int i = 0; i < N; i++) {
        for (int c = 0; c < C; c++) xs[i * C + c] = (float)(2.0 * sin(0.7 * i + 1.3 * c));
        ys[i] = (i * 7 + 3) % C;
    }
}

/* Step k's batch: samples (k * 11 + r) % N for its rows. */
static int batch_rows(int k) { return k % 4 == 3 ? SHORT : ROWS; }
static void batch_fill(const float *xs, const int32_t *ys, int k, float *x, int32_t *y)
{
    for (int r = 0; r < batch_rows(k); r++) {
        int i = (k * 11 + r) % N;
        memcpy(x + r * C, xs + i * C, C * sizeof *x);
        y[r] = ys[i];
    }
}

static kl_status build(kl_graph *g, kl_device_data *dd, int64_t rows, kl_tensor **start, kl_readback **rb)
{
    kl_tensor *x, *y, *loss, *correct;
    TRY(kl_device_data_batch(g, dd, rows, start, &x, &y));
    TRY(kl_softmax_cross_entropy(g, x, y, &loss));
    TRY(kl_argmax_match(g, x, y, &correct));
    kl_tensor *rec[2] = {loss, correct};
    TRY(kl_readback_new(g, 2, rec, STREAM_CASE_MAX_STEPS, rb));
    return kl_graph_plan(g, NULL);
}

/* Issues every step, then reads the records (graph i's in the order issued). */
static kl_status run(kl_ctx *ctx, const kl_dataset *ds, kl_device_data *dd, kl_graph **g, int steps, double *loss,
                     double *correct)
{
    kl_tensor *start[2];
    kl_readback *rb[2];
    const float *xs = kl_dataset_features(ds);
    const int32_t *ys = kl_dataset_labels(ds);
    for (int i = 0; i < 2; i++) {
        TRY(kl_graph_new(ctx, &g[i]));
        TRY(build(g[i], dd, i ? SHORT : ROWS, &start[i], &rb[i]));
    }
    for (int k = 0; k < steps; k++) {
        float x[ROWS * C];
        int32_t y[ROWS], at;
        int i = batch_rows(k) == SHORT;
        batch_fill(xs, ys, k, x, y);
        TRY(kl_device_data_put(dd, x, y, batch_rows(k), &at));
        memset(x, 0, sizeof x); /* the put copied them */
        TRY(kl_tensor_set(start[i], &at, sizeof at));
        TRY(kl_graph_run(g[i]));
    }
    for (int k = 0; k < steps; k++) {
        double v[2];
        int ready;
        TRY(kl_readback_pop(rb[batch_rows(k) == SHORT], 1, v, &ready));
        if (!ready) return KL_EINTERNAL;
        loss[k] = v[0];
        correct[k] = v[1];
    }
    return KL_OK;
}

kl_status stream_case_run(kl_device dev, int steps, double *loss, double *correct)
{
    float xs[N * C];
    int32_t ys[N];
    make_data(xs, ys);
    if (steps > STREAM_CASE_MAX_STEPS) steps = STREAM_CASE_MAX_STEPS;
    kl_ctx_opts co = {.device = dev};
    kl_ctx *ctx = NULL;
    kl_dataset *ds = NULL;
    kl_device_data *dd = NULL;
    kl_graph *g[2] = {NULL, NULL};
    kl_status s = kl_ctx_new(&co, &ctx);
    if (s == KL_OK) s = kl_dataset_from_memory(N, 1, (int64_t[]){C}, xs, ys, &ds);
    if (s == KL_OK) s = kl_device_data_stream_new(ctx, ds, ROWS, SLOTS, &dd);
    if (s == KL_OK) s = run(ctx, ds, dd, g, steps, loss, correct);
    kl_graph_free(g[0]);
    kl_graph_free(g[1]);
    kl_device_data_free(dd);
    kl_dataset_free(ds);
    kl_ctx_free(ctx);
    return s;
}

void stream_case_expect(int steps, double *loss, double *correct)
{
    float xs[N * C], x[ROWS * C];
    int32_t ys[N], y[ROWS];
    make_data(xs, ys);
    for (int k = 0; k < steps && k < STREAM_CASE_MAX_STEPS; k++) {
        int n = batch_rows(k);
        batch_fill(xs, ys, k, x, y);
        loss[k] = correct[k] = 0;
        for (int r = 0; r < n; r++) {
            const float *z = x + r * C;
            int best = 0;
            double m = z[0], sum = 0;
            for (int c = 1; c < C; c++) {
                if (z[c] > z[best]) best = c;
                if (z[c] > m) m = z[c];
            }
            for (int c = 0; c < C; c++) sum += exp((double)z[c] - m);
            loss[k] += (m + log(sum) - (double)z[y[r]]) / n;
            correct[k] += best == y[r];
        }
    }
}
