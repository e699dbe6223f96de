#!/usr/bin/env bash
# Installs what kiln needs, builds it, and runs the whole test suite:
#   1. Release build (CUDA compiled and linked when nvcc is present) + ctest
#   2. AddressSanitizer + UBSan build + ctest (CPU code)
#   3. Fuzz smoke: each libFuzzer target runs briefly on its seed corpus
# Run as root on Debian: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
KILN_PYTEST=1 bash scripts/setup.sh
jobs=$(nproc)

echo "== release build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")

echo "== sanitizer build (ASan + UBSan)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DKILN_SANITIZE=ON -DKILN_CUDA=OFF >/dev/null
cmake --build build-asan -j"$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
   ctest --output-on-failure -j"$jobs" -E '_py$|^test_install$')

echo "== fuzz smoke"
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DKILN_FUZZ=ON -DKILN_TESTS=OFF -DKILN_CUDA=OFF >/dev/null
cmake --build build-fuzz -j"$jobs" >/dev/null
for f in build-fuzz/fuzz_*; do
  [ -f "$f" ] && [ -x "$f" ] || continue  # the targets only (not logs or corpora of earlier runs)
  name=$(basename "$f")
  corpus=tests/corpus/$name
  mkdir -p "build-fuzz/corpus-$name"
  args=("build-fuzz/corpus-$name")
  [ -d "$corpus" ] && args+=("$corpus")
  "$f" -max_total_time=15 -rss_limit_mb=2048 "${args[@]}" >"build-fuzz/$name.log" 2>&1 \
    || { echo "$name failed:"; tail -n 30 "build-fuzz/$name.log"; exit 1; }
  echo "$name: $(grep -o 'stat::number_of_executed_units: [0-9]*' "build-fuzz/$name.log" || tail -n 1 "build-fuzz/$name.log")"
done
echo "all tests passed"
