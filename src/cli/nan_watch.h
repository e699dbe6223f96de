/* NaN watch for the training loop: when a step's loss (or, with clipping
 * on, its gradient norm) is NaN/Inf, the optimizer's non-finite guard has
 * kept the parameters of before that step (also when later steps already
 * ran on a GPU: they updated nothing), and the step is re-run from them
 * with checks on, layer by
 * layer (a debug graph per model prefix whose output is kept), then the
 * gradients, and the first layer and op that produced a non-finite value
 * are named in the error, on stderr and as a {"type":"nan"} record.
 *
 * kiln has no per-op finiteness hook in the engine, so the check works at
 * layer granularity: a layer is one op (linear, conv2d, batchnorm, ...),
 * except that a linear's following activation is fused into it. */
#ifndef KL_CLI_NAN_WATCH_H
#define KL_CLI_NAN_WATCH_H

#include <stdio.h>
#include "kiln/kiln.h"
#include "io/config.h"
#include "nn/model.h"

typedef struct nan_watch {
    int off; /* train.nan_watch: false */
} nan_watch;

/* What the failing step had. */
typedef struct nan_step {
    kl_model *model;
    kl_ctx *ctx;
    kl_optim *opt;
    const kl_cfg *cfg; /* for the layers' config locations */
    const void *x; /* f32 samples, or i32 tokens for token models */
    const int32_t *y;
    int64_t batch, step;
    uint64_t runs;    /* the step graph's run number for that batch: the re-run draws its dropout masks */
    double grad_norm; /* the step's, from the optimizer (0: not computed) */
    FILE *metrics;
} nan_step;

/* After a step that returned s: s unless the loss was non-finite
 * (KL_ENUMERIC) or the gradient norm is; then the diagnosis, returned as
 * KL_ENUMERIC with the finding in the message. */
kl_status nan_watch_after(nan_watch *w, kl_status s, const nan_step *st);

/* After a validation or test pass (pass: "validation", "test") that
 * returned s following training step step: a non-finite loss (KL_ENUMERIC)
 * gets "<pass> after step <step>: " before its message and a
 * {"type":"nan","step":..,"trigger":"loss","phase":pass} record. Returns s. */
kl_status nan_watch_eval(kl_status s, const char *pass, int64_t step, FILE *metrics);

#endif
