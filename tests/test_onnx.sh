#!/usr/bin/env bash
# kiln export --onnx ($1 = build dir): models trained a few steps, exported,
# pass onnx's full checker, and onnxruntime's logits on random raw inputs
# equal `kiln predict --logits` (the run's normalisation is in the model):
# the batchnorm CNN (conv, batchnorm, residual, global average pool,
# dropout), the MLP, and a model of the remaining layer types (grouped and
# dilated conv, avg/max pool with stride and padding, GELU, tanh, sigmoid,
# layernorm, flatten), the MLP again with --external-data; and language models against `kiln generate --logits`
# on a prompt: the GPT (embedding, positions, transformer blocks, the tied
# output layer), the GPT with rotary positions instead, rotary blocks of
# different head sizes, the char LSTM and a stacked GRU. Bad arguments and unwritable paths are refused with messages.
# Skipped (77) without the onnx and onnxruntime packages.
. "$(dirname "$0")/lib/check.sh" "$1"
py=${PYTHON:-python3}
"$py" -c "import onnx, onnxruntime, numpy" 2>/dev/null || {
  echo "skip: python packages onnx, onnxruntime not installed (KILN_PYTEST=1 scripts/setup.sh)"; exit 77; }
cat >"$tmp/mixed.yaml" <<'YAML'
name: mixed
model:
  input: [1, 28, 28]
  layers:
    - {type: conv2d, out: 8, kernel: 3, padding: 1}
    - {type: gelu}
    - {type: conv2d, out: 8, kernel: 3, padding: 2, dilation: 2, groups: 2}
    - {type: tanh}
    - {type: avgpool2d, kernel: 3, stride: 2, padding: 1}
    - {type: maxpool2d, kernel: 2}
    - {type: flatten}
    - {type: linear, out: 32}
    - {type: layernorm}
    - {type: sigmoid}
    - {type: linear, out: 10}
data: {kind: fashion_mnist, normalize: true}
optim: {kind: adam, lr: 1.0e-3}
YAML
small=(--steps 4 --set data.limit=1000 --set data.val_split=200 --threads 2 --no-tensorboard)
cat >"$tmp/cmp.py" <<'PY'
import sys, numpy as np, onnx, onnxruntime as ort
path, csv, ref = sys.argv[1:4]
m = onnx.load(path)
onnx.checker.check_model(m, full_check=True)
x = np.loadtxt(csv, delimiter=",", dtype=np.float32, ndmin=2)
shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim[1:]]
out = ort.InferenceSession(path).run(None, {"input": x.reshape([len(x)] + shape)})[0]
want = np.array([[float(v) for v in l.split()[1:]] for l in open(ref)], dtype=np.float64)
err = np.abs(out - want).max() / max(1.0, np.abs(want).max())
print(f"{out.shape[0]} samples, {len(m.graph.node)} nodes, max error {err:.2e}")
sys.exit(0 if out.shape == want.shape and err < 1e-5 else 1)
PY
"$py" -c "import numpy as np; np.savetxt('$tmp/x.csv', np.random.RandomState(3).rand(5, 784), delimiter=',', fmt='%.9g')"
for model in models/cnn_bn.yaml models/mlp.yaml "$tmp/mixed.yaml"; do
  name=$(basename "$model" .yaml)
  "$kiln" train "$model" "${small[@]}" --out "$tmp/$name" >"$tmp/$name.log" 2>&1
  "$kiln" export "$tmp/$name" --onnx "$tmp/$name.onnx" >"$tmp/$name.export.log" 2>&1
  check "$name: trained and exported" '[ $? -eq 0 ] && [ -s "$tmp/$name.onnx" ]'
  "$kiln" predict "$tmp/$name" "$tmp/x.csv" --logits >"$tmp/$name.ref" 2>&1
  check "$name: onnxruntime equals kiln predict ($("$py" "$tmp/cmp.py" "$tmp/$name.onnx" "$tmp/x.csv" "$tmp/$name.ref" 2>&1 | tail -n 1))" \
    '"$py" "$tmp/cmp.py" "$tmp/$name.onnx" "$tmp/x.csv" "$tmp/$name.ref" >/dev/null 2>&1'
done

# the MLP with its weights as external data beside the model
"$kiln" export "$tmp/mlp" --onnx "$tmp/mlpx.onnx" --external-data >"$tmp/mlpx.export.log" 2>&1
check "mlp with --external-data: FILE.data holds the weights" \
  '[ $? -eq 0 ] && [ "$(stat -c %s "$tmp/mlpx.onnx.data")" -gt "$(stat -c %s "$tmp/mlpx.onnx")" ] && [ "$(stat -c %s "$tmp/mlpx.onnx")" -lt 65536 ]'
check "mlp with external data: onnxruntime equals kiln predict ($("$py" "$tmp/cmp.py" "$tmp/mlpx.onnx" "$tmp/x.csv" "$tmp/mlp.ref" 2>&1 | tail -n 1))" \
  '"$py" "$tmp/cmp.py" "$tmp/mlpx.onnx" "$tmp/x.csv" "$tmp/mlp.ref" >/dev/null 2>&1'

