"""The budget clock, driven by a time source the test sets: what the budget has left, when to evaluate, checkpoint
and stop."""
import pytest

from chargpt.config import TrainConfig
from chargpt.training.budget import EVAL_SHARE
from chargpt.training.clock import CURVE_POINTS, PLOT_GUESS, BudgetClock


class Time:
    """A clock that moves only when told."""

    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def clock(now: Time, **train) -> BudgetClock:
    tc = TrainConfig(**({"max_steps": 100, "eval_interval": 10, "budget_evals": 10} | train))
    return BudgetClock(tc, start=now(), now=now, draws_plot=True)


def test_paused_work_counts_against_the_budget_but_not_the_training_seconds():
    now = Time()
    c = clock(now, time_budget=60.0)
    now.now += 5  # start-up
    c.start_training(0)
    assert c.budget_origin == 5
    now.now += 10
    with c.paused_training():
        now.now += 3
    assert c.train_seconds() == pytest.approx(10)
    assert c.budget_seconds() == pytest.approx(18) and c.budget_trained() == pytest.approx(13)


def test_the_fraction_done_of_a_budget_leaves_out_start_up_the_final_pass_and_the_closing_estimate():
    now = Time()
    c = clock(now, time_budget=100.0)
    now.now += 10
    c.start_training(0)
    c.reserve = 20.0
    with c.estimating():
        now.now += 2
    # the training part: 100 - 10 (start-up) - 20 (final pass) - 2 (an estimate) - a drawing of loss.png
    part = 100 - 10 - 20 - 2 - PLOT_GUESS
    assert c.fraction_done(0) == pytest.approx(2 / part)
    now.now += part - 2
    assert c.fraction_done(0) == pytest.approx(1.0)


def test_without_a_budget_steps_decide_evaluations_checkpoints_and_the_end():
    now = Time()
    c = clock(now, ckpt_interval=25)
    c.start_training(0)
    first = c.mark(0, None)
    assert first.evaluate and not first.save and not first.finished
    assert not c.mark(5, None).evaluate
    assert c.mark(20, None).evaluate and not c.mark(20, None).save
    assert c.mark(25, None).save and not c.mark(25, None).evaluate
    last = c.mark(100, None)
    assert last.finished and last.evaluate and last.save and last.done == 1.0


def test_a_resumed_run_neither_evaluates_nor_saves_the_step_it_resumed_at():
    now = Time()
    c = clock(now)
    c.resumed_at = 40
    c.start_training(40)
    mark = c.mark(40, None)
    assert not mark.evaluate and not mark.save
    c.resumed_at, c.evaluated_at = 100, 100  # a finished run whose last estimate is logged: only the report
    assert not c.mark(100, None).evaluate and c.mark(100, None).finished


def test_a_budget_evaluates_at_every_evenly_spaced_mark_each_estimate_in_its_share_of_the_seconds():
    now = Time()
    c = clock(now, time_budget=100.0, eval_iters=200)
    c.start_training(0)
    first = c.mark(0, None)
    assert first.evaluate and first.batches == 200  # a new run's first estimate
    assert first.seconds == pytest.approx(EVAL_SHARE * 100 / 11)  # the 3 s of estimates over 11 of them
    now.now += 4
    assert not c.mark(1, None).evaluate  # before the first tenth
    now.now += 6
    assert c.mark(2, None).evaluate  # past it
    assert not c.mark(3, None).evaluate  # that mark is taken
    with c.estimating():
        now.now += 5.0  # an estimate that cost more than the share of all of them
    now.now += 20
    late = c.mark(4, None)
    assert late.evaluate and late.seconds == 0  # still drawn on the curve, from the fewest batches
    now.now += 100
    assert c.mark(5, None).finished and c.mark(5, None).evaluate


