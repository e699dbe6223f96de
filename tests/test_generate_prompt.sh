#!/usr/bin/env bash
# kiln generate's start ($1 = build dir): without --prompt the model starts
# after a newline that is not printed (the text is the one a "\n" prompt
# gives, less that newline), as the usage says; a vocabulary without a
# newline (a corpus with none) needs --prompt, and the message says so,
# naming the vocab.txt, instead of starting from token 0; the drawn seed is
# told only once sampling starts (not before an error).
. "$(dirname "$0")/lib/check.sh" "$1"

tiny_lm "$tmp/lm.yaml" "{type: lstm, hidden: 8}" "train: {steps: 2, steps_per_epoch: 2, val_batches: 1, batch: 2}"
"$kiln" train "$tmp/lm.yaml" --out "$tmp/run" --threads 1 >"$tmp/train.log" 2>&1
check "tiny LM trains" '[ $? -eq 0 ]'
"$kiln" generate "$tmp/run" --threads 1 --tokens 30 --seed 5 >"$tmp/g0.txt" 2>/dev/null
rc=$?
"$kiln" generate "$tmp/run" --threads 1 --tokens 30 --seed 5 --prompt "
" >"$tmp/g1.txt" 2>/dev/null
check "no prompt: the 30 characters and a newline, nothing before them" \
  "[ $rc -eq 0 ] && [ \$(wc -c <'$tmp/g0.txt') -eq 31 ]"
check "no prompt: the text a newline prompt gives, less the newline" "cmp -s '$tmp/g0.txt' <(tail -c +2 '$tmp/g1.txt')"
"$kiln" generate "$tmp/run" --threads 1 --tokens 5 >/dev/null 2>"$tmp/s.err"
"$kiln" generate "$tmp/run" --threads 1 --tokens 5 --temperature 0 >/dev/null 2>"$tmp/s0.err"
"$kiln" generate "$tmp/run" --threads 1 --tokens 5 --top-k 1 >/dev/null 2>"$tmp/s1.err"
check "no --seed: the seed drawn is printed, but not for greedy decoding (temperature 0, top-k 1)" \
  "grep -q '^(seed [0-9]*: pass --seed [0-9]* to repeat)' '$tmp/s.err' && ! grep -q seed '$tmp/s0.err' && ! grep -q seed '$tmp/s1.err'"
"$kiln" generate "$tmp/run" --threads 1 --tokens 5 --prompt "the ~" >/dev/null 2>"$tmp/sx.err"
check "no --seed, a prompt outside the vocabulary: the error alone, no seed to repeat" \
  "[ \$? -eq 1 ] && grep -q \"character '~' (byte 126) at offset 4 is not in the model's vocabulary\" '$tmp/sx.err' &&
   ! grep -q seed '$tmp/sx.err'"
"$kiln" generate --help >"$tmp/help.txt"
check "the usage says the implicit newline is not printed" \
  "tr '\n' ' ' <'$tmp/help.txt' | grep -q 'without --prompt the model starts after a newline, which is not printed'"

tr -d '\n' <"$tmp/corpus.txt" >"$tmp/flat.txt"
"$kiln" train "$tmp/lm.yaml" --out "$tmp/flat" --threads 1 --set "data.path=$tmp/flat.txt" >"$tmp/train2.log" 2>&1
check "a corpus without a newline trains" '[ $? -eq 0 ] && grep -qw 32 "$tmp/flat/vocab.txt" && ! grep -qw 10 "$tmp/flat/vocab.txt"'
for extra in "" "--logits"; do
  "$kiln" generate "$tmp/flat" --threads 1 --tokens 10 --seed 5 $extra >"$tmp/n.txt" 2>"$tmp/n.err"
  check "no newline in the vocabulary, no prompt${extra:+ ($extra)}: refused, naming vocab.txt and --prompt" \
    "[ \$? -eq 1 ] && [ ! -s '$tmp/n.txt' ] && grep -q 'flat/checkpoints/step-000000002/vocab.txt has no newline.*give --prompt' '$tmp/n.err'"
done
"$kiln" generate "$tmp/flat" --threads 1 --tokens 10 --seed 5 --prompt "the " >"$tmp/p.txt" 2>/dev/null
check "no newline in the vocabulary, with --prompt: generates" "[ \$? -eq 0 ] && [ \$(wc -c <'$tmp/p.txt') -eq 15 ]"

check_done test_generate_prompt
