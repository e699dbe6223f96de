#!/usr/bin/env bash
# kiln train --resume of a language model ($1 = build dir): another
# train.steps_per_epoch is refused (the checkpoint's epoch loss so far
# belongs to its own epoch boundaries).
. "$(dirname "$0")/lib/check.sh" "$1"

tiny_lm "$tmp/lm.yaml" "{type: lstm, hidden: 8}" \
  "train: {steps: 7, steps_per_epoch: 4, checkpoint_every: 3, val_batches: 1, batch: 2, seed: 3, log_every: 100}"
run() { "$kiln" train "$@" --threads 1 --no-tensorboard; } # (not for a background kiln: $! would be the shell)
epochs() { grep '"type":"epoch"' "$1/metrics.jsonl" | sed 's/.*"epoch":\([0-9]*\),.*"loss":\([^,]*\),.*/\1 \2/'; }
run "$tmp/lm.yaml" --out "$tmp/full" --set data.val_fraction=0.1 >"$tmp/full.log" 2>&1
check "the uninterrupted run trains" '[ $? -eq 0 ] && [ "$(epochs "$tmp/full" | wc -l)" -eq 2 ]'

# the reviewer's case: step 3 of epochs of 4, resumed with epochs of 2
resume_dir "$tmp/full" 3 "$tmp/r1"
run --resume "$tmp/r1" --set train.steps_per_epoch=2 >"$tmp/r1.log" 2>&1
check "another train.steps_per_epoch is refused" \
  '[ $? -eq 1 ] && grep -q "this run has train.steps_per_epoch 2, the checkpoint (step 3, epoch 1, batch 3) was trained with 4" "$tmp/r1.log"'
check "... before the run directory is touched" '[ ! -e "$tmp/r1/metrics.jsonl" ]'
run --resume "$tmp/r1" >"$tmp/r1b.log" 2>&1
check "the same steps_per_epoch resumes: the uninterrupted run's epoch records" \
  '[ $? -eq 0 ] && [ "$(epochs "$tmp/r1")" = "$(epochs "$tmp/full")" ]'

check_done test_lm_resume
