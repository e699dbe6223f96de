#!/usr/bin/env bash
# NaN watch in `kiln train` ($1 = build dir): models made to overflow stop
# with the first layer and op that produced a non-finite value, its config
# line, and a {"type":"nan"} record:
#  1. the MLP with a huge learning rate: the second linear (layers.4) overflows;
#  2. the CNN with SGD and lr 1e20: the first linear after the convolutions;
#  3. weights with an Inf loaded with --init: refused on load, the tensor named (its CRC-32, or its value);
#  4. train.nan_watch=false: the plain divergence message only;
#  5. the MLP case with streamed data (data.on_device=false): the same report;
#  6. the MLP case with train.accumulate 2: the same layer named;
#  7. batchnorm's running statistics turning Inf are not blamed (the layer is);
#  8. f16 with a fixed loss scale that overflows: the backward pass, the scale named;
#  9. a language model (data.kind text): the watch runs there too;
# 10. a divergence found by validation (one step an epoch): the pass and step
#     named, a {"type":"nan","phase":"validation"} record;
# 11. a config path with a TAB: the record's "where" is still valid JSON;
# and kiln report shows the finding.
. "$(dirname "$0")/lib/check.sh" "$1"
py=${PYTHON:-python3}
small=(--set data.limit=1000 --set data.val_split=200 --set train.log_every=1 --threads 2 --no-tensorboard)

"$kiln" train models/mlp.yaml --steps 10 --lr 1e30 "${small[@]}" --out "$tmp/mlp" >"$tmp/mlp.log" 2>&1
check "mlp lr 1e30 stops with an error" '[ $? -eq 1 ] && grep -q "kiln train: step 2: loss is .*nan: training diverged" "$tmp/mlp.log"'
check "names layers.4, op linear, at mlp.yaml:10" \
  'grep -q "^NaN watch: first non-finite values in the output of layers.4 (op linear, models/mlp.yaml:10): [0-9]* of 16384 values" "$tmp/mlp.log"'
check "reports the input and weight magnitudes" 'grep -q "its input has max |x| = [0-9.e+]*, its parameters max |w| = 1e+28" "$tmp/mlp.log"'
check "nan record in metrics.jsonl" \
  'grep -q "{\"type\":\"nan\",\"step\":2,\"trigger\":\"loss\",\"phase\":\"forward\",\"layer\":\"layers.4\",\"op\":\"linear\",\"where\":\"models/mlp.yaml:10\"" "$tmp/mlp/metrics.jsonl"'
sed -n 's/^NaN watch: /     /p' "$tmp/mlp.log"
KILN_GNUPLOT=/nonexistent "$kiln" report "$tmp/mlp" >"$tmp/report.log" 2>&1
check "kiln report shows the finding" 'grep -q "diverged (NaN watch)  *step 2: forward pass, layers.4 (op linear) at models/mlp.yaml:10" "$tmp/report.log"'

# one step an epoch (128 training samples): validation after step 1 sees the overflowed weights first
"$kiln" train models/mlp.yaml --steps 3 --lr 1e30 "${small[@]}" --set data.limit=328 --out "$tmp/val" >"$tmp/val.log" 2>&1
check "validation diverges: the pass and step named, a nan record" \
  '[ $? -eq 1 ] && grep -q "^kiln train: validation after step 1: loss is .*nan" "$tmp/val.log" &&
   grep -q "^{\"type\":\"nan\",\"step\":1,\"trigger\":\"loss\",\"phase\":\"validation\"}$" "$tmp/val/metrics.jsonl"'
KILN_GNUPLOT=/nonexistent "$kiln" report "$tmp/val" >"$tmp/valr.log" 2>&1
check "kiln report shows the validation divergence" 'grep -q "diverged (NaN watch)  *validation pass after step 1: the loss is not finite" "$tmp/valr.log"'

# a TAB in the config's path: escaped as \u0009 in the record's "where"
tabbed="$tmp/my$(printf '\t')mlp.yaml"
cp models/mlp.yaml "$tabbed"
"$kiln" train "$tabbed" --steps 10 --lr 1e30 "${small[@]}" --out "$tmp/tab" >"$tmp/tab.log" 2>&1
check "a TAB in the config path: the nan record is valid JSON" \
  '[ $? -eq 1 ] && "$py" -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])][-1]; sys.exit(r[\"type\"] != \"nan\" or r[\"where\"] != sys.argv[2] + \":10\")" "$tmp/tab/metrics.jsonl" "$tabbed" &&
   grep -q "mlp.yaml:10" "$tmp/tab/metrics.jsonl" && grep -q "my\\\\u0009mlp" "$tmp/tab/metrics.jsonl"'

"$kiln" train models/mlp.yaml --steps 10 --lr 1e30 "${small[@]}" --set data.on_device=false --out "$tmp/mlps" >"$tmp/mlps.log" 2>&1
check "streamed data: the same finding, from the slot's host copy" \
  '[ $? -eq 1 ] && [ "$(grep "^NaN watch" "$tmp/mlps.log")" = "$(grep "^NaN watch" "$tmp/mlp.log")" ]'

"$kiln" train models/mlp.yaml --steps 10 --lr 1e30 "${small[@]}" --set train.accumulate=2 --out "$tmp/mlpa" >"$tmp/mlpa.log" 2>&1
check "train.accumulate 2: the step's first batch diverges after one update; the same layer is named" \
  '[ $? -eq 1 ] && grep -q "kiln train: step 2: loss is .*nan" "$tmp/mlpa.log" && grep -q "^NaN watch: first non-finite values in the output of layers.4 (op linear, models/mlp.yaml:10)" "$tmp/mlpa.log"'

