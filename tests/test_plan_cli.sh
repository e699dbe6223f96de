#!/usr/bin/env bash
# kiln plan and kiln train --mem-limit ($1 = build dir): the printed figures
# add up, the optimizer state follows the optimizer, the largest batch
# reported fits and one more does not, and training refuses (before loading
# data, with the figures) when over the limit. tests/test_plan.c checks the
# figures against kl_graph_stats of an independently built step.
. "$(dirname "$0")/lib/check.sh" "$1"
bytes() { grep "^  $2 " "$1" | sed 's/.*  \([0-9]*\) bytes.*/\1/'; }

for cfg in mlp cnn; do
  "$kiln" plan models/$cfg.yaml --batch 64 --mem-limit 100M --threads 2 >"$tmp/$cfg.log" 2>&1
  check "plan $cfg" '[ $? -eq 0 ] && grep -q "^memory plan for $cfg (models/$cfg.yaml): batch 64, adam, cpu with 2 threads" "$tmp/$cfg.log"'
  p=$(bytes "$tmp/$cfg.log" parameters); g=$(bytes "$tmp/$cfg.log" gradients); o=$(bytes "$tmp/$cfg.log" "optimizer state")
  a=$(bytes "$tmp/$cfg.log" "activations (arena)"); t=$(bytes "$tmp/$cfg.log" total); x=$(bytes "$tmp/$cfg.log" "other graphs")
  check "$cfg: total = parameters + gradients + 2 x parameters (adam) + arena + other graphs" \
    '[ -n "$a" ] && [ "$a" -gt 0 ] && [ "$x" -gt 0 ] && [ "$g" -eq "$p" ] && [ "$o" -eq $((2 * p)) ] && [ "$t" -eq $((p + g + o + a + x)) ]'
  check "$cfg: limit line" 'grep -q "limit .* 104857600 bytes  (--mem-limit)" "$tmp/$cfg.log" && grep -q "^  fits: " "$tmp/$cfg.log"'
  best=$(sed -n 's/^largest batch that fits: \([0-9]*\) .*/\1/p' "$tmp/$cfg.log")
  echo "     $cfg: batch 64 needs $t bytes (arena $a); largest batch under 100M: $best"
  "$kiln" plan models/$cfg.yaml --batch "$best" --mem-limit 100M --threads 2 >"$tmp/b1.log" 2>&1
  "$kiln" plan models/$cfg.yaml --batch $((best + 1)) --mem-limit 100M --threads 2 >"$tmp/b2.log" 2>&1
  check "$cfg: the largest batch fits, one more does not" 'grep -q "^  fits: " "$tmp/b1.log" && grep -q "^  DOES NOT FIT: " "$tmp/b2.log"'
  check "$cfg: the arena grows with the batch" '[ "$(bytes "$tmp/b1.log" "activations (arena)")" -gt "$a" ]'
done
# (--max-batch keeps the search's arenas small: sanitizer builds are slow to map many GiB)
"$kiln" plan models/mlp.yaml --batch 64 --threads 2 --set optim.kind=sgd --set optim.momentum=0.9 --max-batch 4096 >"$tmp/sgd.log" 2>&1
check "sgd with momentum: 1 x parameters" \
  '[ "$(bytes "$tmp/sgd.log" "optimizer state")" -eq "$(bytes "$tmp/sgd.log" parameters)" ] && grep -q "(sgd: 1 x parameters)" "$tmp/sgd.log"'
check "default limit: available RAM" 'grep -q "(available RAM, MemAvailable in /proc/meminfo)" "$tmp/sgd.log"'
check "--max-batch caps the search" 'grep -q "^largest batch that fits: 4096 .*(the search.s upper end, --max-batch)" "$tmp/sgd.log"'
"$kiln" plan models/cnn_bn.yaml --batch 16 --threads 2 --mem-limit 100M >"$tmp/bn.log" 2>&1
check "batchnorm buffers listed" '[ "$(bytes "$tmp/bn.log" buffers)" -gt 0 ]'

