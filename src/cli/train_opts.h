/* Everything `kiln train` reads from its config, resolved (defaults filled
 * in and written back into the config tree so config.yaml is complete). */
#ifndef KL_CLI_TRAIN_OPTS_H
#define KL_CLI_TRAIN_OPTS_H

#include "kiln/kiln.h"
#include "kiln/data.h"
#include "io/config.h"

typedef enum { SCHED_CONSTANT, SCHED_STEP, SCHED_COSINE } sched_kind;

typedef struct train_opts {
    const char *name;
    /* data */
    int data_kind; /* 0 fashion_mnist, 1 idx, 2 csv, 3 pngdir */
    const char *train_images, *train_labels, *test_images, *test_labels, *path, *test_path;
    int64_t label_col, val_split, limit;
    int normalize, shuffle;
    double mean, std; /* normalisation; 0/0 means computed from the training set */
    /* optimizer and schedule */
    kl_optim_opts optim;
    sched_kind sched;
    int64_t warmup, step_size;
    double gamma, min_lr;
    /* train */
    int64_t epochs, steps, batch, log_every, checkpoint_every, threads;
    uint64_t seed;
} train_opts;

/* Reads and resolves every section (unknown keys are errors). */
kl_status train_opts_read(kl_cfg *cfg, train_opts *o);
/* Learning rate at optimizer step `step` (0-based) of `total`. */
double train_lr(const train_opts *o, int64_t step, int64_t total);
/* Loads train / validation / test sets as the config says; *mean, *std get
 * the normalisation used (computed from the training set unless given). */
kl_status train_load_data(const train_opts *o, kl_dataset **train, kl_dataset **val, kl_dataset **test, float *mean,
                          float *std);

#endif
