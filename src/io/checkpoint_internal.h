/* Helpers shared by the checkpoint save, resolve and load files. */
#ifndef KL_IO_CHECKPOINT_INTERNAL_H
#define KL_IO_CHECKPOINT_INTERNAL_H

#include "io/checkpoint.h"
#include "kiln/io.h"

#include <stdbool.h>
#include <limits.h>

#ifndef KILN_VERSION
#define KILN_VERSION "unknown"
#endif

#define KL_CKPT_MODEL "model.safetensors"
#define KL_CKPT_STATE "state.safetensors"
#define KL_CKPT_CONFIG "config.yaml"
#define KL_CKPT_LATEST "latest"
#define KL_CKPT_FORMAT "kiln"

/* "<a>/<b>" into out (n bytes); KL_EINVAL naming both if it does not fit. */
kl_status kl_ckpt_join(char *out, size_t n, const char *a, const char *b);

/* 1 if path is a directory / a regular file (following symlinks). */
bool kl_ckpt_is_dir(const char *path);
bool kl_ckpt_is_file(const char *path);

/* 1 if dir holds model.safetensors and state.safetensors. */
bool kl_ckpt_complete(const char *dir);

/* 1 if tag is usable as a checkpoint directory name: non-empty, at most 200
 * bytes, no '/', no control characters, not starting with '.', not
 * "latest". */
bool kl_ckpt_tag_ok(const char *tag);

/* Makes a writer holding every parameter and buffer of c (host copies kept
 * in *hold, which the caller frees with kl_free after saving) and metadata
 * "format": "kiln", "kiln_version". On failure *w = *hold = NULL. */
kl_status kl_ckpt_model_writer(kl_ctx *c, kl_st_writer **w, unsigned char **hold);

/* *out = "sgd" or "adam": what opt's state names tell about its kind (adam
 * and adamw keep the same state). Fails only if opt cannot allocate state. */
kl_status kl_ckpt_optim_family(kl_optim *opt, const char **out);

/* "adamw" -> "adam"; other names unchanged. */
const char *kl_ckpt_kind_family(const char *kind);

#endif
