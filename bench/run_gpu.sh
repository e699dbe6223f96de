#!/usr/bin/env bash
# kiln vs PyTorch on a GPU, in one run (the same machine, the same minutes):
#   1. MLP 784-1024-1024-10, batch 256, Adam: ms per training step, data on
#      the GPU (bench_mlp --device vs bench/mlp_torch.py --device cuda);
#   2. the reference CNN on Fashion-MNIST, batch 128, Adam, 5 epochs, data on
#      the GPU: seconds per warm epoch, test accuracy, time to the first step,
#      energy per epoch (NVML) and peak device memory (kiln train --device vs
#      bench/cnn_torch.py --device cuda);
#   3. inference latency of the trained CNN at batch 1 and 128 (kiln bench
#      --device vs bench/infer_torch.py --device cuda);
#   4. the same CNN with its training set streamed through pinned slots
#      (data.on_device false): warm epoch time against the resident run;
#   5. the same CNN with its convolutions on cuDNN (KILN_CUDA_CONV=cudnn)
#      against kiln's im2col + cuBLASLt kernels;
#   6. per-op profiles of the CNN and MLP steps (kiln train --profile).
#
#   bash bench/run_gpu.sh [BUILD_DIR] [OUT_DIR]
#
# BUILD_DIR (default build) must hold a CUDA build of kiln and bench_mlp; the
# machine needs PyTorch with CUDA for python3. Prints every figure and the
# ratios, and writes them to OUT_DIR/bench_gpu.txt (default: a temp dir).
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
out=${2:-$(mktemp -d)}
mkdir -p "$out"
py=${PYTHON:-python3}
# PyTorch with the library path it was started with (gpu_check.sh puts the
# bundle's and CUDA's libraries first for kiln; they must not shadow the
# wheel's own cuDNN and cuBLAS)
tpy() { env LD_LIBRARY_PATH="${KILN_ORIG_LD-${LD_LIBRARY_PATH:-}}" "$py" "$@"; }
log="${BENCH_LOG:-$out/bench_gpu.txt}" # gpu_check.sh: straight into $OUT, so a cut-off call keeps what was measured
: >"$log"
say() { echo "$*" | tee -a "$log"; }
fails=0
fail() { fails=$((fails + 1)); say "FAILED: $*"; } # the exit status counts these
ran() { # output file, command...: runs it into the file; a failure is counted and named
  local f=$1 rc; shift
  "$@" >"$f" 2>&1
  rc=$?
  [ $rc -eq 0 ] || fail "$(basename "$1") ${*:2} (exit $rc; see $(basename "$f"))"
}
mlp_ratio() { # name, label [, note]: the ratio line of $out/<name>_kiln.txt and <name>_torch.txt
  local k t
  k=$(sed -n 's/^kiln_ms_per_step=\([0-9.]*\).*/\1/p' "$out/$1_kiln.txt")
  t=$(sed -n 's/^torch_ms_per_step=\([0-9.]*\).*/\1/p' "$out/$1_torch.txt")
  [ -n "$k" ] && [ -n "$t" ] && say "$(awk -v k="$k" -v t="$t" -v l="$2" -v n="${3:-}" \
    'BEGIN{printf "%s: kiln %.4f ms/step, torch %.4f ms/step: kiln is %.1fx faster%s", l, k, t, t / k, n}')"
  return 0
}
compare_warm() { # label, run dir, reference run dir, what the reference is: mean warm epochs
  "$py" - "$@" <<'EOF' 2>&1 | tee -a "$log"
import json, sys
def warm(run):
    w = [json.loads(l)["wall_s"] for l in open(run + "/metrics.jsonl") if '"type":"epoch"' in l]
    d = [b - a for a, b in zip(w, w[1:])]
    return sum(d) / len(d) if d else float("nan")
label, run, ref, what = sys.argv[1:5]
s, r = warm(run), warm(ref)
print(f"{label}: {s:.3f} s per warm epoch vs {r:.3f} s {what} ({s / r:.2f}x)")
EOF
}

