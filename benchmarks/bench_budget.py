"""The best model for the time you have, on this machine, side by side with nanoGPT (issue 24's budget table).

    python benchmarks/bench_budget.py --nanogpt ~/src/nanoGPT        # W from nanoGPT's own train.py (a clone)
    python benchmarks/bench_budget.py                                # W from chargpt's nanogpt-cpu preset
    python benchmarks/bench_budget.py --w 219 --seeds 1 --budgets 1  # a known W, one seed, B = W only

W is the wall time of nanoGPT's CPU recipe (4 layers, 4 heads, 128 wide, context 64, batch 12, 2000 iterations,
float32, not compiled) on this machine, measured in the same benchmark run. Each row then runs
`chargpt train --time-budget B --seed S` (no preset: the budget chooses the model) as a real process and reads:
the command's wall time from start to exit (the budget is the user's wall clock: it must end within B + 5%),
the full-pass val loss the run recommends (`val_loss_full` in summary.json), and the training process's peak
resident memory. The first run of all starts from an empty compile cache, as a new user's does.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, machine, print_table, shakespeare_dataset  # noqa: E402

NANOGPT_RECIPE = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                  "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                  "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
NANOGPT_FULL_PASS = 1.8982  # full-pass val of the recipe's final model (the same on every machine measured)
# nanoGPT's own train.py wall time over chargpt's nanogpt-cpu preset's (the same recipe), measured side by side in
# one quiet session with --nanogpt (benchmarks/RESULTS.md): W without a nanoGPT clone is the preset's time x this.
NANOGPT_PER_PRESET = 0.914  # 2-core EPYC: 0.900 (94.1 s / 104.6 s, session 6) and 0.928 (99.9 s / 107.7 s, session 7)
# budget as a multiple of W -> (must, aim) on the full-pass val loss
TARGETS = {0.2: (1.898, None), 1.0: (1.60, 1.55), 3.0: (1.50, 1.47)}
RSS_MUST = 500.0
WALL_SLACK = 1.05


def corpus() -> Path:
    for base in (os.environ.get("CHARGPT_DATA"), REPO.parent / "shared" / "data"):
        if base and (Path(base) / "tinyshakespeare" / "input.txt").is_file():
            return Path(base) / "tinyshakespeare" / "input.txt"
    raise SystemExit("tiny Shakespeare not found: set CHARGPT_DATA to a folder holding tinyshakespeare/input.txt")


def nanogpt_wall(source: Path, work: Path) -> tuple[float, str]:
    """Wall time of nanoGPT's CPU recipe run from a copy of `source` (a checkout, or a bare git directory)."""
    tree = work / "nanoGPT"
    if (source / "train.py").is_file():
        shutil.copytree(source, tree, ignore=shutil.ignore_patterns(".git", "out-*"))
    else:
        tree.mkdir()
        archive = subprocess.run(["git", "--git-dir", str(source), "archive", "HEAD"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    data = tree / "data" / "shakespeare_char"
    shutil.copyfile(corpus(), data / "input.txt")  # its prepare.py downloads only when input.txt is missing
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, capture_output=True)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "train.py", *NANOGPT_RECIPE, f"--out_dir={work / 'out'}"], cwd=tree,
                       capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"nanoGPT's train.py failed:\n{p.stderr[-2000:]}")
    estimates = re.findall(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)", p.stdout)
    last = f"its val estimate {estimates[-1][2]} at step {estimates[-1][0]}" if estimates else "no estimate printed"
    return wall, f"nanoGPT's train.py ({last})"


