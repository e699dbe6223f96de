#!/usr/bin/env bash
# Telemetry in `kiln train` ($1 = build dir):
#  1. CPU-only: {"type":"telemetry"} records with CPU time and memory in
#     metrics.jsonl at about train.telemetry_interval, values in the progress line;
#  2. $KILN_NVML_LIB pointing at a non-library: "no GPU telemetry" printed
#     once, training goes on; train.telemetry_interval=0 turns telemetry off;
#  3. a fake NVML library (tests/fixtures/fake_nvml.c, built here with cc):
#     GPU fields, per-epoch and run energy (from the energy counter, and
#     integrated from power when the counter is unsupported), samples per
#     joule, values NVML does not give left out (not 0), no energy record
#     when nothing was measured, NVML's start not counted in the seconds,
#     kiln report's energy (also of a run that died before its run record),
#     sys/ scalars in TensorBoard (when the tensorboard package is installed).
. "$(dirname "$0")/lib/check.sh" "$1"
py=${PYTHON:-python3}
common=(models/mlp.yaml --steps 30 --set data.limit=2000 --set data.val_split=500 --set train.log_every=5 --threads 2)
field() { grep "\"type\":\"$2\"" "$1" | tail -n 1 | sed "s/.*\"$3\":\([^,}]*\).*/\1/"; }

# 1 + 2: CPU only, NVML path is not a library
echo "not a library" >"$tmp/libfake.so"
KILN_NVML_LIB="$tmp/libfake.so" "$kiln" train "${common[@]}" --set train.telemetry_interval=0.02 --out "$tmp/cpu" >"$tmp/cpu.log" 2>&1
check "trains without NVML" '[ $? -eq 0 ] && grep -q "^test: loss" "$tmp/cpu.log"'
check "one 'no GPU telemetry' message naming the library" \
  '[ "$(grep -c "no GPU telemetry" "$tmp/cpu.log")" -eq 1 ] && grep -q "no GPU telemetry (.*libfake.so" "$tmp/cpu.log"'
n=$(grep -c '"type":"telemetry"' "$tmp/cpu/metrics.jsonl")
echo "     $n telemetry records"
check "telemetry records in metrics.jsonl" '[ "$n" -ge 2 ]'
check "CPU time and peak RSS recorded" \
  'awk -v c="$(field "$tmp/cpu/metrics.jsonl" telemetry cpu_s)" -v r="$(field "$tmp/cpu/metrics.jsonl" telemetry rss_peak_mb)" "BEGIN{exit !(c > 0.1 && r > 10)}"'
check "no GPU fields or energy records" '! grep -q "gpu_util\|\"type\":\"energy\"" "$tmp/cpu/metrics.jsonl"'
check "progress line shows cpu and rss" 'grep -q "step 30/30 .* cpu [0-9.]* cores  rss [0-9]* MB" "$tmp/cpu.log"'
# a peak is at least now; cpu_util where a sample spans enough time (which
# samples: test_telemetry.c, against each sample's own span)
check "rss_peak_mb >= rss_mb; cpu_util measured" \
  '"$py" -c "
