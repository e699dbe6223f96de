#!/usr/bin/env bash
# A GPU session's whole device check (docs/CUDA.md, "Checking on a GPU").
# Prepare it here with `bash scripts/gpu_bundle.sh`, then run on the device
# machine, carrying .gpu:
#   bash scripts/gpu_check.sh [STAGE...]      STAGE: tests bench train memcheck
# (run in the order given; default: all four in that order, which puts the
# figures before the slower checks; `quick` = tests train):
#   tests:    the CUDA tests (every op vs the CPU, capture vs eager, conv,
#             sequence ops, streamed data), f32 without TF32, and test_cuda
#             and test_cuda_seq again with TF32;
#   train:    kiln train on the GPU: graph replay vs --no-graph (also with
#             gradient accumulation), and streamed data vs data on the
#             device, give identical losses; kiln eval on the GPU gives the
#             CPU's test accuracy, kiln bench runs there; the NaN watch
#             names the CPU's layer (captured, eager, streamed); an
#             interrupted run resumes exactly; LSTM and GPT configs train;
#   memcheck: compute-sanitizer memcheck over the CUDA tests;
#   bench:    the benchmarks against PyTorch (bench/run_gpu.sh).
# Everything ends within KILN_CHECK_BUDGET seconds (default 560, under the
# device tool's 600 s a call): a step that would not fit is cut short or
# skipped, and says so. Logs and summary.txt go to $OUT (the device tool
# brings them back) as they are written; the summary table is printed last.
set -u
cd "$(dirname "$0")/.."
stages=" ${*:-tests bench train memcheck} "
stages=${stages/ quick / tests train }
for st in $stages; do
  case $st in tests|bench|train|memcheck) ;; *) echo "unknown stage '$st' (tests bench train memcheck quick)"; exit 2 ;; esac
done
budget=${KILN_CHECK_BUDGET:-560}
out=${OUT:-/tmp/kiln-gpu-out}
w=/tmp/kiln-check # logs and run directories; packed into $OUT at the end
rm -rf "$w" && mkdir -p "$out" "$w"
: >"$out/summary.txt"
b=/tmp/kiln-gpu
rm -rf "$b" && mkdir -p "$b"
tar -C "$b" -xJf .gpu/bundle.tar.xz || { echo "no .gpu/bundle.tar.xz: run scripts/gpu_bundle.sh here and carry .gpu"; exit 1; }
echo "bundle of commit $(cat "$b/commit"); tree at $(git rev-parse --short HEAD 2>/dev/null || echo '?'); stages:$stages"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-13.0/lib64 \
         $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null); do
  [ -e "$d/libcublasLt.so.13" ] && { cudalib=$d; break; }
done
# cuDNN (loaded at run time with KILN_CUDA_CONV=cudnn): the system's, or PyTorch's wheel's
for d in /usr/lib/x86_64-linux-gnu /usr/local/cuda/lib64 /usr/local/cuda-13.0/lib \
         $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cudnn", "lib") for p in nvidia.__path__))' 2>/dev/null); do
  [ -e "$d/libcudnn.so.9" ] && { cudnnlib=$d; break; }
done
export KILN_ORIG_LD="${LD_LIBRARY_PATH:-}" # PyTorch's, for bench/run_gpu.sh
export LD_LIBRARY_PATH="$b/lib:${cudalib:-}:${cudnnlib:-}:${LD_LIBRARY_PATH:-}"
export KILN_DATA_DIR="$b/data"
if ldd "$b/bin/kiln" | grep -q "not found"; then
  echo "missing libraries (cuda libs at '${cudalib:-none found}'):"; ldd "$b/bin/kiln" | grep "not found"; exit 1
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv
"$b/bin/kiln" devices 2>&1 | tee "$w/devices.txt"

