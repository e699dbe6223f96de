#!/usr/bin/env bash
# End-to-end tests of `kiln train` on the CPU ($1 = build dir):
#  1. the MLP config on a 10k-sample subset of Fashion-MNIST reaches >= 80 %
#     validation accuracy; the run dir has config.yaml, metrics.jsonl and a checkpoint;
#  2. a run killed with SIGKILL at a random step and resumed logs the same
#     loss, bit for bit, at every step as an uninterrupted run;
#  3. config and data errors give their specific messages;
#  4. throughput counts training time only: with a validation set 150x the
#     training set, the time each epoch record's samples/s implies is its
#     steps' time (within a factor 2 either way: never a timing flake, the
#     two measure the same span; validation would add several times it).
. "$(dirname "$0")/lib/check.sh" "$1"

# 1. accuracy on a subset
"$kiln" train models/mlp.yaml --epochs 3 --set data.limit=10000 --set data.val_split=2000 --threads 2 \
  --out "$tmp/acc" >"$tmp/acc.log" 2>&1
check "mlp trains" '[ $? -eq 0 ]'
acc=$(grep '"type":"epoch"' "$tmp/acc/metrics.jsonl" | tail -n 1 | sed 's/.*"val_accuracy":\([0-9.]*\).*/\1/')
echo "     validation accuracy after 3 epochs: $acc"
check "val accuracy >= 0.80" "awk -v a='$acc' 'BEGIN{exit !(a >= 0.80)}'"
check "run dir has config.yaml" '[ -s "$tmp/acc/config.yaml" ] && grep -q "val_split: 2000" "$tmp/acc/config.yaml"'
check "run dir has a checkpoint" '[ -s "$tmp/acc/checkpoints/latest" ] && [ -s "$tmp/acc/checkpoints/$(cat "$tmp/acc/checkpoints/latest")/model.safetensors" ]'

# 4. 256 training samples (2 steps of 128 an epoch), 40000 validation samples
"$kiln" train models/mlp.yaml --steps 6 --set data.limit=40256 --set data.val_split=40000 --set train.log_every=1 --threads 2 \
  --no-tensorboard --out "$tmp/rate" >"$tmp/rate.log" 2>&1
check "big validation set trains" '[ $? -eq 0 ]'
python3 - "$tmp/rate/metrics.jsonl" >"$tmp/rate.txt" 2>&1 <<'EOF'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1])]
bad, n = [], 0
for e in (r for r in recs if r["type"] == "epoch"):
    steps = sum(128 / r["samples_per_s"] for r in recs if r["type"] == "step" and r["epoch"] == e["epoch"])
    n += 1
    t = 256 / e["samples_per_s"]
    if not steps / 2 <= t <= 2 * steps:
        bad.append("epoch %d: %s samples/s (%.4f s), its steps %.4f s" % (e["epoch"], e["samples_per_s"], t, steps))
print("\n".join(bad) if bad or not n else "%d epochs' times equal their steps'" % n)
sys.exit(1 if bad or not n else 0)
EOF
check "epoch samples/s over training time only (not validation's)" '[ $? -eq 0 ]'
sed 's/^/     /' "$tmp/rate.txt"

# 2. SIGKILL at a random step, resume, compare every step's loss
common=(models/mlp.yaml --steps 120 --batch 64 --set data.limit=3000 --set data.val_split=500
        --set train.checkpoint_every=10 --set train.log_every=1 --threads 2)
"$kiln" train "${common[@]}" --out "$tmp/full" >"$tmp/full.log" 2>&1
check "uninterrupted run" '[ $? -eq 0 ]'
"$kiln" train "${common[@]}" --out "$tmp/killed" >"$tmp/killed.log" 2>&1 &
pid=$!
target=$((25 + RANDOM % 60))
for _ in $(seq 1 600); do
  n=$(grep -c '"type":"step"' "$tmp/killed/metrics.jsonl" 2>/dev/null); n=${n:-0}
  [ "$n" -ge "$target" ] && break
  sleep 0.05
