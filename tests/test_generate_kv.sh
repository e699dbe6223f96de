#!/usr/bin/env bash
# kiln generate with the KV cache against --no-kv-cache ($1 = build dir): a
# tiny GPT (learned positions, a RoPE block, tied output) trains for 60 steps,
# then greedy and seeded top-k samples, from short prompts, past the context
# (where the cache gives way to the window) and from a prompt longer than the
# context, print the same text both ways.
. "$(dirname "$0")/lib/check.sh" "$1"

awk 'BEGIN { srand(11); n = split("the cat sat on a mat|a fool and his money are soon parted|" \
     "time flies like an arrow|fruit flies like a banana|all that glitters is not gold|" \
     "the early bird catches the worm", s, "|");
     for (i = 0; i < 3000; i++) { w = s[int(rand() * n) + 1]; printf "%s%s", w, (rand() < 0.2 ? ".\n" : ", and "); } }' >"$tmp/corpus.txt"
cat >"$tmp/gpt.yaml" <<EOF2
name: tiny_gpt_kv
model:
  input: {tokens: 32}
  vocab: auto
  layers:
    - {type: embedding, dim: 32, std: 0.02}
    - {type: pos_embedding}
    - {type: transformer_block, heads: 2}
    - {type: transformer_block, heads: 4, rope: true, dropout: 0.1}
    - {type: layernorm}
    - {type: linear, out: vocab, tie: true, bias: false}
data: {kind: text, path: $tmp/corpus.txt}
optim: {kind: adamw, lr: 3.0e-3, weight_decay: 0.01}
train: {steps: 60, steps_per_epoch: 30, val_batches: 2, batch: 16, seed: 5, log_every: 10}
EOF2
"$kiln" train "$tmp/gpt.yaml" --out "$tmp/run" --threads 1 >"$tmp/train.log" 2>&1
check "tiny GPT trains" '[ $? -eq 0 ]'

same() { # $1: label, rest: generate arguments
  local label="$1"; shift
  "$kiln" generate --threads 1 "$tmp/run" "$@" >"$tmp/kv.txt" 2>"$tmp/kv.err"
  local rc=$?
  "$kiln" generate --threads 1 "$tmp/run" "$@" --no-kv-cache >"$tmp/nokv.txt" 2>"$tmp/nokv.err"
  local rc2=$?
  check "$label: same text with and without the KV cache" \
    "[ $rc -eq 0 ] && [ $rc2 -eq 0 ] && [ -s '$tmp/kv.txt' ] && cmp -s '$tmp/kv.txt' '$tmp/nokv.txt'"
}
same "greedy within the context" --prompt "the " --tokens 25 --temperature 0
same "greedy past the context" --prompt "a " --tokens 120 --temperature 0
same "seeded top-k sample" --prompt "time " --tokens 100 --seed 7 --top-k 5
same "seeded full sample, no prompt" --tokens 80 --seed 1234 --temperature 1.3
same "prompt longer than the context" --prompt "the cat sat on a mat, and the early bird catches" --tokens 30 --seed 3
same "one token" --prompt "t" --tokens 1 --seed 9

# timing (informational): tokens per second with and without the cache
t0=$(date +%s.%N); "$kiln" generate --threads 1 "$tmp/run" --prompt "t" --tokens 31 --seed 1 >/dev/null 2>&1
t1=$(date +%s.%N); "$kiln" generate --threads 1 "$tmp/run" --prompt "t" --tokens 31 --seed 1 --no-kv-cache >/dev/null 2>&1
t2=$(date +%s.%N)
echo "     31 tokens: KV cache $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b - a}') s, without $(awk -v a="$t1" -v b="$t2" 'BEGIN{printf "%.3f", b - a}') s (process start included)"

check_done test_generate_kv
