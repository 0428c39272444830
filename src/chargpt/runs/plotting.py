"""Loss-curve PNGs: one run's train/val curves (redrawn at evaluations, by a helper process while it trains) and
several runs' val curves.

Drawn with matplotlib's Agg canvas on a bare `Figure` (no pyplot state, no display needed) and written atomically:
a run's own plot by the run, a plot the user names a file for through `fsutil.save_figure`, which refuses any file
of a run or a dataset and any input of the call.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

from ..errors import DataError
from ..fsutil import FIGURE_MARK, MISSING_GLYPH, claim_output, save_figure, write_bytes
from .rundir import METRICS, PLOT, read_metrics

_warned = False
PLOT_TIMEOUT = 120.0  # seconds before the training loop stops waiting for a drawing: far above a normal one


def _finite(value) -> bool:
    """Whether a metrics value can be drawn: a finite number (a hand-edited or diverged log holds NaN, Infinity,
    strings)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _evals(records: list[dict]) -> list[dict]:
    return [r for r in records if _finite(r.get("val_loss")) and _finite(r.get("step"))]


def _points(rows: list[dict], x_key: str, y_key: str) -> tuple[list, list]:
    """The (x, y) of `rows` where both are finite numbers: what cannot be drawn is left out, not warned about."""
    kept = [r for r in rows if _finite(r.get(x_key)) and _finite(r.get(y_key))]
    return [r[x_key] for r in kept], [r[y_key] for r in kept]


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, 2, sharey=True)


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes, marked as chargpt's (`fsutil.FIGURE_MARK`, as `save_figure` marks its files)."""
    import io

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=MISSING_GLYPH)
        fig.savefig(buffer, format="png", metadata=FIGURE_MARK)
    return buffer.getvalue()


def _shown(name: str) -> str:
    """A run name as matplotlib shows it verbatim: `$` starts no math, a leading `_` hides no legend entry."""
    name = name.replace("$", r"\$")
    return " " + name if name.startswith("_") else name


def plot_run(run_path: str | os.PathLike) -> Path | None:
    """Draw the loss against steps and against training seconds into `<run>/loss.png`: the training loss of
    every logged step as a thin line, the train and val estimates of the evaluations as points over it, on a
    log y axis (the early drop and the late slow gains both stay visible).

    Returns the PNG's path, or None when the metrics log has no evaluation yet.
    """
    run_path = Path(run_path)
    fig = run_figure(run_path)
    if fig is None:
        return None
    write_bytes(run_path / PLOT, png_bytes(fig))  # the run's own file: not one a user named
    return run_path / PLOT


def run_figure(run_path: Path):
    """The figure `plot_run` writes (None before the first evaluation)."""
    records = read_metrics(run_path)
    evals = _evals(records)
    if not evals:
        return None
    fig, (by_step, by_time) = _figure()
    for ax, x_key, label in ((by_step, "step", "step"), (by_time, "train_seconds", "training time (s)")):
        ax.plot(*_points(records, x_key, "loss"), color="0.6", linewidth=0.8, label="training loss (one batch)",
                zorder=1)
        for key, color in (("train_loss", "C0"), ("val_loss", "C1")):
            xs, ys = _points(evals, x_key, key)
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=4, color=color,
                    label=key.replace("_", " ") + " (estimate)", zorder=2)
        ax.set_xlabel(label)
    _log_losses(by_step, by_time)
    by_step.set_ylabel("loss (nats/char, log scale)")
    by_step.legend()
    last = evals[-1]
    fig.suptitle(f"{_shown(run_path.name)}: val estimate {last['val_loss']:.4f} at step {last['step']}")
    return fig


# a tick's mantissas on a wide range, coarse to fine: the first set that labels it at least MIN_TICKS times is used
MANTISSAS = ((1, 2, 3, 5), (1, 1.2, 1.4, 1.6, 1.8, 2, 2.5, 3, 3.5, 4, 4.5, 5, 6, 7, 8, 9),
             tuple(round(1 + i / 10, 1) for i in range(90)))
MIN_TICKS, TICKS = 4, 8  # labelled losses on a loss axis: at least, at most
NARROW = 3.0  # a range whose top is at most this many times its bottom is labelled in even steps, as a linear one


