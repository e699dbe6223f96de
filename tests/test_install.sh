#!/usr/bin/env bash
# `cmake --install` puts headers, libraries, kiln.pc and the model configs in
# place; a program built only with `pkg-config --cflags --libs kiln` (strict
# C11, examples/mlp.c) runs against libkiln.so and, with --static, against
# libkiln.a; libkiln.so exports the kl_ API and nothing else; kiln.pc still
# finds the headers after the prefix is moved.
set -eu
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$1" --prefix "$tmp/prefix" >/dev/null
libdir=$(cd "$tmp/prefix" && ls -d lib*/pkgconfig | head -n 1 | xargs dirname)
for f in include/kiln/kiln.h include/kiln/graph.h $libdir/libkiln.a $libdir/libkiln.so $libdir/pkgconfig/kiln.pc \
         share/kiln/models/cnn.yaml share/kiln/models/gpt_small.yaml; do
  [ -e "$tmp/prefix/$f" ] || { echo "FAIL: $f not installed"; exit 1; }
done
# exported: KL_API functions only (the toolchain's _init/_fini and the like aside)
leaked=$(nm -D --defined-only "$tmp/prefix/$libdir/libkiln.so" | awk '$2 ~ /[TDBRW]/ {print $3}' \
         | grep -v '^kl_' | grep -v -E '^_(init|fini|edata|end|_bss_start)$' || true)
[ -z "$leaked" ] || { echo "FAIL: libkiln.so exports non-API symbols:"; echo "$leaked" | head -n 20; exit 1; }
nm -D --defined-only "$tmp/prefix/$libdir/libkiln.so" | grep -q ' T kl_test_fail_alloc$' \
  && { echo "FAIL: libkiln.so exports the internal kl_test_fail_alloc"; exit 1; }
nm -D --defined-only "$tmp/prefix/$libdir/libkiln.so" | grep -q ' T kl_graph_run$' \
  || { echo "FAIL: libkiln.so does not export kl_graph_run"; exit 1; }
export PKG_CONFIG_PATH="$tmp/prefix/$libdir/pkgconfig"
cc -std=c11 -O2 examples/mlp.c -o "$tmp/mlp" $(pkg-config --cflags --libs kiln) -Wl,-rpath,"$tmp/prefix/$libdir" -lm
"$tmp/mlp" | tail -n 1
cc -std=c11 -O2 examples/mlp.c -o "$tmp/mlp_static" -I"$tmp/prefix/include" "$tmp/prefix/$libdir/libkiln.a" \
   $(pkg-config --static --libs kiln | sed 's/-lkiln//') -lm
"$tmp/mlp_static" | tail -n 1
# kiln.h is the whole API: the text calls too, with no clash between headers
# (a missing declaration is an error, not a warning)
printf '#include <kiln/kiln.h>\nint main(void) { return kl_vocab_size(NULL) + (int)kl_tokens_count(NULL); }\n' >"$tmp/whole.c"
cc -std=c11 -Wall -Wextra -Werror -pedantic "$tmp/whole.c" -o "$tmp/whole" $(pkg-config --cflags --libs kiln) -Wl,-rpath,"$tmp/prefix/$libdir"
"$tmp/whole" || { echo "FAIL: kiln.h program"; exit 1; }
# relocatable: the same files under another prefix
mv "$tmp/prefix" "$tmp/moved"
export PKG_CONFIG_PATH="$tmp/moved/$libdir/pkgconfig"
[ "$(pkg-config --variable=includedir kiln)" -ef "$tmp/moved/include" ] || { echo "FAIL: kiln.pc after a move: $(pkg-config --cflags kiln)"; exit 1; }
echo "test_install: all passed"
