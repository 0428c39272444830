"""Seeing a sweep's result: its trials as a table, Optuna's own plots as PNGs, and the best trial's configuration
as sweeps/NAME/best.toml, which `chargpt train --config` trains as is. All of it is read from the study, so it is
the same on every machine that shares the study."""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Callable

from ..errors import OutputError
from ..fsutil import kind_of, open_regular, written_by_chargpt
from ..runtime.progress import format_duration
from .study import SWEEPS_DIR, sweep_dir

BEST = "best.toml"
# The two lines `write_best` opens best.toml with: how a best.toml chargpt wrote is told from a file of the user's.
BEST_HEADER = re.compile(r"# sweep .+: trial \d+ \(.*\), full-pass val loss \S+\n# train it with: chargpt train "
                         r"--config .+\n")
# Optuna's matplotlib plots drawn by --show: the file each is written to, and its function.
PLOTS = {"history.png": "plot_optimization_history", "importances.png": "plot_param_importances",
         "parallel.png": "plot_parallel_coordinate"}


def check_sweep_dir(name: str, show: bool) -> None:
    """Refuse (OutputError, one line, before any trial) a sweep folder chargpt may not write in: sweeps/NAME must be
    new or a directory, not a link to one elsewhere, and each file the sweep replaces there (best.toml; with `show`,
    the plots) new or one chargpt wrote."""
    folder = sweep_dir(name)
    if os.path.lexists(SWEEPS_DIR) and not os.path.isdir(SWEEPS_DIR):  # a link to a directory elsewhere is fine
        raise OutputError(f"{SWEEPS_DIR} is {kind_of(SWEEPS_DIR)}, not a directory: chargpt keeps its sweeps there; "
                          f"move it away, or run the sweep in another directory")
    kind = kind_of(folder)
    if kind not in (None, "a directory"):
        raise OutputError(f"{folder} is {kind}, not a sweep's own directory: chargpt writes a sweep's files only "
                          f"into a directory it makes; remove it, or choose another sweep name")
    for file in (BEST, *(PLOTS if show else ())):
        check_replaceable(folder / file)


def check_replaceable(path: Path) -> None:
    """Refuse to replace `path` unless it is new or a sweep's own file: a best.toml that `write_best` wrote, a plot
    that chargpt drew (`written_by_chargpt`)."""
    kind = kind_of(path)
    if kind is None or kind == "a regular file" and (
            written_by_chargpt(path) if path.suffix == ".png" else _written_best(path)):
        return
    what = "a file chargpt did not write" if kind == "a regular file" else kind
    raise OutputError(f"{path} is {what}; a sweep replaces only its own {path.name} there: move this one away first")


def _written_best(path: Path) -> bool:
    try:
        with open_regular(path) as f:
            head = f.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    return BEST_HEADER.match(head) is not None


def show(study, name: str, say: Callable[[str], None]) -> None:
    """The trials as a table, then Optuna's plots as PNGs in sweeps/NAME."""
    say(format_trials(study))
    for path in draw_plots(study, sweep_dir(name), say):
        say(f"wrote {path}")


def state_of(trial) -> str:
    """What became of a trial: complete, pruned at N%, skipped, diverged, running, waiting, failed."""
    attrs, state = trial.user_attrs, trial.state.name.lower()
    for reason in ("skipped", "diverged", "surplus"):
        if attrs.get(reason):
            return reason
    if state == "pruned" and trial.intermediate_values:
        return f"pruned at {max(trial.intermediate_values)}%"
    return "failed" if state == "fail" else state


def format_trials(study) -> str:
    """One row per trial: its state, figure (full-pass val loss; in parentheses, a pruned trial's last val estimate),
    sampled values, wall time and run; the best trial is marked with *."""
    trials = study.get_trials(deepcopy=False)
    if not trials:
        return "no trials yet"
    names = list(dict.fromkeys(p for t in trials for p in t.params))
    try:
        best = study.best_trial.number
    except ValueError:
        best = None
    rows = [("trial", "state", "val full", *names, "wall", "run")]
    for t in trials:
        figure, estimate = t.user_attrs.get("val_loss_full"), t.intermediate_values.get(t.last_step)
        seconds = t.user_attrs.get("seconds") or (
            (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start
            else None)
        rows.append((f"{t.number}{'*' if t.number == best else ''}", state_of(t),
                     f"{figure:.4f}" if figure is not None else f"({estimate:.4f})" if estimate is not None else "-",
                     *(_value(t.params.get(n)) for n in names),
                     format_duration(seconds), t.user_attrs.get("run", "-")))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {0, 2, *range(3, 3 + len(names) + 1)}
    return "\n".join("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     .rstrip() for row in rows)


def _value(v) -> str:
    return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def draw_plots(study, out_dir: Path, say: Callable[[str], None]) -> list[Path]:
    """Optuna's history, parameter importances and parallel coordinates (matplotlib) as PNGs in `out_dir`; a plot
    the study cannot give yet (too few complete trials) is one line saying so."""
    import warnings

    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    from ..fsutil import write_bytes
    from ..runs.plotting import png_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for file, function in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = getattr(plots, function)(study)
        except Exception as e:  # Optuna refuses a plot it has too few trials for
            say(f"{file}: not drawn ({(str(e).splitlines() or [type(e).__name__])[0]})")
            continue
        fig = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        try:
            _restyled(fig)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig.tight_layout()  # Optuna's axis labels otherwise run off the picture's edge
            check_replaceable(out_dir / file)  # again: checked before the trials, it may have changed since
            write_bytes(out_dir / file, png_bytes(fig))
            written.append(out_dir / file)
        finally:
            plt.close(fig)
    return written


def _restyled(fig) -> None:
    """Optuna's figures as a reader needs them: trial numbers as whole numbers (its history labels 0.2, 0.4, ...
    on a short sweep), the objective named as chargpt's figure, and a colour map without white (its parallel
    coordinates drew the worst trial white on its grey background)."""
    from matplotlib.collections import LineCollection
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        if ax.get_xlabel() == "Trial":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_ylabel() == "Objective Value":
            ax.set_ylabel("val loss (nats/char, full pass)")
        for lines in ax.collections:
            if isinstance(lines, LineCollection) and lines.get_array() is not None:
                lines.set_cmap("viridis")


def write_best(study, name: str) -> Path | None:
    """sweeps/NAME/best.toml: the configuration the best trial trained (its preset, data and every field), or None
    while no trial is complete."""
    from ..fsutil import write_text

    try:
        best = study.best_trial
    except ValueError:
        return None
    config = best.user_attrs.get("config")
    if not isinstance(config, dict):
        return None
    lines = [f"# sweep {name}: trial {best.number} ({best.user_attrs.get('run', '-')}), full-pass val loss "
             f"{best.value:.4f}", f"# train it with: chargpt train --config {sweep_dir(name) / BEST}"]
    lines += [f"{key} = {toml_value(config[key])}" for key in ("preset", "data_dir") if config.get(key) is not None]
    for section in ("model", "train"):
        lines += ["", f"[{section}]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in config[section].items() if k != "vocab_size" and v is not None]
    path = sweep_dir(name) / BEST
    path.parent.mkdir(parents=True, exist_ok=True)
    check_replaceable(path)  # again: checked before the trials, it may have changed since
    write_text(path, "\n".join(lines) + "\n")
    return path


def toml_value(value) -> str:
    """A config value as TOML writes it (a string quoted as JSON quotes it, which TOML reads the same)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))
