/* Step graphs shared by training, evaluation and prediction: a model's
 * forward (and, for training, backward and update) at a fixed batch size.
 * Token models (kl_model_tokens > 0) take x, y i32 [B, T]; their loss is the
 * mean cross-entropy over all B*T positions (logits [B, T, V] viewed as
 * [B*T, V]) and their graphs keep no logits. */
#ifndef KL_CLI_EVALUATOR_H
#define KL_CLI_EVALUATOR_H

#include "kiln/data.h"
#include "nn/model.h"

typedef struct step_graph {
    kl_graph *g;
    kl_tensor *x, *y, *logits, *loss; /* logits NULL for token models */
    int64_t batch;
    int64_t rows; /* cross-entropy rows: batch, or batch * T for token models */
    /* training steps that never wait for the device (step_graph_build_train) */
    kl_tensor *start;   /* the batch's offset in the epoch (device data), else NULL: x, y are inputs */
    kl_readback *rb;    /* per step: loss, correct predictions, gradient norm */
} step_graph;

/* Builds and plans the graph; opt non-NULL adds backward and the update. */
kl_status step_graph_build(step_graph *sg, kl_model *m, kl_ctx *ctx, kl_optim *opt, int64_t batch);
/* The same, planned with popts (kiln plan measures without allocating). */
kl_status step_graph_build_opts(step_graph *sg, kl_model *m, kl_ctx *ctx, kl_optim *opt, int64_t batch,
                                const kl_plan_opts *popts);
/* A training step of an image/tabular model whose loss, correct count and
 * gradient norm come back through sg->rb (ring records) instead of waiting
 * for the device: the batch is gathered from dd at sg->start, or (dd NULL)
 * x and y are inputs to set before each run. opt NULL: an evaluation batch
 * (forward in inference mode; records of loss and correct count only). */
kl_status step_graph_build_train(step_graph *sg, kl_model *m, kl_ctx *ctx, kl_optim *opt, int64_t batch,
                                 kl_device_data *dd, int ring);
/* Runs one batch of sg->batch samples (x f32, or i32 tokens): adds loss *
 * sg->rows to *loss_sum, counts correct predictions, and (if confusion is
 * non-NULL) fills a C x C confusion matrix (true class rows). logits_out
 * (may be NULL) gets the logits. Token models: only the loss (correct,
 * confusion and logits_out are left alone). */
kl_status step_graph_run(step_graph *sg, const kl_model *m, const void *x, const int32_t *y, double *loss_sum,
                         int64_t *correct, int64_t *confusion, float *logits_out);
void step_graph_free(step_graph *sg);

typedef struct evaluator {
    kl_model *model;
    kl_ctx *ctx;
    int64_t batch;
    step_graph full, rest; /* batches of `batch` rows, and the last partial one */
    kl_device_data *on;    /* the data dfull and drest read */
    step_graph dfull, drest;
} evaluator;

/* Mean loss and accuracy of the model over ds (confusion as above). */
kl_status evaluator_run(evaluator *e, const kl_dataset *ds, double *loss, double *acc, int64_t *confusion);
/* The same over data kept in device memory (kl_device_data_new): batches
 * gathered on the device, losses and correct counts read back through
 * rings, so a GPU is waited for once per pass, not per batch (and captured
 * graphs replay). dd must outlive e's use of it (or e is run on other data
 * first, which frees the graphs reading dd). */
#define EVAL_RING 64
#define EVAL_DEPTH 32 /* batches in flight at most */
kl_status evaluator_run_device(evaluator *e, kl_device_data *dd, double *loss, double *acc);
void evaluator_free(evaluator *e);

#endif
