#!/usr/bin/env bash
# Installs what kiln needs to build, test and benchmark on Debian (run as root).
# Idempotent: packages already present are skipped by apt.
set -euo pipefail
pkgs=(build-essential cmake pkg-config clang libclang-rt-14-dev  # clang + libFuzzer for the fuzz smoke
      libopenblas-openmp-dev libopenblas0-pthread
      libblis4-openmp  # GEMM where OpenBLAS does not know the CPU (src/backends/cpu/blas.c)
      libdnnl-dev  # oneDNN's f32 convolutions (src/backends/cpu/conv_dnnl.c)
      libyaml-dev libjansson-dev zlib1g-dev libpng-dev
      dataset-fashion-mnist
      fortunes  # sequence models: the text corpus of models/char_lstm.yaml, gpt_small.yaml
      locales  # localedef: test_locale builds a decimal-comma locale
      gnuplot-nox)  # monitoring: kiln report's plots
[ "${KILN_BENCH:-0}" = 1 ] && pkgs+=(python3-torch)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Python test tools (reference readers for file formats).
if [ "${KILN_PYTEST:-0}" = 1 ]; then
  python3 -m pip install -q --disable-pip-version-check safetensors numpy tensorboard onnx onnxruntime 2>&1 | tail -n 2 || true
fi
