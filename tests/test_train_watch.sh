#!/usr/bin/env bash
# kiln train's watch ($1 = build dir): --profile N prints the per-op table
# and the data wait and writes a profile record; train.plateau_patience with
# train.early_stop stops a run that cannot improve (lr ~0) with a checkpoint
# and exit 0; train.grad_norm_warn warns (and needs clip.max_norm);
# --batch auto picks the largest power of two that fits --mem-limit.
. "$(dirname "$0")/lib/check.sh" "$1"
small=(--set data.limit=2000 --set data.val_split=500 --threads 2 --no-tensorboard)

# 1. --profile
"$kiln" train models/cnn.yaml --steps 6 --profile 5 "${small[@]}" --out "$tmp/prof" >"$tmp/prof.log" 2>&1
check "cnn with --profile 5 runs" '[ $? -eq 0 ]'
check "profile header after 5 steps, with the data wait share" \
  'grep -qE "^profile of 5 training steps: [0-9.]+ ms per step; waiting for data [0-9.]+ ms per step \([0-9.]+% of step time\)$" "$tmp/prof.log"'
check "the table names conv2d" 'grep -qE "^  conv2d +[0-9]+ nodes +[0-9.]+ ms/run +[0-9.]+%$" "$tmp/prof.log"'
check "printed once" '[ "$(grep -c "^profile over" "$tmp/prof.log")" -eq 1 ]'
check "profile record in metrics.jsonl" \
  'grep "\"type\":\"profile\"" "$tmp/prof/metrics.jsonl" | grep -q "\"step\":5,\"steps\":5,.*\"data_wait_share\":.*{\"op\":\"conv2d\",\"nodes\":2,"'
"$kiln" train models/mlp.yaml --steps 3 --profile "${small[@]}" --out "$tmp/prof2" >"$tmp/prof2.log" 2>&1
check "--profile beyond the last step: the 3 steps run" '[ $? -eq 0 ] && grep -q "^profile of 3 training steps" "$tmp/prof2.log"'
"$kiln" train models/mlp.yaml --profile 0 --out "$tmp/x" >"$tmp/prof3.log" 2>&1
check "bad --profile" '[ $? -eq 2 ] && grep -q "profile takes a number of steps from 1 up, got .0." "$tmp/prof3.log"'

# 2. plateau and early stop: lr 1e-12 cannot improve the validation loss
"$kiln" train models/mlp.yaml --epochs 5 --set optim.lr=1e-12 --set train.plateau_patience=1 --set train.early_stop=true \
  "${small[@]}" --out "$tmp/es" >"$tmp/es.log" 2>&1
check "early stop exits 0" '[ $? -eq 0 ]'
check "early stop says why" \
  'grep -q "^early stop at epoch 2, step 22: the validation loss has not improved for 1 evaluations (best [0-9.]* at epoch 1; train.plateau_patience 1)" "$tmp/es.log"'
check "early stop names its checkpoint" 'grep -q "^stopped early; checkpoint .*/es/checkpoints/step-000000022$" "$tmp/es.log" && [ -s "$tmp/es/checkpoints/step-000000022/model.safetensors" ]'
check "no third epoch" '! grep -q "^epoch 3:" "$tmp/es.log"'
check "early_stop record" 'grep -q "{\"type\":\"early_stop\",\"epoch\":2,\"step\":22,\"evaluations\":1," "$tmp/es/metrics.jsonl"'
check "keys resolved in config.yaml" 'grep -q "plateau_patience: 1" "$tmp/es/config.yaml" && grep -q "early_stop: true" "$tmp/es/config.yaml"'
"$kiln" train models/mlp.yaml --epochs 3 --set optim.lr=1e-12 --set train.plateau_patience=1 "${small[@]}" \
  --out "$tmp/pl" >"$tmp/pl.log" 2>&1
check "patience without early_stop: a warning, and training goes on" \
  '[ $? -eq 0 ] && grep -q "^warning: the validation loss has not improved for 2 evaluations" "$tmp/pl.log" && grep -q "^epoch 3:" "$tmp/pl.log"'

# the watch's state travels in checkpoints: resumed from the end of epoch 2
# (one evaluation without improvement), patience 2 stops at epoch 3 as the
# uninterrupted run does (a fresh watch would go on to epoch 5)
pat=(--set optim.lr=1e-12 --set train.plateau_patience=2 --set train.early_stop=true --set clip.max_norm=1e9
     --set train.grad_norm_warn=1.05)
"$kiln" train models/mlp.yaml --epochs 6 "${pat[@]}" "${small[@]}" --out "$tmp/esf" >"$tmp/esf.log" 2>&1
check "patience 2: early stop at epoch 3" '[ $? -eq 0 ] && grep -q "^early stop at epoch 3, step 33:" "$tmp/esf.log"'
mkdir -p "$tmp/esr/checkpoints"
cp -r "$tmp/esf/checkpoints/step-000000022" "$tmp/esr/checkpoints/" && echo step-000000022 >"$tmp/esr/checkpoints/latest"
cp "$tmp/esf/config.yaml" "$tmp/esr/"
check "the checkpoint holds the watch's state" \
  'grep -aq "\"train_watch\":\"v1 best=[^ ]* best_epoch=1 bad=1 warnings=[0-9]* norms=22@22:" "$tmp/esr/checkpoints/step-000000022/state.safetensors"'
