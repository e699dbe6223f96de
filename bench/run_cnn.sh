#!/usr/bin/env bash
# kiln vs PyTorch on the reference CNN (Fashion-MNIST, batch 128, Adam), or
# with `bash bench/run_cnn.sh EPOCHS cnn_bn` the batchnorm/residual CNN, on
# the CPU with 2 threads, in one run: the whole `kiln train` command against
# the PyTorch script doing the same work. Prints both and the ratio.
# A third argument names the build directory (default build).
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are unset for both (benchmarks only).
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-1}
model=${2:-cnn} # cnn (the reference CNN) or cnn_bn (models/cnn_bn.yaml)
build=${3:-build}
case "$model" in cnn) config=() ;; cnn_bn) config=(models/cnn_bn.yaml) ;; *) echo "model: cnn or cnn_bn" >&2; exit 2 ;; esac
. bench/cpu_common.sh
bench_build "$build"
clean=("${bench_clean[@]}")
bench_machine
out=$(mktemp -d)
t0=$(date +%s.%N)
"${clean[@]}" "$build/kiln" train "${config[@]}" --epochs "$epochs" --threads 2 --out "$out/run" >"$out/kiln.log" 2>&1
t1=$(date +%s.%N)
kiln_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')
kiln_acc=$(sed -n 's/^test: .*accuracy \([0-9.]*\).*/\1/p' "$out/kiln.log")
"${clean[@]}" /usr/bin/python3 bench/cnn_torch.py --model "$model" --threads 2 --epochs "$epochs" >"$out/torch.log" 2>&1
torch_s=$(sed -n 's/^torch_total_s=//p' "$out/torch.log")
torch_acc=$(sed -n 's/^torch_test_accuracy=//p' "$out/torch.log")
printf 'kiln  train (whole command, %s epoch): %6.1f s  test accuracy %s\n' "$epochs" "$kiln_s" "$kiln_acc"
printf 'torch (same work):                     %6.1f s  test accuracy %s\n' "$torch_s" "$torch_acc"
awk -v k="$kiln_s" -v t="$torch_s" 'BEGIN{printf "ratio kiln/torch: %.2f\n", k / t}'
rm -rf "$out"
