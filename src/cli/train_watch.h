/* What `kiln train` watches while it runs, beyond the metrics:
 *  - --profile [N]: after N training steps, the per-op timing table of the
 *    training graph (kl_graph_profile) and the time each step waited for
 *    data, printed and written to metrics.jsonl as
 *    {"type":"profile",...};
 *  - convergence: train.plateau_patience evaluations without a validation
 *    loss improvement warn ({"type":"warning","kind":"plateau"}), and with
 *    train.early_stop end the run after a checkpoint ({"type":"early_stop"});
 *    train.grad_norm_warn warns when the global gradient norm (computed by
 *    the optimizer while clipping, so clip.max_norm > 0) jumps above that
 *    many times its running median ({"type":"warning","kind":"grad_norm"}).
 * Used by train_run.c (image and tabular models) and train_text.c (language
 * models). */
#ifndef KL_CLI_TRAIN_WATCH_H
#define KL_CLI_TRAIN_WATCH_H

#include <stdio.h>
#include "kiln/kiln.h"
#include "cli/train_opts.h"

#define WATCH_NORMS 64 /* gradient norms the running median is taken over */

typedef struct train_watch {
    FILE *metrics;
    /* profile */
    int64_t profile_steps, prof_n; /* steps to profile (0: off); profiled so far */
    double prof_step_s, prof_wait_s;
    int prof_done;
    /* plateau */
    int64_t patience, bad, best_epoch;
    int early_stop;
    double best;
    /* gradient norm */
    double grad_warn, norms[WATCH_NORMS];
    int n_norms, at_norm;
    int64_t grad_warnings;
} train_watch;

/* From the options and g_monitor_flags.profile_steps; turns profiling of
 * the training graph on when asked. */
kl_status watch_init(train_watch *w, const train_opts *o, kl_graph *train_graph, FILE *metrics);
/* After each training step: step_s is the step's wall time (data wait
 * included), wait_s its time waiting for data, grad_norm the step's global
 * gradient norm. Prints the profile after the N-th step and checks the
 * gradient norm. */
void watch_step(train_watch *w, kl_graph *g, double grad_norm, int64_t step, double step_s, double wait_s);
/* At the end of training: the profile, if fewer than N steps ran. */
void watch_end(train_watch *w, kl_graph *g, int64_t step);
/* After an evaluation (loss: validation loss, or the epoch's training loss
 * without a validation set). Returns 1 when training should stop early. */
int watch_eval(train_watch *w, int64_t epoch, int64_t step, double loss, int is_val);
/* The convergence state (best loss, evaluations without improvement, the
 * gradient norms of the running median) as text for a checkpoint's train
 * state, exact to the bit; the profile is not part of it. */
void watch_save(const train_watch *w, char *out, size_t n);
/* Restores what watch_save wrote ("" : leaves the fresh state); KL_EFORMAT
 * naming ckpt when the text is malformed. */
kl_status watch_restore(train_watch *w, const char *text, const char *ckpt);
/* The loss scaler's state for an epoch's lines (empty strings without
 * loss scaling): "  loss scale S, N updates skipped" and the metrics
 * fields ",\"loss_scale\":S,\"skipped_updates\":N". */
kl_status watch_scaler(const kl_optim *opt, const train_opts *o, char *line, size_t nl, char *json, size_t nj);

#endif