"$kiln" train models/cnn.yaml --steps 10 --lr 1e20 --set optim.kind=sgd "${small[@]}" --out "$tmp/cnn" >"$tmp/cnn.log" 2>&1
check "cnn sgd lr 1e20: names layers.7 (linear, cnn.yaml:13)" \
  '[ $? -eq 1 ] && grep -q "^NaN watch: first non-finite values in the output of layers.7 (op linear, models/cnn.yaml:13)" "$tmp/cnn.log"'
sed -n 's/^NaN watch: /     /p' "$tmp/cnn.log"

"$kiln" train models/cnn_bn.yaml --steps 5 --lr 1e20 --set optim.kind=sgd --set clip.max_norm=0 --set schedule.kind=constant \
  "${small[@]}" --out "$tmp/bn" >"$tmp/bn.log" 2>&1
check "cnn_bn: a layer's output is named, not a running statistic the bad step wrote" \
  '[ $? -eq 1 ] && grep -q "^NaN watch: first non-finite values in the output of layers\.[0-9]* (op " "$tmp/bn.log" && ! grep -q "running_" "$tmp/bn.log"'
sed -n 's/^NaN watch: /     /p' "$tmp/bn.log"

"$kiln" train models/mlp.yaml --steps 10 --set train.precision=f16 --set train.loss_scale=1e9 "${small[@]}" --out "$tmp/ls" \
  >"$tmp/ls.log" 2>&1
check "f16, fixed loss scale 1e9: the scaled backward pass overflows, and the watch reproduces it" \
  '[ $? -eq 1 ] && grep -q "^NaN watch: the forward pass is finite .* but the backward pass (backward from the loss x 1e+09, train.loss_scale) is not" "$tmp/ls.log" && grep -q "\"phase\":\"backward\"" "$tmp/ls/metrics.jsonl"'

tiny_lm "$tmp/lm.yaml" "{type: linear, out: 32}" "$(printf 'optim: {kind: sgd, lr: 1e30}\nclip: {max_norm: 0}\ntrain: {steps: 6, steps_per_epoch: 3, val_batches: 1, batch: 4}')"
"$kiln" train "$tmp/lm.yaml" --threads 2 --no-tensorboard --out "$tmp/lm" >"$tmp/lm.log" 2>&1
check "language model: the step named, the NaN watch's finding and record" \
  '[ $? -eq 1 ] && grep -q "^kiln train: step 2: loss is .*nan" "$tmp/lm.log" && grep -q "^NaN watch: " "$tmp/lm.log" && grep -q "\"type\":\"nan\",\"step\":2" "$tmp/lm/metrics.jsonl"'
sed -n 's/^NaN watch: /     /p' "$tmp/lm.log"

"$kiln" train models/mlp.yaml --steps 10 --lr 1e30 "${small[@]}" --set train.nan_watch=false --out "$tmp/off" >"$tmp/off.log" 2>&1
check "nan_watch=false: plain message" '[ $? -eq 1 ] && grep -q "loss is .*nan: training diverged" "$tmp/off.log" && ! grep -q "NaN watch" "$tmp/off.log" && ! grep -q "\"type\":\"nan\"" "$tmp/off/metrics.jsonl"'

# weights with one Inf (a trained checkpoint's model.safetensors, patched): refused on load, naming the
# tensor, by its CRC-32 and, with the CRC-32 made to match, by the value check
"$kiln" train models/mlp.yaml --steps 1 "${small[@]}" --out "$tmp/ok" >"$tmp/ok.log" 2>&1
ck="$tmp/ok/checkpoints/$(cat "$tmp/ok/checkpoints/latest")/model.safetensors"
patch_inf() { # SRC DST [fix-crc]
  "$py" - "$@" <<'EOF'
import json, struct, sys, zlib
b = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
lo, hi = h["layers.6.weight"]["data_offsets"]
start = lo + 8 + n + 4 * 77
b[start:start + 4] = struct.pack("<f", float("inf"))
if len(sys.argv) > 3:
    key = b'"crc32:layers.6.weight":"'
    old = h["__metadata__"]["crc32:layers.6.weight"].encode()
    new = b"%08x" % zlib.crc32(bytes(b[8 + n + lo:8 + n + hi]))
    b[8:8 + n] = bytes(b[8:8 + n]).replace(key + old, key + new)
open(sys.argv[2], "wb").write(b)
EOF
}
patch_inf "$ck" "$tmp/inf.safetensors"
"$kiln" train models/mlp.yaml --steps 3 --init "$tmp/inf.safetensors" "${small[@]}" --out "$tmp/inf" >"$tmp/inf.log" 2>&1
check "an Inf in the loaded weights, its CRC-32 off: refused, the tensor named" \
  '[ $? -eq 1 ] && grep -q "inf.safetensors: tensor .layers.6.weight.: its data.s CRC-32 is [0-9a-f]*, the file.s metadata says [0-9a-f]*: the file is damaged" "$tmp/inf.log"'
patch_inf "$ck" "$tmp/inf2.safetensors" fix-crc
"$kiln" train models/mlp.yaml --steps 3 --init "$tmp/inf2.safetensors" "${small[@]}" --out "$tmp/inf2" >"$tmp/inf2.log" 2>&1
check "an Inf in the loaded weights, its CRC-32 right: refused, the tensor and element named" \
  '[ $? -eq 1 ] && grep -q "inf2.safetensors: tensor .layers.6.weight. holds inf at element 77: the file is damaged" "$tmp/inf2.log"'
check_done test_nan_watch
