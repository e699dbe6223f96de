"""PyTorch side of bench/run_seq.sh: the training steps of kiln's sequence
models (models/char_lstm.yaml, models/gpt_small.yaml) on the same corpus,
batch and context, with the same optimizer, clipping and dropout.

  char_lstm: embedding 128, 2-layer LSTM 512 (dropout 0.1 between layers and
             after), linear to the vocabulary; Adam lr 2e-3; clip 1.0.
  gpt_small: embedding 384 + learned positions, dropout 0.1, 6 pre-norm GPT
             blocks (6 heads, causal attention, MLP 4x with tanh GELU, biases),
             final layernorm, output tied to the embedding; AdamW (0.9, 0.99),
             weight decay 0.1 on the matrices only (decay_1d: false, nanoGPT's
             two groups); clip 1.0.

Prints the mean ms per step over the steps after the warmup (a synchronize
before each clock read on a GPU) as `torch_ms_per_step=`."""
import argparse
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

p = argparse.ArgumentParser()
p.add_argument("--model", choices=["char_lstm", "gpt_small"], required=True)
p.add_argument("--steps", type=int, default=10)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--batch", type=int, default=32)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--device", default="cpu")
p.add_argument("--corpus", default="/usr/share/games/fortunes")
args = p.parse_args()
torch.set_num_threads(args.threads)
torch.manual_seed(1)
dev = torch.device(args.device)


def read_corpus(path):
    """The files kiln's text loader reads: every file of the folder but
    dot files and .dat indexes, in name order."""
    if os.path.isfile(path):
        return open(path, "rb").read()
    data = b""
    for name in sorted(os.listdir(path)):
        f = os.path.join(path, name)
        if name.startswith(".") or name.endswith(".dat") or not os.path.isfile(f):
            continue
        data += open(f, "rb").read()
    return data


text = np.frombuffer(read_corpus(args.corpus), dtype=np.uint8)
chars, ids = np.unique(text, return_inverse=True)
ids = torch.from_numpy(ids.astype(np.int64))
V = len(chars)


class LSTMLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(V, 128)
        self.lstm = nn.LSTM(128, 512, num_layers=2, dropout=0.1, batch_first=True)
        self.drop = nn.Dropout(0.1)
        self.out = nn.Linear(512, V)

    def forward(self, x):
        h, _ = self.lstm(self.emb(x))
        return self.out(self.drop(h))


def attention(q, k, v):
    """Causal softmax attention: PyTorch's fused kernel where it has one
    (2.0 on), else written out (Debian's 1.13)."""
    if hasattr(F, "scaled_dot_product_attention"):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.shape[-2]
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


class Block(nn.Module):
    def __init__(self, D, H):
        super().__init__()
        self.H = H
        self.ln_1, self.ln_2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.c_attn, self.c_proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.c_fc, self.m_proj = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).view(B, T, 3 * self.H, D // self.H).transpose(1, 2).chunk(3, dim=1)
        a = attention(q, k, v).transpose(1, 2).reshape(B, T, D)
        x = x + self.drop(self.c_proj(a))
        return x + self.drop(self.m_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh")))


class GPT(nn.Module):
    def __init__(self, T, D=384, H=6, L=6):
        super().__init__()
        self.emb, self.pos = nn.Embedding(V, D), nn.Embedding(T, D)
        self.drop = nn.Dropout(0.1)
        self.blocks = nn.Sequential(*[Block(D, H) for _ in range(L)])
        self.ln = nn.LayerNorm(D)
        nn.init.normal_(self.emb.weight, std=0.02)  # as the config's embedding std
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, x):
        h = self.drop(self.emb(x) + self.pos(torch.arange(x.shape[1], device=x.device)))
        return self.ln(self.blocks(h)) @ self.emb.weight.t()


if args.model == "char_lstm":
    T, model = 128, LSTMLM().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
else:
    T, model = 256, GPT(256).to(dev)
    groups = [{"params": [p for p in model.parameters() if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99))
model.train()
gen = torch.Generator().manual_seed(1)


def batch():
    """Random windows of T + 1 characters: inputs and next-character targets."""
    at = torch.randint(0, len(ids) - T - 1, (args.batch,), generator=gen)
    w = torch.stack([ids[i:i + T + 1] for i in at.tolist()])
    return w[:, :-1].to(dev), w[:, 1:].to(dev)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()


t_start = None
for step in range(args.warmup + args.steps):
    if step == args.warmup:
        sync()
        t_start = time.perf_counter()
    x, y = batch()
    loss = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
sync()
ms = 1e3 * (time.perf_counter() - t_start) / args.steps
print(f"torch_vocab={V} torch_last_loss={loss.item():.4f}")
print(f"torch_ms_per_step={ms:.2f}")
