"""The runs under `runs/`, side by side: one row per run directory, from its config, metrics log and summary.

A run without `summary.json` did not finish (still training, stopped or crashed); it is listed from what it wrote,
up to its checkpoint. So is a run whose summary describes another step than its checkpoint: a finished run was
resumed since, and that summary is no longer its record. A run whose final evaluation was cut short is not
finished either. Runs on different datasets are not overlaid in one plot unless asked: their losses are on
different text.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ChargptError, CheckpointError, ConfigError
from ..config import DEFAULT_RUNS_DIR, ModelConfig, _typed
from ..fsutil import read_json_object
from ..runtime.progress import format_duration
from ..runtime.resources import num_params
from ..schema import valid
from .ckptmeta import saved_step
from .records import MAX_STEP
from .rundir import BEST, CKPT, CONFIG, METRICS, SUMMARY, clear_stale_temporaries, metrics_log, run_problem


ABSURD_PARAMS = 10 ** 12  # 4 TB of float32 weights: a config edited by hand, not one that trained


@dataclass
class RunInfo:
    name: str
    path: Path
    model: str | None
    preset: str | None
    params: int | None
    steps: int | None  # the last step it logged (a stopped run's checkpoint is at that step)
    best_val: float | None  # lowest random-window val estimate in the metrics log
    best_step: int | None  # the step of that estimate: where best.pt was saved
    val_full: float | None  # full-pass val loss at the end (finished runs only): exact, or an estimate from a subset
    seconds: float | None  # training wall time, evaluations excluded
    updated: float  # last write into the run directory (unix time)
    finished: bool
    problem: str | None = None  # what is damaged in its files (the row still shows what could be read)
    val_full_stderr: float | None = None  # the standard error of `val_full` when it is an estimate
    dataset: str | None = None  # the dataset's name
    dataset_hash: str | None = None  # its content hash: runs compare only on the same one
    eval_cut_short: bool = False  # the final evaluation was stopped (Ctrl-C or SIGTERM): not finished
    pruned: bool = False  # a sweep's pruner stopped it early (its summary says why)
    note: str | None = None  # what of its files was not read (the start of a long metrics log, lines that are no records)


def _count_params(model_config: dict) -> int | None:
    """Parameters of an unfinished run's model, counted from its config (exactly, without building it); None for
    a config that is not a valid model."""
    try:
        mc = _typed(ModelConfig, model_config)
        mc.validate()
    except (ChargptError, TypeError, ValueError):
        return None
    return num_params(mc)


# What a figure of a run may be: a count below 2^63, a number of seconds or a loss from 0 to 10^12 (31,000 years), a
# name of one printable line.
BOUNDS = {int: {"min": 0, "max": MAX_STEP, "max_open": True}, float: {"min": 0, "max": 1e12},
          str: {"pattern": r"[^\x00-\x1f\x7f]{1,256}", "allowed": "a name of 1 to 256 printable characters"}}


def _of(kind, value):
    """`value` if it is a `kind` within its `BOUNDS` (a number: finite, and no bool), else None: a hand edit shows
    as `-`."""
    return value if valid(value, kind, **BOUNDS[kind]) else None


def read_run(path: str | os.PathLike) -> RunInfo:
    path = Path(path)
    problem = run_problem(path)
    config, summary = read_json_object(path / CONFIG, within=path), read_json_object(path / SUMMARY, within=path)
    if problem is None:
        wrong = [k for k, kind in (("model", str), ("preset", str), ("params", int), ("steps", int),
                                   ("val_loss_full", float), ("train_seconds", float))
                 if summary.get(k) is not None and _of(kind, summary[k]) is None]
        if wrong:
            shown = repr(summary[wrong[0]])[:40]
            problem = f"{SUMMARY} has a {wrong[0]} of the wrong type or out of range ({shown})"
    at = _of(int, saved_step(path / CKPT, within=path))  # None without a readable checkpoint: read from the rest
    if at is not None and summary and summary.get("steps") != at:
        summary = {}
    log = metrics_log(path)
    records = [r for r in log.records if isinstance(r.get("step"), int) and (at is None or r["step"] <= at)]
    evals = [r for r in records if _of(float, r.get("val_loss")) is not None]
    last = max(records, key=lambda r: r["step"], default={})  # training-loss records too: a run may stop between evaluations
    best = min(evals, key=lambda r: r["val_loss"], default={})
    model_config = config.get("model") if isinstance(config.get("model"), dict) else {}
    params = _of(int, summary.get("params"))
    if params is None and model_config.get("vocab_size"):
        params = _count_params(model_config)
        if params is None and problem is None:
            problem = f"{CONFIG} does not describe a valid model"
        elif params is not None and params > ABSURD_PARAMS and problem is None:
            problem = f"{CONFIG} describes a model of {params:.3g} parameters, more than any machine holds"
    dataset = config.get("dataset") if isinstance(config.get("dataset"), dict) else {}
    cut_short = bool(summary.get("eval_cut_short"))
    mtimes = [p.lstat().st_mtime for p in (path / CONFIG, path / METRICS, path / SUMMARY) if p.is_symlink() or p.exists()]
    return RunInfo(
        name=path.name, path=path,
        model=_of(str, summary.get("model")) or _of(str, model_config.get("model")),
        preset=_of(str, summary.get("preset")) or _of(str, config.get("preset")),
        params=params,
        steps=_of(int, summary.get("steps", last.get("step") if at is None else at)),
        best_val=best.get("val_loss"),
        best_step=best.get("step") if (path / BEST).is_file() else None,
        val_full=_of(float, summary.get("val_loss_full")),
        seconds=_of(float, summary.get("train_seconds", last.get("train_seconds"))),
        updated=max(mtimes, default=path.stat().st_mtime),
        finished=bool(summary) and not cut_short,
        problem=problem,
        val_full_stderr=_of(float, summary.get("val_loss_full_stderr")) if summary.get("val_loss_full_exact") is False
        else None,
        dataset=_of(str, summary.get("dataset")) or _of(str, dataset.get("name")),
        dataset_hash=_of(str, summary.get("dataset_hash")) or _of(str, dataset.get("hash")),
        eval_cut_short=cut_short,
        pruned=bool(summary.get("pruned")),
        note=log.note,
    )


def _unreadable(path: Path, error: Exception) -> RunInfo:
    return RunInfo(name=path.name, path=path, model=None, preset=None, params=None, steps=None, best_val=None,
                   best_step=None, val_full=None, seconds=None, updated=0.0, finished=False,
                   problem=f"unreadable ({error.__class__.__name__}: {str(error)[:80]})")


def list_runs(out_dir: str | os.PathLike = DEFAULT_RUNS_DIR) -> list[RunInfo]:
    """Every run directory under `out_dir` (those holding a config.json), oldest first; `latest` is skipped."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise CheckpointError(f"no runs directory {out_dir}; train a model first or pass --runs-dir")
    dirs = [p for p in out_dir.iterdir() if p.is_dir() and not p.is_symlink() and (p / CONFIG).exists()]
    return sorted(map(read_row, dirs), key=lambda r: (r.updated, r.name))