import json, sys
t = [r for r in map(json.loads, open(sys.argv[1])) if r[\"type\"] == \"telemetry\"]
sys.exit(not t or any(r[\"rss_peak_mb\"] < r[\"rss_mb\"] for r in t) or not any(\"cpu_util\" in r for r in t))" "$tmp/cpu/metrics.jsonl"'

"$kiln" train "${common[@]}" --steps 5 --set train.telemetry_interval=0 --out "$tmp/off" >"$tmp/off.log" 2>&1
check "telemetry_interval=0: no records, no message" \
  '[ $? -eq 0 ] && ! grep -q "\"type\":\"telemetry\"" "$tmp/off/metrics.jsonl" && ! grep -q "GPU telemetry" "$tmp/off.log"'
"$kiln" train "${common[@]}" --steps 5 --set train.telemetry_interval=-1 --out "$tmp/bad" >"$tmp/bad.log" 2>&1
check "negative telemetry_interval message" '[ $? -ne 0 ] && grep -q "telemetry_interval must be 0 (off) or 0.01 to 86400 seconds, got -1" "$tmp/bad.log"'

# 3: a fake NVML
cc=${CC:-cc}
if ! command -v "$cc" >/dev/null || ! "$cc" -shared -fPIC -o "$tmp/libnvml_fake.so" tests/fixtures/fake_nvml.c 2>"$tmp/cc.log"; then
  echo "skip fake NVML checks (no C compiler)"
else
  KILN_NVML_LIB="$tmp/libnvml_fake.so" "$kiln" train "${common[@]}" --set train.telemetry_interval=0.2 --out "$tmp/gpu" >"$tmp/gpu.log" 2>&1
  check "trains with the fake NVML" '[ $? -eq 0 ] && ! grep -q "no GPU telemetry" "$tmp/gpu.log"'
  m="$tmp/gpu/metrics.jsonl"
  check "GPU fields from NVML" 'grep -q "\"gpu_util\":42,\"gpu_mem_util\":17,\"gpu_mem_mb\":1024.0,\"gpu_mem_total_mb\":81920.0,\"gpu_power_w\":250.000,\"gpu_temp_c\":61,\"gpu_sm_mhz\":1755,\"gpu_mem_mhz\":2619" "$m"'
  check "energy per epoch (2) and per run, from the counter" \
    '[ "$(grep -c "\"type\":\"energy\",\"scope\":\"epoch\".*nvml_energy_counter" "$m")" -eq 2 ] && grep -q "\"scope\":\"run\".*nvml_energy_counter" "$m"'
  # 250 W over the seconds the run record covers (the fake counter follows the clock)
  j=$(field "$m" energy joules)
  secs=$(field "$m" energy seconds)
  w=$(field "$m" energy mean_w)
  echo "     run energy $j J over $secs s, mean $w W"
  check "run energy = 250 W x its seconds" \
    'awk -v j="$j" -v s="$secs" -v w="$w" "BEGIN{exit !(s > 0 && j > 0 && w >= 225 && w <= 275 && j >= 225 * s && j <= 275 * s)}"'
  check "progress line shows the GPU" 'grep -q "gpu 42% 1.0 GB 250 W" "$tmp/gpu.log"'
  n=$(field "$m" energy samples)
  spj=$(field "$m" energy samples_per_j)
  echo "     run: $n samples, $spj samples/J"
  check "samples per joule = samples / joules, over all 30 steps (not only the 2 epochs ended)" \
    'awk -v n="$n" -v j="$j" -v p="$spj" "BEGIN{exit !(n == 30 * 128 && p > 0 && p / (n / j) > 0.999 && p / (n / j) < 1.001)}"'
  "$kiln" report "$tmp/gpu" >"$tmp/rep.log" 2>&1
  check "kiln report: the run's energy and samples per joule" \
    'grep -q "energy (GPU) .*$(awk -v j="$j" "BEGIN{printf \"%.1f\", j}") J" "$tmp/rep.log" && grep -q "samples per joule" "$tmp/rep.log"'
  # a process that died before its run record: its epochs' energy counts
  mkdir -p "$tmp/dead" && grep -v '"scope":"run"' "$m" >"$tmp/dead/metrics.jsonl"
  ej=$(grep '"scope":"epoch"' "$m" | sed 's/.*"joules":\([^,]*\).*/\1/' | awk '{s += $1} END {printf "%.1f", s}')
  "$kiln" report "$tmp/dead" >"$tmp/rep_dead.log" 2>&1
  check "kiln report of a run without its run record: the epochs' energy" 'grep -q "energy (GPU) *$ej J" "$tmp/rep_dead.log"'
  # a resumed run: each process's energy counts, by its run record, or by its epochs where it has none
  KILN_NVML_LIB="$tmp/libnvml_fake.so" "$kiln" train "${common[@]}" --steps 12 --set train.telemetry_interval=0.2 \
    --no-tensorboard --out "$tmp/res" >"$tmp/res1.log" 2>&1
  KILN_NVML_LIB="$tmp/libnvml_fake.so" "$kiln" train --resume "$tmp/res" --steps 30 --threads 2 --no-tensorboard \
    >"$tmp/res2.log" 2>&1
  sum_j() { grep "\"scope\":\"$2\"" "$1" | sed 's/.*"joules":\([^,]*\).*/\1/' | awk '{s += $1} END {printf "%.1f", s}'; }
  "$kiln" report "$tmp/res" >"$tmp/rep_res.log" 2>&1
  check "resumed run: the report adds both processes' run energy" \
    '[ "$(grep -c "\"type\":\"start\"" "$tmp/res/metrics.jsonl")" -eq 2 ] && grep -q "energy (GPU) *$(sum_j "$tmp/res/metrics.jsonl" run) J" "$tmp/rep_res.log"'
  # the second process died before its run record: its epochs count instead
  mkdir -p "$tmp/res_dead" && awk '/"scope":"run"/ {r++; if (r == 2) next} {print}' "$tmp/res/metrics.jsonl" \
    >"$tmp/res_dead/metrics.jsonl"
  want=$(awk '/"type":"start"/ {p++} /"scope":"run"/ && p == 1 {sub(/.*"joules":/, ""); sub(/,.*/, ""); s += $0}
              /"scope":"epoch"/ && p == 2 {sub(/.*"joules":/, ""); sub(/,.*/, ""); s += $0} END {printf "%.1f", s}' "$tmp/res_dead/metrics.jsonl")
  "$kiln" report "$tmp/res_dead" >"$tmp/rep_res_dead.log" 2>&1
  echo "     resumed run, second process without its run record: $want J expected"
  check "resumed run whose second process died: first run record + second process's epochs" \
    'grep -q "energy (GPU) *$want J" "$tmp/rep_res_dead.log"'
  FAKE_NVML_NO_UTIL=1 KILN_NVML_LIB="$tmp/libnvml_fake.so" "$kiln" train "${common[@]}" --set train.telemetry_interval=0.2 \
    --out "$tmp/mig" >"$tmp/mig.log" 2>&1
  check "utilisation unsupported: left out, the rest there" \
    '[ $? -eq 0 ] && ! grep -q "gpu_util" "$tmp/mig/metrics.jsonl" && grep -q "\"type\":\"telemetry\".*\"gpu_mem_mb\":1024.0,\"gpu_mem_total_mb\":81920.0,\"gpu_power_w\":250.000" "$tmp/mig/metrics.jsonl" && grep -q "gpu 1.0 GB 250 W" "$tmp/mig.log"'
  "$kiln" report "$tmp/mig" >"$tmp/rep_mig.log" 2>&1
  check "kiln report without utilisation: no busy row, peak GPU memory" \
    '! grep -q "% busy (mean)" "$tmp/rep_mig.log" && grep -q "peak GPU memory *1024.0 MB" "$tmp/rep_mig.log"'
  FAKE_NVML_NO_ENERGY=1 FAKE_NVML_NO_POWER=1 KILN_NVML_LIB="$tmp/libnvml_fake.so" "$kiln" train "${common[@]}" \
    --set train.telemetry_interval=0.2 --out "$tmp/nopow" >"$tmp/nopow.log" 2>&1
  check "no energy counter and no power: no energy records (not 0 J)" \
    '[ $? -eq 0 ] && ! grep -q "\"type\":\"energy\"" "$tmp/nopow/metrics.jsonl" && ! grep -q "gpu_power_w\|gpu_energy_j" "$tmp/nopow/metrics.jsonl"'
  FAKE_NVML_INIT_SLEEP=1 KILN_NVML_LIB="$tmp/libnvml_fake.so" "$kiln" train "${common[@]}" --set train.telemetry_interval=0.2 \
    --out "$tmp/slow" >"$tmp/slow.log" 2>&1
  w1=$(grep '"scope":"epoch"' "$tmp/slow/metrics.jsonl" | head -n 1 | sed 's/.*"mean_w":\([^,]*\).*/\1/')
  echo "     first epoch's mean power with a 1 s nvmlInit: $w1 W"
  check "a slow nvmlInit is not counted in the first epoch's seconds" 'awk -v w="$w1" "BEGIN{exit !(w >= 225 && w <= 275)}"'
  FAKE_NVML_NO_ENERGY=1 KILN_NVML_LIB="$tmp/libnvml_fake.so" "$kiln" train "${common[@]}" --set train.telemetry_interval=0.1 \
    --out "$tmp/gpu2" >"$tmp/gpu2.log" 2>&1
  j2=$(field "$tmp/gpu2/metrics.jsonl" energy joules)
  echo "     integrated energy $j2 J"
  check "energy integrated from power without the counter" \
    '[ $? -eq 0 ] && grep -q "\"scope\":\"run\".*nvml_power_integral" "$tmp/gpu2/metrics.jsonl" && awk -v j="$j2" "BEGIN{exit !(j > 10)}"'
  FAKE_NVML_INIT_FAIL=1 KILN_NVML_LIB="$tmp/libnvml_fake.so" "$kiln" train "${common[@]}" --steps 3 --out "$tmp/gpu3" >"$tmp/gpu3.log" 2>&1
  check "nvmlInit failure reported once" '[ $? -eq 0 ] && [ "$(grep -c "no GPU telemetry (nvmlInit_v2 failed (NVML error 9))" "$tmp/gpu3.log")" -eq 1 ]'
  if "$py" -c "import tensorboard" 2>/dev/null; then
    "$py" - "$tmp/gpu/tb" >"$tmp/tb.log" 2>&1 <<'EOF'
import sys
from tensorboard.backend.event_processing import event_accumulator as ea
a = ea.EventAccumulator(sys.argv[1], size_guidance={ea.SCALARS: 0}); a.Reload()
t = a.Tags()["scalars"]
need = ["sys/cpu_util", "sys/rss_mb", "sys/gpu_util", "sys/gpu_power_w", "sys/gpu_energy_j", "sys/epoch_energy_j"]
miss = [x for x in need if x not in t]
assert not miss, "missing %s in %s" % (miss, t)
assert all(e.value == 42 for e in a.Scalars("sys/gpu_util"))
print("sys tags ok")
EOF
    check "sys/ scalars in TensorBoard" '[ $? -eq 0 ]'
    sed 's/^/     /' "$tmp/tb.log"
  fi
fi
check_done test_telemetry_train