def loss_ticks(lo: float, hi: float) -> list[float]:
    """Between MIN_TICKS and TICKS round losses from `lo` to `hi`, spread over a log axis (a log axis of its own
    labels only 2, 3 and 4 over the range 1.2 to 4.5 where losses end, and nothing over 2.4 to 2.9)."""
    if not (0 < lo < hi and math.isfinite(hi)):
        return []
    if hi / lo <= NARROW:  # multiples of 1, 2, 2.5 or 5 x 10^k: spread on a log axis over so short a range
        k = math.floor(math.log10(hi - lo)) + 1
        for step in (m * 10.0 ** e for e in range(k, k - 4, -1) for m in (5, 2.5, 2, 1)):
            ticks = [v for i in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1)
                     if lo <= (v := float(f"{i * step:.12g}")) <= hi]
            if len(ticks) >= MIN_TICKS:  # the coarsest such steps that label it MIN_TICKS times
                return ticks
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    for mantissas in MANTISSAS:
        nice = sorted({v for e in decades for m in mantissas if lo <= (v := round(m * 10.0 ** e, 10)) <= hi})
        if len(nice) >= MIN_TICKS:
            break
    if len(nice) <= TICKS:
        return nice
    targets = [math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * i / (TICKS - 1)) for i in range(TICKS)]
    return sorted({min(nice, key=lambda v: abs(math.log(v / t))) for t in targets})


def _log_losses(*axes) -> None:
    """Loss axes shared by `axes`: a log scale (the early drop and the late slow gains both visible) labelled at
    round losses across the range drawn (`loss_ticks`), 1.4 and 2.5 rather than 1.4x10^0."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    for ax in axes:
        ax.set_yscale("log")
    lo, hi = axes[0].get_ylim()
    for ax in axes:
        ax.yaxis.set_major_locator(FixedLocator(loss_ticks(lo, hi)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="major")
        ax.set_ylim(lo, hi)


def refresh_run_plot(run_path: str | os.PathLike) -> None:
    """`plot_run` for the training loop, drawn by a helper process that this one waits for: matplotlib never enters
    the training process, where it would stay resident for the whole run and raise its peak memory. A failure is
    one warning line, once, and training goes on."""
    global _warned
    from ..runtime.launch import run_helper

    try:
        p = run_helper("chargpt.runs.plotting.plot_run", str(run_path), timeout=PLOT_TIMEOUT)
        failure = None if p.returncode == 0 else (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
    except (OSError, subprocess.SubprocessError) as e:  # a plot is never worth a run: nor is its helper
        failure = f"{e.__class__.__name__}: {e}"
    if failure and not _warned:
        _warned = True
        print(f"warning: cannot draw the loss curve in {run_path} ({failure}); training goes on", file=sys.stderr)


def plot_runs(run_paths: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Overlay the val-loss curves of several runs, against steps and against training seconds, into the PNG `out`
    (refused before anything is drawn when it is a file of a run or a dataset: see `fsutil.claim_output`)."""
    out = claim_output(out, inputs=tuple(run_paths))
    return save_figure(runs_figure(run_paths), out)


def runs_figure(run_paths: list[str | os.PathLike]):
    """The figure `plot_runs` writes."""
    fig, (by_step, by_time) = _figure()
    missing = []
    for path in map(Path, run_paths):
        evals = _evals(read_metrics(path))
        if not evals:
            missing.append(path.name)
            continue
        line, = by_step.plot(*_points(evals, "step", "val_loss"), label=_shown(path.name))
        by_time.plot(*_points(evals, "train_seconds", "val_loss"), color=line.get_color())
    if not by_step.lines:
        raise DataError(f"nothing to draw: {', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no val "
                        f"estimate in {METRICS} (a run logs its first at step 0); name runs that have trained")
    if missing:
        fig.text(0.01, 0.01, f"no val estimate yet: {', '.join(map(_shown, missing))}", fontsize="small")
    by_step.set_xlabel("step")
    by_time.set_xlabel("training time (s)")
    _log_losses(by_step, by_time)
    by_step.set_ylabel("val loss (nats/char, log scale)")
    by_step.legend(fontsize="small")
    fig.suptitle("validation loss (random-window estimate)")
    return fig
