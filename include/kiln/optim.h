/* kiln optimizers: the update is an op of the training graph, run over the
 * ctx's flat parameter and gradient buffers, so a step is one graph.
 *
 *   kl_optim_opts o = {.kind = KL_OPTIM_ADAM, .lr = 1e-3};
 *   kl_optim *opt;  kl_optim_new(ctx, &o, &opt);
 *   kl_optim_scale_loss(g, opt, loss, &loss); // only with o.loss_scale
 *   kl_backward(g, loss);
 *   kl_optim_step(g, opt, NULL);  // records the update after the gradients
 *   for (...) { kl_tensor_set(x, ...); kl_graph_run(g); }
 *
 * Semantics follow PyTorch's torch.optim (SGD with dampening 0, Adam with
 * L2 weight decay added to the gradient, AdamW with decoupled decay).
 *
 * Non-finite guard: a run whose loss (or, with clipping, gradient norm) is
 * NaN or Inf does not update anything, and the optimizer halts: later runs
 * skip their updates too until kl_optim_clear_halt. So the parameters stay
 * those before the bad step, also on a GPU where the host learns of the
 * loss some steps later. A run that fails (a label or index out of range)
 * updates nothing either: its update counts as skipped, and with
 * accumulation its whole cycle is skipped (no halt).
 *
 * Loss scaling (f16 training): with loss_scale > 0 the backward pass starts
 * from the loss scale S instead of 1, so small f16 gradients do not flush
 * to zero, and the update divides S out again (the gradient norm, clipping
 * and the updates see unscaled gradients). With scale_window > 0 S is
 * dynamic, as in PyTorch's GradScaler: a run whose scaled gradients are not
 * finite skips its update and halves S (it does not halt), and after
 * scale_window updates in a row S doubles. All of it is decided on the
 * device, so captured graphs replay it. Skipped updates do not count in
 * Adam's t (its bias correction).
 */
#ifndef KILN_OPTIM_H
#define KILN_OPTIM_H

#include "kiln/graph.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct kl_optim kl_optim; /* caller-owned; belongs to one ctx */

typedef enum kl_optim_kind { KL_OPTIM_SGD = 0, KL_OPTIM_ADAM, KL_OPTIM_ADAMW, KL_OPTIM_KIND_COUNT } kl_optim_kind;

typedef struct kl_optim_opts {
    kl_optim_kind kind;
    double lr;
    double momentum;     /* SGD */
    int nesterov;        /* SGD; needs momentum > 0 */
    double weight_decay;
    /* nonzero: weight decay skips parameters of fewer than 2 dims (biases,
     * norm scales), as nanoGPT's optimizer groups do; 0: every parameter */
    int no_decay_1d;
    double beta1, beta2; /* Adam/AdamW; 0 means 0.9, 0.999 (unless exact) */
    double eps;          /* Adam/AdamW; 0 means 1e-8 (unless exact) */
    /* nonzero: a 0 in beta1, beta2 or eps is taken as 0 (beta1 = 0, Adam
     * without momentum, as GAN recipes use), not as its default;
     * kl_optim_defaults sets it */
    int exact;
    double max_grad_norm; /* > 0: scale gradients so their global L2 norm is at most this */
    /* Gradient accumulation: > 1, an update every `accumulate` runs with the
     * mean of their gradients (the runs between only add theirs to an
     * accumulator of the parameters' size); 0 or 1: every run updates. With
     * accumulation the gradient norm is always computed (the non-finite
     * guard needs it). */
    int accumulate;
    /* Loss scaling: > 0, the initial scale S, at most 2^64, which dynamic
     * scaling never doubles past (a power of two keeps the unscaling exact;
     * PyTorch starts at 65536); 0: none. The step graph
     * needs kl_optim_scale_loss. scale_window: > 0, dynamic (PyTorch: 2000);
     * 0, S stays and non-finite gradients halt as without scaling. With
     * scaling the gradient norm is always computed. */
    double loss_scale;
    int scale_window;
} kl_optim_opts;

/* kind's options with PyTorch's defaults filled in (betas 0.9, 0.999, eps
 * 1e-8; the rest 0) and exact set, to change field by field. */
KL_API kl_optim_opts kl_optim_defaults(kl_optim_kind kind, double lr);
/* Creates an optimizer for every trainable parameter of ctx (also ones
 * created later). Bad hyperparameters (out of range, NaN) are KL_EINVAL.
 * Adam's t (its bias correction) counts the optimizer's applied updates,
 * one count for all parameters: PyTorch counts per parameter, which
 * differs for a parameter first updated after others (created later, or
 * left out of the graphs' gradients until then). */
KL_API kl_status kl_optim_new(kl_ctx *ctx, const kl_optim_opts *opts, kl_optim **out);
/* NULL: no-op. Graphs that use it go first; one still alive keeps the
 * optimizer until it is freed. */
