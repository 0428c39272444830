"""The one way into a sweep, for `chargpt sweep` and `chargpt.sweep` alike: a `SweepRequest` (what the user gave) is
checked and resolved once by `plan_sweep` (options, space, trial budget, data, storage, study) before any trial
runs, then `work` takes trials from the study until it has its N (or the sweep's time is up), with `--workers`
more processes doing the same on this machine."""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from ..config import DEFAULT_RUNS_DIR, MAX_SECONDS, TrainConfig, parse_duration
from ..errors import EXIT_FAILURE, EXIT_TERMINATED, ChargptError, ConfigError, NonFiniteLoss, TrainingInterrupted
from ..runtime.signals import Terminated
from ..schema import check_value, flag, option
from .space import Space, build_space, default_space, read_space, search_values
from .study import (DEFAULT_PRUNER, PrunerName, check_settings, has_heartbeat, make_sampler, open_storage,
                    open_study, quiet_optuna, shown, storage_url, sweep_dir)

BUDGET = r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h|steps?)?\s*"
MAX_WORKERS = 64
REFUSED_IN_A_ROW = 10  # trials in a row the model refused (skipped or diverged) before a worker gives up
WAIT_POLL = 1.0  # seconds between looks at the trials running elsewhere, once none is left to start here
STOP_GRACE = 10.0  # seconds the workers get to stop by themselves on Ctrl-C before they are sent it


@dataclass
class SweepOptions:
    name: str = option(None, "the sweep: its study's name, its folder sweeps/NAME, its runs NAME-t000, ...",
                       pattern=r"(?!\.)[^/\\]{1,90}",
                       allowed="a plain name: 1 to 90 characters, no '/' or '\\', not starting with '.'")
    trials: int = option(None, "trials in the study in all, over every worker and machine", min=1, max=10 ** 6)
    trial_budget: str = option(None, "each trial's budget: wall clock (90s, 5m) or steps (500steps)", pattern=BUDGET,
                               allowed="a duration such as 90s or 5m, or steps such as 500steps")
    time_budget: float = option(None, "start no trial that would end after the sweep has run this long (150s, 5m, 1h)",
                                min=0.0, min_open=True, max=MAX_SECONDS)
    workers: int = option(1, "processes on this machine taking trials from the study", min=1, max=MAX_WORKERS)
    storage: str = option(None, "the study's Optuna storage: a database URL (postgresql://USER@HOST/DB, "
                                "sqlite:///FILE) or a journal file's path (default: sweeps/NAME/study.db)")
    pruner: PrunerName = option(DEFAULT_PRUNER, "stops hopeless trials early: percentile (keeps the best third), median, "
                                              "halving (successive halving) or none")
    grace_period: float = option(30.0, "seconds without a heartbeat after which a worker's trial counts as dead: "
                                       "failed, and run again", min=2.0, max=86400.0)


@dataclass
class SweepRequest:
    """A sweep as asked for; None is "not given". `space` is a TOML file or a dict of its tables, `search` its
    `NAME=VALUE` lines; `spell` names an option in messages (a flag, or the library's keyword)."""

    name: str
    data: Any = None  # a dataset directory, or a loaded `Dataset`
    trials: int | None = None
    trial_budget: str | float | None = None
    time_budget: float | str | None = None
    space: Any = None
    search: list[str] = field(default_factory=list)
    storage: str | None = None
    workers: int = 1
    pruner: str = DEFAULT_PRUNER
    seed: int = TrainConfig.seed
    grace_period: float = 30.0
    show: bool = False
    runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR
    tracker: str | None = None
    tracker_options: dict = field(default_factory=dict)
    spell: Callable[[str], str] = flag


@dataclass
class SweepPlan:
    """A checked sweep: its study, its space, the trial budget's fields, and what each trial needs."""

    name: str
    url: str
    study: Any  # the optuna.Study
    space: Space
    settings: dict  # what every worker of the study shares
    data: Any  # the loaded `Dataset`
    budget: dict  # the trial budget as config fields: {"time_budget": 90.0} or {"max_steps": 500, ...}
    pruning_axis: dict  # `trial.Judge`'s by_steps and evals
    trials: int | None
    deadline: float | None  # time.perf_counter() after which no trial starts
    seed: int
    pruner: str
    runs_dir: str | os.PathLike
    tracker: str | None
    tracker_options: dict
    heartbeat: int | None = None  # seconds between a worker's heartbeats; None: the storage has none
    refused: int = 0  # trials in a row the model refused here
    current: Any = None  # the trial this worker runs

    def sampler(self, number: int):
        return make_sampler(self.seed, number)


