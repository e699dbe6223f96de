#!/usr/bin/env bash
# TensorBoard event files from `kiln train` ($1 = build dir), read back with
# TensorBoard's own EventAccumulator: every scalar tag, step and value equals
# metrics.jsonl (float32, exactly: sys/ telemetry too), parameter and
# gradient histograms exist (at epoch ends by default, every N steps with
# train.histogram_every), a run resumed from an earlier checkpoint shows each
# step once (its SessionLog START purges the repeated ones), a resume of the
# finished run writes nothing at step 0, a language model writes no accuracy
# but perplexity and tokens/s, gradient histograms with accumulation equal
# the big batch's, and --no-tensorboard writes none. Skipped (77) without the
# tensorboard package.
. "$(dirname "$0")/lib/check.sh" "$1"
py=${PYTHON:-python3}
"$py" -c "import tensorboard.backend.event_processing.event_accumulator" 2>/dev/null || {
  echo "skip: python package tensorboard not installed (KILN_PYTEST=1 scripts/setup.sh)"; exit 77; }
common=(models/mlp.yaml --steps 30 --set data.limit=2000 --set data.val_split=500 --set train.log_every=5 --threads 2
  --set train.telemetry_interval=0.05)

"$kiln" train "${common[@]}" --out "$tmp/run" >"$tmp/run.log" 2>&1
check "train with tensorboard" '[ $? -eq 0 ] && [ "$(ls "$tmp/run/tb" | grep -c "^events\.out\.tfevents\.[0-9]*\.")" -eq 1 ]'

cat >"$tmp/cmp.py" <<'EOF'
import json, sys, math
import numpy as np
from tensorboard.backend.event_processing import event_accumulator as ea
# argv[3] "unique": each step of a tag once (sys/ may log two samples at a step)
run, hist_steps = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
unique = len(sys.argv) > 3 and sys.argv[3] == "unique"
acc = ea.EventAccumulator(run + "/tb", size_guidance={ea.SCALARS: 0, ea.HISTOGRAMS: 0})
acc.Reload()
want = {}  # tag -> {step: value}
def put(tag, step, v): want.setdefault(tag, {})[step] = v
last = 0
for line in open(run + "/metrics.jsonl"):
    r = json.loads(line)
    if r["type"] == "step":
        if r["step"] <= last:  # a resume: TensorBoard drops the points from here on (SessionLog START)
            want = {t: {k: v for k, v in p.items() if k < r["step"]} for t, p in want.items()}
        last = r["step"]
        put("train/loss", r["step"], r["loss"]); put("train/accuracy", r["step"], r["accuracy"])
        put("train/lr", r["step"], r["lr"])
    elif r["type"] == "throughput":
        put("train/samples_per_s", r["step"], r["samples_per_s"])
    elif r["type"] == "epoch":
        put("epoch/loss", r["step"], r["loss"]); put("epoch/accuracy", r["step"], r["accuracy"])
        put("epoch/lr", r["step"], r["lr"])
        put("val/loss", r["step"], r["val_loss"]); put("val/accuracy", r["step"], r["val_accuracy"])
    elif r["type"] == "test":
        put("test/loss", last, r["loss"]); put("test/accuracy", last, r["accuracy"])
    elif r["type"] == "telemetry":
        for k in ("cpu_util", "rss_mb", "rss_peak_mb"):
            if k in r: put("sys/" + k, r["step"], r[k])
tags = acc.Tags()
bad = []
scalars = set(tags["scalars"])
if scalars != set(want):
    bad.append("scalar tags differ: extra %s missing %s" % (sorted(scalars - set(want)), sorted(set(want) - scalars)))
n = 0
for tag, steps in want.items():
    evs = acc.Scalars(tag) if tag in scalars else []
    got = {e.step: e.value for e in evs}
    if 0 in got: bad.append("%s: a point at step 0" % tag)
    if unique and not tag.startswith("sys/") and len(evs) != len(got):
        bad.append("%s: repeated steps %s" % (tag, sorted(s for s in got if [e.step for e in evs].count(s) > 1)))
    if sorted(got) != sorted(steps):
        bad.append("%s: steps %s, metrics.jsonl has %s" % (tag, sorted(got), sorted(steps)))
        continue
    for s, v in steps.items():
        n += 1
        if got[s] != np.float32(v):
            bad.append("%s step %d: %r vs %r" % (tag, s, got[s], v))
