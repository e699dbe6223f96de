#!/usr/bin/env bash
# Prepares a GPU session's device check, on the build machine (no GPU needed):
# builds kiln with CUDA (Release, sm_90a + PTX) in build-gpu/, then packs what
# the device machine lacks into .gpu/bundle.tar.xz (git-ignored): the CUDA
# test programs, kiln and bench_mlp, the shared libraries they link that are
# not CUDA's or glibc's (OpenBLAS, libgomp, libyaml, jansson, libpng, zlib,
# gfortran), Fashion-MNIST and the fortunes corpus. The device tool then runs
#   bash scripts/gpu_check.sh        with carry: [".gpu"]
# (the whole working tree plus carried files must stay under 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DKILN_CUDA=ON >/dev/null
cmake --build build-gpu -j"$(nproc)" >/dev/null
rm -rf .gpu/stage
mkdir -p .gpu/stage/bin .gpu/stage/lib .gpu/stage/data
bins=(kiln bench_mlp)
for t in build-gpu/test_cuda* build-gpu/test_loss_scale; do bins+=("$(basename "$t")"); done # tests with a GPU part
for b in "${bins[@]}"; do cp "build-gpu/$b" .gpu/stage/bin/; done
# every non-CUDA, non-glibc library the programs load
ldd .gpu/stage/bin/* | awk '/=> \//{print $3}' | sort -u | while read -r lib; do
  case "$(basename "$lib")" in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libcuda*|libcublas*|libcudart*) ;;
    *) cp -L "$lib" .gpu/stage/lib/ ;;
  esac
done
cp /usr/share/datasets/fashion-mnist/*.gz .gpu/stage/data/
cp -a /usr/share/games/fortunes .gpu/stage/data/ # the LSTM and GPT configs' corpus (its .u8 links are relative; gpu_check.sh points data.path here)
git rev-parse HEAD >.gpu/stage/commit
tar -C .gpu/stage -cJf .gpu/bundle.tar.xz .
rm -rf .gpu/stage
echo "bundle: .gpu/bundle.tar.xz $(du -h .gpu/bundle.tar.xz | cut -f1) (commit $(git rev-parse --short HEAD));" \
     "working tree + bundle: $(( ( $(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1) + $(stat -c %s .gpu/bundle.tar.xz) ) / 1048576 )) MiB of 64"
