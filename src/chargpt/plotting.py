"""Loss-curve PNGs: one run's train/val curves (refreshed at every evaluation) and several runs' val curves.

Drawn with matplotlib's Agg canvas on a bare `Figure` (no pyplot state, no display needed) and written atomically.
"""
from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

from .fsutil import atomic_path
from .rundir import PLOT, read_metrics

_warned = False


def _evals(records: list[dict]) -> list[dict]:
    return [r for r in records if "val_loss" in r and "step" in r]


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, 2, sharey=True)


def _save(fig, out: Path) -> Path:
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out


def plot_run(run_path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path | None:
    """Draw train and val loss against steps and against training seconds into `<run>/loss.png`.

    Returns the PNG's path, or None when the metrics log has no evaluation yet.
    """
    run_path = Path(run_path)
    evals = _evals(read_metrics(run_path))
    if not evals:
        return None
    fig, (by_step, by_time) = _figure()
    for ax, x_key, label in ((by_step, "step", "step"), (by_time, "train_seconds", "training time (s)")):
        rows = [r for r in evals if r.get(x_key) is not None]
        xs = [r[x_key] for r in rows]
        for key in ("train_loss", "val_loss"):
            ax.plot(xs, [r.get(key) for r in rows], marker="." if len(rows) < 30 else None,
                    label=key.replace("_", " "))
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    by_step.set_ylabel("loss (nats/char)")
    by_step.legend()
    last = evals[-1]
    fig.suptitle(f"{run_path.name}: val {last['val_loss']:.4f} at step {last['step']}")
    return _save(fig, Path(out) if out is not None else run_path / PLOT)


def refresh_run_plot(run_path: str | os.PathLike) -> None:
    """`plot_run` for the training loop, drawn in this process: a failure is one warning line, once, and
    training goes on. matplotlib adds ~35 MB to the process once imported (benchmarks/RESULTS.md)."""
    global _warned
    try:
        plot_run(run_path)
        gc.collect(1)  # figures are reference cycles: collected young, each redraw does not add ~1.5 MB (~10 ms)
    except Exception as e:  # a plot is never worth a run: any failure of matplotlib or the disk is a warning
        if not _warned:
            _warned = True
            print(f"warning: cannot draw the loss curve in {run_path} ({e.__class__.__name__}: {e}); training goes on",
                  file=sys.stderr)


def plot_runs(run_paths: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Overlay the val-loss curves of several runs, against steps and against training seconds."""
    fig, (by_step, by_time) = _figure()
    for path in map(Path, run_paths):
        evals = _evals(read_metrics(path))
        if not evals:
            continue
        line, = by_step.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], label=path.name)
        timed = [r for r in evals if r.get("train_seconds") is not None]
        by_time.plot([r["train_seconds"] for r in timed], [r["val_loss"] for r in timed], color=line.get_color())
    by_step.set_xlabel("step")
    by_time.set_xlabel("training time (s)")
    by_step.set_ylabel("val loss (nats/char)")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    by_step.legend(fontsize="small")
    fig.suptitle("validation loss (random-window estimate)")
    return _save(fig, Path(out))