h = tags["histograms"]
need = ["params/layers.1.weight", "params/layers.1.bias", "grads/layers.1.weight", "params/layers.6.weight", "grads/layers.6.bias"]
for t in need:
    if t not in h:
        bad.append("histogram %s missing (have %s)" % (t, sorted(h)[:6]))
        continue
    ev = acc.Histograms(t)
    if [e.step for e in ev] != hist_steps:
        bad.append("%s: histogram steps %s, expected %s" % (t, [e.step for e in ev], hist_steps))
    hv = ev[-1].histogram_value
    if hv.num <= 0 or not hv.min <= hv.max or abs(sum(hv.bucket) - hv.num) > 0.5:
        bad.append("%s: bad histogram num %s min %s max %s" % (t, hv.num, hv.min, hv.max))
w = acc.Histograms("params/layers.1.weight")[-1].histogram_value
if w.num != 256 * 784: bad.append("params/layers.1.weight: num %s, expected %d" % (w.num, 256 * 784))
print("\n".join(bad[:20]) if bad else "%d scalar values and %d histogram tags match" % (n, len(h)))
sys.exit(1 if bad else 0)
EOF
# 1500 training samples, batch 128: epochs end at steps 11 and 22; training at 30
"$py" "$tmp/cmp.py" "$tmp/run" 11,22,30 >"$tmp/cmp.log" 2>&1
check "scalars equal metrics.jsonl; histograms at epoch ends and the end" '[ $? -eq 0 ]'
sed 's/^/     /' "$tmp/cmp.log"

# resumed from the first epoch's checkpoint (the event files copied along):
# steps 12-30 again, each shown once, with the second process's values
resume_dir "$tmp/run" 11 "$tmp/res" && cp -r "$tmp/run/tb" "$tmp/res/" && cp "$tmp/run/metrics.jsonl" "$tmp/res/"
"$kiln" train --resume "$tmp/res" --threads 2 >"$tmp/res.log" 2>&1
check "resume from step 11" '[ $? -eq 0 ] && grep -q "^resumed from .* at step 11" "$tmp/res.log"'
"$py" "$tmp/cmp.py" "$tmp/res" 11,22,30 unique >"$tmp/cmp3.log" 2>&1
check "resumed run: each step once, the values of the process that went on" '[ $? -eq 0 ]'
sed 's/^/     /' "$tmp/cmp3.log"
# resumed at its end: no step logged, no second test of the same step (its record stands), its
# telemetry at step 30, not 0
"$kiln" train --resume "$tmp/res" --threads 2 >"$tmp/end.log" 2>&1
check "resume of the finished run" '[ $? -eq 0 ] && grep -q "^resumed from .* at step 30" "$tmp/end.log" && grep -q "^the run had finished" "$tmp/end.log"'
"$py" "$tmp/cmp.py" "$tmp/res" 11,22,30 >"$tmp/cmp4.log" 2>&1
check "a process that logs no step: its points at the checkpoint's step" \
  '[ $? -eq 0 ] && ! grep -q "\"step\":0[,}]" "$tmp/res/metrics.jsonl" && [ "$(grep -c "\"type\":\"test\",\"step\":30," "$tmp/res/metrics.jsonl")" -eq 2 ]'
sed 's/^/     /' "$tmp/cmp4.log"

# a language model: no accuracy (none in metrics.jsonl), perplexity and tokens/s as logged
tiny_lm "$tmp/lm.yaml" "{type: linear, out: 32}" "train: {steps: 6, steps_per_epoch: 3, val_batches: 1, batch: 4, log_every: 2}"
"$kiln" train "$tmp/lm.yaml" --threads 2 --out "$tmp/lm" >"$tmp/lm.log" 2>&1
check "language model trains" '[ $? -eq 0 ]'
"$py" - "$tmp/lm" >"$tmp/lmcmp.log" 2>&1 <<'EOF'
import json, sys
import numpy as np
from tensorboard.backend.event_processing import event_accumulator as ea
a = ea.EventAccumulator(sys.argv[1] + "/tb", size_guidance={ea.SCALARS: 0}); a.Reload()
tags = a.Tags()["scalars"]
bad = ["%s written" % t for t in tags if t.endswith("accuracy")]
want = {"train/perplexity": {}, "train/tokens_per_s": {}}
for line in open(sys.argv[1] + "/metrics.jsonl"):
    r = json.loads(line)
    if r["type"] == "step": want["train/perplexity"][r["step"]] = r["perplexity"]
    if r["type"] == "throughput": want["train/tokens_per_s"][r["step"]] = r["tokens_per_s"]