done
kill -9 "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
echo "     killed after step $(grep -c '"type":"step"' "$tmp/killed/metrics.jsonl")"
"$kiln" train --resume "$tmp/killed" --threads 2 >"$tmp/resume.log" 2>&1
check "resume runs" '[ $? -eq 0 ] && grep -q "resumed from" "$tmp/resume.log"'
losses() { grep '"type":"step"' "$1" | sed 's/.*"step":\([0-9]*\),.*"loss":\([^,]*\),.*/\1 \2/' |
           awk '{l[$1]=$2} END {for (s in l) print s, l[s]}' | sort -n; }
losses "$tmp/full/metrics.jsonl" >"$tmp/a.txt"
losses "$tmp/killed/metrics.jsonl" >"$tmp/b.txt"
check "120 steps logged" '[ "$(wc -l <"$tmp/a.txt")" -eq 120 ]'
check "resumed losses identical to uninterrupted" 'cmp -s "$tmp/a.txt" "$tmp/b.txt"'
# resuming the finished run: nothing trained, no checkpoint written, its test record stands alone; a
# test record that was cut off (the process killed while testing) is made then
ntest() { grep -c '"type":"test"' "$1/metrics.jsonl"; }
nck=$(ls "$tmp/killed/checkpoints" | wc -l)
"$kiln" train --resume "$tmp/killed" --threads 2 >"$tmp/again.log" 2>&1
check "a finished run resumed: says so, trains and tests nothing" \
  '[ $? -eq 0 ] && grep -q "the run had finished: step 120 of 120; raise --steps or --epochs" "$tmp/again.log" &&
   ! grep -q "^test:" "$tmp/again.log" && [ "$(ntest "$tmp/killed")" -eq 1 ] && [ "$(ls "$tmp/killed/checkpoints" | wc -l)" -eq "$nck" ]'
grep -v '"type":"test"' "$tmp/killed/metrics.jsonl" >"$tmp/m.jsonl" && cp "$tmp/m.jsonl" "$tmp/killed/metrics.jsonl"
"$kiln" train --resume "$tmp/killed" --threads 2 >"$tmp/again2.log" 2>&1
check "... and without its test record: tested then" '[ $? -eq 0 ] && grep -q "^test:" "$tmp/again2.log" && [ "$(ntest "$tmp/killed")" -eq 1 ]'

# streamed training data (too big for the device, or data.on_device false): the same losses, bit for bit;
# --mem-limit between the plan's 4.6 MiB (step and evaluation graphs) and plan + data makes kiln stream
# instead of copying the set, through the slots that fit in what is left
epochs() { grep '"type":"epoch"' "$1" | sed 's/.*"loss":\([^,]*\),"accuracy":\([^,]*\),"val_loss":\([^,]*\),"val_accuracy":\([^,]*\),.*/\1 \2 \3 \4/'; }
"$kiln" train "${common[@]}" --set data.on_device=false --out "$tmp/stream" >"$tmp/stream.log" 2>&1
check "data.on_device=false streams" '[ $? -eq 0 ] && grep -q "note: the training set streams from host memory through [0-9]* slots of 64 samples (data.on_device is false)" "$tmp/stream.log"'
losses "$tmp/stream/metrics.jsonl" >"$tmp/c.txt"
check "streamed losses identical to device-resident" 'cmp -s "$tmp/a.txt" "$tmp/c.txt"'
check "streamed epochs identical (train and val)" '[ -n "$(epochs "$tmp/full/metrics.jsonl")" ] && [ "$(epochs "$tmp/full/metrics.jsonl")" = "$(epochs "$tmp/stream/metrics.jsonl")" ]'
"$kiln" train "${common[@]}" --mem-limit 6M --out "$tmp/small" >"$tmp/small.log" 2>&1
check "--mem-limit 6M: the data does not fit beside the step, so it streams" \
  '[ $? -eq 0 ] && grep -q "streams from host memory .*(its 7.50 MiB do not fit beside the planned 4.64 MiB of the step and its other graphs in 6.00 MiB)" "$tmp/small.log"'
