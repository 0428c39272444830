"""The training loop: flat and visible. Evaluation, checkpoints, logging and stopping are small calls from it."""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import resource
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..runs import checkpoint
from ..runtime import distributed
from ..model.attention import layers_by_heads
from ..data.batch import get_batch
from ..config import Config, ModelConfig
from ..data.dataset import Dataset
from .budget import EVAL_SHARE, FINAL_MARGIN, FINAL_SHARE, SAMPLE_RATE, SPEED_STEPS, final_pass_seconds, record_speed
from ..runtime.device import (COLD_COMPILE_BUDGET, autocast_for, compile_key, compile_model, compile_unavailable_reason,
                     compiled_before, configure_backends, keep_freed_memory_for_reuse, mark_compiled, prepare_compile,
                     resolve_device, resolve_dtype, set_threads)
from ..model.engine import Engine
from ..errors import NonFiniteLoss, TrainingInterrupted
from .evaluate import (EvaluationInterrupted, PassResult, bigram_optimum, bits_per_char, describe_pass, estimate_loss,
                       evaluate_split)
from ..model.gpt import build_model
from .optim import Muon, lr_multiplier, make_optimizers, set_lr
from ..runs.plotting import refresh_run_plot
from ..runtime.progress import EvalProgress, Progress, format_duration
from ..runs.provenance import provenance
from ..runs.rundir import BEST, CKPT, EMA, RunDir
from ..runtime.signals import StopSignals
from ..track.tracker import NullTracker, Tracker, finish_tracking


