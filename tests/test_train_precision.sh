#!/usr/bin/env bash
# Mixed precision in kiln train ($1 = build dir; train.precision, kl_model_set_precision):
#  1. the MLP in bf16 follows f32's epoch figures closely and keeps f32
#     parameters in its checkpoints; config.yaml records the precision;
#  2. a bf16 run resumed from a checkpoint logs the uninterrupted run's
#     losses bit for bit;
#  3. kiln plan plans the bf16 step (its casts and 16-bit tensors);
#  4. f16 trains with dynamic loss scaling: from a scale that overflows,
#     the overflowing steps are logged and skipped and the scale falls; a
#     run resumed from a checkpoint taken while it fell logs the
#     uninterrupted run's losses bit for bit (the scaler is in the state);
#  5. unknown precisions and bad loss scales are refused, naming the key.
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
resume_dir "$tmp/bf" 10 "$tmp/res"
"$kiln" train --resume "$tmp/res" --threads 2 --no-tensorboard >"$tmp/res.log" 2>&1
check "resumed at step 10: the remaining losses bit for bit" '[ $? -eq 0 ] && same_tail "$tmp/bf" "$tmp/res"'

# 3. plan
"$kiln" plan "$tmp/mlp.yaml" --threads 2 >"$tmp/plan32.log" 2>&1
"$kiln" plan "$tmp/mlp.yaml" --set train.precision=bf16 --threads 2 >"$tmp/plan16.log" 2>&1
ops() { sed -n 's/.*memory plan of the step: \([0-9]*\) ops.*/\1/p' "$1"; }
check "kiln plan plans the bf16 step: more ops (the casts)" \
  '[ -n "$(ops "$tmp/plan32.log")" ] && [ "$(ops "$tmp/plan16.log")" -gt "$(ops "$tmp/plan32.log")" ]'

# 4. f16 with dynamic loss scaling: from its default scale (2^16), then from 2^24
"$kiln" train "$tmp/mlp.yaml" --epochs 1 --precision f16 "${small[@]}" --out "$tmp/f16" >"$tmp/f16.log" 2>&1
check "f16 runs" '[ $? -eq 0 ]'
check "config.yaml records the loss_scale asked for (auto), not its resolution" 'grep -q "loss_scale: auto" "$tmp/f16/config.yaml" && grep -q "loss_scale_init: 65536" "$tmp/f16/config.yaml"'
check "f16: epoch 1 train loss within 1 % of f32's ($(loss "$tmp/f32.log") vs $(loss "$tmp/f16.log"))" \
  'awk -v a="$(loss "$tmp/f32.log")" -v b="$(loss "$tmp/f16.log")" "BEGIN {d = a - b; if (d < 0) d = -d; exit !(a > 0 && d < 0.01 * a)}"'
"$kiln" train "$tmp/mlp.yaml" --epochs 1 --precision f16 --set train.loss_scale_init=16777216 \
  --set train.checkpoint_every=3 "${small[@]}" --out "$tmp/f16o" >"$tmp/f16o.log" 2>&1
check "f16 from 2^24 runs" '[ $? -eq 0 ]'
skipped=$(sed -n 's/.*loss scale [^,]*, \([0-9]*\) updates\{0,1\} skipped.*/\1/p' "$tmp/f16o.log")
check "overflowing steps skipped ($skipped), each logged, the scale lowered" \
  '[ -n "$skipped" ] && [ "$skipped" -gt 3 ] && [ "$(grep -c "\"overflow\":true" "$tmp/f16o/metrics.jsonl")" -eq "$skipped" ] &&
   ! grep -q "loss scale 1.67772e+07" "$tmp/f16o.log"'
resume_dir "$tmp/f16o" 3 "$tmp/res16"
"$kiln" train --resume "$tmp/res16" --threads 2 --no-tensorboard >"$tmp/res16.log" 2>&1
check "f16 resumed at step 3, while the scale was falling: the remaining losses bit for bit" \
  '[ $? -eq 0 ] && same_tail "$tmp/f16o" "$tmp/res16"'

