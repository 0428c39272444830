"""The memory and time that drawing the loss curve costs the training process (a helper process draws it with
matplotlib's Agg canvas, and the training process waits for it): resident memory before the first drawing, after
it, and after 20 more.

    python benchmarks/bench_plot.py [--evals 6]

Run it on a quiet machine: the per-drawing time is only meaningful there.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import chargpt.training.loop  # noqa: F401  (the training process's libraries, imported before measuring)
from chargpt.runs.plotting import refresh_run_plot


def memory_mb() -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmHWM", "RssAnon", "RssFile")}


def main(evals: int) -> list[dict]:
    run = Path(tempfile.mkdtemp(prefix="chargpt-bench-plot-")) / "run"
    run.mkdir()
    with open(run / "metrics.jsonl", "w") as f:
        for i in range(evals):
            f.write(json.dumps({"step": 500 * i, "train_loss": 4 - i / evals, "val_loss": 4.1 - i / evals,
                                "train_seconds": 30.0 * i}) + "\n")
    before = memory_mb()
    t0 = time.perf_counter()
    refresh_run_plot(run)
    first, t1 = memory_mb(), time.perf_counter()
    for _ in range(20):
        refresh_run_plot(run)
    later, t2 = memory_mb(), time.perf_counter()
    return [
        {"figure": "peak RSS before the first drawing", "value": f"{before['VmHWM']:.0f} MB"},
        {"figure": "first drawing (imports matplotlib)", "value": f"+{first['VmHWM'] - before['VmHWM']:.0f} MB peak, "
                                                                  f"+{first['RssAnon'] - before['RssAnon']:.0f} MB anonymous, {t1 - t0:.2f} s"},
        {"figure": "20 more drawings", "value": f"+{later['VmHWM'] - first['VmHWM']:.0f} MB peak, "
                                                f"{(t2 - t1) / 20:.3f} s each"},
    ]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evals", type=int, default=6, help="evaluation records in the plotted metrics log")
    for row in main(ap.parse_args().evals):
        print(f"{row['figure']:<40} {row['value']}")
