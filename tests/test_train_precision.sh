#!/usr/bin/env bash
# Mixed precision in kiln train ($1 = build dir; train.precision, kl_model_set_precision):
#  1. the MLP in bf16 follows f32's epoch figures closely and keeps f32
#     parameters in its checkpoints; config.yaml records the precision;
#  2. a bf16 run resumed from a checkpoint logs the uninterrupted run's
#     losses bit for bit;
#  3. kiln plan plans the bf16 step (its casts and 16-bit tensors);
#  4. f16 (no loss scaling yet) and unknown precisions are refused, naming the key.
. "$(dirname "$0")/lib/check.sh" "$1"
sed 's/p: 0.1/p: 0.0/' models/mlp.yaml >"$tmp/mlp.yaml"
small=(--set data.limit=2000 --set data.val_split=500 --set schedule.warmup_steps=5 --threads 2 --no-tensorboard)

# 1. bf16 against f32
"$kiln" train "$tmp/mlp.yaml" --epochs 1 "${small[@]}" --out "$tmp/f32" >"$tmp/f32.log" 2>&1
check "f32 runs" '[ $? -eq 0 ]'
"$kiln" train "$tmp/mlp.yaml" --epochs 1 --precision bf16 --set train.checkpoint_every=10 "${small[@]}" --out "$tmp/bf" \
  >"$tmp/bf.log" 2>&1
check "bf16 runs" '[ $? -eq 0 ]'
loss() { sed -n 's/^epoch 1: train loss \([0-9.]*\) .*/\1/p' "$1"; }
check "epoch 1 train loss within 1 % of f32's ($(loss "$tmp/f32.log") vs $(loss "$tmp/bf.log"))" \
  'awk -v a="$(loss "$tmp/f32.log")" -v b="$(loss "$tmp/bf.log")" "BEGIN {d = a - b; if (d < 0) d = -d; exit !(a > 0 && d < 0.01 * a)}"'
check "step losses differ from f32's (bf16 really ran)" '[ "$(step_losses "$tmp/f32")" != "$(step_losses "$tmp/bf")" ]'
check "config.yaml records precision: bf16" 'grep -q "precision: bf16" "$tmp/bf/config.yaml"'
check "the checkpoint's parameters are f32" \
  '"$kiln" inspect "$tmp/bf/checkpoints/step-000000010/model.safetensors" >"$tmp/inspect.log" 2>&1 &&
   [ "$(grep -c "^  layers\.[0-9]*\.[a-z]* *f32 " "$tmp/inspect.log")" -eq 6 ]'

# 2. resume in bf16
mkdir -p "$tmp/res/checkpoints"
cp -r "$tmp/bf/checkpoints/step-000000010" "$tmp/res/checkpoints/" && echo step-000000010 >"$tmp/res/checkpoints/latest"
cp "$tmp/bf/config.yaml" "$tmp/res/"
"$kiln" train --resume "$tmp/res" --threads 2 --no-tensorboard >"$tmp/res.log" 2>&1
check "resumed at step 10: the remaining losses bit for bit" \
  '[ $? -eq 0 ] && n=$(step_losses "$tmp/res" | wc -l) && [ "$n" -gt 0 ] && [ "$(step_losses "$tmp/bf" | tail -n "$n")" = "$(step_losses "$tmp/res")" ]'

# 3. plan
"$kiln" plan "$tmp/mlp.yaml" --threads 2 >"$tmp/plan32.log" 2>&1
"$kiln" plan "$tmp/mlp.yaml" --set train.precision=bf16 --threads 2 >"$tmp/plan16.log" 2>&1
ops() { sed -n 's/.*memory plan of the step: \([0-9]*\) ops.*/\1/p' "$1"; }
check "kiln plan plans the bf16 step: more ops (the casts)" \
  '[ -n "$(ops "$tmp/plan32.log")" ] && [ "$(ops "$tmp/plan16.log")" -gt "$(ops "$tmp/plan32.log")" ]'

# 4. errors
"$kiln" train "$tmp/mlp.yaml" --precision f16 "${small[@]}" --out "$tmp/f16" >"$tmp/f16.log" 2>&1
check "f16 is refused: it needs loss scaling" '[ $? -ne 0 ] && grep -q "train.precision: f16 needs loss scaling" "$tmp/f16.log"'
"$kiln" train "$tmp/mlp.yaml" --set train.precision=fp8 "${small[@]}" --out "$tmp/fp8" >"$tmp/fp8.log" 2>&1
check "an unknown precision is refused, naming the key and the choices" \
  '[ $? -ne 0 ] && grep -q "train.precision: expected one of: f32, bf16, f16; got \"fp8\"" "$tmp/fp8.log"'
check_done test_train_precision
