/* The training loop behind `kiln train`. */
#ifndef KL_CLI_TRAIN_RUN_H
#define KL_CLI_TRAIN_RUN_H

#include <signal.h>
#include <stdio.h>
#include "io/config.h"
#include "io/checkpoint.h"
#include "cli/train_opts.h"
#include "cli/train_watch.h"

typedef struct train_args {
    const char *config, *device, *out, *init, *resume_path;
    int resume;
    char ckpt_dir[4096]; /* resolved --resume checkpoint */
} train_args;

/* Opens the run directory: --out, the resumed checkpoint's run, or
 * runs/<time>-<name>; creates checkpoints/, writes the resolved config.yaml
 * and opens metrics.jsonl (appending when resuming). run_dir holds 4096
 * bytes, ckpt_root 4200. */
kl_status train_run_dir_open(const train_args *a, const char *name, kl_cfg *cfg, char *run_dir, char *ckpt_root,
                             FILE **metrics);

/* metrics.jsonl's records so far flushed (f NULL: nothing); on the first
 * failed write (a full disk) a warning on stderr naming the file and the
 * reason, and *bad set: training goes on, since the checkpoints are what a
 * resume needs, and train_exit_code fails the run at its end. */
void train_metrics_flush(FILE *f, const char *run_dir, int *bad);
/* Flushes and closes *f (NULL after), as train_metrics_flush. */
void train_metrics_close(FILE **f, const char *run_dir, int *bad);
/* The exit code of a run that ended with s (its message printed here): 1
 * when s failed or metrics.jsonl lost records (bad: said here), else
 * 128 + stopped when a signal stopped it (130 for SIGINT, 143 for SIGTERM),
 * else 0. */
int train_exit_code(kl_status s, int stopped, int bad, const char *run_dir);

/* The state training starts from: step 0 with o's seed and optimizer kind,
 * or with --resume the checkpoint's (into ctx and opt); refused when cfg
 * (resolved) cuts the data otherwise than the checkpoint's config did.
 * Called before train_run_dir_open, so a refused resume leaves the run's
 * config.yaml and metrics.jsonl as they were; the watch's state
 * (st->watch) is restored once the watch is made (watch_restore). */
kl_status train_state_start(const train_args *a, const kl_cfg *cfg, const train_opts *o, kl_ctx *ctx, kl_optim *opt,
                            kl_train_state *st);

/* A resumed run trains on its checkpoint's data: refused (naming the
 * data, what: "data.path x" and unit: "characters") when the checkpoint
 * recorded a fingerprint (st->data_count > 0) other than (n, hash), with
 * how its batches would differ (`batches`: "windows", "samples"); then st
 * records (n, hash) for the run's checkpoints. */
kl_status train_same_data(const train_args *a, kl_train_state *st, const char *what, const char *unit, int64_t n,
                          uint32_t hash, const char *batches);

/* Saves checkpoint <ckpt_root>/step-<N> of st with the config text and the
 * watch's state; path (n bytes) gets its directory. */
kl_status train_ckpt_save(const char *ckpt_root, kl_cfg *cfg, kl_ctx *ctx, kl_optim *opt, const train_watch *w,
                          const kl_train_state *st, char *path, size_t n);

/* Tells the user a signal stopped the run at step, where the checkpoint
 * is, and how to resume. */
void train_say_interrupted(int tty, int64_t step, const char *ckpt, const char *run_dir);
/* The notice of a resumed run that had already trained its total steps. */
void train_say_finished(int64_t step, int64_t total);

/* Runs training as cfg says; returns the process exit code. *stop becomes
 * non-zero on SIGINT/SIGTERM: the current step finishes, a checkpoint is
 * written, and the run ends saying how to resume. */
int train_run(kl_cfg *cfg, const train_args *a, volatile sig_atomic_t *stop);

#endif
