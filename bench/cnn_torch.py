"""PyTorch reference for kiln's CNN benchmark: the reference CNN on
Fashion-MNIST, Adam lr 1e-3, batch 128, 55000 training samples (5000 held
out for validation, as kiln's default config), one or more epochs on the CPU.
Prints wall time for the whole run (data loading included, like timing the
whole `kiln train` command) and per epoch, and the test accuracy."""
import argparse, gzip, os, time

import numpy as np
import torch
import torch.nn as nn

t_start = time.time()
ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--epochs", type=int, default=1)
ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(1)


def idx(name):
    path = os.path.join(args.data, name)
    with gzip.open(path + ".gz" if os.path.exists(path + ".gz") else path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


xtr = idx("train-images-idx3-ubyte").astype(np.float32) / 255
ytr = idx("train-labels-idx1-ubyte").astype(np.int64)
xte = idx("t10k-images-idx3-ubyte").astype(np.float32) / 255
yte = idx("t10k-labels-idx1-ubyte").astype(np.int64)
perm = np.random.default_rng(1).permutation(len(xtr))
xva, yva, xtr, ytr = xtr[perm[:5000]], ytr[perm[:5000]], xtr[perm[5000:]], ytr[perm[5000:]]
mean, std = xtr.mean(), xtr.std()
to_t = lambda x: torch.from_numpy(((x - mean) / std)[:, None].copy())
xtr, xva, xte = to_t(xtr), to_t(xva), to_t(xte)
ytr, yva, yte = torch.from_numpy(ytr), torch.from_numpy(yva), torch.from_numpy(yte)

model = nn.Sequential(
    nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()


def evaluate(x, y):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 128):
            correct += (model(x[i:i + 128]).argmax(1) == y[i:i + 128]).sum().item()
    model.train()
    return correct / len(x)


for epoch in range(args.epochs):
    t0 = time.time()
    order = torch.randperm(len(xtr))
    for i in range(0, len(xtr) - 127, 128):  # drop the last partial batch, like kiln
        b = order[i:i + 128]
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xtr[b]), ytr[b]).backward()
        opt.step()
    val = evaluate(xva, yva)
    print(f"torch_epoch_s={time.time() - t0:.2f} val_accuracy={val:.4f}", flush=True)
print(f"torch_test_accuracy={evaluate(xte, yte):.4f}")
print(f"torch_total_s={time.time() - t_start:.2f}")
