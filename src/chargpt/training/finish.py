"""The end of a training run: the full pass over val of each model it saved, the one it recommends, the summary,
the sample, and what the next runs learn from this one (its speed, its compiled graphs)."""
from __future__ import annotations

import math
import resource
import signal
import sys
import time
from contextlib import contextmanager
from typing import Callable

import torch

from ..errors import TrainingInterrupted
from ..model.engine import Engine
from ..runs import checkpoint, records
from ..runs.provenance import provenance
from ..runs.rundir import BEST, CKPT, EMA
from ..runtime import distributed
from ..runtime.compiling import mark_compiled
from ..runtime.progress import EvalProgress, format_duration
from ..runtime.signals import StopSignals
from ..track.tracker import finish_tracking
from .budget import FINAL_MARGIN, SPEED_STEPS, record_speed
from .evaluate import EvaluationInterrupted, PassResult, bigram_optimum, describe_pass, evaluate_split
from .loop import save_checkpoint, teach_compile
from .state import Training


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (the kernel's high-water mark)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def finish(t: Training) -> dict:
    """The end-of-run evaluation of val, the summary and a sample; return the summary."""
    seconds = t.clock.train_seconds()
    teach_next_runs(t, seconds)
    seen = records.throughput(t.step, t.tokens_per_step, seconds)
    summary = {"model": t.config.model.model, "preset": t.writer.preset, "params": t.model.num_params(),
               "steps": t.step, "tokens_seen": seen["tokens_seen"], "train_seconds": round(seconds, 3),
               "time_budget": t.config.train.time_budget or None,
               **({"model_choice": t.writer.model_choice} if t.writer.model_choice else {}),
               "tokens_per_sec": seen["tokens_per_sec"], "train_loss": t.writer.last_eval.get("train_loss"),
               "val_loss": t.writer.last_eval.get("val_loss"),
               **(t.writer.judge.record if t.writer.judge else {})}  # a sweep's trial: its sweep, number, pruning
    if t.ema is not None:  # ema.pt: the average, for sample, eval and serve when the run recommends it
        save_checkpoint(t, t.writer.run.ema if t.writer.run is not None else None, model=t.ema.model)
    if t.writer.stopped_early is None:
        t0 = time.perf_counter()
        with final_passes(t, summary, t0) as stop:
            scored, note = score_models(t, summary, lambda: stop.received, t0)
        summary |= figures_of(t, scored, time.perf_counter() - t0)
    else:  # a sweep's pruner stopped it: its last estimate is all the sweep uses, so no final pass and no sample
        scored, note = {}, None
        summary |= {"val_loss_full": None} | run_figures(t)
    if t.dist.is_main:
        report(t, summary, scored, seconds, note)
        write_summary(t, summary)
    distributed.barrier(t.dist)
    distributed.shutdown(t.dist)  # NCCL warns at exit about a process group never destroyed
    return summary if t.dist.is_main else {}


def teach_next_runs(t: Training, seconds: float) -> None:
    """Mark the compiled graphs as cached, and remember the speed of a run long enough to rely on and what its
    compile cost."""
    steps_here, main = t.step - (t.clock.resumed_at or 0), t.dist.is_main
    if t.compiled and main and steps_here > 0:  # its compiled graphs are in the cache now
        mark_compiled(t.compiled)
    if main and steps_here >= SPEED_STEPS:  # a speed the budget's next choice can rely on
        speed = steps_here * t.tokens_per_step / max(seconds - t.clock.spent, 1e-9)
        record_speed(t.config, t.device, t.precision, speed, compiled=bool(t.compiled))
    teach_compile(t, seconds)


@contextmanager
def final_passes(t: Training, summary: dict, t0: float):
    """The checkpoint is saved: a signal now cuts the final evaluation short (the summary says so), nothing else."""
    with StopSignals() as stop:
        try:
            yield stop
        except EvaluationInterrupted as e:
            name, run = signal.Signals(e.signum).name, t.writer.run
            summary |= {"val_loss_full": None, "eval_cut_short": f"by {name} after {e.done:,} of {e.total:,} characters",
                        "eval_seconds": round(time.perf_counter() - t0, 3), "peak_rss_mb": peak_rss_mb()}
            if t.writer.writes:
                run.write_summary(summary)
            raise TrainingInterrupted(f"the final evaluation was cut short by {name} ({e.done:,} of {e.total:,} "
                                      f"characters); the checkpoint of step {t.step} is kept; score it with: "
                                      f"chargpt eval --ckpt {t.writer.where}", e.signum) from None


def score_models(t: Training, summary: dict, should_stop: Callable[[], int | None],
                 t0: float) -> tuple[dict, str | None]:
    """{checkpoint name: (full pass over val, what it is, its step)} of the final model, the average (--ema) and
    best.pt when it is an earlier, better estimate (else a line saying why it was not scored, or None); every rank
    scores its share of the windows, in float32 (the reference figure). A bigram also gets the count-based optimum."""
    mc, main, val, tokens = t.config.model, t.dist.is_main, t.data.val, t.clock.final_tokens

    def full_pass(model, what: str) -> PassResult:
        return evaluate_split(model, val, mc.block_size, t.device, eval_tokens=tokens, dist_info=t.dist,
                              should_stop=should_stop,
                              progress=EvalProgress(f"final evaluation of {what}", enabled=main and t.writer.shows_progress))

    scored = {CKPT: (full_pass(t.model, "val"), "the final model", t.step)}
    if main and mc.model == "bigram":
        summary["bigram_optimum_val_loss"] = bigram_optimum(t.data.train, val, mc.vocab_size,
                                                            eval_tokens=t.config.train.eval_tokens,
                                                            should_stop=should_stop)
    if t.ema is not None:
        scored[EMA] = (full_pass(t.ema.model, "ema.pt"), f"ema.pt, the average since step {t.ema.start}", t.step)
    best = score_best(t, should_stop, time.perf_counter() - t0)
    if isinstance(best, tuple):
        scored[BEST] = (best[0], f"best.pt of step {best[1]}", best[1])
    return scored, best if isinstance(best, str) else None


def score_best(t: Training, should_stop: Callable[[], int | None], final_seconds: float) -> tuple | str | None:
    """(full pass of best.pt, its step) when best.pt holds an earlier model whose val estimate was lower than the
    final model's (an overfitting run), so the headline figure never hides a better checkpoint; a line saying why
    it was not scored when the budget has no time left for it; None when the final model is the best estimate."""
    run, writer = t.writer.run, t.writer
    if (run is None or not t.dist.is_main or t.dist.enabled or not run.best.is_file()
            or not writer.best_val < writer.last_eval.get("val_loss", math.inf)):
        return None
    if not t.clock.affords(FINAL_MARGIN * final_seconds, slack=False):  # a second pass, and loading best.pt
        return (f"best.pt (val estimate {writer.best_val:.4f}, below the final model's "
                f"{writer.last_eval['val_loss']:.4f}) was not scored: the budget has no time left; score it with: "
                f"chargpt eval --ckpt {run.best}")
    model, _, state = checkpoint.load_model(run.best, t.device)
    if state["step"] == t.step:
        return None
    result = evaluate_split(model, t.data.val, t.config.model.block_size, t.device, eval_tokens=t.clock.final_tokens,
                            should_stop=should_stop,
                            progress=EvalProgress("final evaluation of best.pt", enabled=t.writer.shows_progress))
    return result, state["step"]


def figures_of(t: Training, scored: dict, seconds: float) -> dict:
    """The summary's figures of the final passes: the recommended model's as the headline, each model's loss."""
    final = scored[CKPT][0]
    figures = records.full_pass(final, seconds) | run_figures(t)
    if EMA in scored:
        figures |= {"val_loss_full_ema": scored[EMA][0].loss, "ema_from_step": t.ema.start}
    if BEST in scored:
        figures |= {"val_loss_full_best": scored[BEST][0].loss, "best_step": scored[BEST][2]}
    if len(scored) > 1:
        figures["val_loss_full_final"] = final.loss
    recommended = min(scored, key=lambda name: scored[name][0].loss)  # the lowest full pass of the models saved
    if recommended != CKPT:
        figures |= records.full_pass(scored[recommended][0], figures["eval_seconds"])
    return figures | {"recommended": recommended}


def run_figures(t: Training) -> dict:
    """What the summary says of the run's machine, data and memory, scored or not."""
    return {"peak_rss_mb": peak_rss_mb(), "device": str(t.device), "dtype": t.precision,
            "threads": torch.get_num_threads(),  # --threads, or for 0 the cores idle as the run began
            "world_size": t.dist.world_size, "seed": t.config.train.seed, "dataset": t.data.meta.get("name"),
            "dataset_hash": t.data.content_hash, **({"init_from": t.writer.origin} if t.writer.origin else {}),
            "provenance": provenance(t.device)}


def report(t: Training, summary: dict, scored: dict, seconds: float, note: str | None) -> None:
    """Say the headline figure, which model it is and the others', and the bigram optimum (for a run a sweep's
    pruner stopped, why and its last estimate)."""
    tc = t.config.train
    spent = f", {format_duration(t.clock.budget_seconds())} of the {format_duration(tc.time_budget)} budget" \
        if tc.time_budget else ""
    if not scored:
        t.writer.say(f"{t.writer.stopped_early}; trained {seconds:.1f} s{spent}")
        return
    recommended = summary["recommended"]
    which = ""
    if len(scored) > 1:
        others = "; ".join(f"{what}: {result.loss:.4f}" for name, (result, what, _) in scored.items()
                           if name != recommended)
        which = f" ({scored[recommended][1]}, recommended; {others})"
    steps = f"{t.step:,} step{'' if t.step == 1 else 's'}"
    t.writer.say(describe_pass(scored[recommended][0], "val") + f"{which} after {steps}, {seconds:.1f} s{spent}")
    if note:
        t.writer.say(note)
    if "bigram_optimum_val_loss" in summary:
        t.writer.say(f"count-based bigram optimum on val: {summary['bigram_optimum_val_loss']:.4f}")


def write_summary(t: Training, summary: dict) -> None:
    """The sample (not of a pruned trial), summary.json and the tracker's end of the run (main process only)."""
    tc, run = t.config.train, t.writer.run
    if run is not None:
        if tc.sample_tokens and t.writer.stopped_early is None:  # a pruned trial is never sampled
            g = torch.Generator(device=t.device).manual_seed(tc.seed)
            idx = torch.zeros((1, 1), dtype=torch.long, device=t.device)  # start from index 0 (newline)
            out = Engine(t.model).generate(idx, tc.sample_tokens, generator=g)
            summary["sample"] = text = t.data.tokenizer.decode(out[0].tolist())
            run.write_sample(text)
        summary["estimates_seconds"] = round(t.clock.eval_seconds, 3)  # the periodic estimates this process made
        if tc.time_budget:
            summary["budget_seconds"] = round(t.clock.budget_seconds(), 3)
        run.write_summary(summary)
    finish_tracking(t.writer.tracker, run, summary, t.data)
