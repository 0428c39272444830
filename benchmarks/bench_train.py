"""Training throughput.

1. Bigram training tokens/s (the `bigram` preset's shape).
2. The nanoGPT CPU recipe's shape (4 layers, 4 heads, n_embd 128, context 64, batch 12, AdamW), ReLU
   feed-forward so that every model does the same arithmetic:
   - the reference: the lecture's eager model (one `Head` module per head, explicit masked softmax), a plain
     training step (notebook batch, forward, backward, clip, AdamW), in float32;
   - chargpt's GPT in the same plain step, float32 and in the training precision (bf16 autocast where the
     CPU computes bf16 natively);
   - chargpt's loop itself: `chargpt train --preset nanogpt-cpu --mlp relu` in a fresh process, tokens/s
     from its summary.json (evaluation time excluded, as the loop reports it). Target: >= 1.5x the reference.

    python benchmarks/bench_train.py [--steps 150]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, shakespeare_dataset  # noqa: E402

from chargpt.data.batch import get_batch  # noqa: E402
from chargpt.config import get_preset  # noqa: E402
from chargpt.runtime.device import autocast_for, resolve_dtype  # noqa: E402
from chargpt.model.lecture import LectureGPT  # noqa: E402
from chargpt.model.gpt import build_model  # noqa: E402

VOCAB = 65
CPU = torch.device("cpu")


def corpus(n: int = 1_000_000) -> torch.Tensor:
    return torch.randint(VOCAB, (n,), generator=torch.Generator().manual_seed(0), dtype=torch.long).to(torch.uint8)


def notebook_get_batch(data, batch_size, block_size):
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([data[i:i + block_size] for i in ix]).long()
    y = torch.stack([data[i + 1:i + block_size + 1] for i in ix]).long()
    return x, y


def tokens_per_sec(model, opt, batch_fn, batch_size, block_size, steps, warmup=15, autocast=None) -> float:
    """A plain training step, timed after `warmup` steps."""
    model.train()
    autocast = autocast or autocast_for(CPU, "float32")
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        x, y = batch_fn()
        with autocast():
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * batch_size * block_size / (time.perf_counter() - t0)


def loop_tokens_per_sec(steps: int) -> dict:
    """`chargpt train` itself at the nanoGPT shape: a fresh process, figures from its summary.json."""
    with tempfile.TemporaryDirectory(prefix="chargpt-bench-train-") as out:
        cmd = [sys.executable, "-m", "chargpt", "train", "--preset", "nanogpt-cpu", "--mlp", "relu",
               "--data", str(shakespeare_dataset()), "--runs-dir", out, "--name", "loop", "--max-steps", str(steps),
               "--eval-interval", str(steps), "--eval-iters", "1", "--sample-tokens", "0"]
        p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
        return json.loads((Path(out) / "loop" / "summary.json").read_text())


def measure(steps: int = 150) -> dict:
    data = corpus()
    out = {}
    g = torch.Generator().manual_seed(0)
    # bigram
    cfg = get_preset("bigram")
    cfg.model.vocab_size = VOCAB
    torch.manual_seed(0)
    m = build_model(cfg.model)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    bs, T = cfg.train.batch_size, cfg.model.block_size
    out["bigram"] = tokens_per_sec(m, opt, lambda: get_batch(data, bs, T, generator=g), bs, T, steps * 5)

    # the nanoGPT recipe's shape
    cfg = get_preset("nanogpt-cpu")
    cfg.model.vocab_size = VOCAB
    cfg.model.mlp = "relu"  # the lecture's FeedForward, so both models do the same arithmetic
    bs, T = cfg.train.batch_size, cfg.model.block_size
    torch.manual_seed(0)
    ref = LectureGPT(VOCAB, cfg.model.n_embd, cfg.model.n_head, cfg.model.n_layer, T, dropout=0.0)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3)
    out["lecture_eager"] = tokens_per_sec(ref, opt, lambda: notebook_get_batch(data, bs, T), bs, T, steps)
    out["params"] = sum(p.numel() for p in ref.parameters())
    out["precision"] = resolve_dtype(CPU)
    for precision in ("float32", out["precision"]):
        torch.manual_seed(0)
        m = build_model(cfg.model)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3, foreach=True)
        out[f"chargpt_step_{precision}"] = tokens_per_sec(m, opt, lambda: get_batch(data, bs, T, generator=g), bs,
                                                          T, steps, autocast=autocast_for(CPU, precision))
    out["loop"] = loop_tokens_per_sec(max(steps * 2, 300))
    return out


def main(steps: int = 150) -> list[dict]:
    r = measure(steps)
    loop = r["loop"]
    rows = [
        {"figure": "bigram training tokens/s", "value": f"{r['bigram']:,.0f}", "target": ""},
        {"figure": "nanoGPT shape: lecture eager step tokens/s (float32)", "value": f"{r['lecture_eager']:,.0f}",
         "target": "reference"},
        {"figure": "nanoGPT shape: chargpt GPT, same step, float32", "value": f"{r['chargpt_step_float32']:,.0f}",
         "target": ""},
    ]
    if r["precision"] != "float32":
        rows.append({"figure": f"nanoGPT shape: chargpt GPT, same step, {r['precision']} autocast",
                     "value": f"{r['chargpt_step_' + r['precision']]:,.0f}", "target": ""})
    rows += [
        {"figure": f"nanoGPT shape: `chargpt train` loop tokens/s ({loop.get('dtype', '?')}, {loop['steps']} steps)",
         "value": f"{loop['tokens_per_sec']:,.0f}", "target": ""},
        {"figure": "nanoGPT shape: chargpt loop / lecture step", "value": f"{loop['tokens_per_sec'] / r['lecture_eager']:.2f}x",
         "target": ">= 1.5x"},
    ]
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    a = ap.parse_args()
    print(f"machine: {machine()}")
    print_table(main(a.steps), "training throughput")
