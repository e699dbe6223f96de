#!/usr/bin/env bash
# kiln vs PyTorch on the sequence models (models/char_lstm.yaml,
# models/gpt_small.yaml), in one run: ms per training step (forward,
# backward, clipping, Adam/AdamW) on the fortunes corpus, the mean over
# --steps steps after --warmup, and the ratio kiln / PyTorch.
#   bash bench/run_seq.sh [--steps 10] [--warmup 3] [--threads 2] [--device cpu|cuda:0]
#                         [--lstm-batch 32] [--gpt-batch 8] [--build DIR]
# On the CPU the GPT runs at batch 8 (32 in its config) to keep the run
# short; both sides use the same batch. OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE
# are unset for both (benchmarks only).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=10 warmup=3 threads=2 device=cpu lstm_b=32 gpt_b=8 build=build
while [ $# -gt 0 ]; do
  case "$1" in
    --steps) steps=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --lstm-batch) lstm_b=$2; shift 2 ;;
    --gpt-batch) gpt_b=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    *) echo "run_seq.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
py=/usr/bin/python3
. bench/cpu_common.sh
if [ "$device" = cpu ]; then
  bench_build "$build"
  tdev=cpu
else
  py=python3 # the GPU machines' PyTorch
  tdev=cuda
fi
[ -e /usr/share/games/fortunes ] || { echo "run_seq.sh: no corpus (apt-get install fortunes)" >&2; exit 1; }
clean=("${bench_clean[@]}")
echo "$(bench_machine); device $device, $threads threads"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for m in char_lstm gpt_small; do
  b=$lstm_b
  [ "$m" = gpt_small ] && b=$gpt_b
  "${clean[@]}" "$build/kiln" train "models/$m.yaml" --device "$device" --threads "$threads" --steps $((warmup + steps)) \
    --set train.batch="$b" --set train.log_every=1 --out "$out/$m" >"$out/$m.log" 2>&1 ||
    { echo "kiln train $m failed:"; tail -n 5 "$out/$m.log"; exit 1; }
  # wall_s of the step records: the mean step after the warmup
  kiln_ms=$(grep '"type":"step"' "$out/$m/metrics.jsonl" | sed 's/.*"step":\([0-9]*\),.*"wall_s":\([0-9.]*\).*/\1 \2/' |
    awk -v w="$warmup" -v n="$((warmup + steps))" '$1 == w {a = $2} $1 == n {b = $2} END {printf "%.2f", 1e3 * (b - a) / (n - w)}')
  "${clean[@]}" "$py" bench/seq_torch.py --model "$m" --steps "$steps" --warmup "$warmup" --batch "$b" \
    --threads "$threads" --device "$tdev" >"$out/$m.torch" 2>&1 || { echo "torch $m failed:"; tail -n 5 "$out/$m.torch"; exit 1; }
  torch_ms=$(sed -n 's/^torch_ms_per_step=//p' "$out/$m.torch")
  printf '%-10s batch %3s: kiln %9.2f ms/step  torch %9.2f ms/step  ratio kiln/torch %.2f  (%s; kiln %s)\n' "$m" "$b" \
    "$kiln_ms" "$torch_ms" "$(awk -v k="$kiln_ms" -v t="$torch_ms" 'BEGIN{print k / t}')" \
    "$(grep -o 'torch_vocab=[0-9]*' "$out/$m.torch")" "$(grep -o 'vocabulary [0-9]*' "$out/$m.log")"
done
