#!/usr/bin/env bash
# kiln train --resume of a language model ($1 = build dir): another
# train.steps_per_epoch is refused (the checkpoint's epoch loss so far
# belongs to its own epoch boundaries), the refusal shows floats as written
# (0.2, not the %.17g write-back's 0.20000000000000001), and a run resumed
# from <run>/checkpoints/<tag> names <run> in its hints (not <tag>/../..);
# another model.input.tokens or corpus is refused; a run ended mid-epoch and
# extended with --steps logs the uninterrupted run's epoch records.
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
n=$(grep -c '"type":"\(step\|epoch\)"' "$tmp/r1/metrics.jsonl")
run --resume "$tmp/r1" >"$tmp/r1c.log" 2>&1
check "the finished run resumed again: says so, trains nothing" \
  '[ $? -eq 0 ] && grep -q "the run had finished: step 7 of 7; raise --steps or --epochs" "$tmp/r1c.log" &&
   [ "$(grep -c "\"type\":\"\(step\|epoch\)\"" "$tmp/r1/metrics.jsonl")" -eq "$n" ]'

# a run that ended mid-epoch (step 7 of epochs of 4) extended with --steps: its epoch goes on from the
# checkpoint's sum, so the extended run's records are an uninterrupted 8-step run's, plus the partial one of step 7
ep_recs() { grep '"type":"epoch"' "$1/metrics.jsonl" | grep -v '"partial":true' | sed 's/,"wall_s.*//'; }
run "$tmp/lm.yaml" --out "$tmp/full8" --steps 8 --set data.val_fraction=0.1 >"$tmp/full8.log" 2>&1
check "the run of 7 steps ends with a partial record of epoch 2" \
  'grep -q "\"type\":\"epoch\",\"epoch\":2,\"step\":7,\"partial\":true," "$tmp/full/metrics.jsonl" &&
   grep -q "^epoch 2 (step 7, partial: 3 of 4 steps): train loss" "$tmp/full.log" &&
   "$kiln" report "$tmp/full" | grep -q "7 (1 epoch completed)"'
resume_dir "$tmp/full" 7 "$tmp/x" && cp "$tmp/full/metrics.jsonl" "$tmp/x/"
run --resume "$tmp/x" --steps 8 >"$tmp/x.log" 2>&1
check "extended mid-epoch: epoch 2's record is the uninterrupted run's (the mean of steps 5-8)" \
  '[ $? -eq 0 ] && [ "$(ep_recs "$tmp/full8" | wc -l)" -eq 2 ] && [ "$(ep_recs "$tmp/x")" = "$(ep_recs "$tmp/full8")" ]'

resume_dir "$tmp/full" 3 "$tmp/r2"
run --resume "$tmp/r2" --set data.val_fraction=0.2 >"$tmp/r2.log" 2>&1
check "another val_fraction: both shown as written" \
  '[ $? -eq 1 ] && grep -q "this run has data.val_fraction 0.2, the checkpoint (step 3, epoch 1, batch 3) was trained with 0.1:" "$tmp/r2.log"'

# another context length or another corpus (the same characters, reordered) is refused before the run
# directory is touched; the same corpus at another path resumes
resume_dir "$tmp/full" 3 "$tmp/r3"
run --resume "$tmp/r3" --set model.input.tokens=8 >"$tmp/r3.log" 2>&1
check "another model.input.tokens is refused" \
  '[ $? -eq 1 ] && grep -q "this run has model.input.tokens 8, the checkpoint (step 3, epoch 1, batch 3) was trained with 16: its batches would be other windows; .*--init" "$tmp/r3.log" && [ ! -e "$tmp/r3/metrics.jsonl" ]'
rev "$tmp/corpus.txt" >"$tmp/other.txt"
run --resume "$tmp/r3" --set data.path="$tmp/other.txt" >"$tmp/r3.log" 2>&1
check "another corpus of the same characters and size is refused" \
  '[ $? -eq 1 ] && grep -q "data.path $tmp/other.txt holds [0-9]* characters (CRC-32 [0-9a-f]*), the checkpoint (step 3) was trained on [0-9]* (CRC-32 [0-9a-f]*): its batches would be other windows; .*--init" "$tmp/r3.log" && [ ! -e "$tmp/r3/metrics.jsonl" ]'
cp "$tmp/corpus.txt" "$tmp/moved.txt"
run --resume "$tmp/r3" --set data.path="$tmp/moved.txt" >"$tmp/r3.log" 2>&1
check "the same corpus at another path resumes" '[ $? -eq 0 ] && [ "$(epochs "$tmp/r3")" = "$(epochs "$tmp/full")" ]'

# hints name the run directory, from a checkpoint path with or without a trailing '/'
for slash in "" "/"; do
  resume_dir "$tmp/full" 3 "$tmp/h$slash"
  run --resume "$tmp/h$slash/checkpoints/step-000000003$slash" >"$tmp/h.log" 2>&1
  check "resumed from <run>/checkpoints/<tag>${slash:+/}: the run directory is <run>" \
    "[ \$? -eq 0 ] && grep -qx 'run directory: $tmp/h (first step after .*' '$tmp/h.log' &&
     grep -qx 'sample from it with: kiln generate $tmp/h --prompt \"...\"' '$tmp/h.log' && ! grep -q '\\.\\./\\.\\.' '$tmp/h.log'"
  rm -rf "$tmp/h"
done
# a checkpoints directory reached through a symlink: <run> would be another directory, so <tag>/../..
mkdir -p "$tmp/real" "$tmp/l" && cp -r "$tmp/full/checkpoints" "$tmp/real/" && ln -s "$tmp/real/checkpoints" "$tmp/l/checkpoints"
cp "$tmp/full/config.yaml" "$tmp/real/"
run --resume "$tmp/l/checkpoints/step-000000003" >"$tmp/l.log" 2>&1
check "through a symlinked checkpoints directory: the ../.. form, where the files went" \
  "[ \$? -eq 0 ] && grep -q 'sample from it with: kiln generate $tmp/l/checkpoints/step-000000003/../.. ' '$tmp/l.log' &&
   [ -s '$tmp/real/metrics.jsonl' ] && [ ! -e '$tmp/l/metrics.jsonl' ]"

# interrupted: "resume with:" names the run too
resume_dir "$tmp/full" 3 "$tmp/i"
"$kiln" train --resume "$tmp/i/checkpoints/step-000000003" --steps 1000000 --threads 1 --no-tensorboard >"$tmp/i.log" 2>&1 &
pid=$!
for _ in $(seq 1 400); do grep -q '"step":9,' "$tmp/i/metrics.jsonl" 2>/dev/null && break; sleep 0.05; done
kill -INT "$pid"
wait "$pid"
rc=$?
check "SIGINT after a resume from <run>/checkpoints/<tag>: resume with: kiln train --resume <run>" \
  "[ $rc -eq 130 ] && grep -qx 'resume with: kiln train --resume $tmp/i' '$tmp/i.log'"

check_done test_lm_resume
