#!/usr/bin/env bash
# kiln train's data checks ($1 = build dir): a PNG test folder with fewer
# classes is numbered by the training folder's class names (and one with a
# class the training folder lacks is refused); a test set of another sample
# shape is refused before training; a bad label is named by its sample in
# the file's order (not the validation split's); CSV's auto header takes
# only an all-text first row (a mixed one is an error, not dropped) and
# data.header overrides it; IDX NaN values, a folder given as a data file,
# label_col -2, half a test set, --resume with another seed or on changed
# training data are refused
# with messages that name them (a refused resume leaves the run's files
# as they were); a val_fraction that rounds to no characters
# is refused.
. "$(dirname "$0")/lib/check.sh" "$1"
py=${PYTHON:-python3}
common="optim: {kind: sgd, lr: 0.5}
train: {epochs: 30, batch: 3, seed: 1, log_every: 1000, telemetry_interval: 0}"
# PNG folders: three classes of 4x4 gray images (black, gray, white, with a little noise)
"$py" - "$tmp" <<'PY'
import os, struct, sys, zlib, random
def png(path, v):
    raw = b"".join(b"\0" + bytes(max(0, min(255, v + random.randint(-8, 8))) for _ in range(4)) for _ in range(4))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    open(path, "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0)) +
                           chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
random.seed(1)
for split, classes in (("tr", "cat dog fish"), ("te", "cat fish"), ("bad", "cat cow")):
    for c, v in zip(classes.split(), (10, 128, 245) if split == "tr" else (10, 245)):
        os.makedirs(f"{sys.argv[1]}/{split}/{c}", exist_ok=True)
        for i in range(6): png(f"{sys.argv[1]}/{split}/{c}/{i}.png", v)
PY
printf 'name: png\nmodel:\n  input: [1, 4, 4]\n  layers:\n    - {type: flatten}\n    - {type: linear, out: 3}\n' >"$tmp/png.yaml"
printf 'data: {kind: pngdir, path: %s, test_path: %s, normalize: false}\n%s\n' "$tmp/tr" "$tmp/te" "$common" >>"$tmp/png.yaml"
"$kiln" train "$tmp/png.yaml" --threads 1 --no-tensorboard --out "$tmp/png" >"$tmp/png.log" 2>&1
check "a test folder without 'dog': its cat and fish keep the training ids (test accuracy 1)" \
  '[ $? -eq 0 ] && grep -q "^test: loss [0-9.]* accuracy 1.0000" "$tmp/png.log"'
"$kiln" eval "$tmp/png" >"$tmp/pngev.log" 2>&1
check "kiln eval on it agrees" '[ $? -eq 0 ] && grep -q "accuracy 1.0000" "$tmp/pngev.log"'
"$kiln" train "$tmp/png.yaml" --set "data.test_path=$tmp/bad" --threads 1 --no-tensorboard --out "$tmp/pngb" >"$tmp/pngb.log" 2>&1
check "a test class the training folder lacks" '[ $? -eq 1 ] && grep -q "class .cow. is not one of the 3 classes of" "$tmp/pngb.log"'

# CSV: a test file of another width, a bad label after val_split, the header rule
csvcfg() { printf 'name: csv\nmodel:\n  input: [3]\n  layers:\n    - {type: linear, out: 3}\ndata: {kind: csv, path: %s%s}\n%s\n' "$1" "$2" "$common" >"$tmp/csv.yaml"; }
printf '0.1,0.2,0.3,0\n0.4,0.5,0.6,1\n0.7,0.8,0.9,2\n0.2,0.1,0.3,0\n0.5,0.4,0.6,1\n0.8,0.7,0.9,2\n' >"$tmp/tr.csv"
printf '0.1,0.2,0.3,0.4,0\n' >"$tmp/te4.csv"
csvcfg "$tmp/tr.csv" ", test_path: $tmp/te4.csv"
"$kiln" train "$tmp/csv.yaml" --threads 1 --no-tensorboard --out "$tmp/c1" >"$tmp/c1.log" 2>&1
check "a test CSV of 4 features against 3: refused before training" \
  '[ $? -eq 1 ] && grep -q "te4.csv: the test set.s samples are \[4\], the training set.s \[3\]" "$tmp/c1.log" && ! grep -q "\"type\":\"step\"" "$tmp/c1/metrics.jsonl" 2>/dev/null'
{ head -n 5 "$tmp/tr.csv"; printf '0.9,0.9,0.9,7\n'; } >"$tmp/lab.csv"
csvcfg "$tmp/lab.csv" ", val_split: 2"
"$kiln" train "$tmp/csv.yaml" --threads 1 --no-tensorboard --out "$tmp/c2" >"$tmp/c2.log" 2>&1
check "a bad label is named by its file line (6, sample 5), before val_split" \
  '[ $? -eq 1 ] && grep -q "lab.csv:6: label 7 out of range \[0,3) (sample 5)" "$tmp/c2.log"'
{ printf '1,2,x,0\n'; cat "$tmp/tr.csv"; } >"$tmp/mixed.csv"
csvcfg "$tmp/mixed.csv" ""
"$kiln" train "$tmp/csv.yaml" --threads 1 --no-tensorboard --out "$tmp/c3" >"$tmp/c3.log" 2>&1
check "a first row of numbers and text is data, with its error" '[ $? -eq 1 ] && grep -q "mixed.csv:1: column 3: .x. is not a number" "$tmp/c3.log"'
"$kiln" train "$tmp/csv.yaml" --set data.header=true --epochs 1 --threads 1 --no-tensorboard --out "$tmp/c4" >"$tmp/c4.log" 2>&1
check "data.header true skips it" '[ $? -eq 0 ] && grep -q "header: true" "$tmp/c4/config.yaml"'
"$py" - "$tmp/img.png" <<'PY'
import struct, sys, zlib
chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
open(sys.argv[1], "wb").write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0)) +
                              chunk(b"IDAT", zlib.compress(b"\0\1\2\0\3\4")) + chunk(b"IEND", b""))
