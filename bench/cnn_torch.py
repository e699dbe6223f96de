"""PyTorch reference for kiln's CNN benchmark: the reference CNN (or with
--model cnn_bn, models/cnn_bn.yaml's network and training) on
Fashion-MNIST, Adam lr 1e-3, batch 128, 55000 training samples (5000 held
out for validation, as kiln's default config), one or more epochs on the CPU
or (--device cuda) a GPU with the whole dataset in device memory.
Prints wall time for the whole run (data loading included, like timing the
whole `kiln train` command) and per epoch, and the test accuracy; on a GPU
also the energy per epoch (NVML's total-energy counter, read through
ctypes) and peak memory (PyTorch's allocator, and the device's used memory
as NVML sees it)."""
import argparse, gzip, os, time

import numpy as np
import torch
import torch.nn as nn

t_start = time.time()
ap = argparse.ArgumentParser()
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--epochs", type=int, default=1)
ap.add_argument("--data", default=os.environ.get("KILN_DATA_DIR", "/usr/share/datasets/fashion-mnist"))
ap.add_argument("--device", default="cpu")
ap.add_argument("--channels-last", action="store_true")
ap.add_argument("--model", default="cnn", choices=["cnn", "cnn_bn"],
                help="cnn: models/cnn.yaml (Adam 1e-3); cnn_bn: models/cnn_bn.yaml (batchnorm, a residual "
                     "block, global average pooling, dropout; AdamW 2e-3, wd 0.01, cosine with 200 warmup "
                     "steps, clipping at 2)")
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(1)
dev = torch.device(args.device)
gpu = dev.type == "cuda"
if gpu:  # TF32 matmuls, as kiln's f32 GEMMs (KILN_TF32); cuDNN convolutions use TF32 by default
    torch.set_float32_matmul_precision("high")


class Nvml:
    """Energy (mJ since driver load) and used memory of GPU 0 through libnvidia-ml."""
    def __init__(self):
        import ctypes
        self.c = ctypes
        try:
            self.lib = ctypes.CDLL("libnvidia-ml.so.1")
            self.lib.nvmlInit_v2()
            self.h = ctypes.c_void_p()
            if self.lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(self.h)) != 0:
                self.lib = None
        except OSError:
            self.lib = None

    def energy_j(self):
        if not self.lib:
            return float("nan")
        v = self.c.c_ulonglong()
        return v.value / 1e3 if self.lib.nvmlDeviceGetTotalEnergyConsumption(self.h, self.c.byref(v)) == 0 else float("nan")

    def used_mib(self):
        if not self.lib:
            return float("nan")
        class Mem(self.c.Structure):
            _fields_ = [("total", self.c.c_ulonglong), ("free", self.c.c_ulonglong), ("used", self.c.c_ulonglong)]
        m = Mem()
        return m.used / 2**20 if self.lib.nvmlDeviceGetMemoryInfo(self.h, self.c.byref(m)) == 0 else float("nan")


nv = Nvml() if gpu else None


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
xtr, xva, xte = to_t(xtr).to(dev), to_t(xva).to(dev), to_t(xte).to(dev)
ytr, yva, yte = torch.from_numpy(ytr).to(dev), torch.from_numpy(yva).to(dev), torch.from_numpy(yte).to(dev)
mf = torch.channels_last if args.channels_last else torch.contiguous_format
if args.channels_last:
    xtr, xva, xte = (t.contiguous(memory_format=mf) for t in (xtr, xva, xte))

class Residual(nn.Module):
    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


if args.model == "cnn":
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    clip, warmup = 0.0, 0
else:
    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        Residual(nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                               nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32))),
        nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    clip, warmup = 2.0, 200
model = model.to(dev, memory_format=mf)
total = args.epochs * (len(xtr) // 128)
base_lr = opt.param_groups[0]["lr"]
loss_fn = nn.CrossEntropyLoss()


def lr_at(step):  # kiln's schedules (src/cli/train_opts.c train_lr): linear warmup, then cosine to 0
    import math
    if step < warmup:
        return base_lr * (step + 1) / warmup
    return base_lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def evaluate(x, y):
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 128):
            correct += (model(x[i:i + 128]).argmax(1) == y[i:i + 128]).sum().item()
    model.train()
    return correct / len(x)


step = 0
for epoch in range(args.epochs):
    if gpu:
        torch.cuda.synchronize()
        e0 = nv.energy_j()
    t0 = time.time()
    order = torch.randperm(len(xtr), device=dev)
    for i in range(0, len(xtr) - 127, 128):  # drop the last partial batch, like kiln
        b = order[i:i + 128]
        if warmup:
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xtr[b]), ytr[b]).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        step += 1
    if gpu:
        torch.cuda.synchronize()
        train_s = time.time() - t0
    val = evaluate(xva, yva)
    if gpu:
        print(f"torch_epoch_s={time.time() - t0:.3f} train_s={train_s:.3f} energy_j={nv.energy_j() - e0:.1f} "
              f"val_accuracy={val:.4f}", flush=True)
    else:
        print(f"torch_epoch_s={time.time() - t0:.2f} val_accuracy={val:.4f}", flush=True)
print(f"torch_test_accuracy={evaluate(xte, yte):.4f}")
print(f"torch_total_s={time.time() - t_start:.2f}")
if gpu:
    print(f"torch_peak_allocated_mib={torch.cuda.max_memory_allocated() / 2**20:.1f} "
          f"torch_device_used_mib={nv.used_mib():.1f} device={torch.cuda.get_device_name()}")