BUDGET_SLACK = 1.05  # a time budget's final figure may come this much past it
PLOT_SHARE = 0.02  # loss.png is redrawn at an evaluation while redrawing it has taken at most this share of the run
PLOT_GUESS = 1.0  # seconds a drawing of loss.png takes (a helper process), until one is timed


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (the kernel's high-water mark)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


@contextmanager
def closing_bar(bar: Progress, where: Callable[[], tuple[int, float]]):
    """Close the progress bar however the loop ends (finished, stopped by a signal, failed), showing where it
    ended, so that a message printed next starts on a line of its own."""
    try:
        yield bar
    finally:
        bar.close(*where())


def rng_state(gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "batch": gen.get_state(), "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0]}


def restore_rng(state: dict, gen: torch.Generator, batch_state: torch.Tensor | None = None) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(batch_state if batch_state is not None else state["batch"])
    if state.get("python") is not None:  # checkpoints of tests and older versions may lack it
        random.setstate((state["python_version"], tuple(state["python"]), None))


@dataclass
class Training:
    """One training process: what `setup` builds, `loop` advances and `finish` summarizes."""

    config: Config
    data: Dataset
    run: RunDir | None
    preset: str | None
    data_dir: str | None
    say: Callable[[str], None]
    tracker: Tracker
    device: torch.device
    dist: distributed.DistInfo
    precision: str
    autocast: Callable
    micro_batch: int
    accum: int
    gen: torch.Generator
    model: torch.nn.Module
    optimizers: list
    fwd: torch.nn.Module  # what the loop calls: the model, compiled and/or wrapped in DDP
    ddp_model: DDP | None
    splits: dict
    origin: dict | None = None  # the run this one was fine-tuned from (--init-from)
    step: int = 0
    spent: float = 0.0  # training seconds of the run before this process (a resume)
    spent_budget: float = 0.0  # seconds of its time budget the run's earlier processes used (a resume)
    clock_start: float = field(default_factory=time.perf_counter)  # when the budget's clock started: the command's start
    reserve: float = 0.0  # seconds of the budget kept for the final pass over val and the sample
    budget_origin: float | None = None  # seconds of the budget gone when training began (start-up, compiling)
    final_tokens: int = 0  # characters of val the final pass scores (eval_tokens, or fewer to fit a short budget)
    best_val: float = math.inf
    resumed_at: int | None = None
    last_eval: dict = field(default_factory=dict)
    t_start: float = field(default_factory=time.perf_counter)
    paused: float = 0.0  # evaluation time does not count against the budget
    notebook: bool = False  # a tqdm.auto progress bar (a widget in Jupyter) even where stdout is no terminal
    shows_progress: bool = True  # False: quiet (the library's verbose=False), no bar and no lines
    compiled: str | None = None  # compile_key of the compiled model, None when training eagerly
    model_choice: str | None = None  # the size the time budget chose (no preset given)
    plot_seconds: float = 0.0  # spent redrawing loss.png in this process
    plot_cost: float = PLOT_GUESS  # the latest drawing's seconds
    eval_seconds: float = 0.0  # spent estimating the loss in this process
    eval_cost: float = 0.0  # the latest estimate's seconds
    marked_latest: bool = False  # `latest` points at this run since its first checkpoint here
    ema: torch.nn.Module | None = None  # the average of the weights (--ema), from step `ema_start` on
    ema_start: int = 0
    ema_steps: int = 0  # steps averaged so far

    @property
    def tokens_per_step(self) -> int:
        return self.micro_batch * self.accum * self.dist.world_size * self.config.model.block_size

    def train_seconds(self) -> float:
        return self.spent + time.perf_counter() - self.t_start - self.paused

    def budget_seconds(self) -> float:
        """Seconds of the time budget used: the user's wall clock since the command started (start-up, compiling,
        evaluations and checkpoints included), plus what the run's earlier processes used."""
        return self.spent_budget + time.perf_counter() - self.clock_start

    def budget_trained(self) -> float:
        """Seconds of the budget since training began: what the schedule, the estimates and the average count."""
        return self.budget_seconds() - (self.budget_origin or 0.0)

    def closing_seconds(self) -> float:
        """The work after the last step, before the final pass: the last estimate and the last drawing of loss.png."""
        return self.eval_cost + (self.plot_cost if self.dist.is_main and self.run is not None else 0.0)

    def fraction_done(self) -> float:
        """Of the steps, or of the budget's training part: from when training began to the budget less the final
        pass kept back and the closing estimate (start-up and compiling must not squeeze the schedule)."""
        budget = self.config.train.time_budget
        if budget:
            part = budget - self.reserve - self.closing_seconds() - (self.budget_origin or 0.0)
            return self.budget_trained() / max(part, 1e-9)
        return self.step / self.config.train.max_steps

    def clock(self) -> float:
        """The seconds a progress bar shows: of the budget when there is one, else of training."""
        return self.budget_seconds() if self.config.train.time_budget else self.train_seconds()

    def evaluate(self) -> dict:
        tc = self.config.train
        t0 = time.perf_counter()
        # Eager model: compiling an eval-mode graph would cost a second compile outside the time budget.
        losses = estimate_loss(self.model, self.splits, tc.eval_iters, self.micro_batch, self.config.model.block_size,
                               self.device, torch.Generator().manual_seed((tc.seed + 10_000) % 2 ** 64),
                               self.autocast)
        self.eval_cost = time.perf_counter() - t0
        self.eval_seconds += self.eval_cost
        return {"train_loss": losses["train"], "val_loss": losses["val"]}

    def record(self, seconds_so_far: float | None = None, **figures: float) -> dict:
        """The one metrics record at `step`: `figures` (the training loss and gradient norm, or an evaluation's
        losses) with the learning rate, tokens seen and training time (now, unless given). metrics.jsonl and the
        tracker get it whole."""
        seconds_so_far = self.train_seconds() if seconds_so_far is None else seconds_so_far
        return {"step": self.step, **figures, "lr": self.optimizers[0].param_groups[0]["lr"],
                "tokens_seen": self.step * self.tokens_per_step, "train_seconds": round(seconds_so_far, 3),
                "tokens_per_sec": round(self.step * self.tokens_per_step / max(seconds_so_far, 1e-9), 1)}

    def log(self, record: dict) -> None:
        if self.dist.is_main and self.run is not None:
            self.run.log_metrics(record)
            self.tracker.log(record, record["step"])

    def kept(self) -> str:
        has_ckpt = self.run is not None and self.run.ckpt.is_file()
        return f"the last good checkpoint ({self.run.ckpt}) is kept" if has_ckpt else "no checkpoint was written"

    def non_finite(self, what: str) -> NonFiniteLoss:
        return NonFiniteLoss(f"{what}; {self.kept()}. Lower --lr or --muon-lr, or set --grad-clip")

    def save_checkpoint(self, path: Path | None = None, model: torch.nn.Module | None = None) -> None:
        """The training state at this step into `path` (ckpt.pt by default), with `model`'s weights (the model's)."""
        model = model or self.model
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):  # never replace a good one with NaNs
            raise self.non_finite(f"the weights became non-finite by step {self.step}")
        states = distributed.all_gather_tensor(self.gen.get_state(), self.dist)
        if not self.dist.is_main or self.run is None:
            return
        rng = rng_state(self.gen) | {"batch_per_rank": states}
        extra = {"train_seconds": self.train_seconds(), "budget_seconds": self.budget_seconds(),
                 "budget_origin": self.budget_origin,
                 "preset": self.preset, "data_dir": self.data_dir, "best_val_loss": self.best_val, "init_from": self.origin}
        if self.ema is not None and model is self.model:  # the average so far, for a resume to go on with
            extra |= {"ema": {k: v.detach().cpu() for k, v in self.ema.state_dict().items()},
                      "ema_start": self.ema_start, "ema_steps": self.ema_steps}
        elif model is self.ema:
            extra |= {"averaged_from_step": self.ema_start}
        checkpoint.save(path or self.run.ckpt, model=model, optimizers=self.optimizers, step=self.step,
                        config=self.config, tokenizer=self.data.tokenizer, dataset_hash=self.data.content_hash, rng=rng,
                        extra=extra)
        if path is None and not self.marked_latest:
            # `latest` is the newest run with a checkpoint, from its first one: resuming, sampling or evaluating
            # `latest` while this run trains, or after it was stopped, means this run
            self.marked_latest = True
            note = self.run.mark_latest()
            if note:
                print(f"warning: {note}", file=sys.stderr)


def train(config: Config, data: Dataset, run: RunDir | None, *, preset: str | None = None,
          resume_state: dict | None = None, init_from: dict | None = None, tracker=None, data_dir: str | None = None,
          echo: Callable[[str], None] | None = print, clock_start: float | None = None) -> dict:
    """Train `config` on `data`, writing into `run` (rank 0 only); return the run's summary. `echo` says what
    happens (None: nothing is shown, not even progress).

    `init_from` fine-tunes: {"state": a checkpoint's contents, "origin": what to record of it} starts from that
    checkpoint's weights (characters of `data` it does not know get fresh rows) with a fresh optimizer."""
    try:
        t = setup(config, data, run, preset=preset, resume_state=resume_state, init_from=init_from, tracker=tracker,
                  data_dir=data_dir, echo=echo, clock_start=clock_start)
        loop(t)
        return finish(t)
    finally:
        if run is not None:
            run.unlock()


def finished_already(run: RunDir, state: dict, config: Config) -> str | None:
    """Why resuming `run` from its checkpoint `state` as `config` has nothing to do, if so: it reached its step
    count or time budget and its final evaluation is done (one cut short is redone by resuming)."""
    tc, step = config.train, state["step"]
    spent = state["extra"].get("train_seconds", 0.0)
    if not (spent >= tc.time_budget if tc.time_budget else step >= tc.max_steps):
        return None
    summary = run.summary()
    if summary.get("steps") != step or summary.get("val_loss_full") is None or summary.get("eval_cut_short"):
        return None
    if tc.time_budget:
        what = f"it trained {format_duration(spent)} of its --time-budget {format_duration(tc.time_budget)}"
        flag, more = "--time-budget", f"{math.ceil(2 * tc.time_budget)}s"
    else:
        what, flag, more = f"it reached step {step:,} of --max-steps {tc.max_steps:,}", "--max-steps", 2 * tc.max_steps
    return (f"{run.path} is finished: {what}, and its final evaluation is done; to train it further, resume with a "
            f"larger {flag}: chargpt train --resume {run.path} {flag} {more}")


def setup(config: Config, data: Dataset, run: RunDir | None, *, preset: str | None = None,
          resume_state: dict | None = None, init_from: dict | None = None, tracker=None, data_dir: str | None = None,
          echo: Callable[[str], None] | None = print, clock_start: float | None = None) -> Training:
    """Device, process group, seeds, model and optimizers (restored from `resume_state` when given).

    `clock_start`: when a time budget's clock started (`time.perf_counter()`; the command's start), else now."""
    clock_start = time.perf_counter() if clock_start is None else clock_start
    mc, tc = config.model, config.train
    device = resolve_device(tc.device)
    dist_info = distributed.init(device.type)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    main = dist_info.is_main
    say = echo if main and echo is not None else (lambda *_: None)
    configure_backends(device)
    keep_freed_memory_for_reuse(device)
    set_threads(tc.threads, dist_info.enabled)
    precision = resolve_dtype(device, tc.dtype)  # bfloat16 autocast where it is native, else float32
    micro_batch, accum = distributed.split_batch(tc.batch_size, tc.grad_accum, dist_info.world_size)

    torch.manual_seed(tc.seed)
    random.seed(tc.seed)
    gen = torch.Generator().manual_seed((tc.seed + dist_info.rank) % 2 ** 64)  # each rank draws its own batches
    model = build_model(mc)
    origin = None
    if init_from is not None:
        origin = init_from["origin"] | checkpoint.transfer_weights(init_from["state"], model, data.tokenizer)
        if main and origin["shared_chars"] == 0:
            print(f"warning: {origin['ckpt']} knows none of this dataset's {data.tokenizer.vocab_size} characters: "
                  f"only its inner layers carry over, every embedding and head row starts fresh", file=sys.stderr)
    elif resume_state is not None:
        origin = resume_state["extra"].get("init_from")
    model = model.to(device)
    optimizers = make_optimizers(model, tc, device.type, bf16=precision == "bfloat16")
    step, spent, spent_budget, budget_origin, best_val = 0, 0.0, 0.0, None, math.inf
    ema, ema_start, ema_steps = None, 0, 0
    if resume_state is not None:
        step = checkpoint.restore(resume_state, config, run.path if run is not None else "the checkpoint",
                                  data=data, model=model, optimizers=optimizers)
        for opt in optimizers:  # the restored groups carry the saved peaks: an --lr given on resume wins
            for g in opt.param_groups:
                g["peak_lr"] = tc.muon_lr if isinstance(opt, Muon) else tc.lr
        spent = resume_state["extra"].get("train_seconds", 0.0)
        spent_budget = resume_state["extra"].get("budget_seconds", spent)  # runs saved before budgets were wall clock
        budget_origin = resume_state["extra"].get("budget_origin") or 0.0
        best_val = resume_state["extra"].get("best_val_loss") or math.inf
        if tc.ema and isinstance(resume_state["extra"].get("ema"), dict):
            ema = build_model(mc)
            ema.load_state_dict(resume_state["extra"]["ema"])
            ema = ema.to(device).requires_grad_(False)
            ema_start, ema_steps = int(resume_state["extra"]["ema_start"]), int(resume_state["extra"]["ema_steps"])
        states = resume_state["rng"].get("batch_per_rank")
        mine = states[dist_info.rank] if states and len(states) == dist_info.world_size else None
        restore_rng(resume_state["rng"], gen, mine)
        if mine is None and dist_info.enabled:  # another number of processes: keep the ranks' batches apart
            gen.manual_seed((tc.seed + dist_info.rank + 1_000_003 * step) % 2 ** 64)
    if main and run is not None:
        run.write_config(config.to_dict() | {"preset": preset, "data_dir": data_dir,
                                             "dataset": {"name": data.meta.get("name"), "hash": data.content_hash}}
                         | ({"init_from": origin} if origin else {}))
        if resume_state is not None:
            run.recover(step)
    params = model.num_params()
    tokens_per_step = micro_batch * accum * dist_info.world_size * mc.block_size
    shape = "" if mc.model == "bigram" else f"{layers_by_heads(mc.n_layer, mc.n_head)} x {mc.n_embd} wide, "
    say(f"model: {mc.model}, {shape}context {mc.block_size}, {params:,} parameters ({params / 1e6:.2f}M) "
        f"on {device} in {precision}"
        + (f", {dist_info.world_size} processes of {torch.get_num_threads()} threads" if dist_info.enabled else ""))
    length = f"a {format_duration(tc.time_budget)} budget" if tc.time_budget else f"{tc.max_steps:,} steps"
    say(f"run: {length}, batch {tokens_per_step:,} tokens per step ({dist_info.world_size} x {accum} x {micro_batch} "
        f"x {mc.block_size}), "
        + (f"muon lr {tc.muon_lr:g} (adamw {tc.lr:g})" if tc.optimizer == "muon" else f"adamw lr {tc.lr:g}")
        + f", {tc.schedule} schedule")

    no_compile = compile_unavailable_reason(device) if tc.compile else None
    if no_compile:
        say(f"warning: {no_compile}; training without it")
    compiled = None  # what torch.compile builds here, when it does
    if tc.compile and not no_compile:
        prepare_compile()
        threads = [torch.get_num_threads()] if device.type == "cpu" else []  # inductor's CPU kernels specialize on it
        compiled = compile_key(device.type, precision, dataclasses.asdict(mc), micro_batch, dist_info.world_size,
                               *threads)
        if tc.time_budget and tc.time_budget < COLD_COMPILE_BUDGET and compiled_before(compiled) is False:
            say(f"compile: skipped in this {format_duration(tc.time_budget)} budget (the first compile of this model "
                f"takes 10-40 s); a run of {format_duration(COLD_COMPILE_BUDGET)} or more, or one without a budget, "
                f"compiles it for the runs after it")
            compiled = None
    reserve, final_tokens, fitted = 0.0, tc.eval_tokens, ""
    if tc.time_budget:
        # the final pass runs eagerly in float32 (twice with --ema: the final model and the average); its time is
        # measured on one batch now and kept back from training
        final = FINAL_MARGIN * (2 if tc.ema else 1) * final_pass_seconds(model, len(data.val), mc.block_size, device,
                                                                         tc.eval_tokens) / dist_info.world_size
        if final > FINAL_SHARE * tc.time_budget and tc.eval_tokens:  # too long for the budget: an even subset
            # (unless --eval-tokens all asked for the exact pass, whatever it costs)
            scored = min(tc.eval_tokens, len(data.val))
            final_tokens = max(mc.block_size, int(scored * FINAL_SHARE * tc.time_budget / final))
            final *= final_tokens / scored
            fitted = f" ({final_tokens:,} of its {len(data.val):,} characters, to fit the budget)"
        reserve = final + (tc.sample_tokens / SAMPLE_RATE if tc.sample_tokens else 0.0) + 0.5
        gone = spent_budget + time.perf_counter() - clock_start
        left = tc.time_budget - gone - reserve
        training = (f"~{format_duration(left)} of training with its estimates and checkpoints"
                    f"{' (compiling first)' if compiled else ''}" if left > 0 else
                    "nothing left to train (one step is trained, so the run has a checkpoint)")
        say(f"budget: {format_duration(tc.time_budget)} of wall clock from the command's start: "
            f"{format_duration(gone)} gone to start-up, {training}, "
            f"~{format_duration(reserve)} for the final pass over val{fitted} and the sample")
    if compiled and device.type == "cpu" and not dist_info.enabled and compiled_before(compiled) is False:
        compile_in_helper(mc, micro_batch, precision, compiled)
    train_model = compile_model(model, device) if compiled else model
    ddp_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None) if dist_info.enabled else None
    splits = {"train": data.train, "val": data.val}
    data.check_block_size(mc.block_size)
    t = Training(config=config, data=data, run=run, preset=preset, data_dir=data_dir, say=say,
                 tracker=tracker if (tracker is not None and main) else NullTracker(), device=device,
                 dist=dist_info, precision=precision, autocast=autocast_for(device, precision),
                 micro_batch=micro_batch, accum=accum, gen=gen, model=model, optimizers=optimizers,
                 fwd=ddp_model or train_model, ddp_model=ddp_model, splits=splits, origin=origin, step=step,
                 spent=spent, spent_budget=spent_budget, budget_origin=budget_origin, clock_start=clock_start,
                 reserve=reserve, final_tokens=final_tokens, best_val=best_val,
                 resumed_at=step if resume_state is not None else None, compiled=compiled, shows_progress=echo is not None, ema=ema, ema_start=ema_start, ema_steps=ema_steps)
    if resume_state is not None and run is not None and (spent >= tc.time_budget if tc.time_budget
                                                         else step >= tc.max_steps):
        # resuming a finished run: its last evaluation is already logged; only the final report is redone
        t.last_eval = next(({"train_loss": r["train_loss"], "val_loss": r["val_loss"]} for r in reversed(run.metrics())
                            if r.get("step") == step and "val_loss" in r), {})
    return t


