#!/usr/bin/env bash
# End-to-end tests of language models ($1 = build dir), on Debian's fortunes
# (or, without them, a small text file written here):
#  1. a tiny char-LSTM and a tiny GPT train for 100 steps: the validation
#     loss ends clearly below the initial loss log(V); the run and its
#     checkpoints hold vocab.txt; metrics.jsonl has perplexity and bpc;
#  2. runs killed with SIGKILL and resumed log the same losses, bit for bit;
#  3. kiln generate prints the prompt and N characters, the same text for
#     the same --seed, and clear errors for bad checkpoints and prompts;
#  4. config errors of sequence layers and text data name file:line;
#  5. the shipped configs (gpt2_124m included) pass kiln plan's shape checks;
#  6. a corpus folder's symlinked duplicates (fortune's *.u8) are read once;
#  7. --profile prints the op table, the plateau watch stops a stalled run.
# Training runs use one thread: these models are too small to gain from two,
# and two test processes on two cores would oversubscribe them.
. "$(dirname "$0")/lib/check.sh" "$1"

corpus=/usr/share/games/fortunes
if [ ! -d "$corpus" ]; then # no fortunes package: a deterministic text of varied sentences
  corpus="$tmp/corpus.txt"
  awk 'BEGIN { srand(7); n = split("the cat sat on a mat|a fool and his money are soon parted|" \
       "time flies like an arrow|fruit flies like a banana|never put off until tomorrow what you can do today|" \
       "all that glitters is not gold|the early bird catches the worm|you cannot teach an old dog new tricks", s, "|");
       for (i = 0; i < 6000; i++) { w = s[int(rand() * n) + 1]; printf "%s%s", toupper(substr(w, 1, 1)) substr(w, 2), \
       (rand() < 0.2 ? ".\n%\n" : ", and "); } }' >"$corpus"
  echo "     (no fortunes package: using a generated text of $(wc -c <"$corpus") characters)"
fi

lstm_cfg() {
  cat <<EOF
name: tiny_lstm
model:
  input: {tokens: 32}
  vocab: auto
  layers:
    - {type: embedding, dim: 16}
    - {type: lstm, hidden: 64, layers: 2}
    - {type: linear, out: vocab}
data: {kind: text, path: $corpus}
optim: {kind: adam, lr: 1.0e-2}
clip: {max_norm: 1.0}
train: {steps: 100, steps_per_epoch: 50, val_batches: 4, batch: 16, seed: 3, log_every: 10}
EOF
}
gpt_cfg() {
  cat <<EOF
name: tiny_gpt
model:
  input: {tokens: 32}
  vocab: auto
  layers:
    - {type: embedding, dim: 32, std: 0.02}
    - {type: pos_embedding}
    - {type: transformer_block, heads: 2}
    - {type: transformer_block, heads: 2, rope: true, dropout: 0.1}
    - {type: layernorm}
    - {type: linear, out: vocab, tie: true, bias: false}
data: {kind: text, path: $corpus}
optim: {kind: adamw, lr: 3.0e-3, weight_decay: 0.01}
clip: {max_norm: 1.0}
train: {steps: 100, steps_per_epoch: 50, val_batches: 4, batch: 16, seed: 3, log_every: 10}
EOF
}
lstm_cfg >"$tmp/lstm.yaml"
gpt_cfg >"$tmp/gpt.yaml"
field() { sed -n "s/.*\"$1\":\([-0-9.e+]*\).*/\1/p"; } # a number field of a metrics line
# the last step's perplexity = exp(loss), bpc = loss / ln 2, and validation has both
lm_fields_ok() {
  local line l p b
  line=$(grep '"type":"step"' "$1" | tail -n 1)
  l=$(field loss <<<"$line"); p=$(field perplexity <<<"$line"); b=$(field bpc <<<"$line")
  awk -v l="$l" -v p="$p" -v b="$b" 'BEGIN{exit !(l > 0 && (p - exp(l))^2 < 1e-8 * p * p && (b - l / log(2))^2 < 1e-10)}' &&
    grep '"type":"epoch"' "$1" | tail -n 1 | grep -q '"val_loss":.*"val_perplexity":.*"val_bpc":'
}

