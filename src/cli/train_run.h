/* The training loop behind `kiln train`. */
#ifndef KL_CLI_TRAIN_RUN_H
#define KL_CLI_TRAIN_RUN_H

#include <signal.h>
#include <stdio.h>
#include "io/config.h"
#include "io/checkpoint.h"

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

/* Tells the user a signal stopped the run at step, where the checkpoint
 * is, and how to resume. */
void train_say_interrupted(int tty, int64_t step, const char *ckpt, const char *run_dir);

/* Runs training as cfg says; returns the process exit code. *stop becomes
 * non-zero on SIGINT/SIGTERM: the current step finishes, a checkpoint is
 * written, and the run ends saying how to resume. */
int train_run(kl_cfg *cfg, const train_args *a, volatile sig_atomic_t *stop);

#endif