# kiln train refuses over --mem-limit, before loading data or creating the run
"$kiln" train models/cnn.yaml --mem-limit 20M --threads 2 --out "$tmp/run" >"$tmp/refuse.log" 2>&1
rc=$?
check "train refuses over --mem-limit" '[ $rc -eq 1 ] && grep -q "kiln train: the training step and its other graphs need [0-9.]* MiB ([0-9]* bytes), over --mem-limit 20.00 MiB (20971520 bytes); the largest batch that fits is [0-9]* (--batch [0-9]*)" "$tmp/refuse.log"'
check "refusal shows the figures" 'grep -q "memory plan for batch 128" "$tmp/refuse.log" && grep -q "activations (arena)" "$tmp/refuse.log" && [ ! -e "$tmp/run" ]'
fit=$(sed -n 's/.*the largest batch that fits is \([0-9]*\) .*/\1/p' "$tmp/refuse.log")
"$kiln" train models/cnn.yaml --mem-limit 20M --batch "$fit" --steps 2 --set data.limit=1000 --set data.val_split=100 \
  --threads 2 --no-tensorboard --out "$tmp/run2" >"$tmp/fit.log" 2>&1
check "train at the suggested batch runs" '[ $? -eq 0 ] && [ -s "$tmp/run2/metrics.jsonl" ]'
"$kiln" train models/cnn.yaml --mem-limit 1K --batch 1 --threads 2 --out "$tmp/run3" >"$tmp/tiny.log" 2>&1
check "no batch fits" '[ $? -eq 1 ] && grep -q "not even batch 1 fits" "$tmp/tiny.log"'
"$kiln" train models/cnn.yaml --mem-limit 12Q --out "$tmp/run4" >"$tmp/bad.log" 2>&1
check "bad --mem-limit" '[ $? -eq 1 ] && grep -q "mem-limit: expected a size in bytes or with a unit (512M, 1.5G, 2GiB); got .12Q." "$tmp/bad.log"'
"$kiln" plan models/cnn_bn.yaml --mem-limit 1M --threads 2 >"$tmp/none.log" 2>&1
b1=$("$kiln" plan models/cnn_bn.yaml --batch 1 --max-batch 1 --threads 2 2>/dev/null | sed -n 's/^  total *\([0-9.]* [KMG]iB\).*/\1/p')
check "no batch fits: batch 1's real need ($b1)" '[ -n "$b1" ] && grep -q "^largest batch that fits: none (batch 1 needs $b1)" "$tmp/none.log"'
# the total dips at some batches (the arena's packing): cnn_bn at 36 needs more than at 37
"$kiln" plan models/cnn_bn.yaml --batch 37 --max-batch 37 --threads 1 >"$tmp/b37.log" 2>&1
t37=$(bytes "$tmp/b37.log" total)
"$kiln" plan models/cnn_bn.yaml --batch 36 --max-batch 36 --threads 1 >"$tmp/b36.log" 2>&1
if [ "$(bytes "$tmp/b36.log" total)" -gt "$t37" ]; then
  "$kiln" plan models/cnn_bn.yaml --mem-limit "$t37" --threads 1 >"$tmp/dip.log" 2>&1
  check "a dip: at a limit of batch 37's total, 37 is found although 36 does not fit" \
    'grep -qE "^largest batch that fits: (3[7-9]|4[0-9]) " "$tmp/dip.log"'
fi
# a language model counts one validation graph (no partial batch)
tiny_lm "$tmp/lm.yaml" "{type: lstm, hidden: 16}" "train: {batch: 8}"
"$kiln" plan "$tmp/lm.yaml" --threads 2 >"$tmp/lm.log" 2>&1
check "language model: one validation graph" \
  '[ $? -eq 0 ] && grep -q "other graphs .*(validation at batch 8)" "$tmp/lm.log" && [ "$(bytes "$tmp/lm.log" "other graphs")" -gt 0 ]'