for t, w in want.items():
    got = {e.step: e.value for e in a.Scalars(t)} if t in tags else {}
    if not w or {s: np.float32(v) for s, v in w.items()} != got: bad.append("%s: %s, metrics.jsonl %s" % (t, got, w))
print("\n".join(bad) if bad else "no accuracy tags; perplexity and tokens/s equal metrics.jsonl")
sys.exit(1 if bad else 0)
EOF
check "language model: no accuracy scalars, perplexity and tokens/s" '[ $? -eq 0 ]'
sed 's/^/     /' "$tmp/lmcmp.log"

"$kiln" train "${common[@]}" --steps 12 --set train.histogram_every=4 --out "$tmp/h" >"$tmp/h.log" 2>&1
check "train.histogram_every=4" '[ $? -eq 0 ]'
"$py" "$tmp/cmp.py" "$tmp/h" 4,8,12 >"$tmp/cmp2.log" 2>&1
check "histograms every 4 steps" '[ $? -eq 0 ]'
sed 's/^/     /' "$tmp/cmp2.log"
check "config.yaml still readable by kiln eval" '"$kiln" eval "$tmp/h" --data val >/dev/null 2>&1'

# with accumulation the gradient histograms are the cycle's mean: batch 32 x 2
# shows what batch 64 shows (no dropout: both see the same rows and masks)
sed 's/p: 0.1/p: 0.0/' models/mlp.yaml >"$tmp/mlp0.yaml"
acc_common=("$tmp/mlp0.yaml" "${common[@]:1}" --steps 4 --set train.histogram_every=2)
"$kiln" train "${acc_common[@]}" --batch 64 --out "$tmp/b64" >"$tmp/b64.log" 2>&1 &&
  "$kiln" train "${acc_common[@]}" --batch 32 --accumulate 2 --out "$tmp/b32" >"$tmp/b32.log" 2>&1
check "batch 64 and batch 32 x accumulate 2 train" '[ $? -eq 0 ]'
cat >"$tmp/hcmp.py" <<'EOF'
import sys, math
from tensorboard.backend.event_processing import event_accumulator as ea
def load(run):
    a = ea.EventAccumulator(run + "/tb", size_guidance={ea.HISTOGRAMS: 0}); a.Reload()
    return {t: {e.step: e.histogram_value for e in a.Histograms(t)} for t in a.Tags()["histograms"] if t.startswith("grads/")}
big, acc = load(sys.argv[1]), load(sys.argv[2])
bad = [] if big and set(big) == set(acc) else ["grads tags differ: %s vs %s" % (sorted(big), sorted(acc))]
worst = 0
for t in big:
    for s in (2, 4):
        b, a = big[t].get(s), acc.get(t, {}).get(s)
        if b is None or a is None: bad.append("%s: no histogram at step %d" % (t, s)); continue
        for f in ("min", "max", "sum", "sum_squares"):
            x, y = getattr(b, f), getattr(a, f)
            e = abs(x - y) / (1e-6 + abs(x) + 1e-3 * math.sqrt(abs(b.sum_squares)))
            worst = max(worst, e)
            if e > 1e-3: bad.append("%s step %d %s: batch 64 %r, 32 x 2 %r" % (t, s, f, x, y))
print("\n".join(bad[:10]) if bad else "%d gradient histograms agree (worst rel diff %.2g)" % (2 * len(big), worst))
sys.exit(1 if bad else 0)
EOF
"$py" "$tmp/hcmp.py" "$tmp/b64" "$tmp/b32" >"$tmp/hcmp.log" 2>&1
check "accumulated gradient histograms equal the big batch's" '[ $? -eq 0 ]'
sed 's/^/     /' "$tmp/hcmp.log"

"$kiln" train "${common[@]}" --steps 3 --no-tensorboard --out "$tmp/off" >"$tmp/off.log" 2>&1
check "--no-tensorboard writes no event file" '[ $? -eq 0 ] && [ ! -e "$tmp/off/tb" ]'
"$kiln" train "${common[@]}" --steps 3 --set train.histogram_every=-1 --out "$tmp/bad" >"$tmp/bad.log" 2>&1
check "bad histogram_every message" '[ $? -ne 0 ] && grep -q "histogram_every" "$tmp/bad.log"'
"$kiln" train --help >"$tmp/help.log" 2>&1
check "help lists monitoring flags" 'grep -q -- "--no-tensorboard" "$tmp/help.log"'
check_done test_tensorboard