# 1. training
for m in lstm gpt; do
  "$kiln" train "$tmp/$m.yaml" --out "$tmp/$m" --threads 1 >"$tmp/$m.log" 2>&1
  check "$m trains" '[ $? -eq 0 ]'
  V=$(wc -w <"$tmp/$m/vocab.txt")
  first=$(grep '"type":"step"' "$tmp/$m/metrics.jsonl" | head -n 1 | field loss)
  val=$(grep '"type":"epoch"' "$tmp/$m/metrics.jsonl" | tail -n 1 | field val_loss)
  echo "     $m: vocabulary $V, log(V) $(awk -v v="$V" 'BEGIN{printf "%.3f", log(v)}'), first loss $first, final val loss $val"
  check "$m first loss is about log(V)" "awk -v f='$first' -v v='$V' 'BEGIN{d = f - log(v); exit !(d < 0.3 && d > -0.3)}'"
  check "$m val loss clearly below log(V)" "awk -v l='$val' -v v='$V' 'BEGIN{exit !(l < log(v) - 1.0)}'"
  check "$m run dir and checkpoint hold vocab.txt" \
    '[ -s "$tmp/$m/vocab.txt" ] && cmp -s "$tmp/$m/vocab.txt" "$tmp/$m/checkpoints/$(cat "$tmp/$m/checkpoints/latest")/vocab.txt"'
  check "$m config.yaml records the vocabulary size" 'grep -q "vocab: $V" "$tmp/$m/config.yaml"'
  check "$m metrics have perplexity and bpc" 'lm_fields_ok "$tmp/$m/metrics.jsonl"'
done

# --profile and the plateau watch (cli/train_watch.h) on a language model
"$kiln" train "$tmp/gpt.yaml" --out "$tmp/gpt-prof" --threads 1 --steps 8 --profile 5 --no-tensorboard >"$tmp/gpt-prof.log" 2>&1
check "gpt --profile 5: the op table and a profile record" \
  '[ $? -eq 0 ] && grep -q "^profile of 5 training steps" "$tmp/gpt-prof.log" && grep -q "attention" "$tmp/gpt-prof.log" &&
   grep -q "\"type\":\"profile\"" "$tmp/gpt-prof/metrics.jsonl"'
"$kiln" train "$tmp/gpt.yaml" --out "$tmp/gpt-acc" --threads 1 --steps 4 --set train.accumulate=2 --set train.checkpoint_every=2 \
  --no-tensorboard >"$tmp/gpt-acc.log" 2>&1
check "gpt with train.accumulate 2: 4 steps of two batches each" \
  '[ $? -eq 0 ] && [ "$(grep -c "\"type\":\"step\"" "$tmp/gpt-acc/metrics.jsonl")" -eq 4 ] && [ -d "$tmp/gpt-acc/checkpoints/step-000000002" ]'
mkdir -p "$tmp/gpt-accr/checkpoints" && cp -r "$tmp/gpt-acc/checkpoints/step-000000002" "$tmp/gpt-accr/checkpoints/" &&
  echo step-000000002 >"$tmp/gpt-accr/checkpoints/latest" && cp "$tmp/gpt-acc/config.yaml" "$tmp/gpt-acc/vocab.txt" "$tmp/gpt-accr/" 2>/dev/null
"$kiln" train --resume "$tmp/gpt-accr" --threads 1 --no-tensorboard >"$tmp/gpt-accr.log" 2>&1
check "gpt with train.accumulate 2 resumed at step 2: the same losses" \
  '[ $? -eq 0 ] && [ "$(step_losses "$tmp/gpt-acc" | tail -n 2)" = "$(step_losses "$tmp/gpt-accr")" ]'
