"""PyTorch reference for kiln's inference benchmark (bench/run_infer.sh):
the reference CNN (models/cnn.yaml: conv 32, ReLU, maxpool, conv 64, ReLU,
maxpool, linear 128, ReLU, linear 10) in eval mode under torch.no_grad(),
random inputs of [B, 1, 28, 28], the same warm-up and timed iterations as
`kiln bench`; prints p50, p99 and mean latency and samples/s. With
--device cuda an iteration is what kiln bench times on a GPU: the batch
copied from host memory, the forward pass, one value read back (which
waits for the device); f32 matmuls and convolutions in TF32, as kiln's."""
import argparse, time

import torch
import torch.nn as nn

ap = argparse.ArgumentParser()
ap.add_argument("--batch", type=int, default=1)
ap.add_argument("--iters", type=int, default=100)
ap.add_argument("--warmup", type=int, default=5)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--device", default="cpu")
args = ap.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(1)
dev = torch.device(args.device)
if dev.type == "cuda":
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
model = nn.Sequential(
    nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10)).eval().to(dev)
x = torch.randn(args.batch, 1, 28, 28)
times = []
with torch.no_grad():
    for i in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        y = model(x.to(dev))
        if dev.type == "cuda":
            y[0, 0].item()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
times.sort()
p50 = times[len(times) // 2] * 1e3
p99 = times[min(len(times) - 1, int(len(times) * 0.99))] * 1e3
mean = sum(times) / len(times) * 1e3
print(f"torch {torch.__version__} {args.device} batch {args.batch}: p50 {p50:.3f} ms  p99 {p99:.3f} ms  mean {mean:.3f} ms")
print(f"torch_p50_ms={p50:.4f} torch_p99_ms={p99:.4f} torch_samples_per_s={args.batch / (mean / 1e3):.1f}")
