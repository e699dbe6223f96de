#!/usr/bin/env bash
# kiln vs PyTorch on the CPU, in one run: one training step of an MLP
# 784-1024-1024-10 (ReLU, cross-entropy, Adam lr 1e-3), batch 256.
#
#   bash bench/run_cpu.sh [--steps N] [--warmup N] [--threads N] [--rounds N] [--accumulate K] [--bf16 | --f16]
#
# --bf16: mixed precision on both sides (bench_mlp --bf16, torch.autocast
# bfloat16), f32 parameters and Adam; --f16 likewise in float16 with dynamic
# loss scaling (torch.amp.GradScaler).
# --accumulate K: a step is K batches of 256 with gradient accumulation (K
# forward/backward passes, one Adam update) on both sides.
#
# Builds bench_mlp (Release, CPU only) in $KILN_BENCH_BUILD (default
# build-bench/), installs Debian's python3-torch if it is missing (as root),
# then alternates kiln and PyTorch for --rounds rounds so that both see the
# same machine; prints each round and the ratio kiln/torch of the medians.
# Both run with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset, so OpenBLAS
# picks its kernels for this CPU, the same for both. Only ratios within one
# run compare: machines of one kind differ by up to ~1.7x from day to day.
set -euo pipefail
cd "$(dirname "$0")/.."

steps=50 warmup=5 threads=2 rounds=3 acc=1 prec=()
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --accumulate) acc=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --bf16) prec=(--bf16); shift ;;
    --f16) prec=(--f16); shift ;;
    *) echo "usage: bash bench/run_cpu.sh [--steps N] [--warmup N] [--threads N] [--rounds N] [--accumulate K] [--bf16 | --f16]" >&2; exit 2 ;;
  esac
done
build=${KILN_BENCH_BUILD:-build-bench}
py=/usr/bin/python3
clean_env=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)

echo "== build ($build, Release)"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=OFF -DKILN_TESTS=OFF >/dev/null
cmake --build "$build" -j"$(nproc)" --target bench_mlp >/dev/null

if ! "$py" -c 'import torch' 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing python3-torch"
    KILN_BENCH=1 bash scripts/setup.sh
  else
    echo "run_cpu.sh: $py cannot import torch; install Debian's python3-torch (KILN_BENCH=1 bash scripts/setup.sh as root)" >&2
    exit 1
  fi
fi

echo "== machine"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores online;" \
     "avx512f: $(grep -qw avx512f /proc/cpuinfo && echo yes || echo no)"
echo "date: $(date -u +%Y-%m-%dT%H:%MZ); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
"${clean_env[@]}" "$py" - "$threads" <<'EOF' || true
import ctypes, sys, torch
torch.set_num_threads(int(sys.argv[1]))
try:  # torch links libopenblas.so.0; asking the loaded copy gives the core it chose
    ob = ctypes.CDLL("libopenblas.so.0")
    ob.openblas_get_corename.restype = ctypes.c_char_p
    ob.openblas_get_config.restype = ctypes.c_char_p
    print(f"torch {torch.__version__}, OpenBLAS core {ob.openblas_get_corename().decode()}"
          f" ({ob.openblas_get_config().decode()})")
except (OSError, AttributeError) as e:
    print(f"torch {torch.__version__}, OpenBLAS core unknown ({e})")
EOF
echo "kiln links: $(ldd "$build/bench_mlp" | grep -o 'libopenblas[^ ]* => [^ ]*' | head -1)"

kiln_ms=() torch_ms=() kiln_min=() torch_min=()
for r in $(seq 1 "$rounds"); do
  echo "== round $r of $rounds ($threads threads, $steps steps after $warmup warmup)"
  k=$("${clean_env[@]}" "$build/bench_mlp" --steps "$steps" --warmup "$warmup" --threads "$threads" --accumulate "$acc" ${prec[@]+"${prec[@]}"})
  t=$("${clean_env[@]}" "$py" bench/mlp_torch.py --steps "$steps" --warmup "$warmup" --threads "$threads" --accumulate "$acc" ${prec[@]+"${prec[@]}"})
  echo "$k"
  echo "$t"
  kiln_ms+=("$(echo "$k" | sed -n 's/^kiln_ms_per_step=\([0-9.]*\).*/\1/p')")
  torch_ms+=("$(echo "$t" | sed -n 's/^torch_ms_per_step=\([0-9.]*\).*/\1/p')")
  kiln_min+=("$(echo "$k" | sed -n 's/^kiln_ms_per_step=.* kiln_ms_min=\([0-9.]*\).*/\1/p')")
  torch_min+=("$(echo "$t" | sed -n 's/^torch_ms_per_step=.* torch_ms_min=\([0-9.]*\).*/\1/p')")
done

echo "== summary (median ms/step of each round; ratio = kiln / torch)"
"$py" - "${kiln_ms[*]}" "${torch_ms[*]}" "${kiln_min[*]}" "${torch_min[*]}" <<'EOF'
import statistics, sys
k, t, kmin, tmin = ([float(v) for v in a.split()] for a in sys.argv[1:5])
for i, (a, b) in enumerate(zip(k, t), 1):
    print(f"round {i}: kiln {a:.2f} ms, torch {b:.2f} ms, ratio {a / b:.3f}")
km, tm = statistics.median(k), statistics.median(t)
# the fastest step of all rounds: less sensitive to other load on the machine
print(f"fastest step: kiln {min(kmin):.2f} ms, torch {min(tmin):.2f} ms, ratio {min(kmin) / min(tmin):.3f}")
print(f"kiln_ms_per_step={km:.3f} torch_ms_per_step={tm:.3f} ratio_kiln_over_torch={km / tm:.3f}")
EOF
