"""What a sweep costs and what it buys (issue 31's figures), each sweep a real `chargpt sweep` process.

    python benchmarks/bench_sweep.py                       # overhead, pruning, worth it (about 75 minutes)
    python benchmarks/bench_sweep.py --only pruning --budget 20
    python benchmarks/bench_sweep.py --only worth --w 100 --trials 24
    python benchmarks/bench_sweep.py --only sizes --dtype float32   # which model each budget buys, by sweeps

- overhead: of the unpruned sweep's wall time (command start to exit), the part not spent inside its trials'
  budgets (the runs' `budget_seconds`): start-up, sampling, the study's database, best.toml.
- pruning: the same sweep (same seed, same default space, `--trials` of `--budget` s each) with `--pruner`
  (default: `chargpt sweep`'s own) and with `--pruner none`: wall time of the pruned one over the unpruned one, and the difference of their best
  figures.
- worth it: a sweep of `--trials` trials with B = W (W: nanoGPT's CPU recipe's wall time here, as bench_budget.py
  measures it), its best.toml retrained at B with 3 seeds, against `chargpt train --time-budget B` (the budget's
  default choice) with the same seeds: the difference of the medians (negative: the sweep's configuration wins).
- sizes: for budgets of W/5, W and 3W (`--multiples`), a sweep over the model's size (layers, width, context, batch) and the
  learning rate: the configuration that each budget buys here, to compare with `budget.SIZES`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import get_args

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_budget import NANOGPT_PER_PRESET, preset_wall  # noqa: E402
from common import machine, print_table, shakespeare_dataset  # noqa: E402

from chargpt.sweeps.study import DEFAULT_PRUNER, PrunerName  # noqa: E402

OVERHEAD_MUST = 0.03
PRUNED_TIME_MUST = 0.60
PRUNED_BEST_MUST = 0.01
WORTH_AIM = -0.02
SEEDS = (1, 2, 3)
SIZE_MULTIPLES = (0.2, 1.0, 3.0)  # the size sweeps' budgets, in W
SIZE_SPACE = ["n_layer=[2, 3, 4, 6]", "n_embd=[128, 192, 256, 384]", "n_head=[4]", "block_size=[64, 128, 256]",
              "batch_size=[16, 32, 64]", "muon_lr={low = 0.005, high = 0.05, log = true}"]


def sweep(name: str, work: Path, data: Path, trials: int, budget: float, *extra: str) -> tuple[float, list[dict]]:
    """Run `chargpt sweep NAME` in `work`; its wall time and its trials (state, value, run summary)."""
    import optuna

    cmd = [sys.executable, "-m", "chargpt", "sweep", name, "--data", str(data), "--trials", str(trials),
           "--trial-budget", f"{budget:g}s", *extra]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=work, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    print(p.stdout.strip().splitlines()[-2], file=sys.stderr, flush=True)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{work / 'sweeps' / name / 'study.db'}")
    trials_out = []
    for t in study.trials:
        run = work / t.user_attrs["run"] if "run" in t.user_attrs else None
        summary = json.loads((run / "summary.json").read_text()) if run and (run / "summary.json").is_file() else {}
        trials_out.append({"state": t.state.name, "value": t.value, "summary": summary, "params": t.params})
    return wall, trials_out


def shown(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def best_of(trials: list[dict]) -> float:
    return min(t["value"] for t in trials if t["state"] == "COMPLETE")


def overhead_and_pruning(work: Path, data: Path, trials: int, budget: float, pruner: str) -> list[dict]:
    wall_none, plain = sweep("unpruned", work, data, trials, budget, "--pruner", "none")
    wall_median, pruned = sweep("pruned", work, data, trials, budget, "--pruner", pruner)
    inside = sum(t["summary"].get("budget_seconds") or 0.0 for t in plain)
    n_pruned = sum(t["state"] == "PRUNED" for t in pruned)
    return [
        {"figure": f"overhead: wall time of a {trials} x {budget:g} s sweep outside its trials' budgets",
         "value": f"{1 - inside / wall_none:.1%} ({wall_none - inside:.1f} s of {wall_none:.0f} s)",
         "target": f"< {OVERHEAD_MUST:.0%}"},
        {"figure": f"pruning: wall time with the {pruner} pruner / without ({n_pruned} of {trials} trials pruned)",
         "value": f"{wall_median / wall_none:.2f} ({wall_median:.0f} s / {wall_none:.0f} s)",
         "target": f"<= {PRUNED_TIME_MUST}"},
        {"figure": f"pruning: best figure with the {pruner} pruner minus without",
         "value": f"{best_of(pruned) - best_of(plain):+.4f} ({best_of(pruned):.4f} vs {best_of(plain):.4f})",
         "target": f"<= {PRUNED_BEST_MUST}"},
    ]


def train(work: Path, data: Path, name: str, budget: float, seed: int, *extra: str) -> float:
    """`chargpt train` as a real process; its full-pass val loss."""
    cmd = [sys.executable, "-m", "chargpt", "train", "--data", str(data), "--name", name, "--time-budget",
           f"{budget:.1f}", "--seed", str(seed), *extra]
    p = subprocess.run(cmd, cwd=work, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    value = json.loads((work / "runs" / name / "summary.json").read_text())["val_loss_full"]
    print(f"  {name}: {value:.4f}", file=sys.stderr, flush=True)
    return value


def worth_it(work: Path, data: Path, trials: int, w: float) -> list[dict]:
    _, found = sweep("worth", work, data, trials, w)
    best = min((t for t in found if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    swept = [train(work, data, f"best-{s}", w, s, "--config", "sweeps/worth/best.toml") for s in SEEDS]
    default = [train(work, data, f"default-{s}", w, s) for s in SEEDS]
    diff = statistics.median(swept) - statistics.median(default)
    return [
        {"figure": f"worth it: best of a {trials}-trial sweep at B = W = {w:.0f} s",
         "value": f"{best['value']:.4f} ({shown(best['params'])})", "target": ""},
        {"figure": "worth it: its best.toml retrained at B (3 seeds) minus the budget's default choice (same seeds), "
                   "medians", "value": f"{diff:+.4f} ({', '.join(f'{v:.4f}' for v in swept)} vs "
                                       f"{', '.join(f'{v:.4f}' for v in default)})",
         "target": f"aim <= {WORTH_AIM} (then the default changes)"},
    ]


def sizes(work: Path, data: Path, trials: int, w: float, dtype: str, multiples=SIZE_MULTIPLES) -> list[dict]:
    rows = []
    for multiple in multiples:
        name = f"sizes-{multiple:g}w-{dtype}"
        space = [x for line in SIZE_SPACE + [f"dtype={dtype}"] for x in ("--search", line)]
        _, found = sweep(name, work, data, trials, w * multiple, *space)
        best = min((t for t in found if t["state"] == "COMPLETE"), key=lambda t: t["value"])
        rows.append({"figure": f"sizes: best of {trials} trials at B = {multiple:g}W = {w * multiple:.0f} s, {dtype}",
                     "value": f"{best['value']:.4f}: {shown(best['params'])}",
                     "target": "compare with budget.SIZES"})
    return rows


def measure_w(data: Path, work: Path) -> float:
    preset, _ = preset_wall(data, work)
    return preset * (NANOGPT_PER_PRESET or 1.0)


def main(only=("overhead", "worth"), trials: int = 16, budget: float = 30.0, worth_trials: int = 24,
         w: float | None = None, dtype: str = "auto", pruner: str = DEFAULT_PRUNER,
         multiples=SIZE_MULTIPLES) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="chargpt-sweep-"))
    data = shakespeare_dataset()
    rows = []
    if "overhead" in only or "pruning" in only:
        rows += overhead_and_pruning(work, data, trials, budget, pruner)
    if "worth" in only or "sizes" in only:
        w = w or measure_w(data, work)
        rows.append({"figure": "W: nanoGPT's CPU recipe, wall time here", "value": f"{w:.1f} s", "target": ""})
    if "worth" in only:
        rows += worth_it(work, data, worth_trials, w)
    if "sizes" in only:
        rows += sizes(work, data, worth_trials, w, dtype, multiples)
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=["overhead", "worth"],
                    choices=["overhead", "pruning", "worth", "sizes"])
    ap.add_argument("--trials", type=int, default=16, help="trials of the overhead and pruning sweeps")
    ap.add_argument("--budget", type=float, default=30.0, help="seconds per trial of the overhead and pruning sweeps")
    ap.add_argument("--worth-trials", type=int, default=24, help="trials of the worth-it and size sweeps")
    ap.add_argument("--w", type=float, help="W in seconds, measured before on this machine (skips measuring it)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="the size sweeps' precision")
    ap.add_argument("--pruner", default=DEFAULT_PRUNER, choices=[p for p in get_args(PrunerName) if p != "none"],
                    help="the pruning sweep's pruner (default: chargpt sweep's own)")
    ap.add_argument("--multiples", type=float, nargs="+", default=list(SIZE_MULTIPLES),
                    help="the size sweeps' budgets, in W")
    a = ap.parse_args()
    print(f"machine: {machine()}")
    print_table(main(a.only, a.trials, a.budget, a.worth_trials, a.w, a.dtype, a.pruner, a.multiples),
                "what a sweep costs and buys")
