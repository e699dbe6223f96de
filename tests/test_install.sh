#!/usr/bin/env bash
# `cmake --install` puts headers, libraries and kiln.pc in place, and a program
# built only with `pkg-config --cflags --libs kiln` (examples/mlp.c) runs.
set -eu
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$1" --prefix "$tmp/prefix" >/dev/null
for f in include/kiln/kiln.h include/kiln/graph.h lib/libkiln.a lib/libkiln.so lib/pkgconfig/kiln.pc; do
  [ -e "$tmp/prefix/$f" ] || { echo "FAIL: $f not installed"; exit 1; }
done
export PKG_CONFIG_PATH="$tmp/prefix/lib/pkgconfig"
cc -O2 examples/mlp.c -o "$tmp/mlp" $(pkg-config --cflags --libs kiln) -Wl,-rpath,"$tmp/prefix/lib" -lm
"$tmp/mlp" | tail -n 1
# kiln.h is the whole API: the text calls too, with no clash between headers
# (a missing declaration is an error, not a warning)
printf '#include <kiln/kiln.h>\nint main(void) { return kl_vocab_size(NULL) + (int)kl_tokens_count(NULL); }\n' >"$tmp/whole.c"
cc -std=c11 -Wall -Wextra -Werror -pedantic "$tmp/whole.c" -o "$tmp/whole" $(pkg-config --cflags --libs kiln) -Wl,-rpath,"$tmp/prefix/lib"
"$tmp/whole" || { echo "FAIL: kiln.h program"; exit 1; }
echo "test_install: all passed"
