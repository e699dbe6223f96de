#!/usr/bin/env bash
# kiln report ($1 = build dir): on a finished tiny run, report.md and PNG
# plots (loss, accuracy, lr, throughput, telemetry; > 1 kB each) and a
# summary matching metrics.jsonl; on a hand-written metrics.jsonl of a
# resumed GPU run: the GPU plot, peak GPU memory and energy summed over the
# two processes; a truncated last line is skipped with a warning; a test
# result that a resume from an earlier step superseded is marked so; errors
# for a missing run and a missing gnuplot.
. "$(dirname "$0")/lib/check.sh" "$1"
big() { [ -f "$1" ] && [ "$(stat -c %s "$1")" -gt 1024 ]; }
command -v "${KILN_GNUPLOT:-gnuplot}" >/dev/null || { echo "skip: gnuplot not installed (scripts/setup.sh installs gnuplot-nox)"; exit 77; }

"$kiln" train models/mlp.yaml --steps 30 --set data.limit=2000 --set data.val_split=500 --set train.log_every=5 \
  --set train.telemetry_interval=0.2 --threads 2 --no-tensorboard --out "$tmp/run" >"$tmp/train.log" 2>&1
check "tiny run trains" '[ $? -eq 0 ]'
"$kiln" report "$tmp/run" >"$tmp/report.log" 2>&1
check "report exits 0" '[ $? -eq 0 ]'
for p in loss accuracy lr throughput telemetry; do
  check "plots/$p.png > 1 kB" 'big "$tmp/run/plots/$p.png"'
done
check "no GPU plot without GPU telemetry" '[ ! -e "$tmp/run/plots/gpu.png" ]'
check "PNG signature" '[ "$(head -c 8 "$tmp/run/plots/loss.png" | od -An -tx1 | tr -d " \n")" = 89504e470d0a1a0a ]'
md="$tmp/run/report.md"
check "report.md links every plot" '[ "$(grep -c "^!\[.*\](plots/.*\.png)$" "$md")" -eq 5 ]'
tacc=$(grep '"type":"test"' "$tmp/run/metrics.jsonl" | sed 's/.*"accuracy":\([0-9.]*\).*/\1/')
vacc=$(grep '"type":"epoch"' "$tmp/run/metrics.jsonl" | tail -n 1 | sed 's/.*"val_accuracy":\([0-9.]*\).*/\1/')
check "summary: test accuracy from metrics.jsonl" 'grep -q "test loss / accuracy  *[0-9.]* / $(printf %.4f "$tacc")" "$tmp/report.log" && grep -q "| test loss / accuracy | [0-9.]* / $(printf %.4f "$tacc") |" "$md"'
check "summary: validation, steps, time, samples/s, peak RSS" \
  'grep -q "val loss / accuracy  *[0-9.]* / $(printf %.4f "$vacc")" "$tmp/report.log" && grep -q "steps  *30 (2 epochs completed)$" "$tmp/report.log" &&
   grep -q "time  *[0-9.]* s" "$tmp/report.log" && grep -q "samples/s  *[0-9]* mean" "$tmp/report.log" && grep -q "peak RSS  *[0-9.]* MB" "$tmp/report.log"'
check "the test record names its step" 'grep -q "^{\"type\":\"test\",\"step\":30," "$tmp/run/metrics.jsonl"'
check "summary names the run" 'grep -q "^run mlp " "$tmp/report.log" && grep -q "^# Run report: mlp" "$md"'