# an f32 run resumed in f16 scales dynamically (auto is derived again), and back in f32 it does not
resume_dir "$tmp/bf" 10 "$tmp/r16"
"$kiln" train --resume "$tmp/r16" --precision f16 --threads 2 --no-tensorboard >"$tmp/r16.log" 2>&1
check "an f32 (bf16) run resumed with --precision f16: dynamic loss scaling" \
  '[ $? -eq 0 ] && grep -q "loss scale [0-9]\{4,\}" "$tmp/r16.log" && grep -q "loss_scale: auto" "$tmp/r16/config.yaml"'
resume_dir "$tmp/f16" "$(ls "$tmp/f16/checkpoints" | sed -n 's/step-0*\([1-9][0-9]*\)$/\1/p' | head -n 1)" "$tmp/r32"
"$kiln" train --resume "$tmp/r32" --precision f32 --epochs 2 --threads 2 --no-tensorboard >"$tmp/r32.log" 2>&1
check "an f16 run resumed with --precision f32: its recorded loss_scale_init is no error, no scaling" \
  '[ $? -eq 0 ] && ! grep -q "loss scale" "$tmp/r32.log"'
# a fixed scale asked for on resume is the scale used, not the checkpoint's (1 from f32, or a dynamic run's last)
resume_dir "$tmp/bf" 10 "$tmp/rfix"
"$kiln" train --resume "$tmp/rfix" --precision f16 --set train.loss_scale=1024 --threads 2 --no-tensorboard >"$tmp/rfix.log" 2>&1
check "an f32 run resumed in f16 with loss_scale 1024 scales by 1024" '[ $? -eq 0 ] && grep -q "loss scale 1024," "$tmp/rfix.log"'
"$kiln" train "$tmp/mlp.yaml" --set train.loss_scale= --epochs 1 "${small[@]}" --out "$tmp/lsn" >"$tmp/lsn.log" 2>&1
check "a null loss_scale is auto (was \"got (null)\")" '[ $? -eq 0 ] && ! grep -q "(null)" "$tmp/lsn.log" && grep -q "loss_scale: auto" "$tmp/lsn/config.yaml"'

# 5. errors
"$kiln" train "$tmp/mlp.yaml" --set train.loss_scale=-4 "${small[@]}" --out "$tmp/ls" >"$tmp/ls.log" 2>&1
check "a negative loss scale is refused, naming the key" \
  '[ $? -ne 0 ] && grep -q "train.loss_scale: train: loss_scale must be auto, dynamic, none or a number in (0, 2^64\]" "$tmp/ls.log"'
"$kiln" train "$tmp/mlp.yaml" --precision f16 --set train.loss_scale=1e39 "${small[@]}" --out "$tmp/lsb" >"$tmp/lsb.log" 2>&1
check "a loss scale past float's range is refused (it trained on inf)" \
  '[ $? -ne 0 ] && grep -q "loss_scale must be auto, dynamic, none or a number in (0, 2^64\], got 1e39" "$tmp/lsb.log"'
"$kiln" train "$tmp/mlp.yaml" --precision f16 --set train.loss_scale_init=1e300 "${small[@]}" --out "$tmp/lsi" >"$tmp/lsi.log" 2>&1
check "a loss_scale_init past 2^64 is refused (it skipped every step)" \
  '[ $? -ne 0 ] && grep -q "loss_scale_init must be a number in (0, 2^64\]" "$tmp/lsi.log"'
"$kiln" train "$tmp/mlp.yaml" --set train.loss_scale_window=10 "${small[@]}" --out "$tmp/lw" >"$tmp/lw.log" 2>&1
check "loss_scale_window without dynamic scaling is refused" \
  '[ $? -ne 0 ] && grep -q "loss_scale_window is for loss_scale: dynamic" "$tmp/lw.log"'
"$kiln" train "$tmp/mlp.yaml" --set train.precision=fp8 "${small[@]}" --out "$tmp/fp8" >"$tmp/fp8.log" 2>&1
check "an unknown precision is refused, naming the key and the choices" \
  '[ $? -ne 0 ] && grep -q "train.precision: expected one of: f32, bf16, f16; got \"fp8\"" "$tmp/fp8.log"'
check_done test_train_precision
