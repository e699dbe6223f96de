#!/usr/bin/env bash
# Writes that fail half way ($1 = build dir), made with an LD_PRELOAD shim
# (tests/fixtures/fail_write.c, built here with cc) whose write(2) to
# matching paths fails with ENOSPC: a failed `kiln export --onnx FILE
# --external-data` leaves the old FILE and FILE.data as they were (and
# loadable by onnxruntime when installed); a FIFO as the export path is
# refused and stays a FIFO; a text run's checkpoints have vocab.txt, and one
# whose vocab.txt cannot be written is never named by latest; `kiln report`
# keeps the old report.md when writing it fails, and an old plot when
# gnuplot's PNG comes out torn, naming the plot (needs gnuplot).
# Skipped (77) without a C compiler.
. "$(dirname "$0")/lib/check.sh" "$1"
cc=${CC:-cc}
command -v "$cc" >/dev/null && "$cc" -shared -fPIC -o "$tmp/libfail_write.so" tests/fixtures/fail_write.c -ldl 2>"$tmp/cc.log" ||
  { echo "skip: cannot build the write-failing shim (no C compiler)"; exit 77; }
# a sanitizer build's runtime must come first among preloaded libraries
asan=$(ldd "$kiln" 2>/dev/null | awk '/libasan/ {print $3; exit}')
failing() { FAIL_WRITE_GLOB="$1" LD_PRELOAD="${asan:+$asan:}$tmp/libfail_write.so" "${@:2}"; }

# ONNX with external data: both files are written before either is renamed in
"$kiln" train models/mlp.yaml --steps 4 --set train.checkpoint_every=2 --set data.limit=1000 --set data.val_split=200 \
  --threads 2 --no-tensorboard --out "$tmp/mlp" >"$tmp/mlp.log" 2>&1
check "mlp trains with two checkpoints" '[ $? -eq 0 ] && [ -d "$tmp/mlp/checkpoints/step-000000002" ] && [ -d "$tmp/mlp/checkpoints/step-000000004" ]'
m="$tmp/m.onnx"
"$kiln" export "$tmp/mlp/checkpoints/step-000000002" --onnx "$m" --external-data >"$tmp/ex1.log" 2>&1
check "export with external data" '[ $? -eq 0 ] && [ -s "$m" ] && [ -s "$m.data" ]'
cp "$m" "$tmp/m.before"; cp "$m.data" "$tmp/m.data.before"
failing "$m.tmp.*" "$kiln" export "$tmp/mlp/checkpoints/step-000000004" --onnx "$m" --external-data >"$tmp/ex2.log" 2>&1
check "a failed model write fails the export, naming the file" '[ $? -ne 0 ] && grep -q "m.onnx: cannot write temporary file .*No space left on device" "$tmp/ex2.log"'
check "... and leaves the old model and its data as they were" 'cmp -s "$m" "$tmp/m.before" && cmp -s "$m.data" "$tmp/m.data.before"'
failing "$m.data.tmp.*" "$kiln" export "$tmp/mlp/checkpoints/step-000000004" --onnx "$m" --external-data >"$tmp/ex3.log" 2>&1
check "a failed data write: the same" '[ $? -ne 0 ] && cmp -s "$m" "$tmp/m.before" && cmp -s "$m.data" "$tmp/m.data.before"'
check "no temporaries left" '[ -z "$(ls "$tmp" | grep "\.tmp\.\|\.old\.")" ]'
py=${PYTHON:-python3}
if "$py" -c "import onnxruntime" 2>/dev/null; then
  check "the old pair still loads in onnxruntime" '"$py" -c "import onnxruntime as o; o.InferenceSession(\"$m\")" 2>"$tmp/ort.log"'
fi
"$kiln" export "$tmp/mlp/checkpoints/step-000000004" --onnx "$m" --external-data >"$tmp/ex4.log" 2>&1
check "an export that works replaces both" '[ $? -eq 0 ] && ! cmp -s "$m.data" "$tmp/m.data.before"'
mkfifo "$tmp/fifo"
"$kiln" export "$tmp/mlp" --onnx "$tmp/fifo" >"$tmp/ex5.log" 2>&1
check "a FIFO as the export path is refused and stays a FIFO" '[ $? -ne 0 ] && [ -p "$tmp/fifo" ] && grep -q "fifo: is a FIFO, not a regular file; not replacing it" "$tmp/ex5.log"'