# a resumed GPU run, written by hand (steps 3-4 repeated by the second process)
g="$tmp/gpu"
mkdir -p "$g"
{
  for s in 1 2 3 4; do echo "{\"type\":\"step\",\"step\":$s,\"epoch\":1,\"loss\":$((10 - s)).5,\"accuracy\":0.$s,\"lr\":0.01,\"wall_s\":$s.0}"; done
  echo '{"type":"telemetry","step":2,"wall_s":2.0,"cpu_s":1.0,"cpu_util":1.0,"rss_mb":100.0,"rss_peak_mb":150.0,"gpu_util":90,"gpu_mem_util":10,"gpu_mem_mb":2048.0,"gpu_mem_total_mb":81920.0,"gpu_power_w":300.000,"gpu_temp_c":60,"gpu_sm_mhz":1700,"gpu_mem_mhz":2600,"gpu_energy_j":600.000}'
  echo '{"type":"throughput","step":4,"samples_per_s":1000.0}'
  echo '{"type":"energy","scope":"run","epoch":0,"step":4,"joules":1200.000,"source":"nvml_energy_counter"}'
  for s in 3 4 5 6; do echo "{\"type\":\"step\",\"step\":$s,\"epoch\":1,\"loss\":$((10 - s)).25,\"accuracy\":0.$s,\"lr\":0.01,\"wall_s\":$((s - 2)).0}"; done
  echo '{"type":"telemetry","step":6,"wall_s":3.5,"cpu_s":2.0,"cpu_util":1.0,"rss_mb":120.0,"rss_peak_mb":140.0,"gpu_util":70,"gpu_mem_util":10,"gpu_mem_mb":4096.0,"gpu_mem_total_mb":81920.0,"gpu_power_w":200.000,"gpu_temp_c":61,"gpu_sm_mhz":1700,"gpu_mem_mhz":2600,"gpu_energy_j":700.000}'
  echo '{"type":"throughput","step":6,"samples_per_s":3000.0}'
  echo '{"type":"energy","scope":"run","epoch":0,"step":6,"joules":800.000,"source":"nvml_energy_counter"}'
  printf '{"type":"step","step":7,"los'
} >"$g/metrics.jsonl"
"$kiln" report "$g" >"$tmp/g.log" 2>&1
check "report on a resumed GPU run" '[ $? -eq 0 ] && big "$g/plots/gpu.png" && big "$g/plots/loss.png"'
check "truncated last line skipped with a warning" 'grep -q "metrics.jsonl: skipped 1 malformed line (first: line 15)" "$tmp/g.log"'
check "resumed: 6 steps, time over both processes" 'grep -q "steps  *6 (0 epochs completed), resumed" "$tmp/g.log" && grep -q "time  *8.0 s" "$tmp/g.log"'
check "resumed: last loss of the second process" 'grep -q "train loss / accuracy  *4.2500 / 0.6000 (last step)" "$tmp/g.log"'
check "GPU summary: peak memory, energy of both processes, samples/s" \
  'grep -q "peak GPU memory  *4096.0 MB" "$tmp/g.log" && grep -q "energy (GPU)  *2000.0 J = 0.5556 Wh (nvml_energy_counter)" "$tmp/g.log" &&
   grep -q "peak RSS  *150.0 MB" "$tmp/g.log" && grep -q "samples/s  *2000 mean, 3000 last" "$tmp/g.log" && grep -q "GPU  *80% busy" "$tmp/g.log"'

# tested at step 4, then resumed from step 2 and stopped at step 3 (no test since)
st="$tmp/stale"
mkdir -p "$st"
{
  echo '{"type":"start","wall_s":0.1}'
  for s in 1 2 3 4; do echo "{\"type\":\"step\",\"step\":$s,\"epoch\":1,\"loss\":1.$s,\"accuracy\":0.$s,\"lr\":0.01,\"wall_s\":$s.0}"; done
  echo '{"type":"test","step":4,"loss":0.5,"accuracy":0.875,"wall_s":4.5}'
  echo '{"type":"start","wall_s":0.1}'
  echo '{"type":"step","step":3,"epoch":1,"loss":1.25,"accuracy":0.3,"lr":0.01,"wall_s":1.0}'
} >"$st/metrics.jsonl"
KILN_GNUPLOT=/nonexistent "$kiln" report "$st" >"$tmp/st.log" 2>&1
check "a test superseded by a resume: marked with its step" \
  'grep -q "test loss / accuracy  *0.5000 / 0.8750 (at step 4, superseded by a resume)" "$tmp/st.log" && grep -q "steps  *3 " "$tmp/st.log"'
sed '$d' "$st/metrics.jsonl" >"$st/m" && mv "$st/m" "$st/metrics.jsonl"
KILN_GNUPLOT=/nonexistent "$kiln" report "$st" >"$tmp/st2.log" 2>&1
check "a test with no step after it: the final result" 'grep -q "test loss / accuracy  *0.5000 / 0.8750$" "$tmp/st2.log"'

# errors
"$kiln" report "$tmp/nothing" >"$tmp/e1.log" 2>&1
check "missing run directory" '[ $? -eq 1 ] && grep -q "nothing/metrics.jsonl: cannot open: No such file or directory" "$tmp/e1.log"'
KILN_GNUPLOT=/nonexistent/gnuplot "$kiln" report "$tmp/run" >"$tmp/e2.log" 2>&1
check "no gnuplot: report.md without plots, and why" '[ $? -eq 0 ] && grep -q "/nonexistent/gnuplot not found: no plots" "$tmp/e2.log" && grep -q "no plots: gnuplot was not available" "$tmp/run/report.md"'
KILN_GNUPLOT=false "$kiln" report "$tmp/run" >"$tmp/e4.log" 2>&1
check "gnuplot failing: a warning with its exit status" '[ $? -eq 0 ] && grep -q "warning: false failed (exit status 1) drawing the plots" "$tmp/e4.log"'
"$kiln" report >"$tmp/e3.log" 2>&1
check "usage without a run" '[ $? -eq 2 ] && grep -q "usage: kiln report RUN_DIR" "$tmp/e3.log"'
check_done test_report
