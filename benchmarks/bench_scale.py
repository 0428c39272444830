"""A large corpus end to end, as a user runs it: `chargpt prepare` on tiny Shakespeare repeated to --size, then
`chargpt train` with the cpu preset for --steps steps and its end-of-run evaluation (bounded: an evenly spread
subset of --eval-tokens characters of the 100-million-character val split), each a child process.

    python benchmarks/bench_scale.py [--size 1G] [--steps 50] [--dir /tmp]

Targets (issue 17): prepare + train + final evaluation in under 2 minutes on 2 cores, each process's peak RSS
under 1 GB. Writing the corpus itself is setup, not timed. Run it on a quiet machine for the record.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_prepare import build_corpus, find_shakespeare, parse_size  # noqa: E402
from common import REPO, machine  # noqa: E402


def run_child(args: list[str], cwd: Path) -> tuple[float, int, str]:
    """Run `python -m chargpt ARGS`; return its wall seconds, its own peak RSS in bytes and its stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "chargpt", *args], stdout=out, stderr=err, cwd=cwd,
                             stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1",
                                                                PYTHONPATH=str(REPO / "src")))
        _, status, usage = os.wait4(p.pid, 0)  # this child's own usage
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"chargpt {' '.join(args[:2])} ... failed:\n{err.read()[-3000:]}")
        return seconds, usage.ru_maxrss * 1024, out.read()


def main(size: str, steps: int, eval_tokens: str, workdir: str | None) -> list[tuple[str, str, str]]:
    nbytes = parse_size(size)
    tmp = Path(tempfile.mkdtemp(prefix="chargpt-bench-scale-", dir=workdir))
    try:
        build_corpus(find_shakespeare(), tmp / "corpus.txt", nbytes)
        os.sync()
        prep_s, prep_rss, _ = run_child(["prepare", "--input", "corpus.txt", "--out", "ds"], tmp)
        train_s, train_rss, out = run_child(["train", "--data", "ds", "--preset", "cpu", "--name", "big",
                                             "--max-steps", str(steps), "--eval-tokens", eval_tokens], tmp)
        summary = json.loads((tmp / "runs/big/summary.json").read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = prep_s + train_s
    final = f"{summary['val_loss_full']:.4f}"
    if not summary["val_loss_full_exact"]:
        final += f" ± {summary['val_loss_full_stderr']:.4f}"
    return [
        (f"prepare, {nbytes / 1e9:g} GB corpus", f"{prep_s:.1f} s, peak RSS {prep_rss / 1e6:,.0f} MB", "-"),
        (f"train {steps} steps (cpu preset) + final evaluation", f"{train_s:.1f} s wall, peak RSS "
                                                                  f"{train_rss / 1e6:,.0f} MB", "-"),
        ("  of which training (summary train_seconds)", f"{summary['train_seconds']:.1f} s", "-"),
        ("  of which the final evaluation", f"{summary['eval_seconds']:.1f} s on {summary['val_eval_tokens']:,} of "
                                            f"{summary['val_tokens']:,} characters", "-"),
        ("  final val loss", final, "-"),
        ("total", f"{total:.1f} s", "< 120 s on 2 cores"),
        ("peak RSS, largest process", f"{max(prep_rss, train_rss) / 1e6:,.0f} MB", "< 1,000 MB"),
    ]


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="1G", help="corpus size: 100M, 1G, ...")
    ap.add_argument("--steps", type=int, default=50, help="training steps")
    ap.add_argument("--eval-tokens", default="2000000", help="passed to chargpt train (N or all)")
    ap.add_argument("--dir", default=None, help="where the temporary corpus and dataset go")
    a = ap.parse_args()
    rows = main(a.size, a.steps, a.eval_tokens, a.dir)
    print(f"# {machine()}")
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]}")