# text checkpoints: vocab.txt is written before the checkpoint is published
tiny_lm "$tmp/lm.yaml" "{type: lstm, hidden: 8}" \
  "train: {steps: 9, steps_per_epoch: 4, checkpoint_every: 3, val_batches: 1, batch: 2, seed: 3, log_every: 100}"
"$kiln" train "$tmp/lm.yaml" --threads 2 --no-tensorboard --out "$tmp/lm" >"$tmp/lm.log" 2>&1
check "text run: every checkpoint has vocab.txt" '[ $? -eq 0 ] && [ "$(ls -d "$tmp"/lm/checkpoints/step-* | wc -l)" -eq 5 ] &&
  [ -z "$(for d in "$tmp"/lm/checkpoints/step-*; do [ -s "$d/vocab.txt" ] || echo "$d"; done)" ]'
failing "*/lmv/checkpoints/*step-000000006*/vocab.txt.tmp.*" "$kiln" train "$tmp/lm.yaml" --threads 2 --no-tensorboard \
  --out "$tmp/lmv" >"$tmp/lmv.log" 2>&1
check "a failed vocab.txt write fails the run, naming it" '[ $? -ne 0 ] && grep -q "vocab.txt: cannot write temporary file .*No space left on device" "$tmp/lmv.log"'
check "... and latest still names the previous, complete checkpoint" \
  '[ "$(cat "$tmp/lmv/checkpoints/latest")" = step-000000004 ] && [ -s "$tmp/lmv/checkpoints/step-000000004/vocab.txt" ] && [ ! -e "$tmp/lmv/checkpoints/step-000000006" ]'

# kiln report: report.md atomically, each PNG renamed in only when whole
if command -v "${KILN_GNUPLOT:-gnuplot}" >/dev/null; then
  "$kiln" report "$tmp/mlp" >"$tmp/rep1.log" 2>&1
  check "report of the mlp run" '[ $? -eq 0 ] && [ -s "$tmp/mlp/report.md" ] && [ -s "$tmp/mlp/plots/accuracy.png" ]'
  cp "$tmp/mlp/report.md" "$tmp/report.before"; cp "$tmp/mlp/plots/accuracy.png" "$tmp/acc.before"
  # a stand-in gnuplot whose accuracy.png is cut short, as on a full disk
  # (gnuplot writes through stdio, which the shim does not reach)
  cat >"$tmp/gnuplot" <<'SH'
#!/bin/sh
sed -n "s/^set output '\(.*\)'$/\1/p" | while read -r o; do
  case "$o" in *accuracy*) head -c 2000 "$PNG" >"$o" ;; *) cp "$PNG" "$o" ;; esac
done
SH
  chmod +x "$tmp/gnuplot"
  PNG="$tmp/acc.before" KILN_GNUPLOT="$tmp/gnuplot" "$kiln" report "$tmp/mlp" >"$tmp/rep2.log" 2>&1
  check "a torn plot is named and the old one kept" '[ $? -eq 0 ] && grep -q "plots/accuracy.png: not written" "$tmp/rep2.log" &&
    cmp -s "$tmp/mlp/plots/accuracy.png" "$tmp/acc.before" && ! grep -q "plots/accuracy.png" "$tmp/mlp/report.md" && grep -q "plots/loss.png" "$tmp/mlp/report.md"'
  "$kiln" report "$tmp/mlp" >"$tmp/rep3.log" 2>&1
  cp "$tmp/mlp/report.md" "$tmp/report.before"
  failing "*/mlp/report.md*" "$kiln" report "$tmp/mlp" >"$tmp/rep4.log" 2>&1
  check "a failed report.md write fails and keeps the old report" '[ $? -ne 0 ] && grep -q "report.md: cannot write temporary file .*No space left on device" "$tmp/rep4.log" &&
    cmp -s "$tmp/mlp/report.md" "$tmp/report.before"'
  check "no temporary plots left" '[ -z "$(ls "$tmp/mlp/plots" | grep "\.tmp\.")" ] && [ -z "$(ls "$tmp/mlp" | grep "\.tmp\.")" ]'
else
  echo "skip report checks: gnuplot not installed"
fi

check_done test_failed_writes
