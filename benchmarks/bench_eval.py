"""Full-pass evaluation speed: every token of tiny Shakespeare's val split (111,540 characters) scored once
by the `cpu` preset model. Target: under 3 s on 2 cores.

    python benchmarks/bench_eval.py
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table  # noqa: E402

from chargpt.config import get_preset  # noqa: E402
from chargpt.training.evaluate import full_pass_loss  # noqa: E402
from chargpt.model.gpt import build_model  # noqa: E402

VAL_TOKENS = 111_540


def measure(repeats: int = 3) -> dict:
    cfg = get_preset("cpu").model
    cfg.vocab_size = 65
    torch.manual_seed(0)
    model = build_model(cfg)
    val = torch.randint(65, (VAL_TOKENS,), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    full_pass_loss(model, val[:5000], cfg.block_size, "cpu")  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        full_pass_loss(model, val, cfg.block_size, "cpu")
        times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "tokens": VAL_TOKENS}


def main() -> list[dict]:
    r = measure()
    return [{"figure": "full-pass eval, cpu preset, 111,540 val chars (s)", "value": f"{r['seconds']:.2f}",
             "target": "< 3"},
            {"figure": "full-pass eval tokens/s", "value": f"{r['tokens'] / r['seconds']:,.0f}", "target": ""}]


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    print(f"machine: {machine()}")
    print_table(main(), "evaluation")