declare -a rows
row() { rows+=("$(printf '%-34s %s' "$1" "$2")"); printf '%-34s %s\n' "$1" "$2" >>"$out/summary.txt"; }
run() { # name, timeout, command...: the timeout shrinks to what the budget has left
  local name=$1 lim=$2; shift 2
  local left=$((budget - SECONDS - 5))
  [ "$left" -lt "$lim" ] && lim=$left
  if [ "$lim" -lt 15 ]; then row "$name" "SKIPPED (check budget of $budget s spent)"; return; fi
  local t0=$SECONDS
  timeout "$lim" "$@" >"$w/$name.log" 2>&1
  local rc=$?
  local res=$([ $rc -eq 0 ] && echo ok || { [ $rc -eq 124 ] && echo "TIMEOUT" || echo "FAIL rc=$rc"; })
  # exit 77, or test_loss_scale's note: the program found no usable GPU
  if [ $rc -eq 77 ] || { [ $rc -eq 0 ] && grep -q "GPU part skipped" "$w/$name.log"; }; then res="SKIPPED (no usable GPU)"; rc=0; fi
  row "$name" "$res ($((SECONDS - t0)) s) $(grep -m1 -E 'checks,|ERROR SUMMARY' "$w/$name.log" | cut -c1-60)"
  [ $rc -eq 0 ] || { echo "== $name: $res"; grep -v '^  ok ' "$w/$name.log" | tail -n 25; }
}

# the CUDA tests
stage_tests() {
  # each takes seconds on a GPU (its CPU side ~20 s at most): a hang costs 120 s, not the session
  for t in "$b"/bin/test_cuda* "$b"/bin/test_loss_scale; do run "$(basename "$t")" 120 "$t"; done
  run test_cuda_conv_cudnn 120 env KILN_CUDA_CONV=cudnn "$b/bin/test_cuda_conv"
  # the parity programs run f32 without TF32 (tests/lib/cuda_parity.h); the op and sequence cases once more
  # with it (the recurrent steps' GEMMs have rows TF32 kernels may not take: cuBLASLt's f32 then)
  run test_cuda_tf32 120 env KILN_TF32=1 "$b/bin/test_cuda"
  run test_cuda_seq_tf32 120 env KILN_TF32=1 "$b/bin/test_cuda_seq"
}