def loop(t: Training) -> None:
    """Train until the step count or the time budget is reached; evaluate, checkpoint and log on the way."""
    tc, budget = t.config.train, t.config.train.time_budget
    progress_bar = Progress(tc.max_steps, budget, step=t.step, seconds=t.clock(),
                            enabled=t.dist.is_main and t.shows_progress, notebook=t.notebook)
    ckpt_every = tc.ckpt_interval or tc.eval_interval
    if t.budget_origin is None:
        t.budget_origin = t.budget_seconds()
    # A time budget is evaluated at evenly spaced fractions of it (steps per second vary with the model), at those
    # the estimates can afford: a short budget would otherwise spend more time estimating than training.
    next_eval_mark = math.floor(t.fraction_done() * tc.budget_evals) + 1 if budget else 0
    t.t_start, t.paused = time.perf_counter(), 0.0
    loss_value = grad_norm = math.nan  # the latest step's training loss and gradient norm
    with StopSignals() as stop, closing_bar(progress_bar, lambda: (t.step, t.clock())):
        t.model.train()
        while True:
            done_frac, stop_flag, evals_next, trained = distributed.all_max(
                [t.fraction_done(), float(stop.received or 0), t.eval_seconds + t.eval_cost, t.budget_trained()],
                t.dist)
            finished = done_frac >= 1.0 and (t.step > 0 or t.resumed_at is not None)  # a new run trains a step
            if budget:
                mark = done_frac * tc.budget_evals >= next_eval_mark
                if mark:
                    next_eval_mark = math.floor(done_frac * tc.budget_evals) + 1
                due = (mark and evals_next <= EVAL_SHARE * trained) or (t.step == 0 and t.step != t.resumed_at)
            else:
                due = t.step % tc.eval_interval == 0 and t.step != t.resumed_at
            if (due or finished) and not (finished and t.step == t.resumed_at and t.last_eval):
                paused(t, lambda: evaluate_and_log(t, progress_bar, finished))
            if t.step > 0 and t.step != t.resumed_at and (t.step % ckpt_every == 0 or finished
                                                          or (due and budget and not tc.ckpt_interval)):
                paused(t, t.save_checkpoint)
            if finished:
                break
            if stop_flag:
                stop_here(t, int(stop_flag), loss_value, grad_norm)
            set_lr(t.optimizers, lr_multiplier(t.fraction_done(), tc))
            loss_value, grad_norm = train_step(t)
            t.step += 1
            if tc.ema and done_frac >= tc.ema_from:
                average_weights(t)
            if t.step % tc.log_interval == 0:
                record = t.record(loss=loss_value, grad_norm=grad_norm)
                progress_bar.update(t.step, loss_value, record["tokens_per_sec"], t.clock())
                t.log(record)