# the GPT: logits at every position of a prompt, the last against kiln's
cat >"$tmp/cmp_lm.py" <<'PY'
import sys, numpy as np, onnx, onnxruntime as ort
path, run, prompt, ref = sys.argv[1:5]
m = onnx.load(path)
onnx.checker.check_model(m, full_check=True)
vocab = [int(v) for v in open(run + "/vocab.txt").read().split()]
ids = np.array([[vocab.index(b) for b in prompt.encode()]], dtype=np.int32)
out = ort.InferenceSession(path).run(None, {"input": ids})[0]
want = np.array([float(v) for v in open(ref).read().split()])
err = np.abs(out[0, -1] - want).max() / max(1.0, np.abs(want).max())
print(f"logits {list(out.shape)}, {len(m.graph.node)} nodes, max error {err:.2e}")
sys.exit(0 if out.shape == (1, len(ids[0]), len(vocab)) and err < 1e-5 else 1)
PY
cat >"$tmp/gru.yaml" <<'YAML'
name: gru
model:
  input: {tokens: 32}
  vocab: auto
  layers:
    - {type: embedding, dim: 16}
    - {type: gru, hidden: 24, layers: 2}
    - {type: linear, out: vocab}
data: {kind: text, path: /usr/share/games/fortunes, val_fraction: 0.1}
optim: {kind: adam, lr: 3.0e-3}
YAML
sed -e 's/heads: 6, dropout: 0.1}/heads: 6, dropout: 0.1, rope: true}/' -e '/pos_embedding/d' models/gpt_small.yaml \
  >"$tmp/rope.yaml"
# rotary blocks of head sizes 6, 4, 6: one pair of tables per head size
sed -e '/^  layers:/,$d' "$tmp/gru.yaml" | sed 's/^name: gru/name: ropemix/' >"$tmp/ropemix.yaml"
cat >>"$tmp/ropemix.yaml" <<'YAML'
  layers:
    - {type: embedding, dim: 12}
    - {type: transformer_block, heads: 2, rope: true}
    - {type: transformer_block, heads: 3, rope: true}
    - {type: transformer_block, heads: 2, rope: true}
    - {type: linear, out: vocab}
data: {kind: text, path: /usr/share/games/fortunes, val_fraction: 0.1}
YAML
for model in models/gpt_small.yaml "$tmp/rope.yaml" "$tmp/ropemix.yaml" models/char_lstm.yaml "$tmp/gru.yaml"; do
  name=$(basename "$model" .yaml)
  "$kiln" train "$model" --steps 3 --set train.batch=2 --threads 2 --no-tensorboard --out "$tmp/$name" \
    >"$tmp/$name.log" 2>&1
  "$kiln" export "$tmp/$name" --onnx "$tmp/$name.onnx" >"$tmp/$name.export.log" 2>&1
  check "$name: trained and exported" '[ $? -eq 0 ] && [ -s "$tmp/$name.onnx" ]'
  "$kiln" generate "$tmp/$name" --prompt "Q: What is" --logits --threads 2 >"$tmp/$name.ref" 2>"$tmp/$name.gen.log"
  check "$name: onnxruntime's next-character logits equal kiln's ($("$py" "$tmp/cmp_lm.py" "$tmp/$name.onnx" "$tmp/$name" "Q: What is" "$tmp/$name.ref" 2>&1 | tail -n 1))" \
    '"$py" "$tmp/cmp_lm.py" "$tmp/$name.onnx" "$tmp/$name" "Q: What is" "$tmp/$name.ref" >/dev/null 2>&1'
done

# the library's export of positions and a transformer block on [T, D] samples (test_onnx_lib.c)
"$1/test_onnx_lib" "$tmp/seq_tf" >"$tmp/seq_tf.log" 2>&1
check "[T, D] transformer: exported by the library" '[ $? -eq 0 ] && [ -s "$tmp/seq_tf.onnx" ]'
cat >"$tmp/cmp_io.py" <<'PY'
import sys, numpy as np, onnx, onnxruntime as ort
path, io = sys.argv[1:3]
m = onnx.load(path)
onnx.checker.check_model(m, full_check=True)
x, want = [np.array(l.split(), np.float64) for l in open(io).read().split("\n")[:2]]
shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim[1:]]
out = ort.InferenceSession(path).run(None, {"input": x.astype(np.float32).reshape([-1] + shape)})[0]
err = np.abs(out.ravel() - want).max() / max(1.0, np.abs(want).max())
print(f"{out.shape[0]} samples, max error {err:.2e}")
sys.exit(0 if out.size == want.size and err < 1e-5 else 1)
PY
check "[T, D] transformer: onnxruntime equals kiln ($("$py" "$tmp/cmp_io.py" "$tmp/seq_tf.onnx" "$tmp/seq_tf.txt" 2>&1 | tail -n 1))" \
  '"$py" "$tmp/cmp_io.py" "$tmp/seq_tf.onnx" "$tmp/seq_tf.txt" >/dev/null 2>&1'

# errors
"$kiln" export "$tmp/mlp" --onnx "$tmp/no/such/dir/m.onnx" >"$tmp/nodir.log" 2>&1
check "an unwritable path is named" '[ $? -eq 1 ] && grep -q "$tmp/no/such/dir/m.onnx" "$tmp/nodir.log"'
"$kiln" export "$tmp/mlp" >"$tmp/noarg.log" 2>&1
check "--onnx is required" '[ $? -eq 2 ] && grep -q "usage: kiln export CKPT --onnx FILE" "$tmp/noarg.log"'
"$kiln" export "$tmp/mlp" --onnx >"$tmp/noval.log" 2>&1
check "--onnx without its FILE" '[ $? -eq 2 ] && grep -q "kiln export: --onnx needs a FILE" "$tmp/noval.log"'
"$kiln" export "$tmp/missing" --onnx "$tmp/m.onnx" >"$tmp/missing.log" 2>&1
check "a missing checkpoint is named" '[ $? -eq 1 ] && grep -q "$tmp/missing" "$tmp/missing.log"'
check_done test_onnx
