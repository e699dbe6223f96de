#!/usr/bin/env bash
# How kiln train ends when its run is cut short ($1 = build dir):
#  1. metrics.jsonl that cannot be written (a link to /dev/full): a warning
#     naming the file and the reason, training goes on with its checkpoints,
#     exit 1 saying the metrics were not all written (image and text runs);
#  2. SIGINT in a run's last step, then --resume: the epoch's end (validation,
#     epoch record) runs before "the run had finished";
#  3. SIGINT during the last validation skips the test evaluation, exit 130;
#     a second signal ends the process at once, without a checkpoint;
#  4. an --out too long for its checkpoints' paths fails before training;
#     a message too long for the error buffer keeps its reason.
. "$(dirname "$0")/lib/check.sh" "$1"
mlp=(models/mlp.yaml --set data.limit=2000 --set data.val_split=500 --threads 1 --no-tensorboard)

# 1. a full disk under metrics.jsonl
"$kiln" train "${mlp[@]}" --epochs 1 --out "$tmp/full" >"$tmp/full0.log" 2>&1
rm "$tmp/full/metrics.jsonl" && ln -s /dev/full "$tmp/full/metrics.jsonl"
"$kiln" train --resume "$tmp/full" --epochs 2 >"$tmp/full.log" 2>&1
check "metrics.jsonl on a full disk: warning with the reason, exit 1, the run still checkpoints" \
  '[ $? -eq 1 ] && [ "$(grep -c "metrics.jsonl: write failed: No space left on device" "$tmp/full.log")" -eq 1 ] &&
   grep -q "metrics.jsonl: not all metrics were written" "$tmp/full.log" && grep -qx step-000000022 "$tmp/full/checkpoints/latest"'
tiny_lm "$tmp/lm.yaml" "{type: linear, out: 8}" "train: {steps: 4, steps_per_epoch: 2, batch: 4, threads: 1}"
"$kiln" train "$tmp/lm.yaml" --no-tensorboard --out "$tmp/lm" >"$tmp/lm0.log" 2>&1
rm "$tmp/lm/metrics.jsonl" && ln -s /dev/full "$tmp/lm/metrics.jsonl"
"$kiln" train --resume "$tmp/lm" --steps 6 --no-tensorboard >"$tmp/lm.log" 2>&1
check "text run: metrics.jsonl on a full disk fails the run the same way" \
  '[ $? -eq 1 ] && grep -q "metrics.jsonl: write failed: No space left on device" "$tmp/lm.log" &&
   grep -q "not all metrics were written" "$tmp/lm.log" && grep -qx step-000000006 "$tmp/lm/checkpoints/latest"'

# 2. one step of ~0.5 s an epoch: SIGINT once the run directory is made lands in the step
cnn=(models/cnn.yaml --set data.limit=700 --set data.val_split=200 --batch 500 --threads 1 --no-tensorboard)
for try in 1 2 3; do
  rm -rf "$tmp/last"
  "$kiln" train "${cnn[@]}" --epochs 1 --set train.checkpoint_every=1 --out "$tmp/last" >"$tmp/last.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 1000); do [ -s "$tmp/last/config.yaml" ] && break; sleep 0.005; done
  kill -INT "$pid"
  wait "$pid"
  grep -q "^interrupted at step 1;" "$tmp/last.log" && break
done
check "SIGINT in the last step: no epoch record yet" \
  'grep -q "^interrupted at step 1;" "$tmp/last.log" && ! grep -q "\"type\":\"epoch\"" "$tmp/last/metrics.jsonl"'
"$kiln" train --resume "$tmp/last" --no-tensorboard >"$tmp/last2.log" 2>&1
check "resumed: the epoch's validation and record, then the run had finished and is tested" \
  '[ $? -eq 0 ] && [ "$(grep -c "\"type\":\"epoch\",\"epoch\":1,\"step\":1," "$tmp/last/metrics.jsonl")" -eq 1 ] &&
   grep -q "val loss" "$tmp/last2.log" && grep -q "the run had finished" "$tmp/last2.log" && grep -q "^test:" "$tmp/last2.log"'

# 3. 256 training samples, 59744 validation ones: SIGINT after the last step's checkpoint lands in validation
big=(models/mlp.yaml --set data.limit=60000 --set data.val_split=59744 --threads 1 --no-tensorboard)
"$kiln" train "${big[@]}" --steps 2 --set train.checkpoint_every=2 --out "$tmp/val" >"$tmp/val.log" 2>&1 &
pid=$!
for _ in $(seq 1 24000); do grep -qs step-000000002 "$tmp/val/checkpoints/latest" && break; sleep 0.005; done
kill -INT "$pid"
wait "$pid"
rc=$?
check "SIGINT during the last validation: the test is skipped, exit 130" \
  '[ $rc -eq 130 ] && grep -q "test evaluation was skipped" "$tmp/val.log" && ! grep -q "\"type\":\"test\"" "$tmp/val/metrics.jsonl"'
"$kiln" train "${mlp[@]}" --steps 100000 --out "$tmp/two" >"$tmp/two.log" 2>&1 &
pid=$!
for _ in $(seq 1 6000); do [ -s "$tmp/two/config.yaml" ] && break; sleep 0.01; done
sleep 0.3
kill -STOP "$pid" && kill -INT "$pid" && kill -TERM "$pid" && kill -CONT "$pid" # (two SIGINTs would merge)
wait "$pid"
rc=$?
check "a second signal ends the run at once: no checkpoint, killed by it" \
  '[ $rc -eq 130 -o $rc -eq 143 ] && grep -q "again to quit at once" "$tmp/two.log" && ! grep -q "^interrupted at step" "$tmp/two.log"'
"$kiln" train "${mlp[@]}" --steps 100000 --out "$tmp/term" >"$tmp/term.log" 2>&1 &
pid=$!
for _ in $(seq 1 6000); do [ -s "$tmp/term/config.yaml" ] && break; sleep 0.01; done
kill -TERM "$pid"
wait "$pid"
rc=$?
check "SIGTERM checkpoints like Ctrl-C and exits 143" '[ $rc -eq 143 ] && grep -q "^interrupted at step" "$tmp/term.log"'

# 4. long paths
o=$tmp/$(printf 'd%.0s' $(seq 1 200))
while [ ${#o} -lt 3900 ]; do o=$o/$(printf 'd%.0s' $(seq 1 200)); done
o=$o/$(printf 'e%.0s' $(seq 1 $((4045 - ${#o}))))
"$kiln" train "${mlp[@]}" --epochs 1 --out "$o" >"$tmp/long.log" 2>&1
check "an --out of 4046 bytes fails before training, naming the limit" \
  '[ $? -eq 1 ] && grep -q "too long for its checkpoints. paths" "$tmp/long.log" && ! grep -q "^epoch 1" "$tmp/long.log"'
"$kiln" train "/nonexistent/$(printf 'a%.0s' $(seq 1 2100)).yaml" >"$tmp/msg.log" 2>&1
check "a message longer than the error buffer keeps its start and its reason" \
  '[ $? -eq 1 ] && grep -q "^kiln train: /nonexistent/aaa.*\.\.\.aaa*\.yaml: cannot open: No such file or directory$" "$tmp/msg.log"'
check_done test_train_stop
