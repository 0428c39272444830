"""The `chargpt` command line: prepare | train | sample | eval | attention | runs | serve | sweep.

Library code raises `ChargptError`s; `main` turns each into one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import argparse
import errno
import os
import re
import signal
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import get_args

from . import __version__
from .model.attention import SCALE_HELP, SCALES, WINDOW
from .config import (DEFAULT_DATA, DEFAULT_RUN, DEFAULT_RUNS_DIR, EVAL_TOKENS, MAX_BLOCK, MAX_THREADS, PRESETS,
                     PrepareOptions, RunOptions, ServeOptions, TrackerName, TrainConfig, add_config_flags,
                     add_field_flag, check_flags, dataset_dir, given_fields)
from .errors import (EXIT_FAILURE, ChargptError, ConfigError, TrainingInterrupted, UsageError, exit_code_of, one_line,
                     signal_name)
from .fsutil import claim_output, read_text
from .model.sampling import MAX_TOGETHER, SAMPLING_FIELDS, SamplingParams
from .runtime.signals import Terminated, command_signals
from .schema import check_value, did_you_mean, option, renamed_note, shortened

# Only what --help and the checks of arguments need is imported above (no torch): each command imports the rest.


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (and exit code 2), without the usage block, suggests the
    option a mistyped one was meant to be, and takes no abbreviations (`--dataset` must never be read as
    `--dataset-artifact`)."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def parse_args(self, args=None, namespace=None):
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:  # reported by the subcommand that was given them, which knows the options they resemble
            parser = self.commands().get(getattr(parsed, "command", None), self)
            parser.error(f"unrecognized arguments: {' '.join(unknown)}{parser._suggestion(unknown)}")
        return parsed

    def commands(self) -> dict[str, argparse.ArgumentParser]:
        """The subcommands' parsers by name."""
        return next((a.choices for a in self._actions if isinstance(a, argparse._SubParsersAction)), {})

    def _suggestion(self, unknown: list[str]) -> str:
        known = [o for a in self._actions for o in a.option_strings if o.startswith("--")]
        hints = (did_you_mean(arg.split("=")[0], known, cutoff=0.75) for arg in unknown if arg.startswith("--"))
        return next((hint for hint in hints if hint), "")

    def error(self, message):
        """One line; a word argparse repeats from the command line (an unknown argument, a choice) shortened
        when it runs to hundreds of characters."""
        choice = re.search(r"invalid choice: '(.*)' \(choose from (.*)\)$", message)  # a command, --dtype, ...
        if choice:
            message += did_you_mean(choice[1], re.findall(r"'([^']*)'", choice[2]), cutoff=0.75)
        message = re.sub(r"\S{81,}", lambda m: shortened(m[0]), message)
        raise UsageError(f"{self.prog}: {message} (see --help)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's help once, with one default: none added where the help names it or there is none."""

    def _get_help_string(self, action):
        if action.default is None or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


# ------------------------------------------------------------------------------------------ prepare
def cmd_prepare(args) -> int:
    from .data.corpus import locate
    from .data.dataset import prepare
    from .runtime.envfile import load_env_file

    load_env_file()
    if args.input is None and args.dataset is None:
        args.dataset = "shakespeare"
    source = locate(args.dataset or "", args.input)
    name = args.dataset if args.input is None else Path(args.input).stem
    out = args.out or dataset_dir(name)
    result = prepare(source, out, val_fraction=args.val_fraction, name=name, dtype=args.token_dtype, replace=args.replace)
    m = result.meta
    if result.note:
        print(result.note)
    if result.changed:
        print(f"prepared {out}: {m['total_chars']:,} characters, vocabulary {m['vocab_size']}, "
              f"train {m['train_tokens']:,} / val {m['val_tokens']:,} tokens ({m['dtype']}) from {source}")
    else:
        print(f"{out} is already prepared from this input (sha256 {m['source_sha256'][:12]}...): nothing changed")
    if args.wandb:
        from .track.wandb import log_dataset

        log_dataset(Path(out), m, mode=args.wandb_mode, project=args.wandb_project,
                    entity=args.wandb_entity, artifact_name=args.artifact_name)
    return 0


# -------------------------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from .training.budget import process_start
    from .training.entry import TrainRequest, plan_training

    launch = args.nproc is not None and "WORLD_SIZE" not in os.environ
    if launch:
        from .runtime.launch import check_nproc

        check_nproc(args.nproc)
    if args.wandb and args.tracker not in (None, "wandb"):
        raise ConfigError(f"--wandb and --tracker {args.tracker} name two trackers; pass one")
    tracker = "wandb" if args.wandb else args.tracker
    wandb_options = dict(mode=args.wandb_mode, project=args.wandb_project, entity=args.wandb_entity,
                         name=args.wandb_name, dataset_artifact=args.dataset_artifact)
    request = TrainRequest(preset=args.preset, config_file=args.config, fields=given_fields(args), data=args.data,
                           resume=args.resume, init_from=args.init_from, runs_dir=args.runs_dir, name=args.name,
                           tracker=tracker, tracker_options=wandb_options if tracker == "wandb" else {},
                           dataset_artifact=args.dataset_artifact, wandb_mode=args.wandb_mode,
                           argv=["chargpt", *args.argv],
                           clock_start=process_start() if args.program else None)  # called in a process: now
    if args.print_config:
        from .runs.records import json_text

        print(json_text(plan_training(request, load_data=False).as_dict(), indent=2))
        return 0
    plan = plan_training(request)
    if plan.finished:
        print(plan.finished)
        return 0
    if launch and args.nproc > 1:  # every argument checked here, once: the processes would each report it
        from .runtime.launch import relaunch_with_torchrun

        if plan.resume_run is not None:
            plan.resume_run.unlock()  # its process of rank 0 becomes the writer
        return relaunch_with_torchrun(args.nproc, args.argv)
    from .runtime.compiling import skip_dynamo_import
    from .runtime.progress import output_may_close

    skip_dynamo_import()  # this process compiles no optimizer: its start-up is 1.3-1.8 s shorter
    with output_may_close():  # `| head`, or a terminal that hangs up, never ends the run
        _, summary = plan.run()
        if summary.get("sample"):
            out = TerminalText(sys.stdout)
            out.write(f"--- sample ---\n{summary['sample']}\n")
            out.flush()
    return 0


class TerminalText:
    """Text for stdout: characters its encoding cannot show (PYTHONIOENCODING=ascii, a latin-1 terminal) are
    written as escapes such as \\xe9, and a warning says so once, instead of a UnicodeEncodeError mid-sample."""

    def __init__(self, stream):
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None) or "utf-8"
        self.warned = False

    def write(self, text: str) -> None:
        try:
            text.encode(self.encoding)
        except UnicodeEncodeError:
            if not self.warned:
                self.warned = True
                self.stream.flush()
                print(f"warning: the output encoding ({self.encoding}) cannot show some characters; they are "
                      f"written as escapes such as \\xe9 (set PYTHONIOENCODING=utf-8 to see them)", file=sys.stderr)
            text = text.encode(self.encoding, "backslashreplace").decode(self.encoding)
        self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