def trial_budget_fields(text: str | float, spell: Callable[[str], str] = flag) -> dict:
    """`--trial-budget` as config fields, each checked by its field's range: a duration is a time budget, `500steps`
    a step count."""
    m = re.fullmatch(BUDGET, str(text))

    def named(_: str) -> str:  # every message names --trial-budget, not the field it sets
        return spell("trial_budget")

    if m and (m.group(2) or "").startswith("step"):
        steps = float(m.group(1))
        if steps != int(steps):
            raise ConfigError(f"{named('')} must be a whole number of steps, got {text!r}")
        check_value(TrainConfig, "max_steps", int(steps), spell=named)
        return {"max_steps": int(steps), "time_budget": 0.0}
    seconds = parse_duration(str(text)) if m else 0.0
    if seconds <= 0:
        raise ConfigError(f"{named('')} must be a duration such as 90s or 5m, or steps such as 500steps, "
                          f"got {text!r}")
    check_value(TrainConfig, "time_budget", seconds, spell=named)
    return {"time_budget": seconds}


def check_request(req: SweepRequest) -> None:
    """Every option checked by its declaration, and the combinations, before anything is read or written."""
    for f in fields(SweepOptions):
        value = getattr(req, f.name)
        if value is not None:
            check_value(SweepOptions, f.name, value, spell=(lambda _: "NAME") if f.name == "name" else req.spell)
    check_value(TrainConfig, "seed", req.seed, spell=req.spell)
    running = req.trials is not None or req.time_budget is not None
    if not running and not req.show:
        raise ConfigError(f"give {req.spell('trials')} N or {req.spell('time_budget')} T to run trials, or "
                          f"{req.spell('show')} to see those run")
    if running and (req.trial_budget is None or req.data is None):
        missing = req.spell("trial_budget") if req.trial_budget is None else req.spell("data")
        alone = f"; {req.spell('show')} alone shows the trials already run" if req.show else ""
        raise ConfigError(f"running trials needs {missing}: every trial trains on --data under --trial-budget "
                          f"(e.g. --data data/shakespeare --trial-budget 90s){alone}")


def run_sweep(req: SweepRequest, echo: Callable[[str], None] | None = print):
    """Check `req`, then run its trials here (and in `workers - 1` more processes) until the study has its N or the
    time is up; write best.toml (and with `show`, the table and plots). Return the Optuna study."""
    from .report import check_sweep_dir, show, write_best

    say = echo or (lambda *_: None)
    _read_durations(req)
    check_request(req)
    running = req.trials is not None or req.time_budget is not None
    given = _given_space(req) if running else None  # a bad space is refused before optuna or torch is loaded
    budget = trial_budget_fields(req.trial_budget, req.spell) if running else {}
    # where the sweep writes, checked once here: its study's file and its folder's files are new or its own
    url = storage_url(req.name, req.storage, req.spell("storage"))
    check_sweep_dir(req.name, req.show)
    with quiet_optuna():
        if not running:
            _check_shown_exists(req)
            study = open_study(req.name, open_storage(url, req.grace_period), url, req.pruner, create=False)
        else:
            plan = plan_sweep(req, url, given, budget)
            each = plan.settings["trial_budget"].replace("steps", " steps")  # as the settings keep it: 500steps
            say(f"sweep {plan.name}: {_count(plan.trials, plan.deadline)} of {each} each, "
                f"minimising the full-pass val loss; study in {shown(plan.url)}; space: {plan.space.describe()}")
            with grouped(plan), workers(req, plan, req.workers - 1):
                work(plan, say)
            study = plan.study
            say(closing_line(study, req.name))
        best = write_best(study, req.name)
        if best is not None:
            say(f"best configuration: {best}; train it with: chargpt train --config {best}")
        if req.show:
            show(study, req.name, say)
    return study


