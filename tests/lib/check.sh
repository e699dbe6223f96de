# The frame of kiln's shell tests, sourced with the build directory:
#   . "$(dirname "$0")/lib/check.sh" "$1"
# kiln: the build's kiln; tmp: a scratch directory removed at exit;
# check NAME EXPR: evaluates EXPR, prints "ok" or "FAIL" with NAME and
# counts the failures; step_losses RUN_DIR: the losses of its step records,
# one a line; resume_dir RUN STEP DST: makes DST a run directory whose
# latest checkpoint is RUN's of step STEP, with RUN's config (what --resume
# reads); same_tail RUN RES: RES logged steps, and they are RUN's last
# ones bit for bit; tiny_lm YAML LAYER "SECTIONS": a character language
# model config (16-token windows, an embedding of 8, then LAYER, then the
# vocabulary projection) on a small corpus in $tmp, SECTIONS appended;
# check_done NAME: exits 1 saying how many checks failed, else prints
# "NAME: all passed".
set -u
kiln="$1/kiln"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=$((fail + 1)); fi; }
step_losses() { grep '"type":"step"' "$1/metrics.jsonl" | sed 's/.*"loss":\([^,]*\),.*/\1/'; }
resume_dir() {
  local ck; ck=$(printf 'step-%09d' "$2")
  mkdir -p "$3/checkpoints" && cp -r "$1/checkpoints/$ck" "$3/checkpoints/" && echo "$ck" >"$3/checkpoints/latest" &&
    cp "$1/config.yaml" "$3/"
}
same_tail() {
  local n; n=$(step_losses "$2" | wc -l)
  [ "$n" -gt 0 ] && [ "$(step_losses "$1" | tail -n "$n")" = "$(step_losses "$2")" ]
}
tiny_lm() {
  printf 'the cat sat on a mat. a fool and his money are soon parted.\n%s\n' "$(seq 1 400 | tr '\n' ' ')" >"$tmp/corpus.txt"
  printf 'name: tiny_lm\nmodel:\n  input: {tokens: 16}\n  vocab: auto\n  layers:\n    - {type: embedding, dim: 8}\n' >"$1"
  printf '    - %s\n    - {type: linear, out: vocab}\ndata: {kind: text, path: %s}\n%s\n' "$2" "$tmp/corpus.txt" "$3" >>"$1"
}
check_done() {
  [ "$fail" -eq 0 ] || { echo "$1: $fail failed"; exit 1; }
  echo "$1: all passed"
}