# ------------------------------------------------------------------------------------------- sample
def cmd_sample(args) -> int:
    params = SamplingParams.checked(**{name: getattr(args, name) for name in SAMPLING_FIELDS})
    from .runs.checkpoint import load_model
    from .model.engine import Engine
    from .model.sampling import prompt_ids

    device = _device_and_threads(args)
    if args.prompts_file is not None:
        return _sample_prompts(args, params, device)
    prompt = _prompt(args)
    model, tok, _ = load_model(args.ckpt, device)
    ids = prompt_ids(tok, prompt)
    columns = Engine(model).sample(ids, params, num_samples=args.num_samples)
    out = TerminalText(sys.stdout)
    if args.num_samples == 1:
        out.write(prompt)
        for col in columns:
            out.write(tok.decode(col[0].tolist()))
            out.flush()
        out.write("\n")
    else:
        new = [col[:, 0].tolist() for col in columns]
        for i in range(args.num_samples):
            out.write(f"--- sample {i + 1} ---\n{prompt}{tok.decode([c[i] for c in new])}\n")
    out.flush()
    return 0


def _sample_prompts(args, params, device) -> int:
    """`sample --prompts-file`: every line's prompt sampled together (`chargpt.model.batchdecode`), each with the
    sampling flags, as `--prompt LINE` would sample it alone (to float32 rounding)."""
    from .runs.checkpoint import load_model
    from .model.batchdecode import sample_all
    from .model.engine import Engine
    from .model.sampling import prompt_ids

    if args.prompt is not None or args.prompt_file is not None or args.num_samples != 1:
        raise ConfigError("--prompts-file gives every prompt, each sampled once: drop --prompt, --prompt-file and "
                          "--num-samples")
    prompts = _read_prompt_file("--prompts-file", args.prompts_file).splitlines()
    if not prompts:
        raise ConfigError(f"--prompts-file {args.prompts_file} holds no line; write one prompt per line")
    check_value(SampleOptions, "num_samples", len(prompts), spell=lambda _: f"the number of prompts in --prompts-file "
                f"{args.prompts_file} (sampled together, as --num-samples)")
    model, tok, _ = load_model(args.ckpt, device)
    ids = [prompt_ids(tok, p) for p in prompts]
    out = TerminalText(sys.stdout)
    for i, (prompt, new) in enumerate(zip(prompts, sample_all(Engine(model), ids, params))):
        out.write(f"--- prompt {i + 1} ---\n{prompt}{tok.decode(new)}\n")
    out.flush()
    return 0