@contextmanager
def grouped(plan: SweepPlan):
    """With W&B, every trial's run (in this process and its workers) in the W&B group named after the sweep."""
    if plan.tracker != "wandb" or "WANDB_RUN_GROUP" in os.environ:
        yield
        return
    os.environ["WANDB_RUN_GROUP"] = plan.name
    try:
        yield
    finally:
        os.environ.pop("WANDB_RUN_GROUP", None)


def _read_durations(req: SweepRequest) -> None:
    """The library's `time_budget="2h"` in seconds, and its `trial_budget=90` as "90s", as the CLI reads them."""
    if isinstance(req.time_budget, str):
        try:
            req.time_budget = parse_duration(req.time_budget)
        except argparse.ArgumentTypeError as e:
            raise ConfigError(f"{req.spell('time_budget')}: {e}") from None
    if isinstance(req.trial_budget, (int, float)) and not isinstance(req.trial_budget, bool):
        req.trial_budget = f"{req.trial_budget}s"


def _check_shown_exists(req: SweepRequest) -> None:
    """A sweep only shown: the default SQLite file must already be there (opening it would create it)."""
    if req.storage is None and not (sweep_dir(req.name) / "study.db").is_file():
        raise ConfigError(f"no sweep {req.name} here (no {sweep_dir(req.name) / 'study.db'}); start it with: "
                          f"chargpt sweep {req.name} --data DIR --trials N --trial-budget B")


def _count(trials: int | None, deadline: float | None) -> str:
    until = f" until {time.strftime('%H:%M', time.localtime(time.time() + deadline - time.perf_counter()))}" \
        if deadline else ""
    return (f"{trials} trials" if trials else "trials") + until


def plan_sweep(req: SweepRequest, url: str, given: Space | None, budget: dict) -> SweepPlan:
    """Resolve `req` with its `given` space (checked; None: the study's, or the default around the budget's choice)
    and its trial `budget` (as config fields): its data loaded and a trial planned once on them, then its study
    opened or joined at `url` (checked by `storage_url`): the only write so far."""
    from ..training.entry import TrainRequest, plan_training

    started = time.perf_counter()
    fixed = {k: v for k, v in (given.fixed if given else {}).items() if k != "preset"}
    base = plan_training(TrainRequest(preset=given.fixed.get("preset") if given else None, data=req.data,
                                      fields=fixed | budget | {"seed": req.seed}, fields_from=f"sweep {req.name}",
                                      runs_dir=req.runs_dir), echo=None)
    _warm_up()
    _check_no_leftover_runs(req)
    if req.storage is None:
        sweep_dir(req.name).mkdir(parents=True, exist_ok=True)
    storage = open_storage(url, req.grace_period)
    study = open_study(req.name, storage, url, req.pruner, create=True)
    stored = study.user_attrs.get("chargpt") or {}
    space = given or (build_space(stored["space"], f"sweep {req.name}'s space") if stored.get("space")
                      else default_space(base.config))
    budget_text = f"{budget['max_steps']}steps" if "max_steps" in budget else f"{budget['time_budget']:g}s"
    settings = check_settings(study, {"trial_budget": budget_text, "seed": req.seed, "space": space.as_dict(),
                                      "dataset": base.data.content_hash}, req.name, url)
    tc = base.config.train
    return SweepPlan(req.name, url, study, space, settings, base.data, budget,
                     {"by_steps": budget.get("max_steps"), "evals": tc.budget_evals}, req.trials,
                     started + req.time_budget if req.time_budget else None, req.seed, req.pruner, req.runs_dir,
                     req.tracker, req.tracker_options,
                     storage.get_heartbeat_interval() if has_heartbeat(storage) else None)


def _warm_up() -> None:
    """Pay once, outside every trial's budget, what the first trial of a process would otherwise pay inside its own:
    torch's optimizers load its compiler stack when first made (seconds), which would make each worker's first trial
    its worst."""
    import torch._dynamo  # noqa: F401