say "== machine"
say "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv,noheader 2>/dev/null | head -1)"
say "cuda: $("$build/kiln" devices 2>&1 | grep -m1 -i 'runtime' || true)"
say "torch: $(tpy -c 'import torch; print(torch.__version__, torch.version.cuda, "cudnn", torch.backends.cudnn.version())' 2>&1)"
say "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores; $(date -u +%Y-%m-%dT%H:%MZ)"

say "== MLP 784-1024-1024-10, batch 256, Adam (data on the GPU)"
ran "$out/mlp_kiln.txt" "$build/bench_mlp" --device cuda:0 --steps 2000 --warmup 50
sed 's/^/  /' "$out/mlp_kiln.txt" | tee -a "$log"
ran "$out/mlp_torch.txt" tpy bench/mlp_torch.py --device cuda --steps 1000 --warmup 50
sed 's/^/  /' "$out/mlp_torch.txt" | tee -a "$log"
mlp_ratio mlp "MLP" " (target: <= 0.12 ms/step)"

say "== the same MLP with gradient accumulation: a step is 4 batches of 256, one Adam update"
ran "$out/mlpa_kiln.txt" "$build/bench_mlp" --device cuda:0 --accumulate 4 --steps 500 --warmup 20
ran "$out/mlpa_torch.txt" tpy bench/mlp_torch.py --device cuda --accumulate 4 --steps 250 --warmup 20
mlp_ratio mlpa "MLP accumulate 4"

say "== the same MLP in bf16 mixed precision (kiln --bf16, torch.autocast bfloat16; f32 parameters and Adam)"
ran "$out/mlpb_kiln.txt" "$build/bench_mlp" --device cuda:0 --bf16 --steps 2000 --warmup 50
ran "$out/mlpb_torch.txt" tpy bench/mlp_torch.py --device cuda --bf16 --steps 1000 --warmup 50
mlp_ratio mlpb "MLP bf16"

say "== the same MLP in f16 mixed precision (kiln --f16, torch.autocast float16; dynamic loss scaling on both)"
ran "$out/mlph_kiln.txt" "$build/bench_mlp" --device cuda:0 --f16 --steps 2000 --warmup 50
ran "$out/mlph_torch.txt" tpy bench/mlp_torch.py --device cuda --f16 --steps 1000 --warmup 50
mlp_ratio mlph "MLP f16"

say "== reference CNN, Fashion-MNIST, batch 128, Adam, 5 epochs (data on the GPU)"
t0=$(date +%s.%N)
"$build/kiln" train --device cuda:0 --epochs 5 --no-tensorboard --out "$out/cnn_kiln" >"$out/cnn_kiln.log" 2>&1
rc=$?
t1=$(date +%s.%N)
tail -n 12 "$out/cnn_kiln.log" | sed 's/^/  /' | tee -a "$log"
[ $rc -eq 0 ] || fail "kiln train (reference CNN, 5 epochs) (exit $rc)"
"$py" - "$out/cnn_kiln" "$t0" "$t1" <<'EOF' 2>&1 | tee -a "$log"
import json, sys
run, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
ep, en, tel, test = [], {}, [], None
for line in open(run + "/metrics.jsonl"):
    r = json.loads(line)
    if r["type"] == "epoch": ep.append(r)
    elif r["type"] == "energy" and r["scope"] == "epoch": en[r["epoch"]] = r["joules"]
    elif r["type"] == "telemetry": tel.append(r)
    elif r["type"] == "test": test = r
walls = [e["wall_s"] for e in ep]
for i, e in enumerate(ep):
    dt = walls[i] - (walls[i - 1] if i else 0)
    print(f"  kiln epoch {e['epoch']}: {dt:.3f} s with validation and checkpoint (epoch 1: with data loading and "
          f"device start); {e['samples_per_s']:.0f} samples/s (training and validation); "
          f"val acc {e['val_accuracy']:.4f}; energy {en.get(e['epoch'], float('nan')):.1f} J")
warm = [walls[i] - walls[i - 1] for i in range(1, len(walls))]
peak = max((t.get("gpu_mem_mb", 0) for t in tel), default=float("nan"))
print(f"kiln_warm_epoch_s={sum(warm) / max(len(warm), 1):.4f} kiln_test_accuracy={test['accuracy'] if test else float('nan'):.4f} "
      f"kiln_total_s={t1 - t0:.2f} kiln_device_used_mib={peak:.0f}")
