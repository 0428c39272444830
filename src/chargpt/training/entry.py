"""The one way into training, for `chargpt train` and `chargpt.train` alike: a `TrainRequest` (what the user
gave), resolved and checked once by `plan_training` (preset, config file, fields, resume or fine-tune source,
data, tracker) into a `TrainPlan`, whose `run` creates the run directory, starts the tracker and trains."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from ..config import (DEFAULT_DATA, DEFAULT_RUNS_DIR, Config, config_changes, default_preset, get_preset,
                      read_config_file, set_fields)
from ..errors import ConfigError


@dataclass
class TrainRequest:
    """A training run as asked for; None is "not given". `fields` are config fields ({"n_layer": 4}) from
    flags or keywords (`fields_from` names them in messages); `tracker` is a tracker's name or object, built
    with `tracker_options`; `argv` is the command line recorded by the tracker."""

    preset: str | None = None
    config_file: str | os.PathLike | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    fields_from: str = "flags"
    data: Any = None  # a dataset directory, or a loaded `Dataset`
    resume: str | os.PathLike | None = None
    init_from: str | os.PathLike | None = None
    runs_dir: str | os.PathLike = DEFAULT_RUNS_DIR
    name: str | None = None
    tracker: Any = None
    tracker_options: dict[str, Any] = field(default_factory=dict)
    dataset_artifact: str | None = None  # a W&B dataset to download when no data is given
    wandb_mode: str = "auto"
    argv: list[str] | None = None
    clock_start: float | None = None  # time.perf_counter() when the user's wall clock started (default: now)
    judge: Any = None  # a sweep's trial (`sweeps.trial.Judge`): sees each val estimate, may stop the run early


@dataclass
class TrainPlan:
    request: TrainRequest
    config: Config
    base: Config  # what the announced changes are against: the preset, or the run resumed or fine-tuned from
    preset: str | None
    data_dir: str
    data: Any = None  # the `Dataset`, loaded by `plan_training`
    resume_run: Any = None  # the `RunDir` continued
    resume_state: dict | None = None
    init_from: dict | None = None  # {"state": the checkpoint's contents, "origin": what a run records of it}
    chosen: str | None = None  # said once the run starts: which preset was picked when none was given
    sized_by_budget: bool = False  # no preset given with a time budget: the budget chooses the model
    model_choice: str | None = None  # the size it chose
    clock_start: float = field(default_factory=time.perf_counter)
    finished: str | None = None  # a resumed run with nothing to do: the line that says so and how to extend it
    device: Any = None  # the `torch.device` trained on, resolved once
    threads: int | None = None  # torch's CPU threads, decided once (before a budget's choice); None under torchrun

    def as_dict(self) -> dict:
        """The resolved config as `chargpt train --print-config` prints it."""
        return {"preset": self.preset, "data_dir": str(self.data_dir), **self.config.to_dict()}

    def run(self, echo: Callable[[str], None] | None = print, notebook: bool = False):
        """Create (or reopen) the run directory, say what is trained, start the tracker and train; return the
        finished `Training` and the run's summary. `echo` None: nothing is shown, the tracker's notices included."""
        from ..track.tracker import notices_to

        with notices_to(echo):
            return self._run(echo, notebook)

    def _run(self, echo: Callable[[str], None] | None, notebook: bool):
        from ..runs.rundir import RunDir, default_name
        from ..runtime.distributed import is_main_process
        from ..track.tracker import NullTracker, make_tracker, run_config
        from .finish import finish
        from .loop import loop, setup

        req, main = self.request, is_main_process()
        say = echo or (lambda *_: None)
        run = self.resume_run
        created, started, stopped = run is None, False, None
        if run is None and main:
            run = RunDir.create(req.runs_dir, req.name or default_name(self.config.model.model, self.preset),
                                unique=req.name is None)
        try:
            tracker = NullTracker()
            if main:
                self._announce(run, say)
                tracker = make_tracker(req.tracker, **req.tracker_options)
                origin = self.init_from["origin"] if self.init_from else None
                tracker.start(run, run_config(self.config, run, self.data, self.preset, req.argv, device=self.device,
                                              data_dir=str(self.data_dir), origin=origin), self.data)
            t = setup(self.config, self.data, run, device=self.device, threads=self.threads,
                      resume_state=self.resume_state,
                      init_from=self.init_from, tracker=tracker, echo=echo, clock_start=self.clock_start,
                      preset=self.preset, data_dir=str(self.data_dir), model_choice=self.model_choice,
                      notebook=notebook, judge=req.judge)
            started = True
            loop(t)
            return t, finish(t)
        except KeyboardInterrupt as e:  # Ctrl-C or a terminating signal before the loop could take it
            stopped = e
            raise
        finally:  # a notebook's process lives on: the run is free for another writer now
            if run is not None:
                if created and not started:
                    run.discard()
                    if stopped is not None and not run.path.exists():
                        stopped.removed_run = run.path  # the stop's line names it (cli._stopped_at_once)
                run.unlock()

    def _announce(self, run, say: Callable[[str], None]) -> None:
        if self.chosen:
            say(self.chosen)
        if self.resume_state:
            what, against = f"resuming {run.path} at step {self.resume_state['step']}", "the saved run"
        elif self.init_from:
            origin = self.init_from["origin"]
            what, against = (f"fine-tuning {run.path} from {origin['ckpt']} (step {origin['step']}) on "
                             f"{self.data_dir}"), "that run"
        elif self.model_choice:
            what, against = f"training {run.path}: {self.model_choice}, as its time budget chose", "that choice"
        else:
            what, against = f"training {run.path} from preset '{self.preset}'", "the preset"
        say(f"{what} (full config in its config.json)")
        changes = config_changes(self.config, self.base)
        if changes:
            say(f"changed from {against}: {', '.join(changes)}")


def plan_training(req: TrainRequest, *, load_data: bool = True,
                  echo: Callable[[str], None] | None = print) -> TrainPlan:
    """Resolve `req` into the config, preset and data to train, checking everything a run could refuse before it
    starts. Without `load_data` (--print-config) the dataset is neither read nor checked."""
    from ..runtime.envfile import load_env_file
    from ..runs.rundir import check_run_name
    from ..track.tracker import check_tracker, notices_to

    if req.name is not None:
        check_run_name(req.name)
    check_tracker(req.tracker)
    if req.resume and req.init_from:
        raise ConfigError("--resume continues a run and --init-from starts a new one from a run's weights; pass one")
    if req.preset and (req.resume or req.init_from):
        raise ConfigError(f"--preset names a new model; {'--resume' if req.resume else '--init-from'} keeps the one "
                          f"of the run it starts from; drop --preset")
    if req.config_file and req.init_from:
        raise ConfigError("--config and --init-from cannot be combined: a fine-tuned run starts from its source's "
                          "config; give single flags to change what may change")
    started = time.perf_counter() if req.clock_start is None else req.clock_start
    load_env_file(say=echo or (lambda *_: None))
    with notices_to(echo):  # a dataset artifact's download says so as the run's lines do
        plan = _resumed(req) if req.resume else _fine_tuned(req) if req.init_from else _fresh(req)
    try:
        plan.clock_start = started
        set_fields(plan.config, req.fields, req.fields_from)
        if "max_steps" in req.fields and "time_budget" not in req.fields and plan.config.train.time_budget:
            plan.config.train.time_budget = 0.0  # asked for a number of steps: the budget of the run or file goes
        if plan.resume_state is not None and "max_steps" in req.fields:
            _check_resume_steps(plan)
        if not load_data:
            plan.config.validate()
        else:
            _load_and_check(plan)
    except BaseException:
        if plan.resume_run is not None:  # refused: the run stays free, also in a process that lives on
            plan.resume_run.unlock()
        raise
    if plan.resume_run is not None and (not load_data or plan.finished):  # only printed, or nothing to train:
        plan.resume_run.unlock()  # the run is left as it was, without even its lock file
    return plan


def _resumed(req: TrainRequest) -> TrainPlan:
    from ..runs import checkpoint
    from ..runs.rundir import RunDir

    if req.config_file:
        raise ConfigError("--config and --resume cannot be combined: a resumed run keeps its own config; "
                          "give single flags to change what may change")
    run = RunDir.open(req.resume)
    try:
        state = checkpoint.load(run.ckpt)
    except BaseException:
        run.unlock()
        raise
    return TrainPlan(req, Config.from_dict(state["config"]), Config.from_dict(state["config"]),
                     state["extra"].get("preset"), _data_dir(req) or state["extra"].get("data_dir") or DEFAULT_DATA,
                     resume_run=run, resume_state=state)


def _check_resume_steps(plan: TrainPlan) -> None:
    """Refuse a --max-steps below the step the resumed checkpoint has reached: that run cannot go back."""
    step, max_steps = plan.resume_state["step"], plan.config.train.max_steps
    if isinstance(max_steps, int) and max_steps < step:
        raise ConfigError(f"--max-steps {max_steps:,} is below step {step:,}, where the checkpoint of "
                          f"{plan.resume_run.path} is; resume with --max-steps above {step:,}")


def _fine_tuned(req: TrainRequest) -> TrainPlan:
    from ..runs import checkpoint
    from ..runs.rundir import locate_run

    source = locate_run(req.init_from).ckpt
    state = checkpoint.load(source)
    if req.data is None:
        raise ConfigError("--init-from needs --data: the dataset directory of the text to fine-tune on")
    origin = {"ckpt": str(source), "step": state["step"], "dataset_hash": state["dataset_hash"]}
    return TrainPlan(req, Config.from_dict(state["config"]), Config.from_dict(state["config"]),
                     state["extra"].get("preset"), _data_dir(req), init_from={"state": state, "origin": origin})


def _fresh(req: TrainRequest) -> TrainPlan:
    from ..runtime.device import resolve_device

    from_file = read_config_file(req.config_file) if req.config_file else {}
    device = resolve_device(req.fields.get("device") or from_file.get("train", {}).get("device")
                            or from_file.get("device") or "auto")  # the device the config will name
    sized = req.preset is None and not from_file.get("preset") and _budget_given(req, from_file)
    preset = req.preset or from_file.get("preset") or ("cpu" if sized else default_preset(device.type))
    chosen = None
    if req.preset is None and not from_file.get("preset") and not sized:
        chosen = f"no --preset given: using '{preset}' for {device.type}"
    config = get_preset(preset)
    set_fields(config, from_file, str(req.config_file))
    data_dir = _data_dir(req) or from_file.get("data_dir") or DEFAULT_DATA
    if req.dataset_artifact and req.data is None:  # with or without a tracker: download, then train
        from ..track.wandb import download_dataset

        data_dir = download_dataset(req.dataset_artifact, mode=req.wandb_mode) or data_dir
    return TrainPlan(req, config, get_preset(preset), preset, str(data_dir), chosen=chosen, sized_by_budget=sized,
                     device=device)


def _budget_given(req: TrainRequest, from_file: dict) -> bool:
    given = req.fields.get("time_budget", from_file.get("time_budget", from_file.get("train", {}).get("time_budget")))
    return given not in (None, 0, 0.0, "0", "")


def _size_by_budget(plan: TrainPlan) -> None:
    """Let the time budget choose the model's size on this machine; fields the user set (flags, keywords, a config
    file) stay as given."""
    from .budget import choose
    from ..runtime.device import autocast_for, resolve_dtype

    config, req, device = plan.config, plan.request, plan.device
    precision = resolve_dtype(device, config.train.dtype)
    result = choose(config.train.time_budget, config, device, precision, autocast_for(device, precision),
                    elapsed=time.perf_counter() - plan.clock_start, val_tokens=len(plan.data.val))
    from_file = read_config_file(req.config_file) if req.config_file else {}
    given = set(req.fields) | {k for key, v in from_file.items() for k in (v if isinstance(v, dict) else [key])}
    size_fields = {k: v for k, v in (result.size.model | result.size.train).items() if k not in given}
    set_fields(config, size_fields, "the time budget")
    plan.base = get_preset(plan.preset)
    plan.base.model.vocab_size = config.model.vocab_size
    set_fields(plan.base, size_fields, "the time budget")
    plan.model_choice = result.size.name
    plan.chosen = f"no --preset given: {result.reason}"


def _data_dir(req: TrainRequest) -> str | None:
    from ..data.dataset import Dataset

    return str(req.data.path) if isinstance(req.data, Dataset) else None if req.data is None else str(req.data)


def _load_and_check(plan: TrainPlan) -> None:
    from ..data.dataset import Dataset, load_dataset
    from ..runtime.device import decide_threads, resolve_device
    from ..runtime.resources import check_train_fits

    config = plan.config
    plan.device = plan.device or resolve_device(config.train.device)
    plan.threads = decide_threads(config.train.threads)  # the threads a budget's choice measures are the run's
    plan.data = plan.request.data if isinstance(plan.request.data, Dataset) else load_dataset(plan.data_dir)
    config.model.vocab_size = plan.base.model.vocab_size = plan.data.tokenizer.vocab_size
    if plan.sized_by_budget and config.train.time_budget:
        _size_by_budget(plan)
    config.validate()
    plan.data.check_block_size(config.model.block_size)
    check_train_fits(config, plan.device)  # a size that cannot fit: an error, not an OOM
    if plan.init_from is not None:
        model_fields = {f.name for f in fields(config.model)} - {"dropout", "vocab_size"}
        shape = [c for c in config_changes(config, plan.base) if c.split("=")[0] in model_fields]
        if shape:
            raise ConfigError(f"--init-from keeps the model it starts from; drop {', '.join(shape)}")
    if plan.resume_state is not None:
        _check_resumable(plan)
        plan.finished = finished_already(plan.resume_run, plan.resume_state, config)


def _check_resumable(plan: TrainPlan) -> None:
    """Refuse, before the run starts, a checkpoint that cannot continue as the plan's config on its data: its
    model, optimizer and dataset are checked by loading them on the CPU."""
    from ..model.gpt import build_model
    from ..runs import checkpoint
    from .optim import load_optimizer_states, make_optimizers

    state, path = plan.resume_state, plan.resume_run.path
    model = build_model(plan.config.model)
    checkpoint.restore(state, plan.config, path, data=plan.data, model=model)
    load_optimizer_states(make_optimizers(model, plan.config.train, "cpu"), state["optimizers"], path)


def finished_already(run, state: dict, config: Config) -> str | None:
    """Why resuming `run` from its checkpoint `state` as `config` has nothing to do, if so: it reached its step
    count or time budget and its final evaluation is done (one cut short is redone by resuming)."""
    from ..runtime.progress import format_duration

    from .clock import budget_that_trains, reached_end

    tc, step = config.train, state["step"]
    if not reached_end(state, tc):
        return None
    summary = run.summary()
    if summary.get("steps") != step or summary.get("val_loss_full") is None or summary.get("eval_cut_short"):
        return None
    if tc.time_budget:
        spent = summary.get("budget_seconds") or state["extra"].get("budget_seconds", 0.0)
        what = f"it used {format_duration(spent)} of its --time-budget {format_duration(tc.time_budget)}"
        flag, more = "--time-budget", budget_that_trains(spent, state["extra"].get("budget_origin") or 0.0)
    else:
        what, flag, more = f"it reached step {step:,} of --max-steps {tc.max_steps:,}", "--max-steps", 2 * tc.max_steps
    return (f"{run.path} is finished: {what}, and its final evaluation is done; to train it further, resume with a "
            f"larger {flag}: chargpt train --resume {run.path} {flag} {more}")
