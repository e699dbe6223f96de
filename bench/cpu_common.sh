# Sourced by the CPU benchmark scripts (run_cnn.sh, run_infer.sh, run_seq.sh)
# from the repository root: what they share.
#   bench_build [DIR]  installs what the benchmarks need (Debian's
#                      python3-torch etc., as root) and builds kiln in DIR
#                      (default build, Release);
#   bench_clean        the command prefix both sides run under: OpenBLAS
#                      picks its kernels for this CPU (benchmarks only);
#   bench_machine      the CPU, its cores and the time, for the record.
bench_build() {
  KILN_BENCH=1 bash scripts/setup.sh
  cmake -S . -B "${1:-build}" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "${1:-build}" -j"$(nproc)" --target kiln >/dev/null
}
bench_clean=(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE)
bench_machine() { echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores; $(date -u +%FT%H:%MZ)"; }
