#!/usr/bin/env bash
# A GPU session's whole device check in one call (docs/CUDA.md, "Checking on
# a GPU"). Prepare it here with `bash scripts/gpu_bundle.sh`, then run on the
# device machine, carrying .gpu:
#   bash scripts/gpu_check.sh [quick]
# 1. the CUDA tests (every op vs the CPU, capture vs eager, conv, sequence ops);
# 2. compute-sanitizer memcheck over the CUDA tests (skipped with quick);
# 3. kiln train on the GPU: graph replay vs --no-graph, and streamed data vs
#    data on the device, give identical losses; an interrupted run resumes
#    exactly;
# 4. the benchmarks against PyTorch (bench/run_gpu.sh; skipped with quick).
# Logs go to $OUT (the device tool brings them back); a summary table last.
set -u
cd "$(dirname "$0")/.."
quick=${1:-}
out=${OUT:-/tmp/kiln-gpu-out}
mkdir -p "$out"
b=/tmp/kiln-gpu
rm -rf "$b" && mkdir -p "$b"
tar -C "$b" -xJf .gpu/bundle.tar.xz || { echo "no .gpu/bundle.tar.xz: run scripts/gpu_bundle.sh here and carry .gpu"; exit 1; }
echo "bundle of commit $(cat "$b/commit"); tree at $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13.0/lib64 \
         $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
  [ -e "$d/libcublasLt.so.13" ] && { cudalib=$d; break; }
done
export LD_LIBRARY_PATH="$b/lib:${cudalib:-}:${LD_LIBRARY_PATH:-}"
export KILN_DATA_DIR="$b/data"
if ldd "$b/bin/kiln" | grep -q "not found"; then
  echo "missing libraries (cuda libs at '${cudalib:-none found}'):"; ldd "$b/bin/kiln" | grep "not found"; exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
"$b/bin/kiln" devices 2>&1 | tee "$out/devices.txt"

declare -a rows
row() { rows+=("$(printf '%-34s %s' "$1" "$2")"); }
run() { # name, timeout, command...
  local name=$1 lim=$2; shift 2
  local t0=$SECONDS
  timeout "$lim" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local res=$([ $rc -eq 0 ] && echo ok || { [ $rc -eq 124 ] && echo "TIMEOUT" || echo "FAIL rc=$rc"; })
  row "$name" "$res ($((SECONDS - t0)) s) $(grep -m1 -E 'checks,|ERROR SUMMARY' "$out/$name.log" | cut -c1-60)"
  [ $rc -eq 0 ] || { echo "== $name: $res"; grep -v '^  ok ' "$out/$name.log" | tail -n 25; }
}

# 1. the CUDA tests
for t in "$b"/bin/test_cuda*; do run "$(basename "$t")" 300 "$t"; done

# 2. compute-sanitizer (memcheck): every access in bounds, no use of freed memory
if [ -z "$quick" ] && command -v compute-sanitizer >/dev/null; then
  for t in "$b"/bin/test_cuda*; do
    run "memcheck_$(basename "$t")" 420 compute-sanitizer --tool memcheck --error-exitcode 99 --print-limit 20 "$t"
  done
fi

# 3. kiln train on the GPU
tr=(--steps 60 --set train.log_every=10 --set data.limit=20000 --no-tensorboard)
run train_cnn_graph 300 "$b/bin/kiln" train --device cuda:0 "${tr[@]}" --out "$out/r_graph"
run train_cnn_eager 300 "$b/bin/kiln" train --device cuda:0 "${tr[@]}" --no-graph --out "$out/r_eager"
losses() { grep '"type":"step"' "$1/metrics.jsonl" | sed 's/.*"loss":\([^,]*\),.*/\1/'; }
if [ -f "$out/r_graph/metrics.jsonl" ] && [ -f "$out/r_eager/metrics.jsonl" ]; then
  if [ "$(losses "$out/r_graph")" = "$(losses "$out/r_eager")" ]; then row "graph replay == eager (60 losses)" ok
  else row "graph replay == eager (60 losses)" "FAIL"; paste <(losses "$out/r_graph") <(losses "$out/r_eager") | head; fi
fi
run train_cnn_stream 300 "$b/bin/kiln" train --device cuda:0 "${tr[@]}" --set data.on_device=false --out "$out/r_stream"
if [ -f "$out/r_graph/metrics.jsonl" ] && [ -f "$out/r_stream/metrics.jsonl" ]; then
  if [ "$(losses "$out/r_graph")" = "$(losses "$out/r_stream")" ]; then row "streamed == on device (60 losses)" ok
  else row "streamed == on device (60 losses)" "FAIL"; paste <(losses "$out/r_graph") <(losses "$out/r_stream") | head; fi
fi
run train_mlp_ckpt 300 "$b/bin/kiln" train models/mlp.yaml --device cuda:0 "${tr[@]}" --set train.checkpoint_every=30 --out "$out/r_full"
if [ -d "$out/r_full/checkpoints/step-000000030" ]; then
  mkdir -p "$out/r_res/checkpoints"
  cp -r "$out/r_full/checkpoints/step-000000030" "$out/r_res/checkpoints/"
  echo step-000000030 >"$out/r_res/checkpoints/latest"
  cp "$out/r_full/config.yaml" "$out/r_res/"
  : >"$out/r_res/metrics.jsonl"
  run train_mlp_resume 300 "$b/bin/kiln" train --resume "$out/r_res" --device cuda:0 --no-tensorboard
  if [ -n "$(losses "$out/r_res")" ] && [ "$(losses "$out/r_full" | tail -n 30)" = "$(losses "$out/r_res")" ]; then
    row "resume == uninterrupted (30 losses)" ok
  else row "resume == uninterrupted (30 losses)" "FAIL"; fi
fi
run train_lstm 300 "$b/bin/kiln" train models/char_lstm.yaml --device cuda:0 --steps 40 --no-tensorboard --out "$out/r_lstm"
run train_gpt 300 "$b/bin/kiln" train models/gpt_small.yaml --device cuda:0 --steps 40 --no-tensorboard --out "$out/r_gpt"

# 4. benchmarks
[ -z "$quick" ] && run bench_gpu 600 bash bench/run_gpu.sh "$b/bin" "$out"

echo
echo "== summary ($(date -u +%H:%M:%SZ))"
printf '%s\n' "${rows[@]}"
grep -E "^(MLP|CNN):" "$out/bench_gpu.txt" 2>/dev/null
