"""PyTorch reference for bench/bench_mlp.c: one training step of an MLP
784-1024-1024-10 (ReLU, cross-entropy, Adam lr 1e-3), batch 256, on the CPU
or (--device cuda) a GPU.

    python3 bench/mlp_torch.py [--steps N] [--warmup N] [--threads N] [--batch N] [--accumulate K] [--bf16 | --f16] [--device cuda]

--bf16: forward and loss under torch.autocast(dtype=torch.bfloat16), the
parameters and Adam in f32 (as bench_mlp --bf16). --f16: autocast float16 with
torch.amp.GradScaler (its defaults: scale 65536, growth every 2000 steps), as
bench_mlp --f16 with dynamic loss scaling.

A step is zero_grad(set_to_none=True), forward, backward (--accumulate K:
K forward/backward passes of loss / K, gradients summing), optimizer step on
a random batch (fixed seed) that is the same every step. CPU: ms/step is
the median of the steps after warmup. GPU: the batch is on the device, the
steps run back to back, and ms/step is the wall time of all of them (after
a synchronize) over their number, as bench_mlp measures kiln. Prints a
line starting "torch_ms_per_step=".
Run it through bench/run_cpu.sh, which sets the environment the comparison
needs (Debian's python3-torch, OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset).
"""
import argparse
import statistics
import sys
import time

import torch
from torch import nn


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--accumulate", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--f16", action="store_true")
    a = ap.parse_args()
    if a.bf16 and a.f16:
        ap.error("--bf16 or --f16, not both")
    if a.steps < 1 or a.warmup < 0 or a.threads < 1 or a.batch < 1 or a.accumulate < 1:
        ap.error("steps, threads and batch must be >= 1, warmup >= 0")

    torch.set_num_threads(a.threads)
    torch.manual_seed(42)
    dev = torch.device(a.device)
    if dev.type == "cuda":  # TF32 matmuls, as kiln's f32 GEMMs (KILN_TF32)
        torch.set_float32_matmul_precision("high")
    model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)).to(dev)
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(a.batch, 784).to(dev)
    y = torch.randint(0, 10, (a.batch,)).to(dev)
    K = a.accumulate
    half = torch.float16 if a.f16 else torch.bfloat16
    if a.f16 and hasattr(torch.amp, "GradScaler"):
        scaler = torch.amp.GradScaler(dev.type)
    elif a.f16 and dev.type == "cuda":  # PyTorch before 2.3
        scaler = torch.cuda.amp.GradScaler()
    elif a.f16:
        sys.exit(f"mlp_torch.py: --f16 on the CPU needs PyTorch >= 2.3 (float16 autocast and GradScaler there); "
                 f"this is {torch.__version__}")
    else:
        scaler = None
    label = " bf16 autocast" if a.bf16 else " f16 autocast + GradScaler" if a.f16 else ""

    def step():
        opt.zero_grad(set_to_none=True)
        for _ in range(K):
            with torch.autocast(dev.type, dtype=half, enabled=a.bf16 or a.f16):
                loss = loss_fn(model(x), y)
            part = loss / K if K > 1 else loss
            (scaler.scale(part) if scaler else part).backward()
        if scaler:
            scaler.step(opt)  # skipped when the scaled gradients overflowed
            scaler.update()
        else:
            opt.step()
        return loss

    if dev.type == "cuda":
        loss0 = step().item()
        for _ in range(a.warmup):
            loss = step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            loss = step()
        torch.cuda.synchronize()
        per = (time.perf_counter() - t0) * 1e3 / a.steps
        print(f"torch {torch.__version__} MLP 784-1024-1024-10{label}, batch {a.batch} x {K} accumulated, Adam lr 1e-3, "
              f"{torch.cuda.get_device_name()}, {a.steps} steps after {a.warmup} warmup "
              f"(matmul precision {torch.get_float32_matmul_precision()})")
        print(f"  ms/step: {per:.4f}; loss {loss0:.4f} at step 1, {loss.item():.4f} at the end; "
              f"peak memory {torch.cuda.max_memory_allocated() / 2**20:.1f} MiB allocated")
        print(f"torch_ms_per_step={per:.4f} steps={a.steps}")
        return

    ms = []
    loss0 = None
    for s in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        loss = step()
        t1 = time.perf_counter()
        if s >= a.warmup:
            ms.append((t1 - t0) * 1e3)
        if s == 0:
            loss0 = loss.item()
    med, mean = statistics.median(ms), statistics.fmean(ms)
    print(f"torch {torch.__version__} MLP 784-1024-1024-10{label}, batch {a.batch} x {K} accumulated, Adam lr 1e-3, "
          f"{torch.get_num_threads()} threads, {a.steps} steps after {a.warmup} warmup")
    print(f"  ms/step: median {med:.2f}, mean {mean:.2f}, min {min(ms):.2f}, max {max(ms):.2f}")
    print(f"  loss: {loss0:.4f} at step 1, {loss.item():.4f} after step {a.warmup + a.steps}")
    print(f"torch_ms_per_step={med:.3f} torch_ms_mean={mean:.3f} torch_ms_min={min(ms):.3f} threads={torch.get_num_threads()} steps={a.steps}")


if __name__ == "__main__":
    main()