def _given_space(req: SweepRequest) -> Space | None:
    """The space of `--space` and `--search` (a --search line wins over the file's value), or None if neither."""
    if req.space is None and not req.search:
        return None
    values: dict = {}
    if isinstance(req.space, dict):
        values = dict(req.space)
    elif req.space is not None:
        values = read_space(req.space)
    where = "--search" if req.space is None else req.spell("space") if isinstance(req.space, dict) else \
        f"{req.spell('space')} {req.space}"
    return build_space(values | search_values(req.search), where)


def _check_no_leftover_runs(req: SweepRequest) -> None:
    """A new sweep whose runs would land on an earlier sweep's of the same name is refused before it starts."""
    import glob

    if req.storage is not None or (sweep_dir(req.name) / "study.db").exists():
        return
    leftover = sorted(glob.glob(f"{glob.escape(str(Path(req.runs_dir) / req.name))}-t[0-9][0-9][0-9]*"))
    if leftover:
        raise ConfigError(f"{leftover[0]} is left from an earlier sweep named {req.name} (whose study is gone); "
                          f"remove its runs, or choose another name")


# ------------------------------------------------------------------------------------------------ the work
def work(plan: SweepPlan, say: Callable[[str], None]) -> None:
    """Take trials from the study until it has its N finished or running (then wait for those running elsewhere:
    one whose worker dies is run again) or the sweep's time is up."""
    from optuna.exceptions import UpdateFinishedTrialError

    from .trial import Skipped, Surplus, run_trial

    waited = False
    while True:
        counts = _tally(plan)
        if not _more_to_run(plan, counts):
            if not (counts["RUNNING"] and plan.heartbeat and _time_left(plan, 0.0)):
                return
            if not waited:
                say(f"sweep {plan.name}: waiting for the trials still running on other workers")
                waited = True
            time.sleep(WAIT_POLL)
            continue
        if not _time_left(plan, plan.budget.get("time_budget") or 0.0):
            say(f"sweep {plan.name}: its time budget is spent; no trial starts now")
            return
        try:
            plan.study.optimize(lambda trial: run_trial(trial, plan, say), n_trials=1,
                                catch=(Skipped, Surplus, NonFiniteLoss))
        except (TrainingInterrupted, KeyboardInterrupt) as e:
            raise _interrupted(plan, e) from None
        except UpdateFinishedTrialError:  # another worker took this one for dead (a heartbeat came too late)
            say(f"sweep {plan.name}: trial {plan.current.number} was taken for dead by another worker and run again")
        if plan.refused >= REFUSED_IN_A_ROW:
            raise ConfigError(f"sweep {plan.name}: {plan.refused} trials in a row were skipped or diverged (the last: "
                              f"{_last_reason(plan)}); narrow the space")


def _tally(plan: SweepPlan) -> dict[str, int]:
    """The study's trials by state (COMPLETE, PRUNED, RUNNING, WAITING, FAIL), stale trials failed first."""
    from collections import Counter

    from optuna.storages import fail_stale_trials

    fail_stale_trials(plan.study)
    counts = Counter(t.state.name for t in plan.study.get_trials(deepcopy=False))
    return {s: counts.get(s, 0) for s in ("COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")}


def _more_to_run(plan: SweepPlan, counts: dict[str, int]) -> bool:
    """Whether a trial waits to run again, or the study has fewer than N finished, running or waiting."""
    taken = counts["COMPLETE"] + counts["PRUNED"] + counts["RUNNING"] + counts["WAITING"]
    return bool(counts["WAITING"]) or plan.trials is None or taken < plan.trials


def _time_left(plan: SweepPlan, seconds: float) -> bool:
    return plan.deadline is None or time.perf_counter() + seconds <= plan.deadline


def _last_reason(plan: SweepPlan) -> str:
    attrs = plan.current.user_attrs if plan.current is not None else {}
    return attrs.get("skipped") or attrs.get("diverged") or "no reason recorded"


