#!/usr/bin/env bash
# kiln vs PyTorch on inference, in one run: the reference CNN's forward pass
# (eval mode) at batch 1 and batch 128 on the CPU with 2 threads; `kiln bench`
# on a checkpoint of the reference CNN (one training step, to have weights)
# against bench/infer_torch.py. Prints p50/p99 latency and the p50 ratio.
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset for both (benchmarks only).
#
#   bash bench/run_infer.sh [ITERS]
set -euo pipefail
cd "$(dirname "$0")/.."
iters=${1:-200}
. bench/cpu_common.sh
bench_build
clean=("${bench_clean[@]}")
bench_machine
out=$(mktemp -d)
"${clean[@]}" ./build/kiln train --steps 1 --threads 2 --no-tensorboard --out "$out/run" >"$out/train.log" 2>&1
for b in 1 128; do
  k=$("${clean[@]}" ./build/kiln bench "$out/run" --batch "$b" --iters "$iters" --threads 2 2>&1)
  t=$("${clean[@]}" /usr/bin/python3 bench/infer_torch.py --batch "$b" --iters "$iters" --threads 2 2>&1)
  kp50=$(echo "$k" | sed -n 's/.*p50 \([0-9.]*\) ms.*/\1/p')
  kp99=$(echo "$k" | sed -n 's/.*p99 \([0-9.]*\) ms.*/\1/p')
  tp50=$(echo "$t" | sed -n 's/^torch_p50_ms=\([0-9.]*\).*/\1/p')
  tp99=$(echo "$t" | sed -n 's/.*torch_p99_ms=\([0-9.]*\).*/\1/p')
  printf 'batch %3d: kiln p50 %8.3f ms p99 %8.3f ms | torch p50 %8.3f ms p99 %8.3f ms | ratio kiln/torch (p50) %s\n' \
    "$b" "$kp50" "$kp99" "$tp50" "$tp99" "$(awk -v k="$kp50" -v t="$tp50" 'BEGIN{printf "%.2f", k / t}')"
done
rm -rf "$out"