# --------------------------------------------------------------------------------------------- eval
def cmd_eval(args) -> int:
    import time

    from .runs.checkpoint import load_model
    from .data.dataset import load_dataset
    from .runs.records import eval_result, json_text
    from .training.evaluate import EvaluationInterrupted, describe_pass, evaluate_split
    from .runtime.progress import EvalProgress
    from .runtime.signals import StopSignals

    device = _device_and_threads(args)
    model, tok, state = load_model(args.ckpt, device)
    data_dir = args.data or state["extra"].get("data_dir") or DEFAULT_DATA
    data = load_dataset(data_dir)
    if data.tokenizer != tok:
        raise ConfigError(f"{data_dir} has a different vocabulary than the checkpoint; pass --data with the "
                          f"dataset the model was trained on")
    t0 = time.perf_counter()
    progress = EvalProgress(f"evaluating {args.split}", enabled=not args.json, stream=sys.stderr)
    try:
        with StopSignals() as stop:  # float32, no autocast: the reference figure
            r = evaluate_split(model, data.split(args.split), model.config.block_size, device,
                               eval_tokens=args.eval_tokens, should_stop=lambda: stop.received, progress=progress)
    except EvaluationInterrupted as e:
        progress.close()
        _stopped(f"{e}; no result. A smaller --eval-tokens takes less time")
        return exit_code_of(e.signum)
    progress.close()
    seconds = time.perf_counter() - t0
    if args.json:
        print(json_text(eval_result(r, seconds, args.split, str(args.ckpt), state["step"])))
    else:
        print(f"{describe_pass(r, args.split)} ({r.tokens:,} tokens, {seconds:.2f} s)")
    return 0


# --------------------------------------------------------------------------------------------- runs
def cmd_runs(args) -> int:
    from .runs.rundir import locate_run
    from .runs.listing import check_comparable, format_runs, list_runs, plotted_runs, read_run

    if args.plot is not None:
        from .runs.plotting import plot_runs

        if args.plot:
            names, paths = args.plot, [locate_run(name, args.runs_dir, checkpoint=False).run for name in args.plot]
        else:  # none named: the runs the table lists, of one dataset
            runs = plotted_runs(args.runs_dir, all_datasets=args.all)
            names, paths = [r.name for r in runs], [r.path for r in runs]
        out = claim_output(args.out, inputs=tuple(paths))
        if not args.all:
            check_comparable([read_run(p) for p in paths])
        out = plot_runs(paths, out)
        print(f"wrote {out}: val loss of {', '.join(names)}")
        return 0
    runs = list_runs(args.runs_dir)
    if not runs:
        print(f"no runs under {args.runs_dir}")
        return 0
    print(format_runs(runs))
    return 0


