/* A trained model from its checkpoint (or run directory), for kiln eval,
 * predict and bench: the run's resolved config (with --set overrides), the
 * model built from it and a ctx holding the checkpoint's weights. */
#ifndef KL_CLI_CKPT_OPEN_H
#define KL_CLI_CKPT_OPEN_H

#include "cli/train_opts.h"
#include "nn/model.h"

typedef struct loaded {
    kl_cfg *cfg;
    train_opts o;
    kl_model *model;
    kl_ctx *ctx;
    char dir[4096]; /* the checkpoint directory (a run directory resolved to its latest) */
} loaded;

/* Fills *l (zeroed by the caller) with the ctx on device (--device: "cpu",
 * "cuda:N", "auto"; NULL: the CPU); on failure what was made stays in *l
 * for loaded_free, and the message names the path or the device. */
kl_status open_ckpt(const char *path, const char **sets, int nsets, const char *device, loaded *l);
void loaded_free(loaded *l);

#endif
