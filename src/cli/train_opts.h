/* Everything `kiln train` reads from its config, resolved (defaults filled
 * in and written back into the config tree so config.yaml is complete). */
#ifndef KL_CLI_TRAIN_OPTS_H
#define KL_CLI_TRAIN_OPTS_H

#include "kiln/kiln.h"
#include "kiln/data.h"
#include "io/config.h"

typedef enum { SCHED_CONSTANT, SCHED_STEP, SCHED_COSINE } sched_kind;

#define DATA_TEXT 4 /* data.kind text: a character-level corpus (cli/train_text.c) */
#define DATA_TEXT_DEFAULT_PATH "/usr/share/games/fortunes"

typedef struct train_opts {
    const char *name;
    /* data */
    int data_kind; /* 0 fashion_mnist, 1 idx, 2 csv, 3 pngdir, 4 text (DATA_TEXT) */
    const char *train_images, *train_labels, *test_images, *test_labels, *path, *test_path;
    int64_t label_col, val_split, limit;
    int header; /* csv: 1 a header row, 0 none, -1 auto (kl_csv_opts.header) */
    int normalize, shuffle, drop_last;
    int on_device; /* data.on_device: keep the training set in device memory when it fits, else stream it */
    double mean, std; /* normalisation; 0/0 means computed from the training set */
    double val_fraction; /* text: the held-out tail of the corpus */
    /* optimizer and schedule */
    kl_optim_opts optim;
    sched_kind sched;
    int64_t warmup, step_size;
    double gamma, min_lr;
    /* train */
    int64_t epochs, steps, batch, log_every, checkpoint_every, threads;
    int64_t steps_per_epoch, val_batches; /* text: an epoch's steps; validation batches */
    /* convergence watch (cli/train_watch.c) */
    int64_t plateau_patience; /* evaluations without improvement before a warning (0: off) */
    int early_stop;           /* stop (after a checkpoint) when the patience runs out */
    double grad_norm_warn;    /* warn when the gradient norm exceeds this x its running median (0: off) */
    kl_dtype precision;       /* train.precision: the dtype layers compute in (kl_model_set_precision) */
    uint64_t seed;
} train_opts;

/* Reads and resolves every section (unknown keys are errors). */
kl_status train_opts_read(kl_cfg *cfg, train_opts *o);
/* Learning rate at optimizer step `step` (0-based) of `total`. */
double train_lr(const train_opts *o, int64_t step, int64_t total);
/* --device: "auto" is cuda:0 when a GPU can be used, else the CPU (note
 * says why, n bytes); anything else as kl_device_parse. */
kl_status train_pick_device(const char *arg, kl_device *dev, char *note, size_t n);
/* Loads train / validation / test sets as the config says (not for
 * data.kind text, which cli/train_text.c reads); *mean, *std get
 * the normalisation used (computed from the training set unless given).
 * With classes > 0 the labels are checked against it (in the files'
 * order); the test set's samples must be the training set's shape, and a
 * test folder's classes are numbered by the training folder's names. */
kl_status train_load_data(const train_opts *o, int classes, kl_dataset **train, kl_dataset **val, kl_dataset **test,
                          float *mean, float *std);

/* Where kiln train's datasets live on its device. */
typedef struct train_data {
    kl_device_data *train;      /* in device memory, or streamed slots */
    kl_loader *loader;          /* streamed: the batches put into train's slots */
    kl_device_data *val, *test; /* in device memory, or NULL: evaluated from the host */
    int depth;                  /* training steps in flight at most */
} train_data;
struct plan_budget;
/* Keeps the training set in device memory when data.on_device and it fits
 * beside the step (bu: on a GPU, or under --mem-limit, which simulates
 * one), else streams it through pinned slots (depth + 1 at most) from a
 * loader, copied while earlier steps run, and says so. Validation and test
 * sets go to the device in the room left. depth: steps in flight at most
 * with the data on the device (fewer when streamed: d->depth). */
kl_status train_data_place(kl_ctx *ctx, const train_opts *o, const struct plan_budget *bu, const kl_dataset *tr,
                           const kl_dataset *va, const kl_dataset *te, int depth, train_data *d);
/* Frees what train_data_place made (after the graphs that read it). */
void train_data_free(train_data *d);

#endif
