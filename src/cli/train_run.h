/* The training loop behind `kiln train`. */
#ifndef KL_CLI_TRAIN_RUN_H
#define KL_CLI_TRAIN_RUN_H

#include <signal.h>
#include "io/config.h"
#include "io/checkpoint.h"

typedef struct train_args {
    const char *config, *device, *out, *init, *resume_path;
    int resume;
    char ckpt_dir[4096]; /* resolved --resume checkpoint */
} train_args;

/* Runs training as cfg says; returns the process exit code. *stop becomes
 * non-zero on SIGINT/SIGTERM: the current step finishes, a checkpoint is
 * written, and the run ends saying how to resume. */
int train_run(kl_cfg *cfg, const train_args *a, volatile sig_atomic_t *stop);

#endif
