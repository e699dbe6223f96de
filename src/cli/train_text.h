/* `kiln train` for language models on text (data.kind text): a character
 * vocabulary built from the corpus (saved as vocab.txt in the run directory
 * and in every checkpoint), random windows of the training part drawn from
 * (seed, step) so a resumed run sees the same batches, an "epoch" of
 * train.steps_per_epoch steps followed by validation on fixed windows of the
 * held-out tail, and loss, perplexity and bits per character in
 * metrics.jsonl. train_run.c hands such configs here. */
#ifndef KL_CLI_TRAIN_TEXT_H
#define KL_CLI_TRAIN_TEXT_H

#include <signal.h>
#include "cli/evaluator.h"
#include "cli/train_run.h"
#include "kiln/text.h"

/* A text run's corpus as tokens, split into the training part [0, n_train)
 * and the held-out tail [n_train, n_train + n_val), with a batch of
 * windows and the validation forward: what kiln train validates on each
 * epoch and kiln eval evaluates a checkpoint on. Zero it before use. */
typedef struct text_corpus {
    kl_vocab *vocab;
    kl_tokens *tok;
    int64_t n_train, n_val, T; /* T: the model's context */
    uint32_t crc;              /* CRC-32 of the corpus's bytes: with its size, what checkpoints record of it */
    int32_t *x, *y;            /* one batch of windows: inputs and next tokens */
    step_graph val;            /* the held-out windows' forward (when n_val) */
} text_corpus;

/* Reads data.path (o->path) as tokens of the vocabulary in vocab_path (a
 * checkpoint's: ids must not move), or with vocab_path NULL of one built
 * from the corpus; model.vocab auto (or absent) in cfg becomes the
 * vocabulary's size, a number must cover it. */
kl_status text_corpus_load(text_corpus *c, kl_cfg *cfg, const train_opts *o, const char *vocab_path);
/* The split by data.val_fraction for context T; each part holds a window. */
kl_status text_corpus_split(text_corpus *c, const train_opts *o, int64_t T);
/* The batch buffers and, with a held-out tail, the validation graph of batch windows on ctx. */
kl_status text_corpus_graphs(text_corpus *c, kl_model *model, kl_ctx *ctx, int64_t batch);
/* The mean loss over the fixed validation windows: train.val_batches batches
 * of train.batch windows drawn from train.seed, the same every time. */
kl_status text_validate(text_corpus *c, const train_opts *o, kl_model *model, double *loss);
void text_corpus_free(text_corpus *c);
/* The vocab.txt of checkpoint directory ckpt_dir: its own, else its run
 * directory's (ckpt_dir/../..); KL_EIO naming ckpt_dir when neither is. */
kl_status text_vocab_path(const char *ckpt_dir, char *out, size_t n);

/* 1 if the config's data.kind is text. */
int train_text_wanted(const kl_cfg *cfg);
/* As train_run (same arguments and exit codes) for text configs. */
int train_text_run(kl_cfg *cfg, const train_args *a, volatile sig_atomic_t *stop);

#endif
