/* Step graphs and whole-dataset evaluation. */
#include "cli/evaluator.h"
#include "core/error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* An image/tabular model's input dims at batch: [batch, sample dims]; returns their count. */
static int batch_dims(const kl_model *m, int64_t batch, int64_t *xd)
{
    int nd = kl_model_input_ndim(m);
    xd[0] = batch;
    memcpy(xd + 1, kl_model_input_shape(m), (size_t)nd * sizeof *xd);
    return nd + 1;
}

/* A token model's step: x, y i32 [B, T]; loss over the B*T positions. */
static kl_status build_lm(step_graph *sg, kl_model *m, kl_optim *opt, int64_t batch)
{
    int64_t T = kl_model_tokens(m), V = kl_model_outputs(m), xd[2] = {batch, T}, flat[2] = {batch * T, V};
    kl_tensor *logits, *y;
    sg->rows = batch * T;
    KL_TRY(kl_input(sg->g, "x", KL_I32, 2, xd, &sg->x));
    KL_TRY(kl_input(sg->g, "y", KL_I32, 2, xd, &sg->y));
    KL_TRY(kl_model_forward(m, sg->g, sg->x, opt != NULL, &logits));
    KL_TRY(kl_reshape(sg->g, logits, 2, flat, &logits));
    KL_TRY(kl_reshape(sg->g, sg->y, 1, &sg->rows, &y));
    KL_TRY(kl_softmax_cross_entropy(sg->g, logits, y, &sg->loss));
    return kl_output(sg->g, sg->loss);
}

kl_status step_graph_build(step_graph *sg, kl_model *m, kl_ctx *ctx, kl_optim *opt, int64_t batch)
{
    return step_graph_build_opts(sg, m, ctx, opt, batch, NULL);
}

kl_status step_graph_build_opts(step_graph *sg, kl_model *m, kl_ctx *ctx, kl_optim *opt, int64_t batch,
                                const kl_plan_opts *popts)
{
    if (kl_model_tokens(m)) {
        sg->batch = batch;
        KL_TRY(kl_graph_new(ctx, &sg->g));
        KL_TRY(build_lm(sg, m, opt, batch));
        if (opt) {
            KL_TRY(kl_optim_minimize(sg->g, opt, sg->loss, NULL));
        }
        return kl_graph_plan(sg->g, popts);
    }
    int64_t xd[KL_MAX_DIMS];
    int nd = batch_dims(m, batch, xd);
    sg->batch = batch;
    sg->rows = batch;
    KL_TRY(kl_graph_new(ctx, &sg->g));
    KL_TRY(kl_input(sg->g, "x", KL_F32, nd, xd, &sg->x));
    KL_TRY(kl_input(sg->g, "y", KL_I32, 1, &batch, &sg->y));
    KL_TRY(kl_model_forward(m, sg->g, sg->x, opt != NULL, &sg->logits));
    KL_TRY(kl_output(sg->g, sg->logits));
    KL_TRY(kl_softmax_cross_entropy(sg->g, sg->logits, sg->y, &sg->loss));
    KL_TRY(kl_output(sg->g, sg->loss));
    if (opt) {
        KL_TRY(kl_optim_minimize(sg->g, opt, sg->loss, NULL));
    }
    return kl_graph_plan(sg->g, popts);
}

kl_status step_graph_build_train(step_graph *sg, kl_model *m, kl_ctx *ctx, kl_optim *opt, int64_t batch,
                                 kl_device_data *dd, int ring)
{
    int64_t xd[KL_MAX_DIMS];
    int nd = batch_dims(m, batch, xd);
    sg->batch = batch;
    sg->rows = batch;
    KL_TRY(kl_graph_new(ctx, &sg->g));
    kl_graph *g = sg->g;
    if (dd) {
        KL_TRY(kl_device_data_batch(g, dd, batch, &sg->start, &sg->x, &sg->y));
    } else {
        KL_TRY(kl_input(g, "x", KL_F32, nd, xd, &sg->x));
        KL_TRY(kl_input(g, "y", KL_I32, 1, &batch, &sg->y));
    }
    kl_tensor *rec[3];
    KL_TRY(kl_model_forward(m, g, sg->x, opt != NULL, &sg->logits));
    KL_TRY(kl_softmax_cross_entropy(g, sg->logits, sg->y, &sg->loss));
    rec[0] = sg->loss;
    KL_TRY(kl_argmax_match(g, sg->logits, sg->y, &rec[1]));
    if (opt) {
        KL_TRY(kl_optim_minimize(g, opt, sg->loss, &rec[2]));
    }
    KL_TRY(kl_readback_new(g, opt ? 3 : 2, rec, ring, &sg->rb));
    return kl_graph_plan(g, NULL);
}

/* A token model's batch: the loss only. */
static kl_status run_lm(step_graph *sg, const void *x, const int32_t *y, double *loss_sum)
{
    float l;
    KL_TRY(kl_tensor_set(sg->x, x, (size_t)sg->rows * sizeof(int32_t)));
    KL_TRY(kl_tensor_set(sg->y, y, (size_t)sg->rows * sizeof(int32_t)));
    KL_TRY(kl_graph_run(sg->g));
    KL_TRY(kl_tensor_get(sg->loss, &l, sizeof l));
    *loss_sum += (double)l * (double)sg->rows;
    if (!isfinite(l))
        return kl_fail(KL_ENUMERIC, "loss is %g: training diverged (try a lower learning rate or clip.max_norm)", l);
    return KL_OK;
}

