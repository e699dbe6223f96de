#!/usr/bin/env bash
# Interop with the Python safetensors library: Python reads a file kiln wrote
# and kiln reads a file Python wrote. $1 = build dir. Exit 77 = skipped.
set -euo pipefail
build=${1:?usage: test_safetensors_py.sh BUILD_DIR}
tool="$build/test_safetensors"
if ! command -v python3 >/dev/null; then
    echo "skipped: python3 is not on PATH"; exit 77
fi
if ! why=$(python3 -c "import safetensors, numpy" 2>&1); then
    echo "skipped: python3 cannot import safetensors and numpy: ${why##*$'\n'}"; exit 77
fi
[ -x "$tool" ] || { echo "FAIL: $tool not built"; exit 1; }
tmp=$(mktemp -d /tmp/kiln_stpy_XXXXXX)
trap 'rm -rf "$tmp"' EXIT

# 1. kiln writes, Python reads (see py_write in test_safetensors.c).
"$tool" --write "$tmp/kiln.safetensors"
python3 - "$tmp/kiln.safetensors" <<'EOF'
import json, struct, sys, zlib
import numpy as np
from safetensors import safe_open, deserialize

path = sys.argv[1]
raw = open(path, "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
assert (8 + n) % 8 == 0, f"data section starts at {8 + n}, not a multiple of 8"
assert json.loads(raw[8:8 + n])["c"]["dtype"] == "BF16"

with safe_open(path, framework="np") as f:
    assert sorted(f.keys()) == ["a", "b", "c", 'q"\\\n'], f.keys()
    meta = f.metadata()
    crcs = {k[6:]: v for k, v in meta.items() if k.startswith("crc32:")}
    assert {k: v for k, v in meta.items() if not k.startswith("crc32:")} == {"step": "7", "name": "kiln"}, meta
    header = json.loads(raw[8:8 + n])
    for name, info in header.items():  # each tensor's CRC-32, as zlib computes it over its bytes
        if name == "__metadata__":
            continue
        lo, hi = info["data_offsets"]
        assert crcs.pop(name) == "%08x" % zlib.crc32(raw[8 + n + lo:8 + n + hi]), name
    assert not crcs, crcs
    a, b = f.get_tensor("a"), f.get_tensor("b")
    assert f.get_tensor('q"\\\n').tolist() == [9, 8]
assert a.dtype == np.float32 and a.shape == (2, 3), (a.dtype, a.shape)
assert np.array_equal(a, np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5), a
assert b.dtype == np.int32 and np.array_equal(b, [1, 2, 3, 4]), b

# numpy has no bfloat16: check the raw bytes, widened to float32.
views = dict(deserialize(raw))
c = views["c"]
assert c["dtype"] == "BF16" and list(c["shape"]) == [3], c
wide = (np.frombuffer(bytes(c["data"]), dtype="<u2").astype(np.uint32) << 16).view(np.float32)
assert np.array_equal(wide, [1.0, -2.5, 0.375]), wide
print("python read kiln's file: ok")
EOF

# 2. Python writes, kiln reads (see py_check in test_safetensors.c).
python3 - "$tmp/py.safetensors" <<'EOF'
import sys
import numpy as np
from safetensors.numpy import save_file

t = {
    "w": (np.arange(12, dtype=np.float32) * 0.25 - 1).reshape(3, 4),
    "h": np.array([0.5, -1.0, 2.0, 65504.0, 0.0], dtype=np.float16),
    "d": np.array([[1.5, -2.25], [1e300, 3.0]], dtype=np.float64),
    "i": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
    "l": np.array([-(1 << 40), 0, (1 << 50) + 7], dtype=np.int64),
    "u": np.array([0, 1, 128, 255], dtype=np.uint8),
    "e": np.zeros((0, 3), dtype=np.float32),
    "s": np.array(42.0, dtype=np.float32),
}
save_file(t, sys.argv[1], metadata={"format": "np", "epoch": "3"})
EOF
"$tool" --check "$tmp/py.safetensors"
echo "kiln read python's file: ok"