losses "$tmp/small/metrics.jsonl" >"$tmp/d.txt"
check "--mem-limit 6M losses identical" 'cmp -s "$tmp/a.txt" "$tmp/d.txt"'
check "--mem-limit 6M epochs identical (validation from the host)" '[ "$(epochs "$tmp/full/metrics.jsonl")" = "$(epochs "$tmp/small/metrics.jsonl")" ]'
mkdir -p "$tmp/sres/checkpoints"   # resume the streamed run from its step-50 checkpoint (mid-epoch 2)
cp -r "$tmp/stream/checkpoints/step-000000050" "$tmp/sres/checkpoints/" && echo step-000000050 >"$tmp/sres/checkpoints/latest"
cp "$tmp/stream/config.yaml" "$tmp/sres/"
"$kiln" train --resume "$tmp/sres" --threads 2 >"$tmp/sres.log" 2>&1
losses "$tmp/sres/metrics.jsonl" >"$tmp/e.txt"
check "streamed run resumed at step 50 (mid-epoch) gives the same losses" '[ "$(wc -l <"$tmp/e.txt")" -eq 70 ] && [ "$(tail -n 70 "$tmp/a.txt")" = "$(cat "$tmp/e.txt")" ]'
# the checkpoint carries the epoch so far: the resumed epoch's line covers all of it
check "the resumed run's epoch records equal the uninterrupted run's" \
  '[ -n "$(epochs "$tmp/sres/metrics.jsonl")" ] && [ "$(epochs "$tmp/full/metrics.jsonl" | tail -n "$(epochs "$tmp/sres/metrics.jsonl" | wc -l)")" = "$(epochs "$tmp/sres/metrics.jsonl")" ]'
# a run whose checkpoints/ is a link elsewhere resumes in the run named, not in the link's parent
mkdir -p "$tmp/lnk" "$tmp/far"
cp -r "$tmp/sres/checkpoints" "$tmp/far/" && ln -s "$tmp/far/checkpoints" "$tmp/lnk/checkpoints" && cp "$tmp/sres/config.yaml" "$tmp/lnk/"
echo step-000000050 >"$tmp/far/checkpoints/latest"
"$kiln" train --resume "$tmp/lnk" --threads 2 >"$tmp/lnk.log" 2>&1
check "--resume RUN with checkpoints/ a symlink: the run's files stay in RUN" \
  '[ $? -eq 0 ] && [ -s "$tmp/lnk/metrics.jsonl" ] && [ ! -e "$tmp/far/metrics.jsonl" ] && grep -q "run directory: $tmp/lnk\b" "$tmp/lnk.log"'

# eval, predict, inspect on the trained run
"$kiln" eval "$tmp/acc" --data val --confusion >"$tmp/eval.log" 2>&1
check "eval matches the last validation accuracy" 'grep -q "val: 2000 samples .*accuracy $(printf %.4f "$acc")" "$tmp/eval.log" && grep -q "confusion" "$tmp/eval.log"'
imgs=$(dpkg -L dataset-fashion-mnist | grep t10k-images | head -n 1)
"$kiln" predict "$tmp/acc" "$imgs" --top-k 2 >"$tmp/pred.log" 2>&1
check "predict prints top-k for every image" '[ "$(grep -cE "t10k-images.*\[[0-9]+\]  [0-9] \([01]\.[0-9]{3}\)  [0-9] \([01]\.[0-9]{3}\)$" "$tmp/pred.log")" -eq 10000 ]'
"$kiln" inspect "$tmp/acc/checkpoints/$(cat "$tmp/acc/checkpoints/latest")" >"$tmp/inspect.log" 2>&1
check "inspect lists tensors and step" 'grep -q "layers.1.weight *f32 *\[256,784\]" "$tmp/inspect.log" && grep -q "step: " "$tmp/inspect.log"'