def preset_wall(data: Path, work: Path) -> tuple[float, str]:
    """Wall time of chargpt's `nanogpt-cpu` preset: nanoGPT's recipe, in float32 as nanoGPT runs it on a CPU."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "chargpt", "train", "--preset", "nanogpt-cpu", "--data", str(data),
                    "--runs-dir", str(work), "--name", "nanogpt-cpu", "--sample-tokens", "0", "--dtype", "float32"],
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - t0, "chargpt's nanogpt-cpu preset"


def run_budget(budget: float, seed: int, data: Path, work: Path, cold: bool, dtype: str = "auto") -> dict:
    name = f"budget-{budget:.0f}-{seed}-{dtype}"
    env = dict(os.environ)
    if cold:  # an empty compile cache: what a new user's first run gets
        fresh = tempfile.mkdtemp(prefix="chargpt-cold-cache-", dir=work)
        env.update(XDG_CACHE_HOME=fresh, CHARGPT_CACHE=fresh)
        env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    cmd = [sys.executable, "-m", "chargpt", "train", "--data", str(data), "--runs-dir", str(work), "--name", name,
           "--time-budget", f"{budget:.1f}", "--seed", str(seed), "--sample-tokens", "0", "--dtype", dtype]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    summary = json.loads((work / name / "summary.json").read_text())
    summary["wall"] = wall
    summary["children_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"  B={budget:.0f}s seed {seed}{' (cold cache)' if cold else ''}: val_full {summary['val_loss_full']:.4f}, "
          f"wall {wall:.0f} s, {summary['steps']} steps, peak RSS {summary['peak_rss_mb']:.0f} MB, "
          f"{summary.get('model_choice', summary.get('preset'))}, recommends {summary.get('recommended')} "
          f"(final {summary.get('val_loss_full_final', summary['val_loss_full']):.4f}, "
          f"ema {summary.get('val_loss_full_ema', float('nan')):.4f})",
          file=sys.stderr, flush=True)
    return summary


def main(multiples=(1.0, 3.0, 0.2), seeds=3, nanogpt: str | None = None, w: float | None = None,
         dtype: str = "auto") -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="chargpt-budget-"))
    data = shakespeare_dataset()
    rows = []
    if w:
        source = "given with --w"
    elif nanogpt:
        w, source = nanogpt_wall(Path(nanogpt).expanduser(), work)
        preset, _ = preset_wall(data, work)  # the ratio that stands in for a clone where there is none
        rows.append({"figure": "nanoGPT's train.py over chargpt's nanogpt-cpu preset (same recipe), wall time",
                     "value": f"{w / preset:.3f} ({w:.1f} s / {preset:.1f} s)",
                     "target": "NANOGPT_PER_PRESET in bench_budget.py"})
    else:
        preset, source = preset_wall(data, work)
        w = preset * (NANOGPT_PER_PRESET or 1.0)
        source += (f", x {NANOGPT_PER_PRESET} (nanoGPT's train.py over the preset, measured once)"
                   if NANOGPT_PER_PRESET else ", not scaled: no ratio to nanoGPT's own measured yet")
    print(f"  W = {w:.1f} s from {source}", file=sys.stderr, flush=True)
    rows.insert(0, {"figure": f"W: nanoGPT's CPU recipe, wall time here ({source})", "value": f"{w:.1f} s",
                    "target": f"its full-pass val {NANOGPT_FULL_PASS}"})
    medians, worst_rss, worst_wall = {}, 0.0, 0.0
    first = True
    for m in multiples:
        budget = w * m
        runs = []
        for seed in range(1, seeds + 1):
            runs.append(run_budget(budget, seed, data, work, cold=first, dtype=dtype))
            first = False
        vals = [r["val_loss_full"] for r in runs]
        medians[m] = statistics.median(vals)
        worst_rss = max(worst_rss, *(r["peak_rss_mb"] for r in runs))
        worst_wall = max(worst_wall, *(r["wall"] / budget for r in runs))
        must, aim = TARGETS.get(m, (None, None))
        target = (f"<= {must}" if must else "") + (f" (aim {aim})" if aim else "")
        rows.append({"figure": f"`chargpt train --time-budget {budget:.0f}` (B = {m:g}W): full-pass val, median of "
                               f"{len(vals)}", "value": f"{medians[m]:.4f} ({', '.join(f'{v:.4f}' for v in vals)})",
                     "target": target})
        rows.append({"figure": f"B = {m:g}W: model chosen, steps, wall time of the command",
                     "value": f"{runs[0].get('model_choice', runs[0].get('preset'))}, "
                              f"{int(statistics.median(r['steps'] for r in runs))} steps, "
                              f"{statistics.median(r['wall'] for r in runs):.0f} s",
                     "target": f"<= {budget * WALL_SLACK:.0f} s"})
    if 1.0 in medians and 3.0 in medians:
        rows.append({"figure": "B = 3W against B = W", "value": f"{medians[3.0] - medians[1.0]:+.4f}",
                     "target": "<= -0.05"})
    rows.append({"figure": "peak RSS of the training process, any run (MB)", "value": f"{worst_rss:.0f}",
                 "target": f"<= {RSS_MUST:.0f}"})
    rows.append({"figure": "longest command wall time / its budget", "value": f"{worst_wall:.3f}",
                 "target": f"<= {WALL_SLACK}"})
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nanogpt", help="a clone of karpathy/nanoGPT (or its bare git directory): W from its train.py")
    ap.add_argument("--w", type=float, help="W in seconds, measured before on this machine (skips measuring it)")
    ap.add_argument("--budgets", type=float, nargs="+", default=[1.0, 3.0, 0.2], help="budgets as multiples of W")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per budget (1..N)")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                    help="chargpt's precision (float32 on a bf16 CPU: how the budget's choice does on a slower machine)")
    a = ap.parse_args()
    print(f"machine: {machine()}, chargpt --dtype {a.dtype}")
    print_table(main(a.budgets, a.seeds, a.nanogpt, a.w, a.dtype), "the best model for the time you have")
