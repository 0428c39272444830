"""The training loop: get a batch, forward, backward, step; at a few named points evaluate, checkpoint or stop.
`setup` builds what it trains (state.py), the clock tells it when (clock.py), the writer records it (writer.py)."""
from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Config, ModelConfig
from ..data.dataset import Dataset
from ..errors import ConfigError, NonFiniteLoss, TrainingInterrupted, signal_name
from ..model.attention import layers_by_heads
from ..model.gpt import build_model
from ..runs import checkpoint, records
from ..runs.rundir import RunDir
from ..runtime import distributed
from ..runtime.compiling import (CompileRun, compile_decision, compile_key, compile_model, compile_unavailable_reason,
                                 compiled_before, mark_compiled, prepare_compile)
from ..runtime.device import autocast_for, configure_backends, resolve_dtype, set_threads
from ..runtime.resources import keep_freed_memory_for_reuse
from ..runtime.progress import Progress, Working, format_duration
from ..runtime.signals import StopSignals
from ..track.tracker import NullTracker
from .budget import (FINAL_MARGIN, FINAL_SHARE, SAMPLE_RATE, SPEED_STEPS, compile_figures, final_pass_seconds,
                     record_compile)
from .clock import MIN_BATCHES, BudgetClock, Mark, budget_that_trains, reached_end
from .evaluate import estimate_loss
from .optim import Muon, load_optimizer_states, lr_multiplier, make_optimizers, set_lr
from .state import Average, Batches, Training, restore_rng, rng_state
from .writer import RunWriter


def quiet(*_) -> None:
    pass


# ------------------------------------------------------------------------------------------------ setup
def setup(config: Config, data: Dataset, run: RunDir | None, *, device: torch.device, threads: int | None = None,
          resume_state: dict | None = None, init_from: dict | None = None, tracker=None,
          echo: Callable[[str], None] | None = print, clock_start: float, **run_fields) -> Training:
    """Build what is trained on `device`, restore a resume or a fine-tune into it, write the run's config and
    decide what the time budget affords. `threads`: torch's CPU threads as the plan decided them (None: decided
    here); `clock_start`: when the budget's clock started (the command's start);
    `run_fields`: the writer's preset, data_dir, model_choice, notebook, judge."""
    device, dist = start_process(config, device, threads)
    writer = RunWriter(run, data, writes=dist.is_main and run is not None,
                       say=echo if dist.is_main and echo is not None else quiet,
                       tracker=tracker if tracker is not None and dist.is_main else NullTracker(),
                       shows_progress=echo is not None, **run_fields)
    t = build(config, data, device, dist, writer, clock_start, init_from)
    if resume_state is not None:
        restore(t, resume_state)
    t.clock.ended = resume_state is not None and reached_end(resume_state, config.train)
    announce(t)
    reserve_final_pass(t)  # a resume that leaves nothing to train is refused here, the run untouched
    writer.write_config(config)
    if writer.writes and resume_state is not None:
        run.recover(t.step)
    t.compiled = compile_choice(t)  # weighs the compile against the training the budget leaves
    t.fwd = wrapped(t)
    data.check_block_size(config.model.block_size)
    if t.clock.ended and run is not None:
        # resuming a finished run: its last evaluation is already logged; only the final report is redone
        writer.last_eval = next(({"train_loss": r["train_loss"], "val_loss": r["val_loss"]}
                                 for r in reversed(run.metrics()) if r.get("step") == t.step and "val_loss" in r), {})
        t.clock.evaluated_at = t.step if writer.last_eval else None
    return t