def paused(t: Training, work: Callable[[], None]) -> None:
    """Do `work` off the training clock (tokens/s counts training only; the budget's wall clock counts it all)."""
    t0 = time.perf_counter()
    work()
    t.paused += time.perf_counter() - t0


def evaluate_and_log(t: Training, progress_bar: Progress, last: bool = False) -> None:
    """Estimate train/val loss, log it, redraw loss.png (at the first and the `last` evaluation, and at others while
    redrawing has cost at most `PLOT_SHARE` of the run; a time budget too short to afford one drawing at the first
    only at the last) and keep best.pt at the lowest val estimate so far."""
    seconds_so_far = t.train_seconds()
    t.last_eval = t.evaluate()
    if not all(math.isfinite(v) for v in t.last_eval.values()):
        raise t.non_finite(f"the estimated loss became train {t.last_eval['train_loss']}, "
                           f"val {t.last_eval['val_loss']} at step {t.step}")
    t.log(t.record(seconds_so_far, **t.last_eval))
    budget = t.config.train.time_budget
    first = t.step == 0 and not (budget and t.plot_cost > PLOT_SHARE * budget)  # unless the budget is too short
    if t.dist.is_main and t.run is not None and (last or first or (
            t.step > 0 and t.plot_seconds + t.plot_cost <= PLOT_SHARE * t.clock())):
        t0 = time.perf_counter()
        refresh_run_plot(t.run.path)
        t.plot_cost = time.perf_counter() - t0
        t.plot_seconds += t.plot_cost
    if t.last_eval["val_loss"] < t.best_val and t.step > 0:
        t.best_val = t.last_eval["val_loss"]
        t.save_checkpoint(t.run.best if t.run is not None else None)
    progress_bar.note(f"step {t.step}: train {t.last_eval['train_loss']:.4f}, val {t.last_eval['val_loss']:.4f}")