# model errors are refused where they are written (file:line:col)
printf 'name: img\nmodel:\n  input: [1, 8, 8]\n  layers:\n    - {type: conv2d, out: 4, kernel: 3}\n    - {type: maxpool2d, kernel: 2}\n    - {type: flatten}\n    - {type: linear, out: 10}\n' >"$tmp/img.yaml"
plan_refused() { # MESSAGE SED: the model edited by SED is refused with MESSAGE
  sed "$2" "$tmp/img.yaml" >"$tmp/e.yaml"
  "$kiln" plan "$tmp/e.yaml" --max-batch 2 >"$tmp/e.log" 2>&1
  [ $? -eq 1 ] && grep -qF -- "$1" "$tmp/e.log"
}
check "input: [] is no input" 'plan_refused "e.yaml:3:10: model.input: expected at least 1 integer, got an empty list" "s/\[1, 8, 8\]/[]/"'
check "kernel: [] is not kernel 1" 'plan_refused "e.yaml:5:38: model.layers[0].kernel: expected at least 1 integer, got an empty list" "s/kernel: 3/kernel: []/"'
check "a huge dilation: no int overflow" 'plan_refused "conv2d: kernel 3x3 does not fit input [1,8,8]" "s/kernel: 3/kernel: 3, dilation: 1048576/"'
check "conv kernel over the input with a large stride: refused where written" 'plan_refused "e.yaml:5:7: model.layers[0]: conv2d: kernel 11x11 does not fit input [1,8,8]" "s/kernel: 3/kernel: 11, stride: 4/"'
check "pool kernel over its input with a large stride: refused where written" 'plan_refused "e.yaml:6:7: model.layers[1]: maxpool2d: kernel 11x11 does not fit input [4,6,6]" "s/kernel: 2}/kernel: 11, padding: 2, stride: 8}/"'
check "a stride over the bound says the bound" 'plan_refused "stride must be in [1, 1048576], got 2000000" "s/kernel: 3/kernel: 3, stride: 2000000/"'
check "maxpool stride: 0 refused" 'plan_refused "e.yaml:6:44: model.layers[1].stride: stride must be in [1, 1048576], got 0" "s/kernel: 2}/kernel: 2, stride: 0}/"'
check "pool padding over half the kernel, located" 'plan_refused "model.layers[1].padding: maxpool2d: padding 2x2 must be at most half the kernel 2x2" "s/kernel: 2}/kernel: 2, padding: 2}/"'
check "batchnorm eps < 0, located" 'plan_refused "e.yaml:6:30: model.layers[1].eps: batchnorm: eps must be >= 0, got -1" "s/{type: maxpool2d, kernel: 2}/{type: batchnorm, eps: -1}/"'
check "batchnorm momentum > 1, located" 'plan_refused "model.layers[1].momentum: batchnorm: momentum must be in [0, 1], got 1.5" "s/{type: maxpool2d, kernel: 2}/{type: batchnorm, momentum: 1.5}/"'
check "layernorm eps < 0, located" 'plan_refused "model.layers[2].eps: layernorm: eps must be >= 0, got -0.1" "s/{type: flatten}/{type: layernorm, eps: -0.1}/"'
check "out and out_channels both" 'plan_refused "model.layers[0].out_channels: out_channels and out are the same setting: give one" "s/out: 4,/out: 4, out_channels: 4,/"'
check "out and out_features both" 'plan_refused "model.layers[3].out_features: out_features and out are the same setting: give one" "s/out: 10}/out: 10, out_features: 10}/"'
tiny_lm "$tmp/tb.yaml" "{type: transformer_block, heads: 2, eps: -1}" ""
"$kiln" plan "$tmp/tb.yaml" --max-batch 2 >"$tmp/tb.log" 2>&1
check "transformer_block eps < 0, located" '[ $? -eq 1 ] && grep -qF "tb.yaml:7:48: model.layers[1].eps: transformer_block: eps must be >= 0, got -1" "$tmp/tb.log"'
r100=$(printf '{type: relu}, %.0s' $(seq 100)) # so each level's name adds ".100"
deep="{type: relu}"; for i in $(seq 25); do deep="{type: residual, layers: [$r100$deep]}"; done
printf 'name: deep\nmodel:\n  input: [4]\n  layers: [%s, {type: linear, out: 3}]\n' "$deep" >"$tmp/deep.yaml"
"$kiln" plan "$tmp/deep.yaml" --max-batch 2 >"$tmp/deep.log" 2>&1
check "a layer name too long to hold is refused, not cut (shared parameters)" \
  '[ $? -eq 1 ] && grep -q "deep.yaml:4:[0-9]*: model.layers\[0\].layers\[100\].*: the layer name layers.0.100.100.*100.[0-9]* is longer than 95 characters" "$tmp/deep.log"'
"$kiln" plan >/dev/null 2>&1 --bogus
check "unknown plan option" '[ $? -eq 2 ]'
check_done test_plan_cli