PY
"$kiln" predict "$tmp/c4" "$tmp/img.png" >"$tmp/png.log" 2>&1
check "a PNG for a tabular model: refused, naming the model's input and what to give" \
  '[ $? -eq 1 ] && grep -q "img.png: the model.s input is \[3\], not an image \[C, H, W\] of 1 to 4 channels: give a CSV" "$tmp/png.log"'
{ printf 'a,b,c,label\n'; cat "$tmp/tr.csv"; } >"$tmp/hdr.csv"
csvcfg "$tmp/hdr.csv" ""
"$kiln" train "$tmp/csv.yaml" --epochs 1 --threads 1 --no-tensorboard --out "$tmp/c5" >"$tmp/c5.log" 2>&1
check "an all-text first row is the auto header" '[ $? -eq 0 ]'
"$kiln" train "$tmp/csv.yaml" --set data.label_col=-2 --threads 1 --no-tensorboard --out "$tmp/c6" >"$tmp/c6.log" 2>&1
check "label_col -2" '[ $? -eq 1 ] && grep -q "label_col -2 (no labels) cannot train a classifier" "$tmp/c6.log"'
"$kiln" train "$tmp/csv.yaml" --set "data.path=$tmp" --threads 1 --no-tensorboard --out "$tmp/c7" >"$tmp/c7.log" 2>&1
check "a folder as data.path" '[ $? -eq 1 ] && grep -q "$tmp: is a directory, expected a file" "$tmp/c7.log"'

# data.mean without data.std would be dropped (std 0 computes both): refused; both given are kept
csvcfg "$tmp/tr.csv" ", mean: 0.5"
"$kiln" train "$tmp/csv.yaml" --epochs 1 --threads 1 --no-tensorboard --out "$tmp/m1" >"$tmp/m1.log" 2>&1
check "mean without std refused, located" '[ $? -eq 1 ] && grep -q "csv.yaml:6:[0-9]*: data.mean: data: mean 0.5 needs std too" "$tmp/m1.log"'
"$kiln" train "$tmp/csv.yaml" --set data.std=2 --epochs 1 --threads 1 --no-tensorboard --out "$tmp/m2" >"$tmp/m2.log" 2>&1
check "mean and std given are used as given" '[ $? -eq 0 ] && grep -q "mean: 0.5" "$tmp/m2/config.yaml" && grep -q "std: 2" "$tmp/m2/config.yaml"'

# a data key of another kind is refused, not ignored and recorded as used
csvcfg "$tmp/tr.csv" ", train_images: $tmp/im.idx"
"$kiln" train "$tmp/csv.yaml" --epochs 1 --threads 1 --no-tensorboard --out "$tmp/k1" >"$tmp/k1.log" 2>&1
check "train_images under kind csv, located" '[ $? -eq 1 ] && grep -q "csv.yaml:6:[0-9]*: data.train_images: data: train_images is for kind idx; kind csv does not use it" "$tmp/k1.log" && [ ! -e "$tmp/k1/config.yaml" ]'
"$kiln" train "$tmp/csv.yaml" --set data.kind=pngdir --set data.train_images= --set data.header=true --epochs 1 --threads 1 --no-tensorboard --out "$tmp/k2" >"$tmp/k2.log" 2>&1
check "header under kind pngdir (a null key is absent)" '[ $? -eq 1 ] && grep -q "data: header is for kind csv; kind pngdir does not use it" "$tmp/k2.log"'

