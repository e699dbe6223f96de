# The frame of kiln's shell tests, sourced with the build directory:
#   . "$(dirname "$0")/lib/check.sh" "$1"
# kiln: the build's kiln; tmp: a scratch directory removed at exit;
# check NAME EXPR: evaluates EXPR, prints "ok" or "FAIL" with NAME and
# counts the failures; step_losses RUN_DIR: the losses of its step records,
# one a line; check_done NAME: exits 1 saying how many checks failed, else
# prints "NAME: all passed".
set -u
kiln="$1/kiln"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fail=$((fail + 1)); fi; }
step_losses() { grep '"type":"step"' "$1/metrics.jsonl" | sed 's/.*"loss":\([^,]*\),.*/\1/'; }
check_done() {
  [ "$fail" -eq 0 ] || { echo "$1: $fail failed"; exit 1; }
  echo "$1: all passed"
}
