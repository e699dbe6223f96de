#!/usr/bin/env bash
# Gradient accumulation in kiln train ($1 = build dir; kl_optim_opts.accumulate):
#  1. batch 32 with train.accumulate 2 logs the losses of batch 64 (the same
#     rows a step; the MLP without dropout), step for step within f32
#     rounding, and the same epoch figures;
#  2. a run resumed from a checkpoint between steps logs the same losses as
#     the uninterrupted one, bit for bit; SIGINT inside a step finishes the
#     step's batches before its checkpoint; resuming with another batch
#     size or accumulate is refused;
#  3. an epoch whose batches do not divide by K ends with a shorter step; a
#     partial batch in a step weighs by its rows (batch 48 x 2 == batch 96);
#  4. kiln plan counts the accumulator; a bad value names the key.
. "$(dirname "$0")/lib/check.sh" "$1"
sed 's/p: 0.1/p: 0.0/' models/mlp.yaml >"$tmp/mlp.yaml" # no dropout: batch sizes see the same masks
small=(--set data.limit=2000 --set data.val_split=500 --set schedule.warmup_steps=5 --threads 2 --no-tensorboard)

# 1. K batches of 32 == one batch of 64
"$kiln" train "$tmp/mlp.yaml" --epochs 1 --set train.batch=64 "${small[@]}" --out "$tmp/big" >"$tmp/big.log" 2>&1
check "batch 64 runs" '[ $? -eq 0 ]'
"$kiln" train "$tmp/mlp.yaml" --epochs 1 --batch 32 --accumulate 2 --set train.checkpoint_every=5 \
  "${small[@]}" --out "$tmp/acc" >"$tmp/acc.log" 2>&1
check "batch 32, accumulate 2 runs" '[ $? -eq 0 ]'
check "the same number of steps (23)" '[ "$(step_losses "$tmp/big" | wc -l)" -eq 23 ] && [ "$(step_losses "$tmp/acc" | wc -l)" -eq 23 ]'
check "step losses equal within f32 rounding" \
  'paste <(step_losses "$tmp/big") <(step_losses "$tmp/acc") | awk "{d = \$1 - \$2; if (d < 0) d = -d; if (d > 1e-5 * \$1) bad++} END {exit bad > 0}"'
check "the same epoch figures" \
  '[ "$(grep "^epoch 1:" "$tmp/big.log" | sed "s/ (.*//")" = "$(grep "^epoch 1:" "$tmp/acc.log" | sed "s/ (.*//")" ]'
check "config.yaml keeps the key" 'grep -q "accumulate: 2" "$tmp/acc/config.yaml"'

# 2. resume between steps
resume_dir "$tmp/acc" 10 "$tmp/res"
"$kiln" train --resume "$tmp/res" --threads 2 --no-tensorboard >"$tmp/res.log" 2>&1
check "resumed at step 10: the same 13 losses, bit for bit" \
  '[ $? -eq 0 ] && [ "$(step_losses "$tmp/res" | wc -l)" -eq 13 ] && same_tail "$tmp/acc" "$tmp/res"'

resume_dir "$tmp/acc" 10 "$tmp/res2"
"$kiln" train --resume "$tmp/res2" --accumulate 3 --threads 2 --no-tensorboard >"$tmp/res2.log" 2>&1
check "resuming with another train.accumulate is refused" \
  '[ $? -eq 1 ] && grep -q "this run has train.accumulate 3, the checkpoint (step 10, epoch 1, batch 20) was trained with 2" "$tmp/res2.log"'
"$kiln" train --resume "$tmp/res2" --batch 64 --threads 2 --no-tensorboard >"$tmp/res3.log" 2>&1
check "... and so is another train.batch" '[ $? -eq 1 ] && grep -q "this run has train.batch 64, the checkpoint" "$tmp/res3.log"'
"$kiln" train --resume "$tmp/res2" --set data.limit=1500 --threads 2 --no-tensorboard >"$tmp/res4.log" 2>&1
check "... and another data.limit (the training set it indexes)" \
  '[ $? -eq 1 ] && grep -q "this run has data.limit 1500, the checkpoint (step 10, epoch 1, batch 20) was trained with" "$tmp/res4.log"'