EOF
grep -m1 "first step after" "$out/cnn_kiln.log" | sed 's/^/  kiln: /' | tee -a "$log"
ran "$out/cnn_torch.txt" tpy bench/cnn_torch.py --device cuda --epochs 5
sed 's/^/  /' "$out/cnn_torch.txt" | tee -a "$log"
"$py" - "$out" "$log" <<'EOF' 2>&1 | tee -a "$log"
import re, sys
d = sys.argv[1]
txt = open(sys.argv[2]).read()
k = re.search(r"kiln_warm_epoch_s=([0-9.]+)", txt)
t = [float(x) for x in re.findall(r"torch_epoch_s=([0-9.]+)", open(d + "/cnn_torch.txt").read())]
if k and len(t) > 1:
    tw = sum(t[1:]) / len(t[1:])
    kw = float(k.group(1))
    print(f"CNN: kiln {kw:.3f} s per warm epoch, torch {tw:.3f} s: kiln is {tw / kw:.1f}x faster (target: <= 0.10 s, >= 91 % accuracy)")
EOF
say "== inference, the trained reference CNN (kiln bench --device cuda:0 vs PyTorch eval + no_grad): batch in, forward, a value back"
for bsz in 1 128; do
  ran "$out/inf${bsz}_kiln.txt" "$build/kiln" bench "$out/cnn_kiln" --device cuda:0 --batch "$bsz" --iters 500 --warmup 20
  ran "$out/inf${bsz}_torch.txt" tpy bench/infer_torch.py --device cuda --batch "$bsz" --iters 500 --warmup 20
  k=$(sed -n 's/.*p50 \([0-9.]*\) ms.*/\1/p' "$out/inf${bsz}_kiln.txt")
  t=$(sed -n 's/^torch_p50_ms=\([0-9.]*\).*/\1/p' "$out/inf${bsz}_torch.txt")
  [ -n "$k" ] && [ -n "$t" ] && say "$(awk -v k="$k" -v t="$t" -v b="$bsz" \
    'BEGIN{printf "inference batch %d: kiln p50 %.4f ms, torch p50 %.4f ms: kiln is %.1fx faster", b, k, t, t / k}')"
done
say "== the same CNN with its training set streamed from host memory (data.on_device false), 3 epochs"
"$build/kiln" train --device cuda:0 --epochs 3 --set data.on_device=false --no-tensorboard --out "$out/cnn_stream" \
  >"$out/cnn_stream.log" 2>&1 || fail "kiln train (streamed)"
grep -m1 "streams from host memory" "$out/cnn_stream.log" | sed 's/^/  /' | tee -a "$log"
compare_warm "CNN streamed" "$out/cnn_stream" "$out/cnn_kiln" "with the data on the GPU"
say "== the same CNN with f32 convolutions on cuDNN (KILN_CUDA_CONV=cudnn), 3 epochs"
KILN_CUDA_CONV=cudnn "$build/kiln" train --device cuda:0 --epochs 3 --no-tensorboard --out "$out/cnn_cudnn" \
  >"$out/cnn_cudnn.log" 2>&1 || fail "kiln train (cuDNN)"
grep -m1 "convolutions by" "$out/cnn_cudnn.log" | sed 's/^/  /' | tee -a "$log"
compare_warm "CNN cuDNN" "$out/cnn_cudnn" "$out/cnn_kiln" "with im2col + cuBLASLt"
say "== where a step's time goes (kiln --profile: CUDA events per op, eager launches), for the next round of work"
for m in "" models/mlp.yaml; do
  "$build/kiln" train $m --device cuda:0 --steps 400 --profile 300 --no-tensorboard --out "$out/prof_${m//\//_}" \
    >"$out/prof.log" 2>&1 || fail "kiln train --profile ${m:-(reference CNN)}"
  sed -n '/^profile of/,/^epoch/p' "$out/prof.log" | head -n 30 | sed "s|^|  ${m:-cnn}: |" | tee -a "$log"
done
say "results: $log; $fails step(s) failed"
exit $((fails > 0))