# ---------------------------------------------------------------------------------------- attention
def cmd_attention(args) -> int:
    import torch

    from .model.attention import attention_title, attention_weights, draw_attention, layers_by_heads
    from .runs.checkpoint import load_model
    from .runs.rundir import locate_run

    out = claim_output(args.out, inputs=(args.ckpt, args.prompt_file))  # before anything is read or computed
    device = _device_and_threads(args)
    prompt = _prompt(args)
    if not prompt:
        raise ConfigError("give the text to draw with --prompt TEXT or --prompt-file FILE")
    model, tok, state = load_model(args.ckpt, device)
    idx = torch.tensor([tok.encode(prompt)], dtype=torch.long, device=device)
    weights = attention_weights(model, idx)[0]
    L, H, T, _ = weights.shape
    shown = min(T, args.window) if args.window else T
    name = locate_run(args.ckpt).name
    title = attention_title(name, state["step"], L, H) + (f"; the last {shown} of {T} characters" if shown < T else "")
    out = draw_attention(weights, prompt, out, title=title, scale=args.scale, window=args.window)
    print(f"wrote {out}: {layers_by_heads(L, H)} over {T} characters"
          + (f" (the last {shown} drawn)" if shown < T else ""))
    return 0


# -------------------------------------------------------------------------------------------- sweep
def cmd_sweep(args) -> int:
    from .sweeps.entry import SweepRequest, run_sweep

    if args.wandb and args.tracker not in (None, "wandb"):
        raise ConfigError(f"--wandb and --tracker {args.tracker} name two trackers; pass one")
    tracker = "wandb" if args.wandb else args.tracker
    wandb_options = dict(mode=args.wandb_mode, project=args.wandb_project, entity=args.wandb_entity)
    run_sweep(SweepRequest(args.name, data=args.data, trials=args.trials, trial_budget=args.trial_budget,
                           time_budget=args.time_budget, space=args.space, search=args.search or [],
                           storage=args.storage, workers=args.workers, pruner=args.pruner, seed=args.seed,
                           grace_period=args.grace_period, show=args.show, runs_dir=args.runs_dir, tracker=tracker,
                           tracker_options=wandb_options if tracker == "wandb" else {}))
    return 0


# -------------------------------------------------------------------------------------------- serve
def cmd_serve(args) -> int:
    from .runtime.device import resolve_device
    from .serve.app import serve
    from .serve.runs import ServedRuns

    runs = ServedRuns(runs_dir=None if args.ckpt else args.runs_dir, ckpt=args.ckpt, device=resolve_device(args.device))
    signum = serve(runs, host=args.host, port=args.port, allowed_hosts=tuple(args.allowed_host),
                   max_streams=args.max_streams)
    print(f"chargpt serve: stopped by {signal_name(signum)}", file=sys.stderr)
    return exit_code_of(signum)


def _device_and_threads(args):
    """The device of `--device`, with torch's CPU threads set from `--threads`."""
    from .runtime.device import resolve_device, set_threads

    set_threads(args.threads)
    return resolve_device(args.device)


def _prompt(args) -> str:
    """`--prompt`, or the text of `--prompt-file` (UTF-8; one trailing newline dropped)."""
    if args.prompt_file is None:
        return args.prompt or ""
    if args.prompt:
        raise ConfigError("--prompt and --prompt-file both give the prompt; pass one")
    text = _read_prompt_file("--prompt-file", args.prompt_file)
    return text[:-1] if text.endswith("\n") else text


