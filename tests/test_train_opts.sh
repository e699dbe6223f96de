#!/usr/bin/env bash
# kiln train's optim, schedule, clip and watch keys ($1 = build dir): bad
# values and keys of another kind are refused before training, located in
# the file; betas [0, x] is Adam without momentum (not the default); a
# language model's overflowing perplexity is JSON null, and its epochs x
# steps_per_epoch past 2^62 refused; a resume after a
# cut-off last line starts a new line; kiln report on a language model
# (perplexity, no accuracy), on an early stop, and after a resume from an
# earlier checkpoint (the best accuracy of the epochs kept); KILN_PROFILE=1
# on a resumed run; option-count limits; --init with --resume refused; a
# step schedule counted after warmup.
. "$(dirname "$0")/lib/check.sh" "$1"
small=(--set data.limit=600 --set data.val_split=200 --threads 1 --no-tensorboard)
printf 'name: opts\nmodel:\n  input: [784]\n  layers:\n    - {type: linear, out: 10}\noptim:\n  kind: adam\n  lr: -0.01\n' >"$tmp/bad.yaml"
refused() { # MESSAGE ARGS...: exit 1 before any training, with MESSAGE
  local msg=$1; shift
  "$kiln" train "$@" --out "$tmp/refused" >"$tmp/refused.log" 2>&1
  [ $? -eq 1 ] && grep -qF -- "$msg" "$tmp/refused.log" && ! grep -q '"type":"step"' "$tmp/refused/metrics.jsonl" 2>/dev/null
}
check "a negative lr, located in the file" 'refused "bad.yaml:8:7: optim.lr: optim: lr must be a positive number, got -0.01" "$tmp/bad.yaml"'
ok=(--set optim.lr=0.01)
check "momentum under adam" 'refused "optim.momentum: optim: momentum is for kind sgd; kind adam does not use it" "$tmp/bad.yaml" "${ok[@]}" --set optim.momentum=0.9'
check "eps under sgd" 'refused "optim: eps is for kind adam or adamw; kind sgd does not use it" "$tmp/bad.yaml" "${ok[@]}" --set optim.kind=sgd --set optim.eps=0.1'
check "betas of 1" 'refused "optim: betas must be in [0, 1), got [0.9, 1]" "$tmp/bad.yaml" "${ok[@]}" --set "optim.betas=[0.9, 1.0]"'
check "a negative weight_decay" 'refused "optim: weight_decay must be a number >= 0, got -0.1" "$tmp/bad.yaml" "${ok[@]}" --set optim.weight_decay=-0.1'
check "decay_1d takes a boolean" 'refused "optim.decay_1d: expected a boolean (true/false, yes/no, on/off), got \"maybe\"" "$tmp/bad.yaml" "${ok[@]}" --set optim.decay_1d=maybe'
printf 'name: nd\nmodel:\n  input: [1, 28, 28]\n  layers:\n    - {type: flatten}\n    - {type: linear, out: 10}\n' >"$tmp/nd.yaml"
"$kiln" train "$tmp/nd.yaml" --set optim.kind=adamw --set optim.weight_decay=0.1 --set optim.decay_1d=false \
  --epochs 1 "${small[@]}" --out "$tmp/nd" >"$tmp/nd.log" 2>&1
check "optim.decay_1d false trains and is recorded" '[ $? -eq 0 ] && grep -q "decay_1d: false" "$tmp/nd/config.yaml"'
# train.keep_checkpoints: the newest N stay (latest among them), older ones go; the run resumes
"$kiln" train "$tmp/nd.yaml" --epochs 1 --set train.checkpoint_every=2 --set train.keep_checkpoints=2 --set train.batch=64 \
  "${small[@]}" --out "$tmp/keep" >"$tmp/keep.log" 2>&1
check "keep_checkpoints 2: two checkpoints left, the newest two, latest the last" \
  '[ $? -eq 0 ] && [ "$(ls "$tmp/keep/checkpoints" | grep -c "^step-")" -eq 2 ] &&
   [ "$(ls "$tmp/keep/checkpoints" | grep "^step-" | tail -n 1)" = "$(cat "$tmp/keep/checkpoints/latest")" ] &&
   [ "$(ls "$tmp/keep/checkpoints" | grep "^step-" | head -n 1)" = step-000000004 ]'