KL_API void kl_optim_free(kl_optim *opt);
/* Records the update of every parameter whose gradient g computes; call
 * after kl_backward. norm (may be NULL) gets an f64 scalar tensor holding
 * each run's global gradient norm before clipping (computed when
 * max_grad_norm > 0, else 0), to read back like any output. A graph has
 * one update: a second kl_optim_step on it is refused, as is an optimizer
 * other than the one whose kl_optim_scale_loss the backward starts from. */
KL_API kl_status kl_optim_step(kl_graph *g, kl_optim *opt, kl_tensor **norm);
/* *out = the tensor to call kl_backward on: loss itself without loss
 * scaling; else a node equal to loss whose gradient is the current scale S
 * (read at run time, so a captured graph follows S as it changes); loss
 * stays readable after runs either way (kl_output).
 * kl_optim_step refuses a scaling optimizer on a graph without it. Refused
 * after kl_backward and for a loss that is already scaled. */
KL_API kl_status kl_optim_scale_loss(kl_graph *g, kl_optim *opt, kl_tensor *loss, kl_tensor **out);
/* The three calls of a training step after the forward pass:
 * kl_optim_scale_loss, kl_backward and kl_optim_step (norm as there). */
KL_API kl_status kl_optim_minimize(kl_graph *g, kl_optim *opt, kl_tensor *loss, kl_tensor **norm);
/* The loss scaler's state (on a GPU as of the last synchronisation): the
 * scale S (1 without scaling), updates applied since S last changed, and
 * updating runs that applied nothing so far (overflow, halted). */
KL_API kl_status kl_optim_scaler(const kl_optim *opt, double *scale, int64_t *good, int64_t *skipped);
/* The factor the ctx's gradient buffer carries after the last run: the
 * loss scale that run's backward started from (1 without scaling); divide
 * what kl_ctx_grad_get reads by it. On a GPU as of the last synchronisation. */
KL_API double kl_optim_grad_scale(const kl_optim *opt);
/* Restores it (resuming); scale must be > 0, and an optimizer without
 * loss scaling keeps 1 (a scaled run may resume unscaled). */
KL_API kl_status kl_optim_set_scaler(kl_optim *opt, double scale, int64_t good, int64_t skipped);
/* The learning rate used by the next run (schedules set it per step). */
KL_API kl_status kl_optim_set_lr(kl_optim *opt, double lr);
KL_API double kl_optim_lr(const kl_optim *opt);
/* Optimizer steps so far (cycles of accumulation), skipped ones included:
 * Adam's t is this less kl_optim_scaler's skipped count. */
KL_API int64_t kl_optim_steps(const kl_optim *opt);
/* Global L2 norm of the gradients at the last update (before clipping); on
 * a GPU as of the last synchronisation (kl_tensor_get, a waiting pop). */
KL_API double kl_optim_last_grad_norm(const kl_optim *opt);
/* 1 once a non-finite loss or gradient norm stopped the updates (on a GPU
 * as of the last synchronisation); kl_optim_clear_halt lets them go on,
 * dropping a cycle of accumulation in progress (its runs added nothing
 * while halted). */
KL_API int kl_optim_halted(const kl_optim *opt);
KL_API kl_status kl_optim_clear_halt(kl_optim *opt);
/* Sets the update count (resuming); a cycle of accumulation in progress
 * is dropped. */
KL_API kl_status kl_optim_set_steps(kl_optim *opt, int64_t steps);
/* Accumulation: the next run updates with the mean gradient of its cycle
 * so far, however few runs it holds (the last batches of an epoch). */
KL_API kl_status kl_optim_end_cycle(kl_optim *opt);
/* Accumulation: the weight of the following runs' gradients in their
 * cycle's mean (default 1; it stays until set again). Give a run its rows
 * over a full batch's so that a cycle with a partial batch averages over
 * samples, as its loss does; without accumulation it has no effect. */
KL_API kl_status kl_optim_set_run_weight(kl_optim *opt, double w);
/* Runs accumulated since the last update (0 at a cycle's boundary, where a
 * checkpoint should be taken: the accumulator is not part of the state). */
KL_API int64_t kl_optim_pending(const kl_optim *opt);
/* Parameter i's gradient as the last update used it, before clipping:
 * with accumulation the mean over its cycle, with loss scaling divided by
 * the scale (kl_ctx_grad_get reads the last run's, as backward left it).
 * bytes as kl_ctx_grad_get; refused inside a cycle (kl_optim_pending > 0);
 * zeros before any backward pass has run. On a GPU it waits for the runs
 * issued so far. */
KL_API kl_status kl_optim_grad_get(const kl_optim *opt, int i, void *dst, size_t bytes);

/* Optimizer state, for checkpoints: named flat tensors in the parameters'
 * layout ("exp_avg", "exp_avg_sq" for Adam; "momentum_buffer" for SGD). */
KL_API int kl_optim_state_count(const kl_optim *opt);
/* Borrowed name and host pointer to the state's bytes (size in *bytes). */
KL_API kl_status kl_optim_state(kl_optim *opt, int i, const char **name, void **data, size_t *bytes);

#ifdef __cplusplus
}
#endif
#endif