"$kiln" train --resume "$tmp/esr" --threads 2 --no-tensorboard >"$tmp/esr.log" 2>&1
check "resumed at epoch 3: stops there too" \
  '[ $? -eq 0 ] && grep -q "^early stop at epoch 3, step 33:" "$tmp/esr.log" && ! grep -q "^epoch 4:" "$tmp/esr.log"'
warns() { grep -E "\"kind\":\"(plateau|grad_norm)\"|\"early_stop\"" "$1" | awk -F'"step":' '{split($2, a, ","); if (a[1] > 22) print}'; }
check "resumed run: the same warnings after step 22 as the uninterrupted one" \
  '[ -n "$(warns "$tmp/esf/metrics.jsonl")" ] && [ "$(warns "$tmp/esf/metrics.jsonl")" = "$(warns "$tmp/esr/metrics.jsonl")" ]'
mkdir -p "$tmp/esb/checkpoints"
cp -r "$tmp/esf/checkpoints/step-000000022" "$tmp/esb/checkpoints/" && echo step-000000022 >"$tmp/esb/checkpoints/latest"
cp "$tmp/esf/config.yaml" "$tmp/esb/"
sed -i 's/"v1 best=/"v9 best=/' "$tmp/esb/checkpoints/step-000000022/state.safetensors"
"$kiln" train --resume "$tmp/esb" --threads 2 --no-tensorboard >"$tmp/esb.log" 2>&1
check "a malformed watch state is refused, naming the checkpoint" \
  '[ $? -eq 1 ] && grep -q "esb/checkpoints/step-000000022: metadata .train_watch. is malformed near .v9 best=" "$tmp/esb.log"'
"$kiln" train models/mlp.yaml --epochs 6 --profile 1000 "${pat[@]}" "${small[@]}" --out "$tmp/esp" >"$tmp/esp.log" 2>&1
check "early stop before --profile N steps: the profile of the steps that ran" \
  '[ $? -eq 0 ] && grep -q "^profile of 33 training steps" "$tmp/esp.log"'

# 3. gradient-norm jumps (warn at 1x the median: some steps must exceed it)
"$kiln" train models/mlp.yaml --steps 30 --set clip.max_norm=1e9 --set train.grad_norm_warn=1 "${small[@]}" \
  --out "$tmp/gn" >"$tmp/gn.log" 2>&1
check "grad_norm_warn warns" \
  '[ $? -eq 0 ] && grep -qE "^warning: step [0-9]+: gradient norm [0-9.e+-]+ is [0-9.]+ times its running median" "$tmp/gn.log" && grep -q "\"kind\":\"grad_norm\"" "$tmp/gn/metrics.jsonl"'
"$kiln" train models/mlp.yaml --steps 2 --set clip.max_norm=0 --set train.grad_norm_warn=3 "${small[@]}" \
  --out "$tmp/gn2" >"$tmp/gn2.log" 2>&1
check "grad_norm_warn needs clip.max_norm" '[ $? -eq 1 ] && grep -q "train.grad_norm_warn: train: grad_norm_warn 3 needs clip.max_norm > 0" "$tmp/gn2.log"'

# 4. --batch auto
"$kiln" plan models/cnn.yaml --mem-limit 20M --threads 2 >"$tmp/plan.log" 2>&1
best=$(sed -n 's/^largest batch that fits: \([0-9]*\) .*/\1/p' "$tmp/plan.log")
p2=1; while [ $((p2 * 2)) -le "${best:-0}" ]; do p2=$((p2 * 2)); done
"$kiln" train models/cnn.yaml --batch auto --mem-limit 20M --steps 2 --set data.limit=1000 --set data.val_split=100 \
  --threads 2 --no-tensorboard --out "$tmp/ba" >"$tmp/ba.log" 2>&1
check "--batch auto picks the largest power of two under the plan's best ($best)" \
  '[ $? -eq 0 ] && grep -q "^batch auto: $p2, the largest power of two whose training step fits --mem-limit 20.00 MiB" "$tmp/ba.log" && grep -q "batch $p2$" "$tmp/ba.log" && grep -q "batch: $p2," "$tmp/ba/config.yaml"'
"$kiln" train models/cnn.yaml --batch auto --mem-limit 1K --threads 2 --out "$tmp/ba2" >"$tmp/ba2.log" 2>&1
check "--batch auto: nothing fits" '[ $? -eq 1 ] && grep -q "batch auto: not even batch 1 fits --mem-limit (1.00 KiB, 1024 bytes)" "$tmp/ba2.log"'
check_done test_train_watch
