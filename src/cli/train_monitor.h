/* Monitoring for `kiln train`: TensorBoard scalars and histograms, system
 * telemetry, the memory check and the NaN watch. train_run.c calls these
 * through small hooks; every record written to metrics.jsonl is mirrored
 * to <run>/tb/ (unless --no-tensorboard).
 *
 * Tags: train/loss, train/accuracy, train/lr (every step),
 * train/samples_per_s (every log_every steps; language models add
 * train/perplexity and train/tokens_per_s, and have no accuracy), epoch/loss, epoch/accuracy,
 * epoch/lr, val/loss, val/accuracy (epoch ends), test/loss, test/accuracy
 * (after training), sys/... (telemetry), params/<name> and grads/<name>
 * histograms (train.histogram_every steps; 0: at epoch ends). */
#ifndef KL_CLI_TRAIN_MONITOR_H
#define KL_CLI_TRAIN_MONITOR_H

#include <stdio.h>
#include "kiln/kiln.h"
#include "io/config.h"
#include "monitor/tb_writer.h"
#include "monitor/telemetry.h"
#include "cli/nan_watch.h"

/* metrics.jsonl's number formats of the values mirrored to TensorBoard:
 * each is sent as its record rounds it, so the two agree as float32. */
#define MON_LOSS "%.9g" /* losses, learning rates, perplexities */
#define MON_ACC "%.6f"  /* accuracies */
#define MON_RATE "%.1f" /* samples_per_s, tokens_per_s */

/* Flags of `kiln train` handled here (main.c takes them out of argv). */
typedef struct monitor_flags {
    int no_tensorboard;
    const char *mem_limit; /* --mem-limit BYTES|2G */
    int help;
    int64_t profile_steps; /* --profile [N]: per-op table after N steps (cli/train_watch.c) */
    int batch_auto;        /* --batch auto: the largest power of two that fits (plan_auto_batch) */
    int no_graph;          /* --no-graph: no CUDA graph capture (every kernel launched eagerly) */
} monitor_flags;
extern monitor_flags g_monitor_flags;

/* Removes --no-tensorboard, --mem-limit X, --profile [N], --batch auto and --no-graph from argv (*argc updated) into
 * g_monitor_flags. Returns 0, or 2 after printing a message. */
int monitor_flags_take(int *argc, char **argv);
/* The usage lines for those flags. */
void monitor_flags_usage(FILE *f);

/* Config keys read here: train.histogram_every (steps; 0 = at each epoch
 * end), train.telemetry_interval (seconds; 0 = off; default 1),
 * train.nan_watch (default true). */
typedef struct monitor_opts {
    int64_t histogram_every;
    double telemetry_interval;
    int nan_watch;
} monitor_opts;

/* Reads and checks the keys above and writes them back resolved (so
 * config.yaml and checkpoints carry them); train_opts_read accepts them as
 * known keys of train and leaves their values to this. */
kl_status monitor_cfg_read(kl_cfg *cfg, monitor_opts *o);

typedef struct train_monitor {
    monitor_opts o;
    tb_writer *tb;
    telemetry *tel;
    telemetry_sample last; /* the newest telemetry sample (last.wall_s 0: none yet) */
    double t_offset;       /* run start to telemetry start, seconds */
    kl_ctx *ctx;
    const kl_optim *opt; /* the gradients' loss scale (histograms); NULL: none */
    FILE *metrics;
    int64_t step, last_hist_step, epoch; /* step: the last one logged */
    double energy_epoch0; /* energy counter at the start of the epoch */
    int64_t samples;      /* training samples of the steps logged by this process (samples per joule) */
    int64_t samples_carry; /* an epoch's samples whose energy was not measured: the next epoch record's */
    double tel_t0, epoch_t0; /* CLOCK_MONOTONIC at telemetry start and at the epoch's start */
    float *buf;
    size_t buf_cap;
    nan_watch nan; /* used by train_run.c around each step */
    int warned;
} train_monitor;

/* Opens <run_dir>/tb (unless disabled) and starts telemetry; run_t0 is the
 * run's start on CLOCK_MONOTONIC (telemetry wall_s counts from it); opt's
 * loss scale is divided out of the gradient histograms. resumed_step: the
 * checkpoint's step of a resumed run (where its points go until a step is
 * logged), -1 for a new run. */
kl_status train_monitor_open(train_monitor *m, const char *run_dir, kl_ctx *ctx, const kl_optim *opt, FILE *metrics,
                            double run_t0, int64_t resumed_step);
void train_monitor_close(train_monitor *m);

/* One call per metrics.jsonl record; failures to write TensorBoard files
 * print one warning and turn TensorBoard off (training goes on). A value
 * that is not finite is not written (acc NAN: a model without accuracy). */
/* samples: the step's training samples (the run energy record's samples per joule). */
void train_monitor_step(train_monitor *m, int64_t step, int64_t samples, double loss, double acc, double lr);
void train_monitor_throughput(train_monitor *m, int64_t step, double samples_per_s);
/* samples: the epoch's training samples (the energy record's samples per joule). */
void train_monitor_epoch(train_monitor *m, int64_t epoch, int64_t step, int64_t samples, double loss, double acc,
                         int has_val, double val_loss, double val_acc, double lr);
/* One more scalar of a record, printed there with fmt (e.g. MON_LOSS). */
void train_monitor_scalar(train_monitor *m, const char *tag, int64_t step, const char *fmt, double v);
/* Test results, logged at the last step. */
void train_monitor_test(train_monitor *m, double loss, double acc);
/* End of training: the last step's histograms (unless already written), a
 * last telemetry sample and the run's energy. */
void train_monitor_end(train_monitor *m);
/* Appends " | cpu 180% rss 312 MB ..." for the progress line (empty when off). */
void train_monitor_progress(const train_monitor *m, char *buf, size_t cap);

#endif