"$kiln" train "$tmp/gpt.yaml" --out "$tmp/gpt-stall" --threads 1 --steps 12 --no-tensorboard --set train.steps_per_epoch=2 \
  --set train.plateau_patience=1 --set train.early_stop=true --set optim.lr=1e-9 >"$tmp/gpt-stall.log" 2>&1
check "gpt with lr 1e-9: an early stop (instead of the plateau warning) after a checkpoint" \
  '[ $? -eq 0 ] && ! grep -q "\"kind\":\"plateau\"" "$tmp/gpt-stall/metrics.jsonl" &&
   grep -q "\"type\":\"early_stop\"" "$tmp/gpt-stall/metrics.jsonl" && grep -q "stopped early" "$tmp/gpt-stall.log" &&
   [ "$(grep -c "\"type\":\"step\"" "$tmp/gpt-stall/metrics.jsonl")" -lt 12 ]'
n0=$(grep -c '"type":"step"' "$tmp/gpt-stall/metrics.jsonl")
"$kiln" train --resume "$tmp/gpt-stall" --threads 1 --no-tensorboard >"$tmp/gpt-stall2.log" 2>&1
check "resumed after the early stop: the watch's state came back, so it stops after one more epoch" \
  '[ $? -eq 0 ] && grep -q "stopped early" "$tmp/gpt-stall2.log" &&
   [ "$(grep -c "\"type\":\"step\"" "$tmp/gpt-stall/metrics.jsonl")" -eq $((n0 + 2)) ]'

"$kiln" report "$tmp/gpt" >"$tmp/report.log" 2>&1
check "kiln report summarises a language-model run" '[ $? -eq 0 ] && grep -q "val loss" "$tmp/gpt/report.md"'

# 2. SIGKILL at a random step, resume, compare every step's loss
losses() { grep '"type":"step"' "$1" | sed 's/.*"step":\([0-9]*\),.*"loss":\([^,]*\),.*/\1 \2/' |
           awk '{l[$1]=$2} END {for (s in l) print s, l[s]}' | sort -n; }
for m in lstm gpt; do
  common=("$tmp/$m.yaml" --steps 40 --set train.steps_per_epoch=20 --set train.checkpoint_every=3
          --set train.log_every=1 --threads 1)
  "$kiln" train "${common[@]}" --out "$tmp/$m-full" >"$tmp/$m-full.log" 2>&1
  "$kiln" train "${common[@]}" --out "$tmp/$m-killed" >"$tmp/$m-killed.log" 2>&1 &
  pid=$!
  target=$((8 + RANDOM % 25))
  for _ in $(seq 1 1200); do
    n=$(grep -c '"type":"step"' "$tmp/$m-killed/metrics.jsonl" 2>/dev/null); n=${n:-0}
    [ "$n" -ge "$target" ] && break
    sleep 0.05
  done
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  echo "     $m killed after step $(grep -c '"type":"step"' "$tmp/$m-killed/metrics.jsonl")"
  "$kiln" train --resume "$tmp/$m-killed" --threads 1 >"$tmp/$m-resume.log" 2>&1
  check "$m resume runs" '[ $? -eq 0 ] && grep -q "resumed from" "$tmp/$m-resume.log"'
  losses "$tmp/$m-full/metrics.jsonl" >"$tmp/a.txt"
  losses "$tmp/$m-killed/metrics.jsonl" >"$tmp/b.txt"
  check "$m: 40 steps logged, resumed losses identical to uninterrupted" \
    '[ "$(wc -l <"$tmp/a.txt")" -eq 40 ] && cmp -s "$tmp/a.txt" "$tmp/b.txt"'
  check "$m: resumed validation identical" \
    'diff <(grep "\"type\":\"epoch\"" "$tmp/$m-full/metrics.jsonl" | field val_loss) <(grep "\"type\":\"epoch\"" "$tmp/$m-killed/metrics.jsonl" | field val_loss | tail -n 2) >/dev/null'
done

