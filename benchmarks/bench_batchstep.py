"""Where a batched decoding step's time goes (issue 33): `BatchDecoder.step` of the `cpu` preset with 1, 16 and 32
rows, split into the forward of the rows' newest tokens (`NumpyDecoder.step_rows`; a row alone, `step`), the
windows' prefills and the rest (sampling,
bookkeeping); beside it what the step's matrix products cost alone and how fast this machine reads memory, the
two floors of a step over many rows.

    python benchmarks/bench_batchstep.py [--rows 1 16 32] [--steps 1280]

A randomly initialized model is enough: the work per token does not depend on the weights.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sampling import cpu_model  # noqa: E402
from common import machine, print_table  # noqa: E402

from chargpt.model.batchdecode import BatchDecoder  # noqa: E402
from chargpt.model.engine import Engine  # noqa: E402
from chargpt.model.sampling import SamplingParams  # noqa: E402

WARMUP = 200


def timed(spent: dict, key: str, function):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - t0
    return wrapper


def split_step(engine: Engine, rows: int, steps: int) -> dict:
    """us a step in all and in the batched forward and the prefills, over `steps` steps after a warm-up."""
    batch = BatchDecoder(engine, max(rows, 2))
    for i in range(rows):
        batch.add([1, 2, 3, i % 60], SamplingParams(max_new_tokens=WARMUP + steps + 1, seed=i))
    batch.step()  # makes the backend: its decoder is the one to time
    decoder, spent = batch._backend.decoder, {}
    decoder.step_rows = timed(spent, "forward", decoder.step_rows)  # rows together
    decoder.step = timed(spent, "forward", decoder.step)  # a row alone
    decoder.prefill = timed(spent, "prefill", decoder.prefill)
    for _ in range(WARMUP):
        batch.step()
    spent.clear()
    t0 = time.perf_counter()
    for _ in range(steps):
        batch.step()
    total = time.perf_counter() - t0
    return {"total": total / steps * 1e6, **{k: v / steps * 1e6 for k, v in spent.items()}}


def best_of(function, n: int = 1000) -> float:
    """The best of 5 means of `n` calls, in us."""
    for _ in range(n // 10):
        function()
    means = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            function()
        means.append((time.perf_counter() - t0) / n)
    return min(means) * 1e6


def products_alone(decoder, rows: int) -> float:
    """us of one step's matrix products for `rows` rows (each layer's c_attn but the first's, which is a table;
    c_proj, c_fc, c_proj; the head), outside the step."""
    x = np.ones((rows, decoder.wte.shape[1]), dtype=np.float32)

    def products():
        for layer, (_, w_attn, _, w_aproj, _, _, w_fc, _, w_mproj, _) in enumerate(decoder.layers):
            if layer or decoder.first_qkv is None:
                np.dot(x, w_attn)
            np.dot(x, w_aproj)
            np.dot(np.dot(x, w_fc), w_mproj)
        np.dot(x, decoder.head_w)
    return best_of(products)


def read_rate(megabytes: int = 6) -> float:
    """GB/s numpy reads (a sum over `megabytes`) on one thread."""
    a = np.ones(megabytes * 2 ** 20 // 4, dtype=np.float32)
    return megabytes / 1024 / (best_of(a.sum, 100) / 1e6)


def main(rows=(1, 16, 32), steps: int = 1280) -> list[dict]:
    engine = Engine(cpu_model().eval())
    out, alone = [], None
    for n in rows:
        s = split_step(engine, n, steps)
        rate = n / s["total"] * 1e6
        alone = alone or (rate if n == 1 else None)
        parts = ", ".join(f"{k} {s.get(k, 0):.0f}" for k in ("forward", "prefill"))
        rest = s["total"] - s.get("forward", 0) - s.get("prefill", 0)
        out.append({"figure": f"{n} rows: tokens/s (x one row); us a step: {parts}, sampling and the rest",
                    "value": f"{rate:,.0f} ({rate / alone:.1f}x); {s['total']:.0f}: {parts}, rest {rest:.0f}"
                             if alone else f"{rate:,.0f}; {s['total']:.0f}: {parts}, rest {rest:.0f}",
                    "target": ""})
    decoder = engine._numpy_decoder()
    for n in rows:
        if n > 1:
            out.append({"figure": f"{n} rows: the step's matrix products alone (OpenBLAS)",
                        "value": f"{products_alone(decoder, n):.0f} us", "target": ""})
    out.append({"figure": "memory read on one thread (numpy sum over 6 MB)", "value": f"{read_rate():.1f} GB/s",
                "target": ""})
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16, 32])
    ap.add_argument("--steps", type=int, default=1280)
    a = ap.parse_args()
    print(f"machine: {machine()}")
    print_table(main(a.rows, a.steps), "a batched decoding step")