# kiln train on the GPU
losses() { grep '"type":"step"' "$1/metrics.jsonl" | sed 's/.*"loss":\([^,]*\),.*/\1/'; }
same() { # label, run dir a, run dir b: their step losses are identical
  [ -f "$w/$2/metrics.jsonl" ] && [ -f "$w/$3/metrics.jsonl" ] || return
  if [ -n "$(losses "$w/$2")" ] && [ "$(losses "$w/$2")" = "$(losses "$w/$3")" ]; then row "$1" ok
  else row "$1" "FAIL"; paste <(losses "$w/$2") <(losses "$w/$3") | head; fi
}
stage_train() {
  local tr=(--steps 60 --set train.log_every=10 --set data.limit=20000 --no-tensorboard)
  run train_cnn_graph 300 "$b/bin/kiln" train --device cuda:0 "${tr[@]}" --out "$w/r_graph"
  # the trained model evaluated on the GPU and on the CPU (TF32 may flip a sample or two)
  run eval_gpu 120 "$b/bin/kiln" eval "$w/r_graph" --device cuda:0
  run eval_cpu 120 "$b/bin/kiln" eval "$w/r_graph" --device cpu
  local ag ac
  ag=$(sed -n 's/^test: .* accuracy \([0-9.]*\)$/\1/p' "$w/eval_gpu.log"); ac=$(sed -n 's/^test: .* accuracy \([0-9.]*\)$/\1/p' "$w/eval_cpu.log")
  if [ -n "$ag" ] && [ -n "$ac" ] && awk -v a="$ag" -v c="$ac" 'BEGIN{exit !(a - c <= 0.002 && c - a <= 0.002)}'; then
    row "kiln eval: GPU == CPU test accuracy" "ok ($ag vs $ac)"
  else row "kiln eval: GPU == CPU test accuracy" "FAIL (gpu '$ag', cpu '$ac')"; fi
  run bench_infer_gpu 60 "$b/bin/kiln" bench "$w/r_graph" --device cuda:0 --batch 1 --iters 200
  run train_cnn_bf16 300 "$b/bin/kiln" train --device cuda:0 --precision bf16 "${tr[@]}" --out "$w/r_bf16"
  # f16 from a scale that overflows: the skipped steps' records say overflow, and training goes on
  run train_cnn_f16 300 "$b/bin/kiln" train --device cuda:0 --precision f16 --set train.loss_scale_init=1e9 "${tr[@]}" \
    --out "$w/r_f16"
  run train_cnn_f16_eager 300 "$b/bin/kiln" train --device cuda:0 --precision f16 --set train.loss_scale_init=1e9 "${tr[@]}" \
    --no-graph --out "$w/r_f16_eager"
  same "f16, scale from 1e9: graph replay == eager" r_f16 r_f16_eager
  row "f16 overflow steps (graph run)" "$(grep -c '"overflow":true' "$w/r_f16/metrics.jsonl" 2>/dev/null)"
  run train_cnn_eager 300 "$b/bin/kiln" train --device cuda:0 "${tr[@]}" --no-graph --out "$w/r_eager"
  same "graph replay == eager (60 losses)" r_graph r_eager
  run train_cnn_cudnn_graph 300 env KILN_CUDA_CONV=cudnn "$b/bin/kiln" train --device cuda:0 "${tr[@]}" --out "$w/r_dn_graph"
  run train_cnn_cudnn_eager 300 env KILN_CUDA_CONV=cudnn "$b/bin/kiln" train --device cuda:0 "${tr[@]}" --no-graph --out "$w/r_dn_eager"
  same "cuDNN: graph replay == eager" r_dn_graph r_dn_eager
  grep -m1 "convolutions by" "$w/train_cnn_cudnn_graph.log" >>"$out/summary.txt"
  run train_cnn_acc_graph 300 "$b/bin/kiln" train --device cuda:0 "${tr[@]}" --set train.accumulate=3 --out "$w/r_acc_graph"
  run train_cnn_acc_eager 300 "$b/bin/kiln" train --device cuda:0 "${tr[@]}" --set train.accumulate=3 --no-graph --out "$w/r_acc_eager"
  same "accumulate 3: graph replay == eager" r_acc_graph r_acc_eager
  run train_cnn_stream 300 "$b/bin/kiln" train --device cuda:0 "${tr[@]}" --set data.on_device=false --out "$w/r_stream"
  same "streamed == on device (60 losses)" r_graph r_stream
  run train_mlp_ckpt 300 "$b/bin/kiln" train models/mlp.yaml --device cuda:0 "${tr[@]}" --set train.checkpoint_every=30 --out "$w/r_full"
  if [ -d "$w/r_full/checkpoints/step-000000030" ]; then
    mkdir -p "$w/r_res/checkpoints"
    cp -r "$w/r_full/checkpoints/step-000000030" "$w/r_res/checkpoints/"
    echo step-000000030 >"$w/r_res/checkpoints/latest"
    cp "$w/r_full/config.yaml" "$w/r_res/"
    : >"$w/r_res/metrics.jsonl"
    run train_mlp_resume 300 "$b/bin/kiln" train --resume "$w/r_res" --device cuda:0 --no-tensorboard
    if [ -n "$(losses "$w/r_res")" ] && [ "$(losses "$w/r_full" | tail -n 30)" = "$(losses "$w/r_res")" ]; then
      row "resume == uninterrupted (30 losses)" ok
    else row "resume == uninterrupted (30 losses)" "FAIL"; fi
  fi
  # the NaN watch on the GPU: the MLP made to diverge names the layer the CPU names (step 2 replays the
  # captured graph; the watch re-runs eagerly from the parameters the guard kept), also eager and streamed
  local nan=(models/mlp.yaml --steps 20 --lr 1e30 --set data.limit=20000 --set data.val_split=200 --set train.log_every=1
             --no-tensorboard) want got v
  nan_line() { grep -m1 "^NaN watch: " "$w/$1.log" 2>/dev/null | sed 's/): .*/)/'; }
  if [ $((budget - SECONDS)) -gt 120 ]; then
    timeout 120 "$b/bin/kiln" train "${nan[@]}" --device cpu --out "$w/r_nan_cpu" >"$w/nan_cpu.log" 2>&1
    want=$(nan_line nan_cpu)
    for v in graph: eager:--no-graph "stream:--set data.on_device=false"; do
      timeout 120 "$b/bin/kiln" train "${nan[@]}" --device cuda:0 ${v#*:} --out "$w/r_nan_${v%%:*}" >"$w/nan_${v%%:*}.log" 2>&1
      got=$(nan_line "nan_${v%%:*}")
      if [ -n "$want" ] && [ "$got" = "$want" ] && grep -q '"type":"nan","step":2' "$w/r_nan_${v%%:*}/metrics.jsonl"; then
        row "NaN watch on the GPU (${v%%:*})" "ok (${got#NaN watch: first non-finite values in the output of })"
      else row "NaN watch on the GPU (${v%%:*})" "FAIL (gpu: '${got:-none}'; cpu: '${want:-none}')"; fi
    done
  else row "NaN watch on the GPU" "SKIPPED (check budget of $budget s spent)"; fi
  # f16 under dynamic scaling: overflows are skipped steps, never a NaN watch finding
  if [ -f "$w/r_f16/metrics.jsonl" ]; then
    if grep -q '"type":"nan"' "$w/r_f16/metrics.jsonl"; then row "f16 overflow: no NaN watch finding" FAIL
    else row "f16 overflow: no NaN watch finding" ok; fi
  fi
  corpus=(--set data.path="$b/data/fortunes") # the bundle's copy: the device image has no fortunes package
  run train_lstm 300 "$b/bin/kiln" train models/char_lstm.yaml --device cuda:0 --steps 40 --no-tensorboard "${corpus[@]}" --out "$w/r_lstm"
  run train_gpt 300 "$b/bin/kiln" train models/gpt_small.yaml --device cuda:0 --steps 40 --no-tensorboard "${corpus[@]}" --out "$w/r_gpt"
}

# compute-sanitizer (memcheck): every access in bounds, no use of freed memory
stage_memcheck() {
  local cs t
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer \
       /opt/nvidia/*/compute-sanitizer 2>/dev/null | head -n 1)
  if [ -n "$cs" ]; then
    for t in "$b"/bin/test_cuda*; do
      run "memcheck_$(basename "$t")" 420 "$cs" --tool memcheck --error-exitcode 99 --print-limit 20 "$t"
      # gVisor machines (device/KINDS.md): the sanitizer refuses the device; the rest would say the same
      if grep -q -i "device not supported" "$w/memcheck_$(basename "$t").log" 2>/dev/null; then
        row memcheck "SKIPPED (compute-sanitizer: device not supported on this machine's runtime)"; break
      fi
    done
  else row memcheck "SKIPPED (no compute-sanitizer on PATH)"; fi
}

# benchmarks
stage_bench() {
  run bench_gpu 420 env BENCH_LOG="$out/bench_gpu.txt" bash bench/run_gpu.sh "$b/bin" "$w"
}

for st in $stages; do "stage_$st"; done

# what comes back (the device tool returns 8 files at most): summary.txt,
# bench_gpu.txt, and one archive of the logs and the runs' metrics
(cd "$w" && tar -czf "$out/logs.tar.gz" --exclude=checkpoints --exclude='*.safetensors' . 2>/dev/null)
echo
echo "== summary ($(date -u +%H:%M:%SZ), $SECONDS s)"
printf '%s\n' "${rows[@]}"
grep -E "^(MLP|MLP accumulate 4|MLP bf16|MLP f16|CNN|CNN streamed|CNN cuDNN):" "$out/bench_gpu.txt" 2>/dev/null