check "a negative keep_checkpoints is refused" 'refused "train.keep_checkpoints" "$tmp/nd.yaml" --set train.keep_checkpoints=-1'
check "a negative clip.max_norm, by its key" 'refused "clip.max_norm: clip: max_norm must be a number >= 0 (0: off), got -5" "$tmp/bad.yaml" "${ok[@]}" --set clip.max_norm=-5'
check "a cosine min_lr above lr" 'refused "schedule: min_lr must be in [0, optim.lr 0.01], got 0.5" "$tmp/bad.yaml" "${ok[@]}" --set schedule.kind=cosine --set schedule.min_lr=0.5'
check "a negative min_lr" 'refused "schedule: min_lr must be in [0, optim.lr 0.01], got -0.001" "$tmp/bad.yaml" "${ok[@]}" --set schedule.kind=cosine --set schedule.min_lr=-0.001'
check "a negative gamma" 'refused "schedule: gamma must be a number >= 0, got -0.5" "$tmp/bad.yaml" "${ok[@]}" --set schedule.kind=step --set schedule.gamma=-0.5'
check "gamma under a constant schedule" 'refused "schedule: gamma is for kind step; kind constant does not use it" "$tmp/bad.yaml" "${ok[@]}" --set schedule.gamma=0.5'
check "early_stop without plateau_patience" 'refused "train: early_stop needs plateau_patience > 0" "$tmp/bad.yaml" "${ok[@]}" --set train.early_stop=true'
# a file's value is named by its place in the file, not as a --set never typed
sed 's/lr: -0.01/lr: 0.01\n  nesterov: true/; s/kind: adam/kind: sgd/' "$tmp/bad.yaml" >"$tmp/nest.yaml"
check "nesterov without momentum, located in the file" 'refused "nest.yaml:9:13: optim.nesterov: optim: nesterov needs momentum > 0" "$tmp/nest.yaml" && ! grep -q -- "--set" "$tmp/refused.log"'
printf 'train: {epochs: 1, early_stop: true}\n' | cat "$tmp/bad.yaml" - >"$tmp/es.yaml"
check "early_stop without plateau_patience, located in the file" 'refused "es.yaml:9:32: train.early_stop: train: early_stop needs" "$tmp/es.yaml" "${ok[@]}" && ! grep -q -- "--set train.early" "$tmp/refused.log"'

sed 's|^name: opts|name: x/../../esc|' "$tmp/bad.yaml" >"$tmp/esc.yaml"
check "a name with / and .. refused, located (it would write outside runs/)" 'refused "esc.yaml:1:7: name: a run name may not hold" "$tmp/esc.yaml" "${ok[@]}"'
check "a name of .. refused" 'refused "a run name may not hold" "$tmp/bad.yaml" "${ok[@]}" --set name=..'

# betas [0, 0.999] trains differently from the default [0.9, 0.999], and its config.yaml keeps the 0
last_loss() { step_losses "$1" | tail -n 1; }
"$kiln" train models/mlp.yaml --steps 5 --set train.log_every=1 "${small[@]}" --out "$tmp/b9" >/dev/null 2>&1
"$kiln" train models/mlp.yaml --steps 5 --set train.log_every=1 "${small[@]}" --set "optim.betas=[0, 0.999]" --out "$tmp/b0" >/dev/null 2>&1
check "betas [0, 0.999] is not the default" '[ -n "$(last_loss "$tmp/b0")" ] && [ "$(last_loss "$tmp/b0")" != "$(last_loss "$tmp/b9")" ] && grep -q "betas: \[0, 0.999" "$tmp/b0/config.yaml"'

# a language model diverging past a loss of 709: perplexity null, every line JSON
tiny_lm "$tmp/lm.yaml" "{type: lstm, hidden: 16}" "optim: {kind: sgd, lr: 30000}
train: {steps: 12, batch: 4, log_every: 1, steps_per_epoch: 6, val_batches: 2, nan_watch: false}"
"$kiln" train "$tmp/lm.yaml" --threads 1 --no-tensorboard --out "$tmp/lm" >"$tmp/lm.log" 2>&1
# epochs x steps_per_epoch past 2^62 (it overflowed int64: nothing trained, exit 0)
check "epochs x steps_per_epoch overflowing is refused, naming both keys" \
  'timeout 20 "$kiln" train "$tmp/lm.yaml" --threads 1 --no-tensorboard --out "$tmp/ovf" --steps 0 --epochs 3 \
     --set train.steps_per_epoch=4000000000000000000 >"$tmp/ovf.log" 2>&1; [ $? -eq 1 ] &&
   grep -qF "train: epochs 3 x steps_per_epoch 4000000000000000000 is more than 2^62 steps" "$tmp/ovf.log" &&
   [ ! -e "$tmp/ovf" ]'
check "diverging LM: metrics.jsonl is all JSON" \
  'python3 -c "import json,sys; [json.loads(l) for l in open(sys.argv[1])]" "$tmp/lm/metrics.jsonl"'
"$kiln" report "$tmp/lm" >"$tmp/lmr.log" 2>&1
check "report on a language model: perplexity, no made-up accuracy" \
  '[ $? -eq 0 ] && grep -q "train loss / perplexity" "$tmp/lmr.log" && ! grep -q "accuracy" "$tmp/lmr.log" && ! grep -q malformed "$tmp/lmr.log"'