def _interrupted(plan: SweepPlan, e: BaseException) -> TrainingInterrupted:
    """Ctrl-C or SIGTERM: the trial it stopped is queued to run again (its run resumed from the checkpoint it
    saved), and the same command resumes the sweep."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    terminated = isinstance(e, Terminated) or (isinstance(e, TrainingInterrupted) and e.exit_code == EXIT_TERMINATED)
    signum = signal.SIGTERM if terminated else signal.SIGINT
    trial, kept = plan.current, ""
    if trial is not None:
        frozen = next((t for t in plan.study.get_trials(deepcopy=False) if t.number == trial.number), None)
        if frozen is not None and frozen.state.name == "FAIL" and "run" in frozen.user_attrs:
            RetryHeartbeatStaleTrialCallback()(plan.study, frozen)
            kept = f" in trial {trial.number} ({frozen.user_attrs['run']} keeps its checkpoint)"
    return TrainingInterrupted(f"sweep {plan.name} stopped by {signal.Signals(signum).name}{kept}; the same command "
                               f"resumes it", signum)


def closing_line(study, name: str) -> str:
    """How many trials the study has, in which states, and its best."""
    from collections import Counter

    counts = Counter(t.state.name.lower() for t in study.get_trials(deepcopy=False))
    states = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    try:
        best = study.best_trial
    except ValueError:
        return f"sweep {name}: {states or 'no trials'}; none complete yet"
    return (f"sweep {name}: {states}; best: trial {best.number} ({best.user_attrs.get('run', '-')}), full-pass val "
            f"loss {best.value:.4f}")


# ----------------------------------------------------------------------------------------------- workers
class workers:
    """`n` more worker processes on this machine, each `chargpt sweep` on the same study (its space and settings
    read from there); on the way out, they are waited for (stopped first when this worker failed)."""

    def __init__(self, req: SweepRequest, plan: SweepPlan, n: int):
        self.command = _worker_command(req, plan) if n > 0 else []
        self.n, self.procs = n, []

    def __enter__(self):
        root = str(Path(__file__).resolve().parents[2])  # the workers import this same chargpt
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        for _ in range(self.n):
            self.procs.append(subprocess.Popen(self.command, stdin=subprocess.DEVNULL, env=env))
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            interrupted = issubclass(exc_type, (KeyboardInterrupt, TrainingInterrupted))
            if interrupted:  # Ctrl-C at a terminal reached them too: a second one would cut their checkpoint short
                _wait_a_little(self.procs, STOP_GRACE)
            for p in self.procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT if interrupted else signal.SIGTERM)
        codes = [_wait(p) for p in self.procs]
        for p, code in zip(self.procs, codes):
            if code < 0 and exc_type is None:  # killed: its trial was run again by the others (or is queued)
                print(f"warning: worker {p.pid} was ended by {signal.Signals(-code).name}; the trial it ran is run "
                      f"again", file=sys.stderr)
        failed = [(p.pid, c) for p, c in zip(self.procs, codes) if c > 0]
        if failed and exc_type is None:
            error = ChargptError(f"worker {failed[0][0]} exited {failed[0][1]} (its error is above); the study keeps "
                                 f"every trial it finished")
            error.exit_code = EXIT_FAILURE
            raise error


def _wait_a_little(procs: list[subprocess.Popen], seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while any(p.poll() is None for p in procs) and time.perf_counter() < deadline:
        time.sleep(0.1)


def _wait(proc: subprocess.Popen) -> int:
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:  # Ctrl-C reached the workers too: wait while they checkpoint
            continue


def _worker_command(req: SweepRequest, plan: SweepPlan) -> list[str]:
    """The command of one more worker: this sweep's study, data, trial budget, seed and pruner, one process."""
    cmd = [sys.executable, "-m", "chargpt", "sweep", plan.name, "--data", str(plan.data.path), "--trial-budget",
           plan.settings["trial_budget"], "--storage", plan.url, "--seed", str(plan.seed), "--pruner", plan.pruner,
           "--grace-period", str(req.grace_period), "--runs-dir", str(plan.runs_dir)]
    if plan.trials:
        cmd += ["--trials", str(plan.trials)]
    if plan.deadline:
        cmd += ["--time-budget", f"{max(1.0, plan.deadline - time.perf_counter()):.0f}"]
    if plan.tracker:
        cmd += ["--tracker", plan.tracker]
        cmd += [x for k in ("mode", "project", "entity") if plan.tracker_options.get(k)
                for x in (f"--wandb-{k}", str(plan.tracker_options[k]))]
    return cmd