kl_status step_graph_run(step_graph *sg, const kl_model *m, const void *x, const int32_t *y, double *loss_sum,
                         int64_t *correct, int64_t *confusion, float *logits_out)
{
    if (!sg->logits) return run_lm(sg, x, y, loss_sum);
    int64_t b = sg->batch, C = kl_model_outputs(m), ss = kl_tensor_numel(sg->x) / b;
    KL_TRY(kl_tensor_set(sg->x, x, (size_t)(b * ss) * sizeof(float)));
    KL_TRY(kl_tensor_set(sg->y, y, (size_t)b * sizeof(int32_t)));
    KL_TRY(kl_graph_run(sg->g));
    float l, *lg = logits_out ? logits_out : malloc((size_t)(b * C) * sizeof *lg);
    if (!lg) return kl_fail(KL_ENOMEM, "out of memory reading logits");
    kl_status s = kl_tensor_get(sg->loss, &l, sizeof l);
    if (s == KL_OK) s = kl_tensor_get(sg->logits, lg, (size_t)(b * C) * sizeof *lg);
    for (int64_t i = 0; s == KL_OK && i < b; i++) {
        int64_t best = 0;
        for (int64_t c = 1; c < C; c++)
            if (lg[i * C + c] > lg[i * C + best]) best = c;
        *correct += best == y[i];
        if (confusion) confusion[y[i] * C + best]++;
    }
    if (!logits_out) free(lg);
    if (s == KL_OK && !isfinite(l))
        s = kl_fail(KL_ENUMERIC, "loss is %g: training diverged (try a lower learning rate or clip.max_norm)", l);
    *loss_sum += (double)l * (double)b;
    return s;
}

void step_graph_free(step_graph *sg)
{
    kl_graph_free(sg->g);
    memset(sg, 0, sizeof *sg);
}

kl_status evaluator_run(evaluator *e, const kl_dataset *ds, double *loss, double *acc, int64_t *confusion)
{
    int64_t n = kl_dataset_count(ds), ss = kl_dataset_sample_size(ds), B = e->batch, correct = 0;
    double sum = 0;
    const float *x = kl_dataset_features(ds);
    const int32_t *y = kl_dataset_labels(ds);
    /* two evaluation arenas at a time, as the memory plan counts (a set on
     * the device and one on the host would otherwise keep four) */
    step_graph_free(&e->dfull);
    step_graph_free(&e->drest);
    e->on = NULL;
    for (int64_t at = 0; at < n;) {
        int64_t b = n - at < B ? n - at : B;
        step_graph *sg = b == B ? &e->full : &e->rest;
        if (sg->g && sg->batch != b) step_graph_free(sg);
        if (!sg->g) KL_TRY(step_graph_build(sg, e->model, e->ctx, NULL, b));
        KL_TRY(step_graph_run(sg, e->model, x + at * ss, y + at, &sum, &correct, confusion, NULL));
        at += b;
    }
    *loss = n ? sum / (double)n : 0;
    *acc = n ? (double)correct / (double)n : 0;
    return KL_OK;
}

/* Adds the records that have arrived on sg's ring (waiting for all when
 * all, else for the oldest while more than EVAL_DEPTH are out). */
static kl_status collect(step_graph *sg, int all, double *sum, int64_t *correct)
{
    for (;;) {
        int pending = sg->rb ? kl_readback_pending(sg->rb) : 0, ready;
        if (!pending) return KL_OK;
        double v[2];
        KL_TRY(kl_readback_pop(sg->rb, all || pending > EVAL_DEPTH, v, &ready));
        if (!ready) return KL_OK;
        if (!isfinite(v[0]))
            return kl_fail(KL_ENUMERIC, "loss is %g: training diverged (try a lower learning rate or clip.max_norm)", v[0]);
        *sum += v[0] * (double)sg->rows;
        *correct += (int64_t)v[1];
    }
}

kl_status evaluator_run_device(evaluator *e, kl_device_data *dd, double *loss, double *acc)
{
    if (kl_device_data_streamed(dd)) return kl_fail(KL_EMISUSE, "evaluator_run_device: streamed data");
    if (e->on != dd) {
        step_graph_free(&e->dfull);
        step_graph_free(&e->drest);
        e->on = dd;
    }
    step_graph_free(&e->full); /* the host path's, as above */
    step_graph_free(&e->rest);
    int64_t n = kl_device_data_count(dd), B = e->batch, correct = 0;
    double sum = 0;
    for (int64_t at = 0; at < n;) {
        int64_t b = n - at < B ? n - at : B;
        step_graph *sg = b == B ? &e->dfull : &e->drest;
        if (sg->g && sg->batch != b) step_graph_free(sg);
        if (!sg->g) KL_TRY(step_graph_build_train(sg, e->model, e->ctx, NULL, b, dd, EVAL_RING));
        int32_t a32 = (int32_t)at;
        KL_TRY(kl_tensor_set(sg->start, &a32, sizeof a32));
        KL_TRY(kl_graph_run(sg->g));
        KL_TRY(collect(sg, 0, &sum, &correct));
        at += b;
    }
    KL_TRY(collect(&e->dfull, 1, &sum, &correct));
    KL_TRY(collect(&e->drest, 1, &sum, &correct));
    *loss = n ? sum / (double)n : 0;
    *acc = n ? (double)correct / (double)n : 0;
    return KL_OK;
}

void evaluator_free(evaluator *e)
{
    step_graph_free(&e->full);
    step_graph_free(&e->rest);
    step_graph_free(&e->dfull);
    step_graph_free(&e->drest);
}