# SIGINT inside a step: the step's batches finish first, then the checkpoint
big=(--set data.limit=40000 --set data.val_split=500 --set train.batch=32 --set train.accumulate=3 --threads 2
     --no-tensorboard --set train.log_every=1000)
"$kiln" train models/cnn.yaml --epochs 1 "${big[@]}" --out "$tmp/full" >"$tmp/full.log" 2>&1
"$kiln" train models/cnn.yaml --epochs 1 "${big[@]}" --out "$tmp/int" >"$tmp/int.log" 2>&1 &
pid=$!
sleep 2
kill -INT "$pid"
wait "$pid"
rc=$?
"$kiln" train --resume "$tmp/int" --threads 2 --no-tensorboard >"$tmp/int2.log" 2>&1
check "SIGINT mid-step: exit 130, resumed at a step's boundary (batch = 3 x step), the same losses" \
  '[ $rc -eq 130 ] && grep -qE "^resumed from .* at step ([0-9]+) \(epoch 1, batch [0-9]+\)" "$tmp/int2.log" &&
   awk "/^resumed from/ {s = \$(NF - 4); b = \$NF; sub(/\\)/, \"\", b); exit !(b == 3 * s)}" "$tmp/int2.log" &&
   [ -n "$(step_losses "$tmp/full")" ] && [ "$(step_losses "$tmp/full")" = "$(step_losses "$tmp/int")" ]'

# 3. 46 batches of 32 in 3s: 15 steps of 3 and one of 1
"$kiln" train "$tmp/mlp.yaml" --epochs 2 --set train.batch=32 --set train.accumulate=3 "${small[@]}" --out "$tmp/odd" \
  >"$tmp/odd.log" 2>&1
check "accumulate 3 over 46 batches: 16 steps an epoch" \
  '[ $? -eq 0 ] && [ "$(step_losses "$tmp/odd" | wc -l)" -eq 32 ] && grep -q "\"type\":\"epoch\",\"epoch\":1,\"step\":16," "$tmp/odd/metrics.jsonl" &&
   grep -q "\"type\":\"epoch\",\"epoch\":2,\"step\":32," "$tmp/odd/metrics.jsonl"'

# a partial batch inside a step weighs by its rows: 1500 rows in batches of 48
# end with 48 + 12 rows in one step, what batch 96 ends with (60 rows); the
# second epoch starts from that update
part=("$tmp/mlp.yaml" --epochs 2 --set data.drop_last=false "${small[@]}")
"$kiln" train "${part[@]}" --batch 96 --out "$tmp/p96" >"$tmp/p96.log" 2>&1 &&
  "$kiln" train "${part[@]}" --batch 48 --accumulate 2 --out "$tmp/p48" >"$tmp/p48.log" 2>&1
check "batch 48 x 2 with a partial batch: batch 96's 32 step losses within f32 rounding" \
  '[ $? -eq 0 ] && [ "$(step_losses "$tmp/p96" | wc -l)" -eq 32 ] && [ "$(step_losses "$tmp/p48" | wc -l)" -eq 32 ] &&
   paste <(step_losses "$tmp/p96") <(step_losses "$tmp/p48") | awk "{d = \$1 - \$2; if (d < 0) d = -d; if (d > 1e-5 * \$1) bad++} END {exit bad > 0}"'

# 4. plan and errors
"$kiln" plan "$tmp/mlp.yaml" --set train.accumulate=4 --threads 2 >"$tmp/plan.log" 2>&1
check "kiln plan counts the accumulator" \
  '[ $? -eq 0 ] && grep -q "optimizer state .*(adam with gradient accumulation: 3 x parameters)" "$tmp/plan.log"'
"$kiln" train "$tmp/mlp.yaml" --set train.accumulate=0 "${small[@]}" --out "$tmp/bad" >"$tmp/bad.log" 2>&1
check "accumulate 0 is refused, naming the key" '[ $? -ne 0 ] && grep -q "train.accumulate: expected an integer in \[1, 1048576\], got 0" "$tmp/bad.log"'
check_done test_accumulate
