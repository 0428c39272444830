"""The training run's clock: the seconds it has trained and spent of its time budget, what estimates and drawings
of loss.png cost, and from these when to evaluate, checkpoint and stop. The loop asks it; it does no work itself."""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

from ..config import TrainConfig
from .budget import EVAL_SHARE

BUDGET_SLACK = 1.05  # a time budget's final figure may come this much past it
PLOT_SHARE = 0.02  # loss.png is redrawn at an evaluation while redrawing it has taken at most this share of the run
PLOT_GUESS = 1.0  # seconds a drawing of loss.png takes (a helper process), until one is timed
# Every run's loss curve has at least this many estimates after step 0, however short the run: a run of steps whose
# eval_interval leaves fewer adds cheap ones (CHEAP_SHARE of eval_iters batches) between them, at most one every
# log_interval steps; a time budget's estimates each take their share of EVAL_SHARE in seconds, in as many batches
# as fit (at least MIN_BATCHES).
CURVE_POINTS = 8
CHEAP_SHARE = 0.25
MIN_BATCHES = 1


@dataclass(frozen=True)
class Mark:
    """What the loop does at a step, as every process agrees: evaluate, checkpoint, stop (finished or signalled)."""

    done: float  # the fraction of the run done: of its steps, or of its budget's training part
    evaluate: bool
    save: bool
    finished: bool
    signal: int  # a stop signal's number, 0 when none came
    batches: int = 0  # batches per split of the estimate at this step (at most: see `seconds`)
    seconds: float | None = None  # with a time budget, the seconds the estimate may take (at least MIN_BATCHES)


