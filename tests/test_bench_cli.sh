#!/usr/bin/env bash
# kiln bench ($1 = build dir): latency percentiles and throughput of a
# trained MLP's checkpoint, --device, and a clear error for a path with no
# checkpoint.
. "$(dirname "$0")/lib/check.sh" "$1"

"$kiln" train models/mlp.yaml --steps 20 --set data.limit=2000 --set data.val_split=500 --threads 2 \
  --no-tensorboard --out "$tmp/run" >"$tmp/train.log" 2>&1
check "mlp trains" '[ $? -eq 0 ]'
"$kiln" bench "$tmp/run" --batch 16 --iters 20 --threads 2 >"$tmp/bench.log" 2>&1
check "bench runs" '[ $? -eq 0 ]'
cat "$tmp/bench.log"
p50=$(sed -n 's/.* p50 \([0-9.]*\) ms .*/\1/p' "$tmp/bench.log")
p99=$(sed -n 's/.* p99 \([0-9.]*\) ms .*/\1/p' "$tmp/bench.log")
tput=$(sed -n 's/^throughput: \([0-9.]*\) samples\/s (batch 16)$/\1/p' "$tmp/bench.log")
check "input shape and threads named" 'grep -q "input \[16,1,28,28\] f32; cpu with 2 threads" "$tmp/bench.log"'
check "20 iterations after warm-up" 'grep -q "^latency over 20 iterations (after 5 warm-up): " "$tmp/bench.log"'
check "p50 <= p99" '[ -n "$p50" ] && [ -n "$p99" ] && awk -v a="$p50" -v b="$p99" "BEGIN{exit !(a <= b && a > 0)}"'
check "positive throughput" '[ -n "$tput" ] && awk -v t="$tput" "BEGIN{exit !(t > 0)}"'

# --device: the CPU by name; cuda:0 runs on a GPU or says why it cannot (no crash); a bad name is refused
"$kiln" bench "$tmp/run" --batch 16 --iters 5 --threads 2 --device cpu >"$tmp/dcpu.log" 2>&1
check "--device cpu" '[ $? -eq 0 ] && grep -q "cpu with 2 threads" "$tmp/dcpu.log"'
"$kiln" bench "$tmp/run" --batch 16 --iters 5 --device cuda:0 >"$tmp/dgpu.log" 2>&1
rc=$?
check "--device cuda:0: runs there, or a message naming cuda:0" \
  '{ [ $rc -eq 0 ] && grep -q "f32; cuda:0$" "$tmp/dgpu.log"; } || { [ $rc -eq 1 ] && grep -q "^kiln bench: cuda:0[: ]" "$tmp/dgpu.log"; }'
"$kiln" eval "$tmp/run" --device tpu >"$tmp/dbad.log" 2>&1
check "kiln eval --device tpu refused" '[ $? -eq 1 ] && grep -q "unknown device .tpu." "$tmp/dbad.log"'

# a token model: a [B, T] batch of random tokens, and tokens/s
tiny_lm "$tmp/lm.yaml" "{type: lstm, hidden: 16}" "train: {steps: 2, steps_per_epoch: 2, val_batches: 1, batch: 4}"
"$kiln" train "$tmp/lm.yaml" --threads 2 --no-tensorboard --out "$tmp/lm" >"$tmp/lm.log" 2>&1
check "tiny language model trains" '[ $? -eq 0 ]'
"$kiln" bench "$tmp/lm" --batch 8 --iters 10 --threads 2 >"$tmp/lmbench.log" 2>&1
check "token model bench: [B, T] input, tokens/s" \
  '[ $? -eq 0 ] && grep -q "input \[8,16\] i32" "$tmp/lmbench.log" && grep -qE "^throughput: [0-9.]+ samples/s \(batch 8\)  [0-9.]+ tokens/s$" "$tmp/lmbench.log"'

"$kiln" bench "$tmp/missing" --batch 16 >"$tmp/bad.log" 2>&1
check "bad path: exit 1 naming the path" '[ $? -eq 1 ] && grep -q "kiln bench: .*missing: no checkpoint found" "$tmp/bad.log"'
"$kiln" bench "$tmp/run" --iters 0 >"$tmp/bad2.log" 2>&1
check "bad --iters" '[ $? -eq 2 ] && grep -q "iters must be an integer from 1 to" "$tmp/bad2.log"'
"$kiln" bench "$tmp/run" --batch 4 --iters 3 --warmup 0 --threads 1 >"$tmp/w0.log" 2>&1
check "--warmup 0: the timed runs from the first" '[ $? -eq 0 ] && grep -q "^latency over 3 iterations (after 0 warm-up): " "$tmp/w0.log"'
"$kiln" bench >/dev/null 2>&1
check "no checkpoint given" '[ $? -eq 2 ]'
check_done test_bench_cli