def start_process(config: Config, device: torch.device,
                  threads: int | None = None) -> tuple[torch.device, distributed.DistInfo]:
    """Join the process group (under torchrun: one GPU a process) and set up the device's backends and the
    thread count (`threads` where the plan decided it); return this process's device."""
    dist = distributed.init(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    configure_backends(device)
    keep_freed_memory_for_reuse(device)
    if threads is None:
        set_threads(config.train.threads, dist.enabled)
    else:
        torch.set_num_threads(threads)
    return device, dist


def build(config: Config, data: Dataset, device: torch.device, dist: distributed.DistInfo, writer: RunWriter,
          clock_start: float, init_from: dict | None) -> Training:
    """Seeds, batches, model (from `init_from`'s weights when fine-tuning) and optimizers, and the clock."""
    mc, tc = config.model, config.train
    precision = resolve_dtype(device, tc.dtype)  # bfloat16 autocast where it is native, else float32
    micro_batch, accum = distributed.split_batch(tc.batch_size, tc.grad_accum, dist.world_size)
    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    gen = torch.Generator().manual_seed((tc.seed + dist.rank) % 2 ** 64)  # each rank draws its own batches
    model = build_model(mc)
    if init_from is not None:
        writer.origin = init_from["origin"] | checkpoint.transfer_weights(init_from["state"], model, data.tokenizer)
        if dist.is_main and writer.origin["shared_chars"] == 0:
            print(f"warning: {writer.origin['ckpt']} knows none of this dataset's {data.tokenizer.vocab_size} "
                  f"characters: only its inner layers carry over, every embedding and head row starts fresh",
                  file=sys.stderr)
    model = model.to(device)
    optimizers = make_optimizers(model, tc, device.type, bf16=precision == "bfloat16")
    clock = BudgetClock(tc, start=clock_start, agree=lambda values: distributed.all_max(values, dist),
                        draws_plot=writer.writes)
    return Training(config, device, dist, precision, Batches(data, micro_batch, accum, mc.block_size, gen), model,
                    optimizers, fwd=model, clock=clock, writer=writer)


def restore(t: Training, state: dict) -> None:
    """Continue the checkpoint `state`: its weights, optimizer states, step, clocks, best estimate, average of
    the weights and random generators."""
    tc, extra, dist = t.config.train, state["extra"], t.dist
    where = t.writer.where if t.writer.run is not None else "the checkpoint"
    t.step = checkpoint.restore(state, t.config, where, data=t.data, model=t.model)
    load_optimizer_states(t.optimizers, state["optimizers"], where)
    for opt in t.optimizers:  # the restored groups carry the saved peaks: an --lr given on resume wins
        for g in opt.param_groups:
            g["peak_lr"] = tc.muon_lr if isinstance(opt, Muon) else tc.lr
    t.writer.origin = extra.get("init_from")
    t.clock.resumed_at, t.clock.spent = t.step, extra.get("train_seconds", 0.0)
    t.clock.spent_budget = extra.get("budget_seconds", t.clock.spent)  # runs saved before budgets were wall clock
    t.clock.origin_before = extra.get("budget_origin") or 0.0
    t.writer.best_val = extra.get("best_val_loss") or math.inf
    if tc.ema and isinstance(extra.get("ema"), dict):
        average = build_model(t.config.model)
        average.load_state_dict(extra["ema"])
        t.ema = Average(average.to(t.device), int(extra["ema_start"]), int(extra["ema_steps"]))
    states = state["rng"].get("batch_per_rank")
    mine = states[dist.rank] if states and len(states) == dist.world_size else None
    restore_rng(state["rng"], t.batches.gen, mine)
    if mine is None and dist.enabled:  # another number of processes: keep the ranks' batches apart
        t.batches.gen.manual_seed((tc.seed + dist.rank + 1_000_003 * t.step) % 2 ** 64)


def announce(t: Training) -> None:
    """Say what is trained: the model, the device and precision, the run's length, batch and learning rate."""
    mc, tc, dist, say = t.config.model, t.config.train, t.dist, t.writer.say
    params, b = t.model.num_params(), t.batches
    shape = "" if mc.model == "bigram" else f"{layers_by_heads(mc.n_layer, mc.n_head)} x {mc.n_embd} wide, "
    say(f"model: {mc.model}, {shape}context {mc.block_size}, {params:,} parameters ({params / 1e6:.2f}M) "
        f"on {t.device} in {t.precision}"
        + (f", {dist.world_size} processes of {torch.get_num_threads()} threads" if dist.enabled else ""))
    length = f"a {format_duration(tc.time_budget)} budget" if tc.time_budget else f"{tc.max_steps:,} steps"
    say(f"run: {length}, batch {t.tokens_per_step:,} tokens per step ({dist.world_size} x {b.accum} x "
        f"{b.micro_batch} x {mc.block_size}), "
        + (f"muon lr {tc.muon_lr:g} (adamw {tc.lr:g})" if tc.optimizer == "muon" else f"adamw lr {tc.lr:g}")
        + f", {tc.schedule} schedule")


def compile_choice(t: Training) -> str | None:
    """The compile_key of the model to compile here, or None to train eagerly: no --compile, no compiler here,
    or a time budget, or a number of steps, whose training would not win the compile back (`compile_decision`,
    on what earlier runs measured of compiling this model on this machine)."""
    tc, say = t.config.train, t.writer.say
    no_compile = compile_unavailable_reason(t.device) if tc.compile else None
    if no_compile:
        say(f"warning: {no_compile}; training without it")
    if not tc.compile or no_compile:
        return None
    threads = [torch.get_num_threads()] if t.device.type == "cpu" else []  # inductor's CPU kernels specialize on it
    key = compile_key(t.device.type, t.precision, dataclasses.asdict(t.config.model), t.batches.micro_batch,
                      t.dist.world_size, *threads)
    cached = compiled_before(key)
    figures = compile_figures(t.config, t.device, t.precision)
    if tc.time_budget:
        used = t.clock.agree([t.clock.budget_seconds() + t.clock.reserve])[0]  # every process decides alike
        training, span = tc.time_budget - used, "this budget trains"
    else:  # a run of steps: as long as its steps take at the eager speed measured here; it compiles unless this
        steps = tc.max_steps - t.step  # machine's figures say the compile costs more than it wins
        cost = figures.cold_seconds if cached is False else figures.warm_seconds
        known = cost is not None and figures.compiled_speed and figures.eager_speed
        training = steps * t.tokens_per_step / figures.eager_speed if known else None
        span = f"{'this step takes' if steps == 1 else f'these {steps:,} steps take'} eagerly"
    compiles, why = compile_decision(training, cached, figures, span)
    if why:
        say(why)
    if not compiles:
        return None
    prepare_compile()  # imports inductor, and with it dynamo: 1.3-1.8 s a run that trains eagerly never pays
    t.compile_run = CompileRun(cold=None if cached is None else not cached)
    return key


def reserve_final_pass(t: Training) -> None:
    """Keep back from a time budget the final pass over val (measured on one batch; fewer characters when it would
    take too much of the budget) and the sample, and say how the budget is split."""
    mc, tc, clock, val = t.config.model, t.config.train, t.clock, len(t.data.val)
    if not tc.time_budget:
        return
    # the final pass runs eagerly in float32 (twice with --ema: the final model and the average)
    final = FINAL_MARGIN * (2 if tc.ema else 1) * final_pass_seconds(t.model, val, mc.block_size, t.device,
                                                                     tc.eval_tokens) / t.dist.world_size
    fitted = ""
    if final > FINAL_SHARE * tc.time_budget and tc.eval_tokens:  # an even subset (--eval-tokens all: exact anyway)
        scored = min(tc.eval_tokens, val)
        clock.final_tokens = max(mc.block_size, int(scored * FINAL_SHARE * tc.time_budget / final))
        final *= clock.final_tokens / scored
        kept = max(1, min(val - 1, clock.final_tokens) // mc.block_size) * mc.block_size  # as pass_windows scores
        fitted = f" ({kept:,} of its {val - 1:,} characters, to fit the budget)"  # each character after the first
    clock.reserve = final + (tc.sample_tokens / SAMPLE_RATE if tc.sample_tokens else 0.0) + 0.5
    left = tc.time_budget - clock.budget_seconds() - clock.reserve
    resumed = clock.resumed_at is not None
    training = (f"~{format_duration(left)} of training with its estimates and checkpoints"
                if left > 0 else "nothing left to train" if resumed
                else "nothing left to train (one step is trained, so the run has a checkpoint)")
    gone = f"{format_duration(clock.startup_seconds())} gone to start-up"
    if resumed:  # the earlier commands' seconds are the run's, not this start-up's
        gone = f"{format_duration(clock.spent_budget)} used by the run before this resume, {gone}"
        if left <= 0 and not clock.ended:  # a finished run only redoes its report
            raise ConfigError(
                f"--time-budget {format_duration(tc.time_budget)} leaves nothing to train: {gone}, "
                f"~{format_duration(clock.reserve)} for the final pass; resume with a larger one: chargpt train "
                f"--resume {t.writer.where} --time-budget "
                f"{budget_that_trains(clock.spent_budget, clock.startup_seconds(), clock.reserve)}")
    t.writer.say(f"budget: {format_duration(tc.time_budget)} of wall clock from the "
                 f"{'run' if resumed else 'command'}'s start: {gone}, {training}, "
                 f"~{format_duration(clock.reserve)} for the final pass over val{fitted} and the sample")


def wrapped(t: Training) -> torch.nn.Module:
    """What the loop calls: the model, compiled when chosen, in DDP under torchrun."""
    if t.compiled and t.device.type == "cpu" and not t.dist.enabled and compiled_before(t.compiled) is False:
        with Working("compile: compiling the model for this machine", expected_compile(t, cold=True) + "; once: "
                     "later runs of this shape load it from the cache", t.writer.say, done="compile",
                     counter=t.writer.shows_progress and t.dist.is_main):
            t.compile_run.helper_seconds = compile_in_helper(t.config.model, t.batches.micro_batch, t.precision,
                                                             t.compiled)
    fwd = compile_model(t.model, t.device) if t.compiled else t.model
    if t.dist.enabled:
        return DDP(fwd, device_ids=[t.device.index] if t.device.type == "cuda" else None)
    return fwd


# ------------------------------------------------------------------------------------------------- loop
def loop(t: Training) -> None:
    """Train until the step count or the time budget is reached; evaluate, checkpoint and log on the way."""
    tc, clock = t.config.train, t.clock
    clock.start_training(t.step)  # first: the bar's seconds, and its eta, count from here
    bar = Progress(tc.max_steps, tc.time_budget, step=t.step, seconds=clock.shown(), done=clock.fraction_done(t.step),
                   enabled=t.dist.is_main and t.writer.shows_progress, notebook=t.writer.notebook)
    loss, grad_norm = math.nan, math.nan  # the latest step's training loss and gradient norm
    with StopSignals() as stop, closing_bar(bar, lambda: (t.step, clock.shown(), clock.fraction_done(t.step))):
        t.model.train()
        while True:
            mark = clock.mark(t.step, stop.received)
            if mark.evaluate:
                with clock.paused_training():
                    evaluate_and_log(t, bar, mark)
            early = t.writer.stopped_early is not None  # a sweep's pruner stopped the run at this estimate
            if mark.save or early:
                with clock.paused_training():
                    save_checkpoint(t, finished=mark.finished)
            if mark.finished or early:
                break
            if mark.signal:
                stop_here(t, mark.signal, loss, grad_norm)
            set_lr(t.optimizers, lr_multiplier(clock.fraction_done(t.step), tc))
            if t.compile_run and t.compile_run.first_step_seconds is None:  # compiles in it, or loads the graphs
                with Working(*first_compiled_step(t), bar.note, counter=False, done="compile: first step"):
                    loss, grad_norm = train_step(t)
                t.compile_run.first_step_seconds = clock.train_seconds() - clock.spent
            else:
                loss, grad_norm = train_step(t)
            t.step += 1
            if tc.ema and mark.done >= tc.ema_from:
                average_weights(t)
            if t.step % tc.log_interval == 0:
                record = metrics_record(t, loss=loss, grad_norm=grad_norm)
                bar.update(t.step, loss, record["tokens_per_sec"], clock.shown(), clock.fraction_done(t.step))
                t.writer.log(record)


@contextmanager
def closing_bar(bar: Progress, where: Callable[[], tuple[int, float, float]]):
    """Close the progress bar however the loop ends (finished, stopped by a signal, failed), showing where it
    ended, so that a message printed next starts on a line of its own."""
    try:
        yield bar
    finally:
        bar.close(*where())


def train_step(t: Training) -> tuple[float, float]:
    """One optimizer step over `accum` micro-batches; return the last micro-batch's loss and the gradient norm."""
    tc, accum = t.config.train, t.batches.accum
    for micro in range(accum):
        x, y = t.batches.get(t.device)
        sync = t.ddp_model is None or micro == accum - 1
        with t.ddp_model.no_sync() if not sync else nullcontext():
            loss = forward_backward(t.fwd, x, y, t.autocast, accum)
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise t.writer.non_finite(f"loss became {loss_value} at step {t.step}")
    grad_norm = torch.nn.utils.clip_grad_norm_(t.model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
    try:
        for opt in t.optimizers:
            opt.step()
    except RuntimeError as e:  # torch refuses an update too large for float32
        if "overflow" not in str(e):
            raise
        raise NonFiniteLoss(f"the update at step {t.step} overflowed float32; {t.writer.kept()}. "
                            f"Lower --lr or --muon-lr") from None
    for opt in t.optimizers:
        opt.zero_grad(set_to_none=True)
    return loss_value, float(grad_norm)


def forward_backward(fwd, x: torch.Tensor, y: torch.Tensor, autocast, accum: int = 1) -> torch.Tensor:
    """One micro-batch through `fwd` and back, its gradients scaled for `accum` micro-batches; returns its loss."""
    with autocast():
        _, loss = fwd(x, y)
    (loss / accum).backward()
    return loss


def average_weights(t: Training) -> None:
    """Fold the weights after this step into their average (--ema), which begins at this step if none has."""
    if t.ema is None:
        t.ema = Average.of(t.model, t.step)
    else:
        t.ema.update(t.model, t.config.train.ema)


def metrics_record(t: Training, seconds: float | None = None, **figures: float) -> dict:
    """The metrics record at this step of `figures`, with training `seconds` (now, unless given)."""
    seconds = t.clock.train_seconds() if seconds is None else seconds
    return records.metrics_record(t.step, figures, t.lr(), t.tokens_per_step, seconds)


# ------------------------------------------------------------------------------------ the named points
def evaluate_and_log(t: Training, bar: Progress, mark: Mark) -> None:
    """Estimate train/val loss in the batches or seconds the `mark` gives, log it, redraw loss.png when the clock
    affords it (always at the last) and keep best.pt at the lowest val estimate so far."""
    tc, writer, seconds, last = t.config.train, t.writer, t.clock.train_seconds(), mark.finished
    with t.clock.estimating():
        # Eager model: compiling an eval-mode graph would cost a second compile outside the time budget.
        losses = estimate_loss(t.model, t.batches.splits, mark.batches, t.batches.micro_batch,
                               t.config.model.block_size, t.device,
                               torch.Generator().manual_seed((tc.seed + 10_000) % 2 ** 64), t.autocast,
                               seconds=mark.seconds, min_batches=MIN_BATCHES)
    writer.last_eval = {"train_loss": losses["train"], "val_loss": losses["val"]}
    if not all(math.isfinite(v) for v in writer.last_eval.values()):
        raise writer.non_finite(f"the estimated loss became train {losses['train']}, val {losses['val']} "
                                f"at step {t.step}")
    writer.log(metrics_record(t, seconds, **writer.last_eval))
    if t.clock.plot_due(t.step, last):
        with t.clock.drawing():
            writer.redraw_plot()
    if writer.judge is not None and not last:
        writer.stopped_early = writer.judge.judge(t.step, t.clock.fraction_done(t.step), losses["val"])
    if losses["val"] < writer.best_val and t.step > 0:
        writer.best_val = losses["val"]
        save_checkpoint(t, writer.run.best if writer.run is not None else None)
    bar.note(f"step {t.step:,}: train {losses['train']:.4f}, val {losses['val']:.4f}")  # as the bar shows it


def save_checkpoint(t: Training, path: Path | None = None, model: torch.nn.Module | None = None,
                    finished: bool = False) -> None:
    """The training state at this step into `path` (ckpt.pt by default), with `model`'s weights (the model's);
    `finished`: saved at the end of the run's steps or budget (a resume with the same budget only reports)."""
    model = model or t.model
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):  # never replace a good one with NaNs
        raise t.writer.non_finite(f"the weights became non-finite by step {t.step}")
    states = distributed.all_gather_tensor(t.batches.gen.get_state(), t.dist)
    if not t.writer.writes:
        return
    extra = {"train_seconds": t.clock.train_seconds(), "budget_seconds": t.clock.budget_seconds(),
             "budget_origin": t.clock.budget_origin, "preset": t.writer.preset, "data_dir": t.writer.data_dir,
             "best_val_loss": t.writer.best_val, "init_from": t.writer.origin, "finished": finished}
    if t.ema is not None and model is t.model:  # the average so far, for a resume to go on with
        extra |= t.ema.saved()
    elif t.ema is not None and model is t.ema.model:
        extra |= {"averaged_from_step": t.ema.start}
    t.writer.save_checkpoint(path, model=model, optimizers=t.optimizers, step=t.step, config=t.config,
                             rng=rng_state(t.batches.gen) | {"batch_per_rank": states}, extra=extra)


def stop_here(t: Training, signum: int, loss: float, grad_norm: float) -> None:
    """A signal asked to stop: save a checkpoint, log where it stopped (for `chargpt runs`) and say how to resume."""
    save_checkpoint(t)
    if t.step != t.clock.resumed_at and t.step % t.config.train.log_interval:
        t.writer.log(metrics_record(t, loss=loss, grad_norm=grad_norm))
    raise TrainingInterrupted(f"stopped at step {t.step} by {signal_name(signum)}; checkpoint saved; "
                              f"resume with: chargpt train --resume {t.writer.where}", signum)


# ---------------------------------------------------------------------------------------------- compiling
def first_compiled_step(t: Training) -> tuple[str, str]:
    """What the first step of a compiled model does (compile it, or load what a helper or an earlier run compiled),
    and how long it is expected to take."""
    if compiled_before(t.compiled) or t.compile_run.helper_seconds:
        return "compile: the first step loads the compiled model from the cache", expected_compile(t, cold=False)
    return "compile: the first step compiles the model", expected_compile(t, cold=True)


def expected_compile(t: Training, cold: bool) -> str:
    """How long compiling this model is expected to take here: what earlier runs measured, else typical figures."""
    figures = compile_figures(t.config, t.device, t.precision)
    seconds = figures.cold_seconds if cold else figures.warm_seconds
    if seconds is not None:
        return f"~{format_duration(seconds)}, as measured here before"
    if not cold:
        return "a few seconds"
    return "typically 30 s to 2 min on a CPU" if t.device.type == "cpu" else "typically under a minute"


def compile_in_helper(mc: ModelConfig, micro_batch: int, precision: str, key: str) -> float:
    """Compile the training step of a model never compiled here in a helper process, which leaves it in the
    compile cache for the training process (and every later run) to load: compiled in the training process, the
    compiler would stay loaded, and in memory, for the whole run. Should the helper fail, the training process
    compiles. Returns the seconds the helper took."""
    from ..runtime.launch import run_helper

    spec = {"model": dataclasses.asdict(mc), "micro_batch": micro_batch, "precision": precision,
            "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    try:
        compiled = run_helper("chargpt.training.loop.compile_training_step", json.dumps(spec)).returncode == 0
    except OSError:
        return time.perf_counter() - t0
    if compiled:
        mark_compiled(key)
    return time.perf_counter() - t0


def teach_compile(t: Training, seconds: float) -> None:
    """Remember, for the next runs' `compile_choice`, what compiling cost this run (main process) and the speed
    of its compiled steps (over `SPEED_STEPS` or more); `seconds`: its training seconds so far."""
    if t.compile_run is None or not t.dist.is_main:
        return
    steps = t.step - (t.clock.resumed_at or 0)
    cost, speed = t.compile_run.figures(steps, seconds - t.clock.spent, t.tokens_per_step)
    record_compile(t.config, t.device, t.precision, cold=t.compile_run.cold, seconds=cost,
                   tokens_per_sec=speed if steps >= SPEED_STEPS else None)


def compile_training_step(spec_json: str) -> None:
    """In the helper of `compile_in_helper`: the model `spec_json` describes, compiled and run through one training
    micro-batch as `train_step` runs it (zeros: only the shapes matter), so that its graphs land in the cache."""
    spec = json.loads(spec_json)
    torch.set_num_threads(spec["threads"])
    prepare_compile()
    mc = ModelConfig(**spec["model"])
    x = torch.zeros((spec["micro_batch"], mc.block_size), dtype=torch.long)
    cpu = torch.device("cpu")
    forward_backward(compile_model(build_model(mc), cpu), x, torch.zeros_like(x), autocast_for(cpu, spec["precision"]))