class BudgetClock:
    """Seconds of one training process. `now` is the time source (`time.perf_counter`; a test passes its own);
    `agree` takes the largest of each value over all processes (identity in a single process)."""

    def __init__(self, tc: TrainConfig, *, start: float, now: Callable[[], float] = time.perf_counter,
                 agree: Callable[[list[float]], list[float]] = lambda values: values, resumed_at: int | None = None,
                 spent: float = 0.0, spent_budget: float = 0.0, budget_origin: float | None = None,
                 draws_plot: bool = False):
        self.tc, self.budget, self.now, self.agree = tc, tc.time_budget, now, agree
        self.start = start  # when the budget's clock started: the command's start
        self.resumed_at = resumed_at  # the step this process resumed at (None: a new run)
        self.ended = False  # resumed at the end of the run (`reached_end`): finished, whatever the seconds say
        self.evaluated_at: int | None = None  # a resumed step whose evaluation is already logged
        self.spent = spent  # training seconds of the run before this process (a resume)
        self.spent_budget = spent_budget  # seconds of its budget the run's earlier processes used
        self.origin_before = 0.0  # of those, the seconds before their training began (start-ups, compiling)
        self.budget_origin = budget_origin  # seconds of the budget gone to start-ups and compiling: not training
        self.reserve = 0.0  # seconds of the budget kept for the final pass over val and the sample
        self.final_tokens = tc.eval_tokens  # characters of val the final pass scores (fewer to fit a short budget)
        self.draws_plot = draws_plot  # this process redraws loss.png
        self.t_start, self.paused = now(), 0.0  # evaluations and checkpoints are paused training time
        self.eval_cost = self.eval_seconds = 0.0  # the latest estimate's seconds, and all of them here
        self.estimates = 0  # estimates made by this process
        self.plot_cost, self.plot_seconds = PLOT_GUESS, 0.0  # the latest drawing's seconds, and all of them here
        self.next_eval_mark = 0

    # ------------------------------------------------------------------------------------------- seconds
    def train_seconds(self) -> float:
        return self.spent + self.now() - self.t_start - self.paused

    def budget_seconds(self) -> float:
        """Seconds of the time budget used: the user's wall clock since the command started (start-up, compiling,
        evaluations and checkpoints included), plus what the run's earlier processes used."""
        return self.spent_budget + self.now() - self.start

    def startup_seconds(self) -> float:
        """Seconds since this process's command started (before training: its start-up)."""
        return self.now() - self.start

    def budget_trained(self) -> float:
        """Seconds of the budget since training began: what the schedule, the estimates and the average count."""
        return self.budget_seconds() - (self.budget_origin or 0.0)

    def closing_seconds(self) -> float:
        """The work after the last step, before the final pass: the last estimate and the last drawing of loss.png."""
        return self.eval_cost + (self.plot_cost if self.draws_plot else 0.0)

    def fraction_done(self, step: int) -> float:
        """Of the steps, or of the budget's training part: from when training began to the budget less the final
        pass kept back and the closing estimate (start-up and compiling must not squeeze the schedule)."""
        if self.budget:
            part = self.budget - self.reserve - self.closing_seconds() - (self.budget_origin or 0.0)
            return self.budget_trained() / max(part, 1e-9)
        return step / self.tc.max_steps

    def shown(self) -> float:
        """The seconds a progress bar shows: of the budget when there is one, else of training."""
        return self.budget_seconds() if self.budget else self.train_seconds()

    def affords(self, seconds: float, slack: bool = True) -> bool:
        """Whether `seconds` more of work still end within the budget (its slack included, unless `slack` is False:
        work the run can do without, which leaves the slack to what follows it, such as the process's exit)."""
        return not self.budget or self.budget_seconds() + seconds <= self.budget * (BUDGET_SLACK if slack else 1.0)

    # -------------------------------------------------------------------------------------- paused work
    def start_training(self, step: int) -> None:
        """Training begins at `step`: the budget's training part and the training seconds start now. A resumed
        run's start-up is this process's alone: the earlier processes' seconds after theirs were training."""
        if self.budget_origin is None:
            self.budget_origin = self.origin_before + self.startup_seconds()
        # a budget is evaluated at evenly spaced fractions of it, at those the estimates can afford
        self.next_eval_mark = math.floor(self.fraction_done(step) * self.tc.budget_evals) + 1 if self.budget else 0
        self.t_start, self.paused = self.now(), 0.0

    @contextmanager
    def paused_training(self):
        """Work off the training clock (tokens/s counts training only; the budget's wall clock counts it all)."""
        t0 = self.now()
        try:
            yield
        finally:
            self.paused += self.now() - t0

    @contextmanager
    def estimating(self):
        """A loss estimate: its cost decides whether the next one is affordable."""
        t0 = self.now()
        yield
        self.eval_cost = self.now() - t0
        self.eval_seconds += self.eval_cost
        self.estimates += 1

    @contextmanager
    def drawing(self):
        """A drawing of loss.png: its cost decides whether the next evaluation redraws it."""
        t0 = self.now()
        yield
        self.plot_cost = self.now() - t0
        self.plot_seconds += self.plot_cost

    def plot_due(self, step: int, last: bool) -> bool:
        """Redraw loss.png at the first and the `last` evaluation, and at others while redrawing has cost at most
        `PLOT_SHARE` of the run; a budget too short to afford one drawing at the first draws only at the last."""
        first = step == 0 and not (self.budget and self.plot_cost > PLOT_SHARE * self.budget)
        return self.draws_plot and (last or first or (
            step > 0 and self.plot_seconds + self.plot_cost <= PLOT_SHARE * self.shown()))

    # ---------------------------------------------------------------------------------------- the marks
    def mark(self, step: int, signal: int | None) -> Mark:
        """Where the run stands before training `step`, agreed by every process."""
        tc = self.tc
        done, stop = self.agree([self.fraction_done(step), float(signal or 0)])
        # a new run trains a step; a run resumed at its end is finished, whatever its seconds say
        finished = self.ended or (done >= 1.0 and (step > 0 or self.resumed_at is not None))
        batches, seconds = tc.eval_iters, None
        if self.budget:
            marked = done * tc.budget_evals >= self.next_eval_mark
            if marked:
                self.next_eval_mark = math.floor(done * tc.budget_evals) + 1
            due = marked or (step == 0 and step != self.resumed_at)
            seconds = self.estimate_seconds()
        else:
            regular, offset = step % tc.eval_interval == 0, step % tc.eval_interval
            curve = self.curve_interval()
            # a curve point a full curve interval before the next regular estimate, not one step before it
            due = (regular or (offset % curve == 0 and offset + curve <= tc.eval_interval)) \
                and step != self.resumed_at
            if not (regular or finished):
                batches = min(tc.eval_iters, max(MIN_BATCHES, round(CHEAP_SHARE * tc.eval_iters)))
        fresh = step > 0 and step != self.resumed_at
        save = fresh and (step % (tc.ckpt_interval or tc.eval_interval) == 0 or finished
                          or (due and bool(self.budget) and not tc.ckpt_interval))
        logged = finished and step == self.evaluated_at  # a finished run resumed: its last estimate is logged
        return Mark(done, (due or finished) and not logged, save, finished, int(stop), batches, seconds)

    def curve_interval(self) -> int:
        """Steps between a run of steps' estimates: eval_interval, or an even part of it where that leaves fewer than
        CURVE_POINTS estimates (never more often than training losses are logged, every log_interval)."""
        tc = self.tc
        parts = math.ceil(tc.eval_interval * CURVE_POINTS / tc.max_steps)
        return max(tc.eval_interval // parts, min(tc.log_interval, tc.eval_interval), 1)

    def estimate_seconds(self) -> float:
        """The seconds a time budget's next estimate may take: what is left of EVAL_SHARE of its training part,
        shared evenly among the estimates still to come (the marks left and the last one)."""
        part = self.budget - self.reserve - (self.budget_origin or 0.0)
        left = EVAL_SHARE * part - self.eval_seconds
        return max(0.0, left) / max(1, self.tc.budget_evals + 1 - self.estimates)


def reached_end(state: dict, tc: TrainConfig) -> bool:
    """Whether the checkpoint `state` stands at the end of the run `tc` asks for: its step count, or a time budget no
    larger than the one it trained under when it was saved at that budget's end (a budget is wall clock, so the
    seconds trained never reach it; a run stopped by a signal or a crash mid-budget has the rest of it to train)."""
    if tc.time_budget:
        ended = state["extra"].get("finished", True)  # checkpoints saved before they said so: as if at the end
        return ended and tc.time_budget <= (state["config"]["train"].get("time_budget") or 0.0)
    return state["step"] >= tc.max_steps


def budget_that_trains(spent: float, startup: float, reserve: float = 0.0) -> str:
    """A --time-budget that leaves a resumed run time to train, as `--time-budget 8s`'s value: the `spent` seconds of
    its budget the run used, a start-up like `startup`, the final pass `reserve`, and training as long as `spent`."""
    return f"{math.ceil(2 * spent + startup + reserve)}s"