def test_a_run_of_steps_whose_interval_leaves_too_few_estimates_adds_cheap_ones():
    now = Time()
    c = clock(now, max_steps=500, eval_interval=500, eval_iters=20)
    c.start_training(0)
    marks = {step: c.mark(step, None) for step in range(501)}
    evaluated = [step for step, m in marks.items() if m.evaluate]
    assert len(evaluated) >= CURVE_POINTS + 1 and evaluated[0] == 0 and evaluated[-1] == 500
    assert marks[0].batches == marks[500].batches == 20  # at eval_interval and the end: eval_iters
    assert {marks[s].batches for s in evaluated[1:-1]} == {5}  # between them: cheap ones
    assert all(m.seconds is None for m in marks.values())  # steps, not seconds: the same batches every time
    assert not any(m.save for s, m in marks.items() if s not in (500,))  # no checkpoint more than asked
    dense = clock(now, max_steps=100, eval_interval=10)
    dense.start_training(0)
    assert [s for s in range(101) if dense.mark(s, None).evaluate] == list(range(0, 101, 10))  # enough already
    uneven = clock(now, max_steps=300, eval_interval=100, log_interval=10)  # 100 steps in thirds: 33, 66, 100
    uneven.start_training(0)
    steps = [s for s in range(301) if uneven.mark(s, None).evaluate]
    assert {0, 100, 200, 300} <= set(steps) and min(b - a for a, b in zip(steps, steps[1:])) >= 33, steps


def test_a_signal_is_reported_and_the_processes_agree_on_the_largest_values():
    now = Time()
    tc = TrainConfig(max_steps=100, eval_interval=10)
    c = BudgetClock(tc, start=now(), now=now, agree=lambda values: [max(v, 0.5) for v in values])
    c.start_training(0)
    mark = c.mark(3, 15)
    assert mark.signal == 15 and mark.done == 0.5  # another process is half way


def test_loss_png_is_redrawn_at_first_and_last_and_between_while_it_is_cheap():
    now = Time()
    c = clock(now)
    c.start_training(0)
    assert c.plot_due(0, last=False) and c.plot_due(50, last=True)
    with c.drawing():
        now.now += 1.0
    assert not c.plot_due(10, last=False)  # 1 s of drawing in 1 s of run
    now.now += 200
    assert c.plot_due(10, last=False)  # 2 s in 201 s: under 2%
    quiet = BudgetClock(TrainConfig(), start=now(), now=now, draws_plot=False)
    assert not quiet.plot_due(0, last=True)


def test_a_budget_too_short_for_one_drawing_draws_only_at_the_end_and_affords_only_its_slack():
    now = Time()
    c = clock(now, time_budget=10.0)
    c.start_training(0)
    assert not c.plot_due(0, last=False) and c.plot_due(0, last=True)
    now.now += 10
    assert c.affords(0.4) and not c.affords(1.0)


def test_work_a_run_can_do_without_must_fit_the_budget_itself_not_its_slack():
    """Scoring best.pt after the final pass: a budget of 18.7 s with 1 s of it left affords a 0.9 s pass within its
    slack, but not as optional work (a 19 s budget's run overran by 9% when a second pass took twice the first)."""
    now = Time()
    c = clock(now, time_budget=18.7)
    c.start_training(0)
    now.now += 17.7
    assert c.affords(0.9, slack=False) and not c.affords(1.2, slack=False)
    assert c.affords(1.2) and not c.affords(2.0)


def test_a_resumed_budget_counts_only_its_own_start_up_and_goes_on_from_the_seconds_trained_before():
    """The earlier processes' seconds after their start-up were training: the schedule continues from them."""
    now = Time()
    c = clock(now, time_budget=100.0)
    c.resumed_at, c.spent_budget, c.origin_before = 40, 50.0, 10.0  # as restore() reads them from the checkpoint
    now.now += 3  # this process's start-up
    c.start_training(40)
    assert c.startup_seconds() == 3 and c.budget_origin == 13
    assert c.budget_trained() == pytest.approx(40)  # 50 used before, 10 of them its start-up; not 53 - 10
    assert c.budget_seconds() == pytest.approx(53)


def test_a_run_resumed_at_its_end_is_finished_at_once_whatever_its_seconds_say():
    now = Time()
    c = clock(now, time_budget=100.0)
    c.resumed_at, c.ended = 7, True  # a budget it reached (its wall clock is not re-counted here)
    c.start_training(7)
    assert c.fraction_done(7) < 1.0 and c.mark(7, None).finished
