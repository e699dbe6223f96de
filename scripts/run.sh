#!/usr/bin/env bash
# Installs what kiln needs, builds it, and trains the default model (the
# reference CNN on Fashion-MNIST) with `kiln train`. Extra arguments go to
# kiln train (e.g. --epochs 1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target kiln
exec ./build/kiln train "$@"
