"""A trial of a sweep is an ordinary chargpt run, planned and trained by the one way into training
(`plan_training`): `runs/NAME-t003`, trained under the trial budget, its full-pass val loss the trial's value. Its
periodic val estimates go to Optuna's pruner, which may stop it early; the run's summary records the sweep, the
trial and why it stopped."""
from __future__ import annotations

import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, NonFiniteLoss
from ..runs.rundir import CKPT
from .study import PRUNE_FROM, PRUNE_UNTIL


class Skipped(Exception):
    """A sampled combination the model cannot take (n_embd not divisible by n_head): the trial fails with the
    reason, the sweep goes on."""


class Surplus(Exception):
    """A trial asked for after the study had its N (two workers asked at once): it fails at once, unrun."""


@dataclass
class Judge:
    """What a trial's run sees of its sweep: `record` goes into its summary.json, and `judge` hands each periodic
    val estimate to Optuna's pruner and says why to stop the run early, if it should."""

    trial: Any  # the optuna.Trial
    pruner: str
    record: dict
    by_steps: int | None = None  # the run's max_steps when its budget is steps, None when it is wall clock
    evals: int = 10  # the budget's evenly spaced estimates (budget_evals)
    pruned: str | None = None

    def judge(self, step: int, done: float, val_loss: float) -> str | None:
        """After the estimate at `step`, `done` of the run's budget done: report it at a percent of the budget (the
        budget's evenly spaced marks, so that fast and slow trials compare) and, between `PRUNE_FROM` and
        `PRUNE_UNTIL` percent, ask the pruner."""
        if step == 0 or done >= 1.0:
            return None
        at = round(100 * step / self.by_steps) if self.by_steps else round(100 * math.floor(done * self.evals)
                                                                             / self.evals)
        self.trial.report(val_loss, at)
        if not PRUNE_FROM <= at <= PRUNE_UNTIL or not self.trial.should_prune():
            return None
        self.pruned = (f"pruned by the {self.pruner} pruner at {at}% of its budget (step {step}): its val estimate "
                       f"{val_loss:.4f} was behind the trials before it there")
        self.record["pruned"] = self.pruned
        return self.pruned


def run_trial(trial, sweep, say: Callable[[str], None]) -> float:
    """Train trial `trial` of `sweep` (an `entry.SweepPlan`) as a run and return its full-pass val loss; raise
    `optuna.TrialPruned` when its pruner stopped it, `Skipped` when the model cannot take its values."""
    import optuna

    from ..training.entry import plan_training

    t0 = time.perf_counter()
    sweep.current = trial
    trial.study.sampler = sweep.sampler(trial.number)
    if surplus(trial, sweep.trials):
        trial.set_user_attr("surplus", True)
        raise Surplus(f"the study had its {sweep.trials} trials")
    params = sweep.space.sample(trial)
    judge = Judge(trial, sweep.pruner, {"sweep": sweep.name, "trial": trial.number}, **sweep.pruning_axis)
    request = trial_request(trial, sweep, params, judge)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    try:
        plan = plan_training(request, echo=None)
    except ConfigError as e:
        if request.resume is not None:
            raise
        trial.set_user_attr("skipped", str(e))
        say(f"trial {trial.number}: skipped ({_params(params)}): {e}")
        sweep.refused += 1
        raise Skipped(str(e)) from None
    trial.set_user_attr("run", str(request.resume or Path(request.runs_dir) / request.name))
    trial.set_user_attr("config", plan.as_dict())
    try:
        summary = _train(plan)
    except NonFiniteLoss as e:
        trial.set_user_attr("diverged", str(e))
        say(f"trial {trial.number}: diverged ({_params(params)}): {e}")
        sweep.refused += 1
        raise
    sweep.refused = 0
    value, seconds = summary.get("val_loss_full"), time.perf_counter() - t0
    trial.set_user_attr("val_loss_full", value)
    trial.set_user_attr("seconds", round(seconds, 3))
    if sweep.tracker == "tensorboard":
        record_hparams(trial.user_attrs["run"], params, value)
    where = f"trial {trial.number} ({trial.user_attrs['run']}; {_params(params)})"
    if judge.pruned:  # no final pass: the pruner judged its estimates
        say(f"{where}: {judge.pruned}, {seconds:.1f} s")
        raise optuna.TrialPruned(judge.pruned)
    say(f"{where}: full-pass val loss {value:.4f}, {seconds:.1f} s")
    return value


def trial_request(trial, sweep, params: dict, judge: Judge):
    """The training request of `trial`: a new run `NAME-tNNN` of the fixed fields, the trial budget and the sampled
    `params`, or, for a trial queued again after its worker died or was stopped, its run continued from its
    checkpoint."""
    from ..training.entry import TrainRequest

    earlier = trial.user_attrs.get("run")  # a retried trial carries its first attempt's attributes
    resume = earlier if earlier and (Path(earlier) / CKPT).is_file() else None
    name = Path(resume).name if resume else f"{sweep.name}-t{trial.number:03d}"
    common = dict(data=sweep.data, runs_dir=sweep.runs_dir, tracker=sweep.tracker, judge=judge,
                  tracker_options=sweep.tracker_options | ({"name": name} if sweep.tracker == "wandb" else {}))
    if resume:
        return TrainRequest(resume=resume, **common)
    fields = {k: v for k, v in sweep.space.fixed.items() if k != "preset"} | sweep.budget | params
    return TrainRequest(preset=sweep.space.fixed.get("preset"), fields=fields, fields_from=f"sweep {sweep.name}",
                        name=name, **common)


def _train(plan) -> dict:
    """Train `plan`; a run that finished before its worker died (nothing left to train) gives its summary."""
    if plan.finished:
        summary = plan.resume_run.summary()
        plan.resume_run.unlock()
        return summary
    return plan.run(echo=None)[1]


def surplus(trial, n: int | None) -> bool:
    """Whether `n` trials were already taken (finished, running or queued) before `trial` was asked for."""
    from optuna.trial import TrialState

    if n is None:
        return False
    live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return sum(t.number < trial.number for t in trial.study.get_trials(deepcopy=False, states=live)) >= n


def record_hparams(run: str, params: dict, value: float | None) -> None:
    """The trial's sampled values and figure in TensorBoard's hparams view, beside the run's own event files."""
    from ..track.tracker import warn

    try:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(Path(run) / "tensorboard")) as writer:
            writer.add_hparams(params, {"val_loss_full": math.nan if value is None else value}, run_name="hparams")
    except Exception as e:
        warn("cannot record the trial's hyperparameters; the sweep goes on", e, "tensorboard")


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