# SIGINT finishes the step, writes a checkpoint and says how to resume
"$kiln" train "${common[@]}" --steps 100000 --out "$tmp/int" >"$tmp/int.log" 2>&1 &
pid=$!
for _ in $(seq 1 200); do grep -q '"step":5,' "$tmp/int/metrics.jsonl" 2>/dev/null && break; sleep 0.05; done
"$kiln" train "${common[@]}" --out "$tmp/int" >"$tmp/lock.log" 2>&1 # while the first one runs
lockrc=$?
kill -INT "$pid"
wait "$pid"
rc=$?
check "SIGINT exits 130 with a checkpoint and a resume hint" '[ $rc -eq 130 ] && grep -q "resume with: kiln train --resume" "$tmp/int.log" && [ -s "$tmp/int/checkpoints/latest" ]'
check "a second kiln train on a run directory in use is refused" '[ $lockrc -eq 1 ] && grep -q "$tmp/int is in use by another kiln train" "$tmp/lock.log"'
before=$(md5sum <"$tmp/int/metrics.jsonl")
"$kiln" train "${common[@]}" --out "$tmp/int" >"$tmp/over.log" 2>&1
check "a new run into a finished run's --out is refused, its records kept" \
  '[ $? -eq 1 ] && grep -q "holds a run already .*continue it with --resume" "$tmp/over.log" && [ "$(md5sum <"$tmp/int/metrics.jsonl")" = "$before" ]'

# last-batch handling: 900 samples at batch 128 are 7 full batches and one of 4
"$kiln" train models/mlp.yaml --epochs 1 --set data.limit=1000 --set data.val_split=100 --set data.drop_last=false \
  --threads 2 --out "$tmp/keep" >"$tmp/keep.log" 2>&1
check "drop_last: false keeps the partial batch" '[ "$(grep -c "\"type\":\"step\"" "$tmp/keep/metrics.jsonl")" -eq 8 ] && grep -q "\"step\":8,.*\"accuracy\":0.[0-9]*,.*samples_per_s" "$tmp/keep/metrics.jsonl"'
"$kiln" train models/mlp.yaml --epochs 1 --set data.limit=1000 --set data.val_split=100 --threads 2 --out "$tmp/drop" >"$tmp/drop.log" 2>&1
check "drop_last (default) drops it" '[ "$(grep -c "\"type\":\"step\"" "$tmp/drop/metrics.jsonl")" -eq 7 ]'

# 3. error messages
printf 'name: bad\nmodel:\n  input: [1, 28, 28]\n  layers:\n    - {type: flatten}\n    - {type: linear, out: 10, in_features: 100}\ntrain: {epochs: 1}\n' >"$tmp/bad1.yaml"
"$kiln" train "$tmp/bad1.yaml" --out "$tmp/x" >"$tmp/e1.log" 2>&1
check "in_features mismatch message" 'grep -q "bad1.yaml:6:[0-9]*: model.layers\[1\].in_features: linear: in_features 100 does not match inferred input 784" "$tmp/e1.log"'
printf 'name: bad\nmodel: {input: [1,28,28], layers: [{type: flatten}, {type: linear, out: 10}]}\ntrain: {epoch: 1}\n' >"$tmp/bad2.yaml"
"$kiln" train "$tmp/bad2.yaml" >"$tmp/e2.log" 2>&1
check "unknown key message" 'grep -q "bad2.yaml:3:[0-9]*: train: unknown key .epoch.*did you mean .epochs.?" "$tmp/e2.log"'
# keys that would do nothing are not accepted (eval_every_epoch was, silently)
sed 's/epoch: 1/epochs: 1, eval_every_epoch: false/' "$tmp/bad2.yaml" >"$tmp/bad2b.yaml"
"$kiln" train "$tmp/bad2b.yaml" >"$tmp/e2b.log" 2>&1
check "no key that does nothing" 'grep -q "train: unknown key .eval_every_epoch." "$tmp/e2b.log"'
"$kiln" train --bogus >"$tmp/e3.log" 2>&1
check "unknown flag message" '[ $? -eq 2 ] && grep -q "unknown option .--bogus." "$tmp/e3.log"'
printf 'name: bad\nmodel: {input: [1,28,28], layers: [{type: flatten}, {type: linear, out: 10}]}\ndata: {kind: idx, train_images: %s/none.gz, train_labels: %s/none.gz}\n' "$tmp" "$tmp" >"$tmp/bad3.yaml"
"$kiln" train "$tmp/bad3.yaml" >"$tmp/e4.log" 2>&1
check "missing data file message" 'grep -q "none.gz" "$tmp/e4.log"'
"$kiln" train models/mlp.yaml --device cuda >"$tmp/e5.log" 2>&1
check "cuda without CUDA backend is a clear error" '[ $? -ne 0 ] && grep -q "cuda:0" "$tmp/e5.log"'
check_done test_train
