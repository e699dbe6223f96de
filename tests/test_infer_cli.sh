#!/usr/bin/env bash
# kiln predict, eval, generate, inspect and bench at their edges ($1 =
# build dir): a PNG of the wrong size is an error (it was a double free); a
# language model is refused by predict; --top-k above the class count ranks
# every class; eval of a bf16 run computes in bf16 and equals the run's own
# test record, eval of a language model its last val_loss; generate names a non-integer option; inspect takes a run
# directory; bench refuses a 33rd --set; batchnorm in a token model is
# refused when the config is read.
. "$(dirname "$0")/lib/check.sh" "$1"
py=${PYTHON:-python3}
small=(--set data.limit=600 --set data.val_split=100 --threads 1 --no-tensorboard)
"$kiln" train models/mlp.yaml --epochs 1 --set train.precision=bf16 "${small[@]}" --out "$tmp/bf" >"$tmp/bf.log" 2>&1
check "bf16 mlp trains" '[ $? -eq 0 ]'
want=$(grep '"type":"test"' "$tmp/bf/metrics.jsonl" | sed 's/.*"loss":\([0-9.]*\),"accuracy":\([0-9.]*\).*/\1 \2/')
"$kiln" eval "$tmp/bf" --set train.threads=1 >"$tmp/ev.log" 2>&1
got=$(sed -n 's/.*loss  *\([0-9.]*\)  *accuracy \([0-9.]*\).*/\1 \2/p' "$tmp/ev.log" | head -n 1)
check "eval of the bf16 run equals its test record ($got vs $want)" \
  '[ -n "$got" ] && "$py" -c "import sys; a=[float(v) for v in sys.argv[1].split()]; b=[float(v) for v in sys.argv[2].split()]; sys.exit(0 if abs(a[0]-b[0]) < 1e-4 and abs(a[1]-b[1]) < 1e-4 else 1)" "$got" "$want"'
"$py" - "$tmp/img32.png" <<'PY'
import struct, sys, zlib
raw = b"".join(b"\0" + bytes(32) for _ in range(32))
chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
open(sys.argv[1], "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 32, 32, 8, 0, 0, 0, 0)) +
                              chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
PY
"$kiln" predict "$tmp/bf" "$tmp/img32.png" >"$tmp/p1.log" 2>&1
check "a 32x32 PNG for a 28x28 model: an error, not a crash" '[ $? -eq 1 ] && grep -q "img32.png: image is \[1,32,32\], the model takes 784 values" "$tmp/p1.log"'
"$py" -c "import numpy as np; np.savetxt('$tmp/x.csv', np.random.RandomState(1).rand(2, 784), delimiter=',', fmt='%.6g')"
"$kiln" predict "$tmp/bf" "$tmp/x.csv" --top-k 11 >"$tmp/p2.log" 2>&1
check "--top-k 11 of 10 classes ranks all 10" '[ $? -eq 0 ] && [ "$(head -n 1 "$tmp/p2.log" | grep -o "(0\.[0-9]*)" | wc -l)" -eq 10 ]'
"$kiln" inspect "$tmp/bf" >"$tmp/in.log" 2>&1
check "inspect a run directory: its latest checkpoint" '[ $? -eq 0 ] && grep -q "model.safetensors" "$tmp/in.log"'
check "inspect names the optimizer of a state file" 'grep -q "optimizer: adam" "$tmp/in.log"'
cp "$(ls "$tmp"/bf/checkpoints/*/model.safetensors | head -n 1)" "$tmp/weights.ST"
"$kiln" inspect "$tmp/weights.ST" >"$tmp/in2.log" 2>&1
check "inspect knows safetensors by content, not name" '[ $? -eq 0 ] && grep -q "weights.ST: safetensors" "$tmp/in2.log"'
sets=(); for i in $(seq 33); do sets+=(--set train.seed=1); done
"$kiln" bench "$tmp/bf" "${sets[@]}" >"$tmp/b.log" 2>&1
check "bench: a 33rd --set is refused" '[ $? -eq 2 ] && grep -q "at most 32 --set" "$tmp/b.log"'
tiny_lm "$tmp/lm.yaml" "{type: lstm, hidden: 8}" "train: {steps: 2, batch: 2}"
"$kiln" train "$tmp/lm.yaml" --threads 1 --no-tensorboard --out "$tmp/lm" >/dev/null 2>&1
"$kiln" predict "$tmp/lm" "$tmp/x.csv" >"$tmp/p3.log" 2>&1
check "predict refuses a language model" '[ $? -eq 1 ] && grep -q "is a language model" "$tmp/p3.log"'
"$kiln" generate "$tmp/lm" --prompt "the" --top-k 2.5 >"$tmp/g.log" 2>&1
check "generate names a non-integer --top-k" '[ $? -eq 2 ] && grep -q "top-k expects a whole number from 0 to 16777216, got .2.5." "$tmp/g.log"'
# eval of a language model: its run's held-out windows, the loss of the last epoch record's val_loss
want=$(grep '"type":"epoch"' "$tmp/lm/metrics.jsonl" | tail -n 1 | sed 's/.*"val_loss":\([^,]*\),.*/\1/')
"$kiln" eval "$tmp/lm" >"$tmp/le.log" 2>&1
check "eval of a language model: loss, perplexity and bpc of the run's last val_loss" \
  "[ \$? -eq 0 ] && [ -n '$want' ] && grep -q \"^val: 16 windows of 16 tokens (of [0-9]* held out)  loss \$(printf %.4f '$want')  perplexity [0-9.]*  bpc [0-9.]*\$\" '$tmp/le.log'"
"$kiln" eval "$tmp/lm" --data test >"$tmp/le.log" 2>&1
check "eval of a language model: --data test refused, pointing to val" \
  '[ $? -eq 1 ] && grep -q "evaluated on its run.s held-out windows, --data val" "$tmp/le.log"'
tiny_lm "$tmp/bn.yaml" "{type: batchnorm}" "train: {steps: 2, batch: 2}"
"$kiln" train "$tmp/bn.yaml" --threads 1 --no-tensorboard --out "$tmp/bn" >"$tmp/bn.log" 2>&1
check "batchnorm in a token model is refused" '[ $? -eq 1 ] && grep -q "batchnorm: in a token model its channels would be the 16 positions" "$tmp/bn.log"'
check_done test_infer_cli