PROMPT_FILE_BYTES = 4 * MAX_BLOCK  # the UTF-8 of the longest context a model can have: what a longer prompt adds no
# model sees, yet each character read costs some 25 bytes of memory on its way to the model


def _read_prompt_file(flag: str, path: str) -> str:
    """The text of a prompt file, of at most PROMPT_FILE_BYTES."""
    try:
        return read_text(path, limit=PROMPT_FILE_BYTES)
    except UnicodeDecodeError:
        raise ConfigError(f"{flag} {path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as e:
        if e.errno == errno.EFBIG:
            raise ConfigError(f"{flag} {path} is over {PROMPT_FILE_BYTES:,} bytes, more than a prompt file may hold "
                              f"(the UTF-8 of {MAX_BLOCK:,} characters, the longest context a model can have); "
                              f"shorten it") from None
        raise ConfigError(f"cannot read {flag} {path} ({e.strerror or e}); pass an existing text file") from None


# ------------------------------------------------------------------------------------------- parser
# Each option that several commands take is defined once: here, or as a field of a config (add_field_flag).
# Values only the CLI takes are declared like a config's fields, so their flag, --help and check derive from one
# declaration; those the library and the server take too live in config.py (PrepareOptions, ServeOptions).
@dataclass
class SampleOptions:
    num_samples: int = option(1, "samples generated together as one batch", min=1, max=MAX_TOGETHER)


@dataclass
class AttentionOptions:
    window: int = option(WINDOW, "draw at most this many characters, the prompt's last (0: all); labels stay legible",
                         min=0, max=MAX_BLOCK)


@dataclass
class LaunchOptions:
    nproc: int = option(None, "processes on this machine (launches torchrun)", min=1, max=MAX_THREADS)


RUNS_DIR_HELP = "the runs folder: where run directories are created (train, sweep) and found (runs, serve)"
CKPT_HELP = f"a checkpoint file, a run directory, or {DEFAULT_RUN} (the newest run with a checkpoint)"


def _command(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A subcommand, with its one-line description in `chargpt --help` and atop its own --help."""
    return sub.add_parser(name, help=help, description=help[0].upper() + help[1:] + ".", formatter_class=HelpFormatter)


def _add_option(p: argparse.ArgumentParser, cls, name: str) -> None:
    """The flag of a command option declared in `cls`, with the declared default."""
    add_field_flag(p, cls, name, default=getattr(cls, name))


def _add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """One flag per `SamplingParams` field, with its description and default."""
    for f in fields(SamplingParams):
        add_field_flag(p, SamplingParams, f.name, default=f.default)


def _add_device_flags(p: argparse.ArgumentParser, threads: bool = True) -> None:
    add_field_flag(p, TrainConfig, "device", default=TrainConfig.device)
    if threads:
        add_field_flag(p, TrainConfig, "threads", default=TrainConfig.threads)


def _add_prompt_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--prompt", default=None, help=what)
    p.add_argument("--prompt-file", default=None, metavar="FILE",
                   help=f"the prompt is the text of this UTF-8 file (one trailing newline dropped; at most "
                        f"{PROMPT_FILE_BYTES >> 20} MiB)")


def _add_runs_dir_flag(p, *old: str) -> None:  # a parser or a group; `old`: the flag's names in the last release
    p.add_argument("--runs-dir", default=DEFAULT_RUNS_DIR, metavar="DIR", help=RUNS_DIR_HELP)
    for name in old:
        p.add_argument(name, dest="runs_dir", action=Renamed, help=argparse.SUPPRESS)


class Renamed(argparse.Action):
    """A flag's old name (`schema.RENAMED`): it still works, with a one-line notice on stderr."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(renamed_note(option_string), file=sys.stderr)
        setattr(namespace, self.dest, values)


def _add_wandb_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Weights & Biases")
    g.add_argument("--wandb", action="store_true", help="track this in Weights & Biases")
    g.add_argument("--wandb-mode", choices=["auto", "online", "offline", "disabled"], default="auto",
                   help="auto: WANDB_MODE when set, else online when logged in, else offline")
    g.add_argument("--wandb-project", default=None,
                   help="wandb project (default: WANDB_PROJECT, else the notebook's nanogpt)")
    g.add_argument("--wandb-entity", default=None,
                   help="wandb entity, team or user (default: WANDB_ENTITY, else your logged-in default)")


def build_parser() -> argparse.ArgumentParser:
    """The `chargpt` parser: one subcommand per command, each built by its `_add_<command>` below."""
    parser = ArgumentParser(prog="chargpt", description="Train, track and sample small character-level GPTs.",
                            epilog="exit codes: 0 done, 1 failed while running, 2 bad input, 129 hung up "
                                   "(SIGHUP), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 128+N another stop "
                                   "signal N")
    parser.add_argument("--version", action="version", version=f"chargpt {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)
    for add in (_add_prepare, _add_train, _add_sample, _add_eval, _add_runs, _add_attention, _add_serve, _add_sweep):
        add(sub)
    return parser


def _add_prepare(sub) -> None:
    p = _command(sub, "prepare", "encode a corpus into a dataset directory")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", help="UTF-8 text file to prepare")
    src.add_argument("--dataset", choices=["shakespeare"], help="a named corpus (found locally or downloaded)")
    p.add_argument("--out", help=f"dataset directory (default: {dataset_dir('<name>')})")
    _add_option(p, PrepareOptions, "val_fraction")
    _add_option(p, PrepareOptions, "token_dtype")
    p.add_argument("--replace", action="store_true", help="replace a dataset of other text already in --out (runs "
                                                          "trained on it can then no longer resume)")
    _add_wandb_flags(p)
    p.add_argument("--artifact-name", default=None, help="dataset artifact name (default: mini-shakespeare-tensors "
                                                         "for tiny Shakespeare, else <name>-tensors)")
    p.set_defaults(func=cmd_prepare)


def _add_train(sub) -> None:
    p = _command(sub, "train", "train a model")
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="named configuration (default: lecture on CUDA, cpu elsewhere; not with --resume or "
                        "--init-from, which keep the model of the run they start from)")
    p.add_argument("--data", default=None, help=f"dataset directory from `chargpt prepare` (default: {DEFAULT_DATA})")
    _add_runs_dir_flag(p, "--out-dir")
    _add_option(p, RunOptions, "name")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a run from its checkpoint")
    p.add_argument("--init-from", default=None, metavar="RUN",
                   help="fine-tune: start a new run from this run's weights (a run directory or .pt file) on --data")
    _add_option(p, LaunchOptions, "nproc")
    p.add_argument("--config", default=None, metavar="FILE",
                   help="config fields from a run's config.json or a TOML/JSON file; flags override them")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.add_argument("--tracker", choices=get_args(TrackerName), default=None,
                   help="also track the run in this service (--wandb is --tracker wandb)")
    _add_wandb_flags(p)
    p.add_argument("--wandb-name", default=None, help="wandb run name (default: train-<model>-<preset>)")
    p.add_argument("--dataset-artifact", default=None, metavar="ENTITY/PROJECT/NAME:ALIAS",
                   help="download this wandb dataset artifact and train on it (online; --wandb not needed)")
    add_config_flags(p)
    p.set_defaults(func=cmd_train)


def _add_sample(sub) -> None:
    p = _command(sub, "sample", "generate text from a checkpoint")
    p.add_argument("--ckpt", default=DEFAULT_RUN, help=CKPT_HELP)
    _add_prompt_flags(p, "text to continue (default: a newline)")
    p.add_argument("--prompts-file", default=None, metavar="FILE",
                   help=f"one prompt per line of this UTF-8 file (an empty line: an empty prompt), all sampled "
                        f"together, each as --prompt LINE would be (at most {PROMPT_FILE_BYTES >> 20} MiB)")
    _add_sampling_flags(p)
    _add_option(p, SampleOptions, "num_samples")
    _add_device_flags(p)
    p.set_defaults(func=cmd_sample)


def _add_eval(sub) -> None:
    p = _command(sub, "eval", "loss of a checkpoint on a split (exact, or an evenly spread subset of a large one)")
    p.add_argument("--ckpt", default=DEFAULT_RUN, help=CKPT_HELP)
    p.add_argument("--data", default=None, help="dataset directory (default: the one the run trained on)")
    p.add_argument("--split", choices=["val", "train"], default="val", help="which split to score")
    add_field_flag(p, TrainConfig, "eval_tokens", default=EVAL_TOKENS)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_device_flags(p)
    p.set_defaults(func=cmd_eval)


def _add_runs(sub) -> None:
    p = _command(sub, "runs", "list the runs (or plot their val curves together)")
    _add_runs_dir_flag(p, "--out-dir")
    p.add_argument("--plot", nargs="*", default=None, metavar="RUN",
                   help="overlay these runs' val-loss curves (none named: every listed run of the newest run's "
                        "dataset)")
    p.add_argument("--out", default="runs.png", help="PNG written by --plot")
    p.add_argument("--all", action="store_true", help="with --plot: overlay runs trained on different datasets too")
    p.set_defaults(func=cmd_runs)


def _add_attention(sub) -> None:
    p = _command(sub, "attention", "draw each head's attention over a prompt into a PNG")
    p.add_argument("--ckpt", default=DEFAULT_RUN, help=CKPT_HELP + " of a GPT")
    _add_prompt_flags(p, "text whose attention is drawn (at most block_size characters)")
    p.add_argument("--scale", choices=SCALES, default="log", help=SCALE_HELP)
    _add_option(p, AttentionOptions, "window")
    p.add_argument("--out", default="attention.png", help="PNG to write")
    _add_device_flags(p)
    p.set_defaults(func=cmd_attention)


def _add_serve(sub) -> None:
    p = _command(sub, "serve", "web playground and OpenAI-compatible API over the runs")
    src = p.add_mutually_exclusive_group()
    _add_runs_dir_flag(src, "--runs")
    src.add_argument("--ckpt", default=None, help=f"serve only this run: {CKPT_HELP}")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (others reach the API if not local)")
    _add_option(p, ServeOptions, "port")
    _add_option(p, ServeOptions, "max_streams")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also answer requests that name the server NAME (a DNS name pointing at it; repeatable); "
                        "others get 403, so that no web page can reach the server through a name of its own")
    _add_device_flags(p, threads=False)
    p.set_defaults(func=cmd_serve)


def _add_sweep(sub) -> None:
    from .sweeps.entry import SweepOptions

    p = _command(sub, "sweep", "search for the best configuration: many runs under one trial budget, an Optuna study")
    p.add_argument("name", metavar="NAME", help=SweepOptions.__dataclass_fields__["name"].metadata["help"])
    p.add_argument("--data", default=None, help="dataset directory from `chargpt prepare` that every trial trains on")
    metavars = {"trials": "N", "trial_budget": "B", "time_budget": "T", "storage": "URL", "workers": "K",
                "grace_period": "SECONDS"}
    for name in ("trials", "trial_budget", "time_budget"):
        add_field_flag(p, SweepOptions, name, default=getattr(SweepOptions, name)).metavar = metavars[name]
    p.add_argument("--space", default=None, metavar="FILE",
                   help="TOML file of the fields to search: a range {low = 1e-4, high = 3e-2, log = true}, a list of "
                        "values [2, 3, 4], or a fixed value (default: around the budget's choice for this machine)")
    p.add_argument("--search", action="append", default=None, metavar="NAME=VALUE",
                   help="a field of the space, as a line of --space writes it (repeatable): n_layer=[2,3,4]")
    for name in ("storage", "workers", "pruner", "grace_period"):
        add_field_flag(p, SweepOptions, name, default=getattr(SweepOptions, name)).metavar = metavars.get(name)
    add_field_flag(p, TrainConfig, "seed", default=TrainConfig.seed,
                   help="seeds the sampler and every trial's run: one worker repeats a sweep exactly")
    p.add_argument("--show", action="store_true",
                   help="print the trials as a table and write Optuna's plots as PNGs into sweeps/NAME")
    _add_runs_dir_flag(p)
    p.add_argument("--tracker", choices=get_args(TrackerName), default=None,
                   help="also track each trial's run in this service (--wandb is --tracker wandb)")
    _add_wandb_flags(p)
    p.set_defaults(func=cmd_sweep)


def _error(message, prefix: str = "error: ") -> None:
    """One line on stderr, whatever the message holds (a path given with a newline in it, say); a stderr that is
    gone (a closed terminal, a pipe whose reader left) takes it nowhere, without failing."""
    try:
        print(f"{prefix}{one_line(message)}", file=sys.stderr, flush=True)
    except (OSError, ValueError):
        from .runtime.progress import silence

        silence(sys.stderr)


def _out_of_memory(e: BaseException) -> bool:
    """Whether `e` is an allocation that failed: Python's MemoryError, torch's on a GPU, or torch's CPU allocator."""
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(e)


def _stopped(message) -> None:
    """A command stopped by a signal (Ctrl-C, SIGTERM, SIGHUP, ...): not an error, so a plain line, with the exit
    code that signal gives."""
    _error(message, prefix="")


def _stopped_at_once(signum: int, command: str | None, removed: Path | None = None) -> str:
    """What a command stopped at once by `signum` leaves behind: every file whole; for `train`, the new run
    `removed` because it had not begun training (a run that had keeps what it saved)."""
    left = ("; a run that had begun training keeps its last checkpoint" if command == "train" else "")
    what = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated",
            getattr(signal, "SIGHUP", None): "hung up"}.get(signum, "stopped")
    if removed is not None:
        return (f"{what} by {signal_name(signum)} before {removed} began training: it is removed, as if never "
                f"started (the same command starts it again); files are written whole or not at all")
    return f"{what} by {signal_name(signum)}; files are written whole or not at all (temporaries removed){left}"


