"""Training throughput.

1. Bigram training tokens/s (the `bigram` preset's shape).
2. The nanoGPT CPU recipe's shape (4 layers, 4 heads, n_embd 128, context 64, batch 12): a whole training
   step (batch, forward, backward, clip, AdamW) of chargpt's GPT against the lecture's eager model (one
   `Head` module per head, explicit masked softmax), same shapes, same process. Target: >= 1.5x.

    python benchmarks/bench_train.py [--steps 60]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table  # noqa: E402

from chargpt.batch import get_batch  # noqa: E402
from chargpt.config import get_preset  # noqa: E402
from chargpt.lecture import LectureGPT  # noqa: E402
from chargpt.model import build_model  # noqa: E402

VOCAB = 65


def corpus(n: int = 1_000_000) -> torch.Tensor:
    return torch.randint(VOCAB, (n,), generator=torch.Generator().manual_seed(0), dtype=torch.long).to(torch.uint8)


def notebook_get_batch(data, batch_size, block_size):
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([data[i:i + block_size] for i in ix]).long()
    y = torch.stack([data[i + 1:i + block_size + 1] for i in ix]).long()
    return x, y


def tokens_per_sec(model, opt, batch_fn, batch_size, block_size, steps, warmup=10) -> float:
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        x, y = batch_fn()
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * batch_size * block_size / (time.perf_counter() - t0)


def measure(steps: int = 60) -> dict:
    data = corpus()
    out = {}
    # bigram
    cfg = get_preset("bigram")
    cfg.model.vocab_size = VOCAB
    torch.manual_seed(0)
    m = build_model(cfg.model)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    bs, T = cfg.train.batch_size, cfg.model.block_size
    out["bigram"] = tokens_per_sec(m, opt, lambda: get_batch(data, bs, T, generator=g), bs, T, steps * 5)

    # nanoGPT recipe shape
    cfg = get_preset("nanogpt-cpu")
    cfg.model.vocab_size = VOCAB
    cfg.model.mlp = "relu"  # the lecture's FeedForward, so both models do the same arithmetic
    bs, T = cfg.train.batch_size, cfg.model.block_size
    torch.manual_seed(0)
    ref = LectureGPT(VOCAB, cfg.model.n_embd, cfg.model.n_head, cfg.model.n_layer, T, dropout=0.0)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3)
    out["lecture_eager"] = tokens_per_sec(ref, opt, lambda: notebook_get_batch(data, bs, T), bs, T, steps)
    torch.manual_seed(0)
    m = build_model(cfg.model)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=True)
    out["chargpt_eager"] = tokens_per_sec(m, opt, lambda: get_batch(data, bs, T, generator=g), bs, T, steps)
    mc = torch.compile(m)
    out["chargpt_compiled"] = tokens_per_sec(mc, opt, lambda: get_batch(data, bs, T, generator=g), bs, T, steps)
    out["params"] = sum(p.numel() for p in ref.parameters())
    return out


def main(steps: int = 60) -> list[dict]:
    r = measure(steps)
    best = max(r["chargpt_eager"], r["chargpt_compiled"])
    return [
        {"figure": "bigram training tokens/s", "value": f"{r['bigram']:,.0f}", "target": ""},
        {"figure": "nanoGPT shape: lecture eager tokens/s", "value": f"{r['lecture_eager']:,.0f}", "target": "reference"},
        {"figure": "nanoGPT shape: chargpt eager tokens/s", "value": f"{r['chargpt_eager']:,.0f}", "target": ""},
        {"figure": "nanoGPT shape: chargpt compiled tokens/s", "value": f"{r['chargpt_compiled']:,.0f}", "target": ""},
        {"figure": "nanoGPT shape: chargpt / lecture", "value": f"{best / r['lecture_eager']:.2f}x", "target": ">= 1.5x"},
    ]


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    a = ap.parse_args()
    print(f"machine: {machine()}")
    print_table(main(a.steps), "training throughput")