def plotted_runs(out_dir: str | os.PathLike = DEFAULT_RUNS_DIR, all_datasets: bool = False) -> list[RunInfo]:
    """The runs `runs --plot` draws when none is named: those `list_runs` lists that have an evaluation, of the
    newest such run's dataset (every dataset with `all_datasets`), oldest first."""
    runs = [r for r in list_runs(out_dir) if r.problem is None and r.best_val is not None]
    if runs and not all_datasets:
        runs = [r for r in runs if r.dataset_hash == runs[-1].dataset_hash]
    if not runs:
        raise CheckpointError(f"no run under {out_dir} has an evaluation to plot yet; train one with `chargpt train`")
    return runs


def read_row(path: Path) -> RunInfo:
    """The row of run `path` (`read_run`, after its stale temporaries are gone), or one saying it is unreadable: a
    damaged run never hides the others, in `chargpt runs` or the server's listing."""
    clear_stale_temporaries(path)
    try:
        return read_run(path)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        return _unreadable(path, e)


def _params(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n / 1e3:.1f}k"


def dataset_label(r: RunInfo) -> str:
    """`shakespeare 14731f94`: the dataset's name and the start of its content hash."""
    return " ".join(x for x in (r.dataset, (r.dataset_hash or "")[:8]) if x) or "-"


def check_comparable(runs: list[RunInfo], override: str = "--all") -> None:
    """Refuse to overlay runs trained on different datasets in one plot: their losses are on different text.
    `override` is how the caller asks for it anyway."""
    by_dataset: dict[str, list[str]] = {}
    for r in runs:
        if r.dataset_hash:
            by_dataset.setdefault(r.dataset_hash, []).append(r.name)
    if len(by_dataset) > 1:
        labels = {r.dataset_hash: dataset_label(r) for r in runs}
        groups = "; ".join(f"{', '.join(names)} on {labels[h]}" for h, names in by_dataset.items())
        raise ConfigError(f"these runs were trained on different datasets ({groups}), so their losses do not "
                          f"compare; pass {override} to overlay them anyway")


def val_full_text(r: RunInfo) -> str:
    """The final full-pass loss, `± standard error` when it is an estimate from a subset of a large val split."""
    if r.val_full is None:
        return "-"
    return f"{r.val_full:.4f}" + (f" ±{r.val_full_stderr:.4f}" if r.val_full_stderr is not None else "")


def status(r: RunInfo) -> str:
    """The status column: what is damaged, or how the run ended and what of its files was not read."""
    if r.problem:
        return f"damaged: {r.problem}"
    return f"{ended(r)}; {r.note}" if r.note else ended(r)


def ended(r: RunInfo) -> str:
    if r.finished:
        return "pruned" if r.pruned else "finished"
    return "eval cut short" if r.eval_cut_short else "unfinished"


def format_runs(runs: list[RunInfo]) -> str:
    """A fixed-width table; unfinished runs show `-` for the full-pass loss and `unfinished` as status, an
    estimated full-pass loss its `± standard error`. `steps` is where the latest checkpoint (`ckpt.pt`) is;
    `at step` where `best.pt` is."""
    header = ("name", "model", "data", "params", "steps", "best val", "at step", "val full", "wall", "date", "status")
    rows = [header]
    for r in runs:
        model = r.model if r.preset in (None, r.model) else f"{r.model} ({r.preset})"
        rows.append((
            r.name, model or "-", dataset_label(r), _params(r.params), "-" if r.steps is None else str(r.steps),
            "-" if r.best_val is None else f"{r.best_val:.4f}", "-" if r.best_step is None else str(r.best_step),
            val_full_text(r), format_duration(r.seconds), time.strftime("%Y-%m-%d %H:%M", time.localtime(r.updated)),
            status(r),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    numeric = {3, 4, 5, 6, 7, 8}
    lines = ["  ".join(cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             .rstrip() for row in rows]
    return "\n".join(lines)