# 3. generation
for m in lstm gpt; do
  "$kiln" generate --threads 1 "$tmp/$m" --prompt "The " --tokens 60 --seed 42 --top-k 10 >"$tmp/g1.txt" 2>"$tmp/g.err"
  check "$m generate prints the prompt and 60 characters" \
    '[ $? -eq 0 ] && [ "$(wc -c <"$tmp/g1.txt")" -eq 65 ] && [ "$(head -c 4 "$tmp/g1.txt")" = "The " ]'
  "$kiln" generate --threads 1 "$tmp/$m" --prompt "The " --tokens 60 --seed 42 --top-k 10 >"$tmp/g2.txt" 2>/dev/null
  "$kiln" generate --threads 1 "$tmp/$m" --prompt "The " --tokens 60 --seed 43 --top-k 10 >"$tmp/g3.txt" 2>/dev/null
  check "$m generate: same seed, same text; another seed, another text" \
    'cmp -s "$tmp/g1.txt" "$tmp/g2.txt" && ! cmp -s "$tmp/g1.txt" "$tmp/g3.txt"'
  "$kiln" generate --threads 1 "$tmp/$m/checkpoints/$(cat "$tmp/$m/checkpoints/latest")" --tokens 300 --temperature 0 >"$tmp/g4.txt" 2>/dev/null
  check "$m generate: greedy from a checkpoint dir, beyond the context" '[ $? -eq 0 ] && [ "$(wc -c <"$tmp/g4.txt")" -eq 301 ]'
done
"$kiln" generate --threads 1 "$tmp/nowhere" --tokens 5 >"$tmp/e.log" 2>&1
check "generate: missing checkpoint" '[ $? -eq 1 ] && grep -q "nowhere: no checkpoint found" "$tmp/e.log"'
ck="$tmp/lstm/checkpoints/$(cat "$tmp/lstm/checkpoints/latest")"
cp -r "$ck" "$tmp/bad" && rm "$tmp/bad/vocab.txt"
"$kiln" generate --threads 1 "$tmp/bad" --tokens 5 >"$tmp/e.log" 2>&1
check "generate: checkpoint without vocab.txt" '[ $? -eq 1 ] && grep -q "no vocab.txt" "$tmp/e.log"'
cp "$ck/vocab.txt" "$tmp/bad/" && head -c 100 "$ck/model.safetensors" >"$tmp/bad/model.safetensors"
"$kiln" generate --threads 1 "$tmp/bad" --tokens 5 >"$tmp/e.log" 2>&1
check "generate: truncated weights" '[ $? -eq 1 ] && grep -q "bad/model.safetensors" "$tmp/e.log"'
"$kiln" generate --threads 1 "$tmp/lstm" --prompt "$(printf 'ab\001')" --tokens 5 >"$tmp/e.log" 2>&1
check "generate: prompt outside the vocabulary" '[ $? -eq 1 ] && grep -q "byte 1) at offset 2 is not in the model.s vocabulary" "$tmp/e.log"'
"$kiln" generate --threads 1 "$tmp/lstm" --tokens x >"$tmp/e.log" 2>&1
check "generate: bad --tokens" '[ $? -eq 2 ] && grep -q "tokens expects a whole number from 0 to 100000000" "$tmp/e.log"'