# a resume after a cut-off last line: the start record begins its own line
"$kiln" train models/mlp.yaml --epochs 3 "${small[@]}" --set train.log_every=5 --out "$tmp/run" >/dev/null 2>&1
resume_dir "$tmp/run" 6 "$tmp/rr" && head -n 4 "$tmp/run/metrics.jsonl" >"$tmp/rr/metrics.jsonl" && printf '{"type":"step","step":7,"epo' >>"$tmp/rr/metrics.jsonl"
"$kiln" train --resume "$tmp/rr" --threads 1 --no-tensorboard >"$tmp/rr.log" 2>&1
check "resume after a cut-off line" \
  '[ $? -eq 0 ] && grep -q "^{\"type\":\"start\"" "$tmp/rr/metrics.jsonl" && [ "$(grep -c "\"type\":\"step\"" "$tmp/rr/metrics.jsonl")" -gt 3 ]'
"$kiln" report "$tmp/rr" >"$tmp/rrr.log" 2>&1
check "report names the one cut-off line" 'grep -q "skipped 1 malformed line (first: line 5)" "$tmp/rrr.log"'

# resumed from an earlier checkpoint with lr ~0: report's best accuracy is of the epochs kept
resume_dir "$tmp/run" 6 "$tmp/rl" && cp "$tmp/run/metrics.jsonl" "$tmp/rl/"
"$kiln" train --resume "$tmp/rl" --lr 1e-12 --threads 1 --no-tensorboard >/dev/null 2>&1
best=$(grep '"type":"epoch"' "$tmp/rl/metrics.jsonl" | python3 -c "
import json,sys
kept={}
for l in sys.stdin:
    r=json.loads(l); kept[r['epoch']]=r['val_accuracy']
b=max(kept.values()); print('%.4f, epoch %d' % (b, min(e for e in kept if kept[e]==b)))")
"$kiln" report "$tmp/rl" >"$tmp/rlr.log" 2>&1
check "report after a resume: best accuracy of the kept epochs ($best)" 'grep -q "(best accuracy $best)" "$tmp/rlr.log"'

# KILN_PROFILE=1 profiles a resumed run too (its graphs' run counts start above 0)
resume_dir "$tmp/run" 6 "$tmp/rp"
KILN_PROFILE=1 "$kiln" train --resume "$tmp/rp" --threads 1 --no-tensorboard >"$tmp/rp.log" 2>&1
check "KILN_PROFILE=1 on a resumed run" '[ $? -eq 0 ] && grep -q "^profile over" "$tmp/rp.log"'

# report on an early stop says so
"$kiln" train models/mlp.yaml --epochs 4 "${small[@]}" --set optim.lr=1e-12 --set train.plateau_patience=1 \
  --set train.early_stop=true --out "$tmp/es" >/dev/null 2>&1
"$kiln" report "$tmp/es" >"$tmp/esr.log" 2>&1
check "report on an early stop" 'grep -qE "early stop +epoch 2, step [0-9]+ \(no improvement for 1 evaluations\)" "$tmp/esr.log"'
check "early stop: no plateau warning record beside it" '! grep -q "\"kind\":\"plateau\"" "$tmp/es/metrics.jsonl"'
flags=(); for i in $(seq 33); do flags+=(--epochs 1); done
"$kiln" train "$tmp/bad.yaml" "${flags[@]}" >"$tmp/f.log" 2>&1
check "a 33rd value option is refused, not written past its table" '[ $? -eq 2 ] && grep -q "more than 32 value options" "$tmp/f.log"'
sets=(); for i in $(seq 65); do sets+=(--set train.epochs=1); done
"$kiln" train "$tmp/bad.yaml" "${sets[@]}" >"$tmp/f.log" 2>&1
check "a 65th --set is refused, not dropped" '[ $? -eq 2 ] && grep -q "more than 64 --set options" "$tmp/f.log"'
"$kiln" train --init "$tmp/none.safetensors" --resume "$tmp/es" >"$tmp/f.log" 2>&1
check "--init with --resume is refused" '[ $? -eq 2 ] && grep -q "\-\-init and \-\-resume cannot be combined" "$tmp/f.log"'
long=$(printf 'x%.0s' $(seq 40); printf '\xc3\xa9%.0s' $(seq 40))
"$kiln" train "$tmp/bad.yaml" --lr "$long" >"$tmp/f.log" 2>&1
check "a long non-number --lr: named as such, not as bad UTF-8" '[ $? -ne 0 ] && ! grep -q "UTF-8" "$tmp/f.log"'
"$kiln" train models/mlp.yaml --steps 6 --set train.log_every=1 "${small[@]}" --set schedule.kind=step \
  --set schedule.warmup_steps=2 --set schedule.step_size=2 --set schedule.gamma=0.1 --out "$tmp/st" >/dev/null 2>&1
lrs=$(grep '"type":"step"' "$tmp/st/metrics.jsonl" | grep -o '"lr":[^,]*' | cut -d: -f2 | tr '\n' ' ')
check "a step schedule counts its steps after warmup: the full lr for step_size steps first" '[ "$lrs" = "0.0005 0.001 0.001 0.001 0.0001 0.0001 " ]'
check_done test_train_opts