def main(argv: list[str] | None = None) -> int:
    """The `chargpt` command; without `argv` it is this process's program (it reads sys.argv and its exit follows)."""
    if argv is None and (sys.stdout is None or sys.stderr is None):  # `>&-`: discarded, as a closed pipe's output
        from .runtime.progress import open_missing_outputs

        open_missing_outputs()
    with command_signals(program=argv is None):
        return _run(argv)


def _run(argv: list[str] | None) -> int:
    command = None
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        command = args.command
        args.argv = sys.argv[1:] if argv is None else list(argv)
        args.program = argv is None  # this process is the command (its start is the command's)
        check_flags(parser.commands()[args.command], args)
        return args.func(args)
    except SystemExit as e:  # --help and --version print and stop: a return code for callers of main()
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    except TrainingInterrupted as e:  # stopped by a signal, its checkpoint saved
        _stopped(e)
        return e.exit_code
    except ChargptError as e:  # bad input (EXIT_USAGE), or its own exit code (a diverged run)
        _error(e)
        return e.exit_code
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Terminated) else signal.SIGINT
        _stopped(_stopped_at_once(signum, command, getattr(e, "removed_run", None)))
        return exit_code_of(signum)
    except BrokenPipeError:
        return 0
    except (MemoryError, RuntimeError) as e:  # an allocation past what the memory estimates saw (a `ulimit -v`)
        if not _out_of_memory(e):
            raise
        _error("out of memory; choose a smaller model, --batch-size, --num-samples or --max-new-tokens, or free "
               "memory, then retry")
        return EXIT_FAILURE
    except OSError as e:  # a full disk or a vanished directory: nothing chargpt could check beforehand
        where = f" ({e.filename})" if e.filename else ""
        fix = ("free space or choose another path" if e.errno in (errno.ENOSPC, errno.EDQUOT)
               else "choose a path you can write" if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
               else "choose another path")
        _error(f"{e.strerror or e}{where}; {fix}, then retry")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