# 4. config errors
printf 'name: bad\nmodel:\n  input: {tokens: 32}\n  layers:\n    - {type: embedding, dim: 16}\n    - {type: lstm, hiden: 64}\n    - {type: linear, out: vocab}\ndata: {kind: text, path: %s}\n' "$corpus" >"$tmp/bad1.yaml"
"$kiln" train "$tmp/bad1.yaml" --out "$tmp/x" >"$tmp/e1.log" 2>&1
check "unknown lstm key names file:line" 'grep -q "bad1.yaml:6:[0-9]*: model.layers\[1\]: unknown key .hiden.*did you mean .hidden.?" "$tmp/e1.log"'
printf 'name: bad\nmodel:\n  input: {tokens: 32}\n  layers:\n    - {type: embedding, dim: 32}\n    - {type: transformer_block, heads: 5}\n    - {type: linear, out: vocab}\ndata: {kind: text, path: %s}\n' "$corpus" >"$tmp/bad2.yaml"
"$kiln" train "$tmp/bad2.yaml" --out "$tmp/x" >"$tmp/e2.log" 2>&1
check "heads not dividing the width names file:line" 'grep -q "bad2.yaml:6:[0-9]*: model.layers\[1\].heads: transformer_block: heads 5 must divide the width 32" "$tmp/e2.log"'
printf 'name: bad\nmodel:\n  input: {tokens: 32}\n  vocab: 10\n  layers:\n    - {type: embedding, dim: 8}\n    - {type: linear, out: vocab}\ndata: {kind: text, path: %s}\n' "$corpus" >"$tmp/bad3.yaml"
"$kiln" train "$tmp/bad3.yaml" --out "$tmp/x" >"$tmp/e3.log" 2>&1
check "vocab smaller than the corpus's names file:line" 'grep -q "bad3.yaml:4:[0-9]*: model.vocab: model.vocab 10 is smaller than the corpus.s [0-9]* distinct characters" "$tmp/e3.log"'
printf 'name: bad\nmodel: {input: [8], layers: [{type: linear, out: 3}]}\ndata: {kind: text, path: %s, val_fraction: 0.2}\n' "$corpus" >"$tmp/bad4.yaml"
"$kiln" train "$tmp/bad4.yaml" --out "$tmp/x" >"$tmp/e4.log" 2>&1
check "text data with a non-token model" 'grep -q "bad4.yaml:2:[0-9]*: model.input: data.kind text trains token models" "$tmp/e4.log"'
"$kiln" train "$tmp/lstm.yaml" --set data.val_fraction=1.5 --out "$tmp/x" >"$tmp/e5.log" 2>&1
check "val_fraction out of range" 'grep -q "data.val_fraction: data: val_fraction must be in \[0, 1), got 1.5" "$tmp/e5.log"'
"$kiln" train "$tmp/lstm.yaml" --set data.path="$tmp/none" --out "$tmp/x" >"$tmp/e6.log" 2>&1
check "missing corpus" '[ $? -eq 1 ] && grep -q "$tmp/none" "$tmp/e6.log"'
"$kiln" train models/mlp.yaml --set train.steps_per_epoch=5 --out "$tmp/x" >"$tmp/e7.log" 2>&1
check "steps_per_epoch on image data" 'grep -q "train.steps_per_epoch: train: steps_per_epoch is for data.kind text" "$tmp/e7.log"'

# 5. shipped configs pass kiln plan (shapes, parameters, memory)
"$kiln" plan models/gpt2_124m.yaml --batch 1 --mem-limit 3G --threads 1 >"$tmp/p1.log" 2>&1
check "plan accepts gpt2_124m (124475904 parameters)" '[ $? -eq 0 ] && grep -q "(124475904 trainable values)" "$tmp/p1.log"'
for c in char_lstm gpt_small; do
  "$kiln" plan "models/$c.yaml" --mem-limit 1G --threads 1 >"$tmp/p.log" 2>&1
  check "plan accepts $c" '[ $? -eq 0 ] && grep -q "largest batch that fits" "$tmp/p.log"'
done

# 6. symlinked duplicates in a corpus folder
mkdir "$tmp/dir" && head -c 5000 "$tmp/lstm/config.yaml" >"$tmp/dir/a" && ln -s a "$tmp/dir/a.u8"
for _ in 1 2 3 4 5 6 7 8; do cat "$tmp/dir/a"; done >"$tmp/dir/b"
"$kiln" train "$tmp/lstm.yaml" --set data.path="$tmp/dir" --steps 1 --set data.val_fraction=0 --out "$tmp/d" >"$tmp/d.log" 2>&1
check "symlinked duplicates read once" "grep -q \"corpus $tmp/dir: $(($(wc -c <"$tmp/dir/a") * 9)) characters\" '$tmp/d.log'"

check_done test_lm
