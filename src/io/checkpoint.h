/* Internal checkpoints: a training run's full state as a directory, and
 * weights-only safetensors import/export.
 *
 *   <ckpt_root>/step-1200/model.safetensors   params + buffers, PyTorch names
 *   <ckpt_root>/step-1200/state.safetensors   optimizer state per parameter
 *                                             ("exp_avg.layers.0.weight") and
 *                                             step/epoch/batch/seed metadata
 *   <ckpt_root>/step-1200/config.yaml         the resolved config text
 *   <ckpt_root>/latest                        "step-1200\n"
 *
 *   kl_train_state st = {.step = 1200, .epoch = 3, .batch = 17, .seed = 42};
 *   strcpy(st.optim_kind, "adam");
 *   KL_TRY(kl_checkpoint_save("runs/a/checkpoints", "step-1200", ctx, opt, &st,
 *                             cfg_text, NULL, 0));
 *
 *   char dir[4096];
 *   KL_TRY(kl_checkpoint_resolve("runs/a", dir, sizeof dir)); // uses latest
 *   KL_TRY(kl_checkpoint_load(dir, ctx, opt, &st, NULL));
 *   kl_graph_set_runs(train_graph, st.graph_runs);
 */
#ifndef KL_IO_CHECKPOINT_H
#define KL_IO_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>
#include "kiln/graph.h"
#include "kiln/optim.h"

#define KL_CKPT_WATCH_BYTES 2048

typedef struct kl_train_state {
    int64_t step;        /* optimizer steps done */
    int64_t epoch;       /* epoch to resume in */
    int64_t batch;       /* next batch index within that epoch */
    uint64_t graph_runs; /* the training graph's run counter (dropout stream) */
    uint64_t seed;
    char optim_kind[16]; /* "adam", "adamw", "sgd" */
    /* the caller's own text, saved as metadata "train_watch" when not empty
     * (kiln train's convergence watch, so a resumed run warns and stops
     * where an uninterrupted one would); "" when a checkpoint has none */
    char watch[KL_CKPT_WATCH_BYTES];
    /* the epoch so far, for its metrics line after a resume: the loss summed
     * over epoch_count items (the caller's unit: samples, or steps), and
     * correct predictions; 0 where a checkpoint has none (older ones) */
    double epoch_loss_sum;
    int64_t epoch_count, epoch_correct;
    /* the training data's fingerprint, so a resume can refuse other data:
     * its size in the caller's unit (a text corpus's characters) and a hash
     * of it; saved when data_count > 0, 0 where a checkpoint has none */
    int64_t data_count;
    uint64_t data_hash;
    /* save only (NULL after a load): the caller's own files, written into
     * the temporary directory before it is published, so a checkpoint that
     * latest names always has them (a text run's vocab.txt). Called with
     * that directory and extra_arg; a failure fails the save. */
    kl_status (*extra_files)(const char *dir, void *extra_arg);
    void *extra_arg;
} kl_train_state;

/* Saves a checkpoint as <ckpt_root>/<tag>/{model,state}.safetensors and
 * config.yaml (config_yaml NULL: empty), and whatever st->extra_files
 * writes, then points <ckpt_root>/latest at
 * it. Atomic as a directory: files go to <ckpt_root>/.<tag>.tmp, each
 * fsynced, the directory is renamed (an existing <tag> is swapped out) and
 * latest replaced atomically, so a crash leaves the old or the new
 * checkpoint complete. Stale .tmp directories from crashes are removed.
 * opt may be NULL (no optimizer state saved). tag: a plain file name, not
 * starting with '.', not "latest". out_path (may be NULL) gets the final
 * directory. On failure (KL_EIO, KL_ENOMEM, KL_EINVAL) the previous
 * checkpoint and latest are untouched and the .tmp directory removed. */
kl_status kl_checkpoint_save(const char *ckpt_root, const char *tag, kl_ctx *ctx, kl_optim *opt,
                             const kl_train_state *st, const char *config_yaml, char *out_path,
                             size_t n);

/* Keeps the keep newest checkpoints of ckpt_root (by tag: step-<N> tags are
 * zero-padded, so name order is step order) and the one 'latest' names,
 * removing the other complete ones; keep 0 keeps all. Directories that
 * are not complete checkpoints are left alone. */
kl_status kl_checkpoint_prune(const char *ckpt_root, int64_t keep);

/* Resolves a --resume argument to a checkpoint directory: a checkpoint dir
 * (has model.safetensors and state.safetensors), a checkpoints root (its
 * 'latest') or a run dir (<run>/checkpoints/latest). Writes the directory to
 * ckpt_dir (n bytes). Fails with KL_EIO naming the path ("runs/x: no
 * checkpoint found (no checkpoints/latest)", "runs/x/checkpoints/latest
 * names 'step-9' which does not exist"); KL_EINVAL if n is too small. */
kl_status kl_checkpoint_resolve(const char *path, char *ckpt_dir, size_t n);

/* Loads a checkpoint into ctx, opt (may be NULL: optimizer state not read)
 * and st (output only; may be NULL). All or nothing: every tensor is
 * checked against ctx and opt (names, shapes, dtypes, none missing, none
 * unknown) and the optimizer kind against opt's (sgd vs adam; adam and adamw
 * keep the same state and are not told apart, so compare st->optim_kind
 * yourself to refuse that switch) before anything is copied; opt's step
 * count is restored. config_yaml (may be NULL) gets a copy of the saved
 * config text, or NULL when the checkpoint has none; caller frees it with
 * free(). On a failed check (KL_EFORMAT, KL_EIO, KL_ENOMEM) nothing was
 * changed and the message names the file and the first mismatching tensor.
 * Tensors are read from the files after the checks, straight into ctx and
 * opt: a read error then (a file cut short while open) leaves them partly
 * loaded, and the message says so. */
kl_status kl_checkpoint_load(const char *ckpt_dir, kl_ctx *ctx, kl_optim *opt, kl_train_state *st,
                             char **config_yaml);

/* Loads weights by name from a safetensors file (kiln's or PyTorch's
 * safetensors.torch.save_file(model.state_dict())), with the same checks
 * first; every parameter and buffer of ctx must be in the file, file
 * tensors named "*num_batches_tracked" that ctx lacks are ignored, other
 * unknown ones are errors. KL_EIO/KL_EFORMAT/KL_ENOMEM; ctx unchanged on a
 * failed check, partly loaded on a read error after them (as above). */
kl_status kl_weights_load(const char *path, kl_ctx *ctx);

/* Saves every parameter and buffer of ctx to path (atomic replace), with
 * metadata "format": "kiln". KL_EIO/KL_ENOMEM; an old file stays as it was. */
kl_status kl_weights_save(const char *path, kl_ctx *ctx);

#endif
