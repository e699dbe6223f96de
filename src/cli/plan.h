/* Memory planning for training: what one training step of a model needs
 * (parameters, buffers, gradients, optimizer state, and the activation
 * arena from the step graph's memory plan), and the largest batch that fits
 * a limit. Used by `kiln plan` and by `kiln train --mem-limit`. */
#ifndef KL_CLI_PLAN_H
#define KL_CLI_PLAN_H

#include <stdio.h>
#include "kiln/kiln.h"
#include "nn/model.h"

typedef struct mem_plan {
    int64_t batch;
    size_t params, buffers, grads, optim, arena, arena_no_reuse;
    /* the run's other graphs, each its own arena, at most: the last partial
     * batch's step (<= arena; unless the planner's partial_step is 0) and
     * evaluation at the batch and at its last partial batch (2 x
     * eval_arena, forward only; a language model's validation: 1 x); they are built as the run meets them (the
     * first epoch's end), so they count from the start */
    size_t eval_arena, other;
    int evals;    /* evaluation graphs counted in other: 2, or 1 for a language model (whole windows) */
    size_t total; /* all of the above */
    int nodes;
    int64_t param_count;
} mem_plan;

/* A context and optimizer in which step graphs are built, at any batch. */
typedef struct planner {
    kl_model *model;
    kl_ctx *ctx;
    kl_optim *opt;
    kl_optim_opts oo;
    int partial_step; /* 1 (planner_init): a last partial batch gets its own step graph (data.drop_last false) */
} planner;

/* threads as kiln train uses them (0: all cores / $KILN_THREADS), since
 * conv scratch space depends on them; dev the device planned for (kernels'
 * scratch space depends on it too). Plans are measured, not allocated. The
 * model stays the caller's. */
kl_status planner_init(planner *p, kl_model *m, const kl_optim_opts *oo, int threads, kl_device dev);
void planner_free(planner *p);
/* Builds and plans the training step at batch (then frees the graph). */
kl_status planner_at(planner *p, int64_t batch, mem_plan *out);
/* The largest batch in [1, max_batch] whose total is <= limit (0 if even
 * batch 1 does not fit), found by building graphs at a few batch sizes
 * (the arena grows about linearly with the batch, with dips where its
 * packing comes out better: a few sizes past the bisection's are tried).
 * at_best gets its plan (batch 1's when none fits). */
kl_status planner_max_batch(planner *p, size_t limit, int64_t max_batch, int64_t *best, mem_plan *at_best);

/* Optimizer state as a multiple of the parameters: Adam/AdamW 2, SGD with
 * momentum 1, plain SGD 0. */
int optim_state_factor(const kl_optim_opts *oo);

/* "123", "512K", "1.5G", "2GB", "2GiB" (binary units) -> bytes. KL_EINVAL
 * naming what (e.g. "--mem-limit") and the text otherwise. */
kl_status parse_size(const char *what, const char *s, size_t *out);
/* MemAvailable from /proc/meminfo. KL_EIO when unreadable. */
kl_status mem_available(size_t *out);
/* What a training step may use on dev: MemAvailable on the CPU; on a GPU
 * its free memory less PLAN_GPU_RESERVE. desc (n bytes) says which. */
#define PLAN_GPU_RESERVE ((size_t)96 << 20) /* cuBLASLt workspace, reduction scratch, the training set's order, margin */
kl_status device_mem_limit(kl_device dev, size_t *limit, char *desc, size_t n);
/* "1.50 GiB" style, into buf. */
const char *fmt_bytes(char *buf, size_t cap, double bytes);

/* The figures, one per line, each with its exact byte count. */
void mem_plan_print(FILE *f, const mem_plan *p, const kl_optim_opts *oo);

/* What the check found: the step's total and the limit (known 0 where
 * nothing was checked: the CPU without --mem-limit). */
typedef struct plan_budget {
    int known;
    size_t step, limit; /* step: mem_plan.total (the step, its state and the run's other graphs) */
} plan_budget;
/* kiln train's check (plan.c): with --mem-limit, or on a GPU (against its
 * free memory), plans the step before any data is loaded and fails
 * (printing the figures and the largest batch that fits) when over. out
 * (may be NULL) gets the figures, so the caller can tell whether the
 * training set fits beside the step. */
kl_status plan_check_train(kl_model *m, const kl_optim_opts *oo, int threads, int64_t batch, int partial_step,
                           kl_device dev, plan_budget *out);

#define AUTO_BATCH_MAX 4096 /* --batch auto searches up to this */
/* kiln train --batch auto (plan.c): with g_monitor_flags.batch_auto, sets
 * *batch to the largest power of two (up to AUTO_BATCH_MAX) whose training
 * step fits --mem-limit (else device_mem_limit), writes it to cfg's train.batch
 * and prints the choice; otherwise does nothing. Fails when not even batch
 * 1 fits. */
kl_status plan_auto_batch(kl_model *m, const kl_optim_opts *oo, int threads, int partial_step, kl_cfg *cfg,
                          int64_t *batch, kl_device dev);

/* kiln train's context: the device (--device, train_pick_device), --batch
 * auto, the memory check (budget may be NULL; partial_step: a last partial
 * batch may get its own step graph), the ctx; prints the "device: ..." line. */
kl_status plan_open_ctx(const char *device_arg, kl_model *m, const kl_optim_opts *oo, int threads, int partial_step,
                        uint64_t seed,
                        kl_cfg *cfg, int64_t *batch, plan_budget *budget, kl_ctx **out);

#endif
