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
#include "cli/train_run.h"

/* 1 if the config's data.kind is text. */
int train_text_wanted(const kl_cfg *cfg);
/* As train_run (same arguments and exit codes) for text configs. */
int train_text_run(kl_cfg *cfg, const train_args *a, volatile sig_atomic_t *stop);

#endif