# resume with another seed (it orders the validation split and the shuffle)
csvcfg "$tmp/tr.csv" ", val_split: 2"
"$kiln" train "$tmp/csv.yaml" --epochs 2 --set train.batch=2 --threads 1 --no-tensorboard --out "$tmp/r" >/dev/null 2>&1
before=$(cat "$tmp/r/config.yaml" "$tmp/r/metrics.jsonl" | md5sum)
"$kiln" train --resume "$tmp/r" --epochs 3 --seed 99 --threads 1 --no-tensorboard >"$tmp/rs.log" 2>&1
check "--resume with another train.seed" '[ $? -eq 1 ] && grep -q "this run has train.seed 99" "$tmp/rs.log"'
check "the refused resume left config.yaml and metrics.jsonl as they were" \
  '[ "$(cat "$tmp/r/config.yaml" "$tmp/r/metrics.jsonl" | md5sum)" = "$before" ]'
# resume on other data at the same path (a value changed): refused; the same data moved resumes
cp "$tmp/tr.csv" "$tmp/tr_keep.csv"
sed -i '2s/0.4,/0.45,/' "$tmp/tr.csv"
"$kiln" train --resume "$tmp/r" --epochs 3 --threads 1 --no-tensorboard >"$tmp/rd.log" 2>&1
check "--resume on changed training data is refused, naming it" \
  '[ $? -eq 1 ] && grep -q "the training set holds 4 samples (CRC-32 [0-9a-f]*), the checkpoint (step [0-9]*) was trained on 4 (CRC-32 [0-9a-f]*): its batches would be other samples; .*--init" "$tmp/rd.log" &&
   [ "$(cat "$tmp/r/config.yaml" "$tmp/r/metrics.jsonl" | md5sum)" = "$before" ]'
mv "$tmp/tr_keep.csv" "$tmp/tr.csv"
"$kiln" train --resume "$tmp/r" --epochs 3 --threads 1 --no-tensorboard >"$tmp/rk.log" 2>&1
check "--resume on the same data trains on" '[ $? -eq 0 ] && grep -q "\"epoch\":3" "$tmp/r/metrics.jsonl"'

# IDX: a NaN pixel in f32 images; half a test set
"$py" - "$tmp" <<'PY'
import struct, sys
d = sys.argv[1]
vals = [0.5] * 12; vals[7] = float("nan")
open(f"{d}/im.idx", "wb").write(struct.pack(">BBBB", 0, 0, 0x0D, 3) + struct.pack(">III", 3, 2, 2) + struct.pack(">12f", *vals))
open(f"{d}/lb.idx", "wb").write(struct.pack(">BBBB", 0, 0, 0x08, 1) + struct.pack(">I", 3) + bytes([0, 1, 2]))
PY
printf 'name: idx\nmodel:\n  input: [1, 2, 2]\n  layers:\n    - {type: flatten}\n    - {type: linear, out: 3}\n' >"$tmp/idx.yaml"
printf 'data: {kind: idx, train_images: %s, train_labels: %s, normalize: false}\n%s\n' "$tmp/im.idx" "$tmp/lb.idx" "$common" >>"$tmp/idx.yaml"
"$kiln" train "$tmp/idx.yaml" --threads 1 --no-tensorboard --out "$tmp/i1" >"$tmp/i1.log" 2>&1
check "a NaN in IDX images is named" '[ $? -eq 1 ] && grep -q "im.idx: sample 1 element 3: nan is not a finite number" "$tmp/i1.log"'
"$kiln" train "$tmp/idx.yaml" --set "data.test_images=$tmp/im.idx" --threads 1 --no-tensorboard --out "$tmp/i2" >"$tmp/i2.log" 2>&1
check "test_images without test_labels" '[ $? -eq 1 ] && grep -q "a test set needs both test_images and test_labels" "$tmp/i2.log"'

# text: a val_fraction that rounds to no characters
tiny_lm "$tmp/lm.yaml" "{type: lstm, hidden: 8}" "train: {steps: 2, batch: 2}"
"$kiln" train "$tmp/lm.yaml" --set data.val_fraction=0.0001 --threads 1 --no-tensorboard --out "$tmp/t1" >"$tmp/t1.log" 2>&1
check "val_fraction rounding to nothing" '[ $? -eq 1 ] && grep -q "the held-out tail (val_fraction 0.0001) has 0 characters" "$tmp/t1.log"'
"$kiln" train "$tmp/lm.yaml" --set data.test_path=/x --threads 1 --no-tensorboard --out "$tmp/t2" >"$tmp/t2.log" 2>&1
check "test_path under kind text: the shared per-kind check" '[ $? -eq 1 ] && grep -q "data: test_path is for kind csv or pngdir; kind text does not use it" "$tmp/t2.log"'
"$kiln" train "$tmp/lm.yaml" --set model.vocab= --threads 1 --no-tensorboard --out "$tmp/t3" >"$tmp/t3.log" 2>&1
check "a null model.vocab is auto in train, as in plan" '[ $? -eq 0 ] && grep -q "vocab: [0-9]" "$tmp/t3/config.yaml" && "$kiln" plan "$tmp/lm.yaml" --set model.vocab= --max-batch 2 >/dev/null 2>&1'
check_done test_data_cli