def stop_here(t: Training, signum: int, loss_value: float, grad_norm: float) -> None:
    """A signal asked to stop: save a checkpoint, log where it stopped (for `chargpt runs`) and say how to resume."""
    t.save_checkpoint()
    if t.step != t.resumed_at and t.step % t.config.train.log_interval:
        t.log(t.record(loss=loss_value, grad_norm=grad_norm))
    where = t.run.path if t.run is not None else "the run directory"
    raise TrainingInterrupted(f"stopped at step {t.step} by {signal.Signals(signum).name}; checkpoint saved; "
                              f"resume with: chargpt train --resume {where}", signum)


def train_step(t: Training) -> tuple[float, float]:
    """One optimizer step over `accum` micro-batches; return the last micro-batch's loss and the gradient norm."""
    tc = t.config.train
    for micro in range(t.accum):
        x, y = get_batch(t.splits["train"], t.micro_batch, t.config.model.block_size, t.device, t.gen)
        sync = t.ddp_model is None or micro == t.accum - 1
        with t.ddp_model.no_sync() if not sync else nullcontext():
            loss = forward_backward(t.fwd, x, y, t.autocast, t.accum)
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise t.non_finite(f"loss became {loss_value} at step {t.step}")
    grad_norm = torch.nn.utils.clip_grad_norm_(t.model.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
    try:
        for opt in t.optimizers:
            opt.step()
    except RuntimeError as e:  # torch refuses an update too large for float32
        if "overflow" not in str(e):
            raise
        raise NonFiniteLoss(f"the update at step {t.step} overflowed float32; {t.kept()}. "
                            f"Lower --lr or --muon-lr") from None
    for opt in t.optimizers:
        opt.zero_grad(set_to_none=True)
    return loss_value, float(grad_norm)


def average_weights(t: Training) -> None:
    """Fold the weights after this step into their average (--ema): the plain mean of every step since averaging
    began, until that spans 1 / (1 - ema) steps, then an exponential moving average with decay `ema`."""
    if t.ema is None:
        t.ema = copy.deepcopy(t.model).requires_grad_(False)
        t.ema_start, t.ema_steps = t.step, 1
        return
    t.ema_steps += 1
    weight = max(1.0 / t.ema_steps, 1.0 - t.config.train.ema)
    torch._foreach_lerp_(list(t.ema.parameters()), [p.detach() for p in t.model.parameters()], weight)


def forward_backward(fwd, x: torch.Tensor, y: torch.Tensor, autocast, accum: int = 1) -> torch.Tensor:
    """One micro-batch through `fwd` and back, its gradients scaled for `accum` micro-batches; returns its loss."""
    with autocast():
        _, loss = fwd(x, y)
    (loss / accum).backward()
    return loss


def compile_in_helper(mc: ModelConfig, micro_batch: int, precision: str, key: str) -> None:
    """Compile the training step of a model never compiled here in a helper process, which leaves it in the
    compile cache; the training process then loads it from there, as every later run does. Compiled in the
    training process, the compiler would stay loaded for the whole run (inductor's pattern tables, sympy and their
    code: ~40 MB of a 3 layers x 128 run's peak, issue 24). Should the helper fail, the training process compiles."""
    from ..runtime.launch import run_helper

    spec = {"model": dataclasses.asdict(mc), "micro_batch": micro_batch, "precision": precision,
            "threads": torch.get_num_threads()}
    try:
        compiled = run_helper("chargpt.training.loop.compile_training_step", json.dumps(spec)).returncode == 0
    except OSError:
        return
    if compiled:
        mark_compiled(key)


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


def finish(t: Training) -> dict:
    """The end-of-run evaluation of val, the summary and a sample; return the summary."""
    seconds = t.train_seconds()
    mc, tc, step, main, run = t.config.model, t.config.train, t.step, t.dist.is_main, t.run
    if t.compiled and main and step > (t.resumed_at or 0):  # its compiled graphs are in the cache now
        mark_compiled(t.compiled)
    if main and step - (t.resumed_at or 0) >= SPEED_STEPS:  # a speed the budget's next choice can rely on
        steps_here = step - (t.resumed_at or 0)
        record_speed(t.config, t.device, t.precision, steps_here * t.tokens_per_step / max(seconds - t.spent, 1e-9))
    summary: dict = {
        "model": mc.model, "preset": t.preset, "params": t.model.num_params(), "steps": step,
        "tokens_seen": step * t.tokens_per_step, "train_seconds": round(seconds, 3),
        "time_budget": tc.time_budget or None, **({"model_choice": t.model_choice} if t.model_choice else {}),
        "tokens_per_sec": round(step * t.tokens_per_step / max(seconds, 1e-9), 1),
        "train_loss": t.last_eval.get("train_loss"), "val_loss": t.last_eval.get("val_loss"),
    }
    if t.ema is not None:  # ema.pt: the average, for sample, eval and serve when the run recommends it
        t.save_checkpoint(run.ema if run is not None else None, model=t.ema)
    t0 = time.perf_counter()
    with StopSignals() as stop:  # the checkpoint is saved: a signal now cuts the evaluation short, nothing else
        try:
            # every rank scores its share of the windows; float32 (no autocast): the reference figure
            final = evaluate_split(t.model, t.splits["val"], mc.block_size, t.device, eval_tokens=t.final_tokens,
                                   dist_info=t.dist, should_stop=lambda: stop.received,
                                   progress=EvalProgress("final evaluation of val", enabled=main and t.shows_progress))
            if main and mc.model == "bigram":
                summary["bigram_optimum_val_loss"] = bigram_optimum(t.splits["train"], t.splits["val"], mc.vocab_size,
                                                                    eval_tokens=tc.eval_tokens,
                                                                    should_stop=lambda: stop.received)
            average = None if t.ema is None else evaluate_split(
                t.ema, t.splits["val"], mc.block_size, t.device, eval_tokens=t.final_tokens, dist_info=t.dist,
                should_stop=lambda: stop.received,
                progress=EvalProgress("final evaluation of ema.pt", enabled=main and t.shows_progress))
            best = _score_best(t, lambda: stop.received, time.perf_counter() - t0)
        except EvaluationInterrupted as e:
            name = signal.Signals(e.signum).name
            summary |= {"val_loss_full": None, "eval_cut_short": f"by {name} after {e.done:,} of {e.total:,} characters",
                        "eval_seconds": round(time.perf_counter() - t0, 3), "peak_rss_mb": peak_rss_mb()}
            if main and run is not None:
                run.write_summary(summary)
            where = run.path if run is not None else "the run directory"
            raise TrainingInterrupted(f"the final evaluation was cut short by {name} ({e.done:,} of {e.total:,} "
                                      f"characters); the checkpoint of step {step} is kept; score it with: "
                                      f"chargpt eval --ckpt {where}", e.signum) from None
    summary |= _final_figures(final, time.perf_counter() - t0) | {
        "peak_rss_mb": peak_rss_mb(), "device": str(t.device), "dtype": t.precision, "world_size": t.dist.world_size,
        "seed": tc.seed, "dataset": t.data.meta.get("name"), "dataset_hash": t.data.content_hash,
        **({"init_from": t.origin} if t.origin else {}), "provenance": provenance(t.device),
    }
    # the run recommends the lowest full pass of the models it saved, and says which
    scored = {CKPT: (final, "the final model")}
    if average is not None:
        scored[EMA] = (average, f"ema.pt, the average since step {t.ema_start}")
        summary |= {"val_loss_full_ema": average.loss, "ema_from_step": t.ema_start}
    if isinstance(best, tuple):
        scored[BEST] = (best[0], f"best.pt of step {best[1]}")
        summary |= {"val_loss_full_best": best[0].loss, "best_step": best[1]}
    if len(scored) > 1:
        summary["val_loss_full_final"] = final.loss
    recommended = min(scored, key=lambda name: scored[name][0].loss)
    headline = scored[recommended][0]
    if recommended != CKPT:
        summary |= _final_figures(headline, summary["eval_seconds"])
    summary["recommended"] = recommended
    if main:
        spent = f", {format_duration(t.budget_seconds())} of the {format_duration(tc.time_budget)} budget" \
            if tc.time_budget else ""
        which = ""
        if len(scored) > 1:
            others = "; ".join(f"{what}: {result.loss:.4f}" for name, (result, what) in scored.items()
                               if name != recommended)
            which = f" ({scored[recommended][1]}, recommended; {others})"
        t.say(describe_pass(headline, "val") + f"{which} after {step} steps, {seconds:.1f} s{spent}")
        if isinstance(best, str):
            t.say(best)
        if "bigram_optimum_val_loss" in summary:
            t.say(f"count-based bigram optimum on val: {summary['bigram_optimum_val_loss']:.4f}")
        if run is not None:
            if tc.sample_tokens:
                g = torch.Generator(device=t.device).manual_seed(tc.seed)
                idx = torch.zeros((1, 1), dtype=torch.long, device=t.device)  # start from index 0 (newline)
                out = Engine(t.model).generate(idx, tc.sample_tokens, generator=g)
                summary["sample"] = text = t.data.tokenizer.decode(out[0].tolist())
                run.write_sample(text)
            if tc.time_budget:
                summary["budget_seconds"] = round(t.budget_seconds(), 3)
            run.write_summary(summary)
        finish_tracking(t.tracker, run, summary, t.data)
    distributed.barrier(t.dist)
    distributed.shutdown(t.dist)  # NCCL warns at exit about a process group never destroyed
    return summary if main else {}


def _score_best(t: Training, should_stop: Callable[[], int | None], final_seconds: float) -> tuple | str | None:
    """(full pass of best.pt, its step) when best.pt holds an earlier model whose val estimate was lower than the
    final model's (an overfitting run), so the headline figure never hides a better checkpoint; a line saying why
    it was not scored when the budget has no time left for it; None when the final model is the best estimate."""
    run = t.run
    if (run is None or not t.dist.is_main or t.dist.enabled or not run.best.is_file()
            or not t.best_val < t.last_eval.get("val_loss", math.inf)):
        return None
    budget = t.config.train.time_budget
    if budget and t.budget_seconds() + final_seconds > budget * BUDGET_SLACK:
        return (f"best.pt (val estimate {t.best_val:.4f}, below the final model's {t.last_eval['val_loss']:.4f}) was "
                f"not scored: the budget has no time left; score it with: chargpt eval --ckpt {run.best}")
    model, _, state = checkpoint.load_model(run.best, t.device)
    if state["step"] == t.step:
        return None
    result = evaluate_split(model, t.splits["val"], t.config.model.block_size, t.device, eval_tokens=t.final_tokens,
                            should_stop=should_stop,
                            progress=EvalProgress("final evaluation of best.pt", enabled=t.shows_progress))
    return result, state["step"]


def _final_figures(result: PassResult, seconds: float) -> dict:
    """The summary's figures of the end-of-run pass over val (`val_loss_full`: exact unless a subset was scored)."""
    return {"val_loss_full": result.loss, "val_bpc_full": bits_per_char(result.loss),
            "val_loss_full_exact": result.exact, "val_loss_full_stderr": result.stderr,
            "val_eval_tokens": result.tokens, "val_tokens": result.split_tokens, "eval_seconds": round(seconds, 3)}
