"""Run configuration as dataclasses, the named presets, and the CLI flags derived from them."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError
from .schema import (MAX_DIGITS, as_kind, check_fields, check_value, choices, did_you_mean, field_kind, flag, option,
                     parse_float, parse_int, shown, type_problem)

# No torch here: `chargpt --help` and every usage error are answered from these declarations alone.

# Every number a user can give has a range; these are the upper bounds several fields share. Each is far beyond
# any use and far below what breaks arithmetic (a seed of 400 digits, a budget of 10^300 hours).
MAX_VOCAB = 0x110000  # characters: every Unicode code point
MAX_BLOCK = 2 ** 20  # characters of context
MAX_WIDTH = 2 ** 16  # embedding width, and heads
MAX_LAYERS = 1024
MAX_BATCH = 10 ** 9  # sequences in a batch, characters generated
MAX_EVALS = 10 ** 6  # batches per estimate, estimates in a time budget
MAX_STEPS = 10 ** 12  # optimizer steps, and intervals counted in steps; characters scored
MAX_SECONDS = 365 * 24 * 3600  # a time budget of a year
MAX_RATE = 100.0  # learning rates and weight decays
MAX_SCALE = 10.0 ** 6  # a clipping norm or a logit cap this large is no clipping at all

# Each modern change to the lecture's GPT is one field here. fastdecode.py holds a numpy copy of GPT.forward
# for fast CPU sampling; model.NUMPY_DECODES lists the values it implements (anything else decodes with torch).
@dataclass
class ModelConfig:
    model: Literal["bigram", "gpt"] = option("gpt", "bigram (a table of next-character logits) or gpt")
    vocab_size: int = option(65, "characters in the vocabulary (set from the dataset)", min=1, max=MAX_VOCAB)
    block_size: int = option(256, "context length in characters", min=1, max=MAX_BLOCK)
    n_layer: int = option(6, "transformer blocks", min=1, max=MAX_LAYERS)
    n_head: int = option(6, "attention heads per block", min=1, max=MAX_WIDTH)
    n_embd: int = option(384, "embedding width (divisible by n_head)", min=1, max=MAX_WIDTH)
    dropout: float = option(0.2, "dropout probability in training", min=0.0, max=1.0, max_open=True)
    bias: bool = option(True, "biases in Linear and LayerNorm")
    pos: Literal["learned", "rope"] = option("learned", "position encoding: a learned table or rotary (RoPE)")
    norm: Literal["layernorm", "rmsnorm"] = option("layernorm", "LayerNorm (the lecture) or parameter-free RMSNorm")
    mlp: Literal["relu", "relu2", "gelu"] = option("relu", "feed-forward activation: relu (the lecture), relu2, gelu")
    qk_norm: bool = option(False, "RMS-normalize queries and keys before attention")
    zero_init: bool = option(False, "output projections start at zero")
    tie_weights: bool = option(False, "share the token embedding with the head")
    logit_softcap: float = option(0.0, "> 0: logits = cap * tanh(logits / cap); 0 turns it off", min=0.0,
                                 max=MAX_SCALE)

    def validate(self) -> None:
        check_fields(self)
        if self.n_embd % self.n_head:
            raise ConfigError(f"--n-embd ({self.n_embd}) must be divisible by --n-head ({self.n_head})")
        if self.pos == "rope" and (self.n_embd // self.n_head) % 2:
            raise ConfigError(f"RoPE needs an even head size; n_embd / n_head = {self.n_embd // self.n_head}")



EVAL_TOKENS = 2_000_000  # default size of the end-of-run pass: a close estimate, quick on a CPU
# The trackers `--tracker` offers; each name `x` is the module chargpt/track/x.py (see track/tracker.py).
TrackerName = Literal["wandb", "tensorboard"]
DEFAULT_RUNS_DIR = "runs"  # where run directories are created and found
LATEST = "latest"  # the link in a runs folder to its newest run with a checkpoint
DEFAULT_RUN = f"{DEFAULT_RUNS_DIR}/{LATEST}"  # the run that sample, eval and `chargpt.load` read by default


def dataset_dir(name: str) -> str:
    """Where `chargpt prepare` writes the dataset `name` when no --out is given."""
    return f"data/{name}"


DEFAULT_DATA = dataset_dir("shakespeare")  # the dataset directory `chargpt prepare` writes by default
MAX_THREADS = 1024  # torch crashes (not an error: a segfault) when asked for 100,000


@dataclass
class TrainConfig:
    batch_size: int = option(64, "sequences per micro-batch (per process)", min=1, max=MAX_BATCH)
    grad_accum: int = option(1, "micro-batches per optimizer step", min=1, max=MAX_BATCH)
    max_steps: int = option(5000, "optimizer steps (ignored when time_budget is set)", min=1, max=MAX_STEPS)
    time_budget: float = option(0.0, "seconds of training (150, 150s, 5m, 1h; at most a year); 0 or none = use max_steps",
                                min=0.0, max=MAX_SECONDS)
    optimizer: Literal["adamw", "muon"] = option("adamw", "adamw, or muon (Muon for hidden matrices, AdamW for the rest)")
    lr: float = option(3e-4, "AdamW learning rate", min=0.0, min_open=True, max=MAX_RATE)
    muon_lr: float = option(0.02, "Muon learning rate (hidden 2-D weights)", min=0.0, min_open=True, max=MAX_RATE)
    weight_decay: float = option(0.0, "AdamW weight decay on matrices and embeddings", min=0.0, max=MAX_RATE)
    muon_weight_decay: float = option(0.0, "Muon decoupled weight decay on hidden matrices (each step shrinks them "
                                           "by muon_lr x this)", min=0.0, max=MAX_RATE)
    ema: float = option(0.0, "> 0: also keep the average of the weights over the last part of training (--ema-from), an "
                             "exponential moving average with this decay per step; the run scores it at the end and "
                             "recommends it when its full pass is lower", min=0.0, max=1.0, max_open=True)
    ema_from: float = option(0.5, "fraction of training after which the weights are averaged (--ema)", min=0.0, max=1.0,
                             max_open=True)
    beta1: float = option(0.9, "AdamW beta1", min=0.0, max=1.0, max_open=True)
    beta2: float = option(0.999, "AdamW beta2", min=0.0, max=1.0, max_open=True)
    grad_clip: float = option(1.0, "max gradient norm; 0 = no clipping", min=0.0, max=MAX_SCALE)
    schedule: Literal["constant", "cosine", "wsd"] = option(
        "constant", "learning-rate schedule: constant, cosine, or wsd (warmup, stable, linear decay to 0)")
    warmup: float = option(0.0, "fraction of training spent warming up the learning rate", min=0.0, max=1.0)
    decay: float = option(0.35, "wsd: final fraction of training that decays the learning rate to 0", min=0.0, max=1.0)
    min_lr_frac: float = option(0.1, "cosine: final learning rate as a fraction of the peak", min=0.0, max=1.0)
    eval_interval: int = option(500, "steps between estimates of train/val loss", min=1, max=MAX_STEPS)
    eval_iters: int = option(200, "batches per estimate", min=1, max=MAX_EVALS)
    budget_evals: int = option(10, "with a time budget: estimates at this many evenly spaced times (not eval_interval)",
                               min=1, max=MAX_EVALS)
    ckpt_interval: int = option(0, "steps between checkpoints; 0 = at every evaluation", min=0, max=MAX_STEPS)
    log_interval: int = option(10, "steps between progress updates and training-loss records in metrics.jsonl",
                               min=1, max=MAX_STEPS)
    seed: int = option(1337, "random seed (weights, batches, dropout, the final sample)", min=0, max=2 ** 64,
                       max_open=True)
    device: str = option("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps",
                         pattern=r"auto|cpu|mps|cuda(:[0-9]+)?", allowed="auto, cpu, mps, cuda or cuda:N")
    dtype: Literal["auto", "float32", "bfloat16"] = option(
        "auto", "auto (bf16 autocast on CUDA and bf16-capable CPUs, else float32), float32 or bfloat16")
    compile: bool = option(False, "torch.compile the model")
    threads: int = option(0, "CPU threads; 0 = the cores not busy right now (measured over 0.1 s), at least 1; "
                             "in a run of train --nproc N, each process's share of the cores", min=0, max=MAX_THREADS)
    sample_tokens: int = option(500, "characters sampled into the run directory at the end", min=0, max=MAX_BATCH)
    eval_tokens: int = option(EVAL_TOKENS, "characters scored in a pass over a split (val, at the end of training): "
                                           "evenly spread windows when the split is larger, with the standard error "
                                           "of the estimate; 0 or all = every character (the exact pass)", min=0,
                                max=MAX_STEPS)

    def validate(self) -> None:
        check_fields(self)
        if self.warmup + (self.decay if self.schedule == "wsd" else 0) > 1.0:
            raise ConfigError("--warmup plus --decay must not exceed 1")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def validate(self) -> None:
        self.model.validate()
        self.train.validate()

    def to_dict(self) -> dict:
        return {"model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train)}

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        """The config saved as `d` (a checkpoint's or a run's), each value checked against its field's type."""
        try:
            return cls(_typed(ModelConfig, d["model"]), _typed(TrainConfig, d["train"]))
        except (KeyError, TypeError) as e:
            raise ConfigError(f"not a chargpt config ({e})") from None


def _typed(kind, values: dict):
    """The `kind` dataclass holding `values`, each of its field's type (an integer stands for a float)."""
    if not isinstance(values, dict):
        raise TypeError(f"{kind.__name__} values are {type(values).__name__}, not an object")
    known = {f.name for f in fields(kind)}
    for name, value in values.items():
        if name not in known:
            raise TypeError(f"unknown field {name!r}")
        wrong = type_problem(value, field_kind(kind, name))
        if wrong:
            raise TypeError(f"{name} {wrong}")
    return kind(**{k: as_kind(v, field_kind(kind, k)) for k, v in values.items()})


# ------------------------------------------------------------------------------------ command options
# Values of a command that are not a run's config, declared like its fields: the CLI's flag, `--help` and the check
# (`check_value`, the same for the CLI, the library and the server) come from these declarations.
TokenDtype = Literal["auto", "uint8", "int16", "int32", "int64"]


@dataclass
class PrepareOptions:
    val_fraction: float = option(0.1, "last fraction of the text kept for validation", min=0.0, min_open=True,
                                 max=1.0, max_open=True)
    token_dtype: TokenDtype = option(  # not --dtype: that is train's compute precision
        "auto", "integer type of the stored tokens; auto: int64 (what the notebook's torch.tensor(..., "
                "dtype=torch.long) gives) up to 100M characters, the smallest type that fits above")


@dataclass
class ServeOptions:
    port: int = option(8000, "port to listen on (0: any free port)", min=0, max=65535)
    max_streams: int = option(0, "completions of a model decoded together, one batched step per character; more "
                                 "wait in a queue (0: as many as memory allows, at most 64)", min=0, max=4096)


@dataclass
class RunOptions:
    # A run name is a directory's name and a row of `chargpt runs`: one plain, printable path component, inside
    # --runs-dir, and never `latest` (chargpt's link to the newest run).
    name: str = option(None, "run name (default: train-<model>-<preset>-<time>)",
                       pattern=rf"(?!\.)(?!{LATEST}\Z)[^/\\]{{1,100}}",
                       allowed=f"a plain run name: 1 to 100 printable characters, no '/' or '\\', not starting "
                               f"with '.', not {LATEST!r}")


# ------------------------------------------------------------------------------------------- presets
MODERN = dict(pos="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, bias=False, zero_init=True, dropout=0.0)

PRESETS: dict[str, Config] = {
    # The notebook's baseline: a lookup table of next-character logits.
    "bigram": Config(
        ModelConfig(model="bigram", block_size=8, dropout=0.0),
        TrainConfig(batch_size=32, max_steps=3000, lr=1e-2, eval_interval=300, eval_iters=200),
    ),
    # The lecture's run (a GPU model: far too slow per step on a CPU).
    "lecture": Config(
        ModelConfig(model="gpt", block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
        TrainConfig(batch_size=64, max_steps=5000, lr=3e-4, weight_decay=0.01, eval_interval=500, eval_iters=200),
    ),
    # nanoGPT's documented CPU recipe, for comparison.
    "nanogpt-cpu": Config(
        ModelConfig(model="gpt", block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, mlp="gelu"),
        TrainConfig(batch_size=12, max_steps=2000, lr=1e-3, beta2=0.99, weight_decay=0.1, schedule="cosine",
                    warmup=0.05, eval_interval=250, eval_iters=20),
    ),
    # The modern variant sized for minutes on a small CPU (chosen by the ablations in benchmarks/RESULTS.md). A long
    # run overfits; what it gains from most: the average of the weights over the second half (ema), a little Muon
    # weight decay, a longer warmdown.
    "cpu": Config(
        ModelConfig(model="gpt", block_size=128, n_layer=3, n_head=4, n_embd=128, tie_weights=False, **MODERN),
        TrainConfig(batch_size=16, max_steps=2500, optimizer="muon", lr=3e-3, muon_lr=0.02, muon_weight_decay=0.02,
                    beta2=0.95, schedule="wsd", warmup=0.0, decay=0.5, ema=0.998, ema_from=0.5, eval_interval=500,
                    eval_iters=20, compile=True),
    ),
    # The modern variant sized for one large GPU. Dropout 0.2: without it the model memorizes tiny Shakespeare
    # within a minute on a large GPU (benchmarks/RESULTS.md).
    "gpu": Config(
        ModelConfig(model="gpt", block_size=256, n_layer=6, n_head=6, n_embd=384, tie_weights=False,
                    **(MODERN | {"dropout": 0.2})),
        TrainConfig(batch_size=64, max_steps=3000, optimizer="muon", lr=3e-3, muon_lr=0.02, beta2=0.95,
                    schedule="wsd", warmup=0.02, decay=0.4, eval_interval=250, eval_iters=50, compile=True),
    ),
}


def default_preset(device_type: str) -> str:
    return "lecture" if device_type == "cuda" else "cpu"


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], model=dataclasses.replace(PRESETS[name].model),
                               train=dataclasses.replace(PRESETS[name].train))


# ----------------------------------------------------------------------------- durations and flags
def parse_duration(text: str | float) -> float:
    """'150', '150s', '2.5m', '1h' -> seconds; 'none' -> 0 (no budget: max_steps counts)."""
    if isinstance(text, (int, float)):
        return float(text)
    if str(text).strip().lower() == "none":
        return 0.0
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h)?\s*", str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"invalid duration {shown(text)}; use seconds (150), or 150s, 5m, 1h (none: no budget)")
    return float(m.group(1)) * {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]


def parse_eval_tokens(text: str | int) -> int:
    """'all' -> 0 (every character: the exact pass), else a count of characters."""
    if isinstance(text, int) or str(text).strip().isdigit():
        return text if isinstance(text, int) else parse_int(text)
    if str(text).strip().lower() == "all":
        return 0
    raise argparse.ArgumentTypeError(f"invalid count {shown(text)}; use a number of characters, or all")


NOT_FLAGS = {"vocab_size"}  # set from the dataset, never by hand
PARSERS = {"time_budget": parse_duration, "eval_tokens": parse_eval_tokens}
# How a value that means "none" or "all" is shown back (in `config_changes`), in the words its flag takes.
SHOWN_AS = {"time_budget": lambda v: "none" if v == 0 else f"{v:g}s", "eval_tokens": lambda v: "all" if v == 0 else v}
METAVARS = {"time_budget": "DURATION", "eval_tokens": "N|all", "device": "DEVICE", "threads": "N", "name": "NAME",
            "nproc": "N"}
TEXT_TO = {int: parse_int, float: parse_float, str: str}  # how a flag's text is read, by its field's kind
SECTIONS = {"model": ModelConfig, "train": TrainConfig}


def config_fields():
    """(section, dataclass field) for every field a user may set."""
    return [(section, f) for section, cls in SECTIONS.items() for f in fields(cls) if f.name not in NOT_FLAGS]


def add_config_flags(parser: argparse.ArgumentParser, shown: str = "cpu") -> None:
    """One flag per config field, with its description, its choices and the `shown` preset's value as its
    default; unset flags (None) keep the preset's value."""
    preset = PRESETS[shown]
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} config (defaults come from the preset; shown: '{shown}')")
        for f in fields(cls):
            if f.name not in NOT_FLAGS:
                default = getattr(getattr(preset, section), f.name)
                add_field_flag(group, cls, f.name, help=f"{f.metadata['help']} (default: {default})")


def add_field_flag(parser, cls, name: str, default=None, help: str | None = None) -> argparse.Action:
    """The flag of field `name` of the dataclass `cls`: the same type, choices and description in every command
    that takes it (`train --threads` and `sample --threads`); None (the default) means not given. The action
    remembers its field (`field_of`): `check_flags` checks a given value against the field's declaration."""
    f = next(f for f in fields(cls) if f.name == name)
    kw: dict[str, Any] = dict(dest=name, default=default, help=help or f.metadata["help"])
    if f.type == "bool":
        kw["action"] = argparse.BooleanOptionalAction
    elif choices(cls, name):
        kw["choices"] = choices(cls, name)
    else:
        kind = {"int": int, "float": float, "str": str}[f.type]
        kw["type"] = PARSERS.get(name, TEXT_TO[kind])
        kw["metavar"] = METAVARS.get(name, kind.__name__.upper())
    action = parser.add_argument(flag(name), **kw)
    action.field_of = cls
    return action


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check each value given to a flag of `parser` made by `add_field_flag`, with its field's message (the one
    a config file's value gets), before any work starts."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if getattr(action, "field_of", None) is not None and value is not None:
            check_value(action.field_of, action.dest, value)


def set_fields(config: Config, values: dict[str, Any], where: str) -> list[str]:
    """Set config fields from {name: value} (or {"model": {...}, "train": {...}}); return the names set."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update(value)
        elif key not in ("preset", "data_dir", "init_from", "dataset"):  # a run's config.json records them too
            flat[key] = value
    known = {f.name: (section, f) for section, f in config_fields()}
    for name, value in flat.items():
        if name in NOT_FLAGS:
            continue
        if name not in known:
            raise ConfigError(f"{where}: unknown config field {name!r}{did_you_mean(name, known)}; see "
                              f"`chargpt train --help` for the fields")
        if name in PARSERS and isinstance(value, str):
            try:
                value = PARSERS[name](value)
            except argparse.ArgumentTypeError as e:
                raise ConfigError(f"{where}: {name}: {e}") from None
        section, _ = known[name]
        kind = field_kind(SECTIONS[section], name)
        wrong = type_problem(value, kind)  # the range is the config's to check (`validate`), with every field
        if wrong:
            raise ConfigError(f"{where}: {name} {wrong}", field=name)
        setattr(getattr(config, section), name, as_kind(value, kind))
    return [n for n in flat if n not in NOT_FLAGS]


def check_given(values: dict[str, Any], where: str) -> None:
    """Each of `values` (fields, as keywords or a config file give them) against its field's declaration, type
    and range, before any work: the check a flag's value gets (`check_flags`); `Config.validate` checks the whole
    config later."""
    config, sections = Config(), {f.name: section for section, f in config_fields()}
    for name in set_fields(config, values, where):
        check_value(SECTIONS[sections[name]], name, getattr(getattr(config, sections[name]), name))


def given_fields(args: argparse.Namespace) -> dict[str, Any]:
    """{field: value} of every config flag the user gave."""
    return {f.name: getattr(args, f.name) for _, f in config_fields() if getattr(args, f.name, None) is not None}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Fields from a run's config.json, or a TOML or JSON file of fields (flat, or in model/train tables)."""
    from .fsutil import read_bytes

    path = Path(path)
    try:
        text = read_bytes(path).decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path} ({getattr(e, 'strerror', None) or e}); "
                          f"pass a config.json of a run or a TOML/JSON file of fields") from None
    try:
        values = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({e})") from None
    except ValueError:  # Python's limit on reading a long integer (4,300 digits)
        raise ConfigError(f"{path} holds an integer of thousands of digits; an integer here has at most "
                          f"{MAX_DIGITS} digits") from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply; write a table of config fields, e.g. {{\"n_layer\": 4}}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a table of config fields, e.g. {{\"n_layer\": 4}}")
    for section in SECTIONS:
        if section in values and not isinstance(values[section], dict):
            raise ConfigError(f"{path}: {section} must be a table of {section} fields, got {values[section]!r}")
    for key in ("preset", "data_dir"):
        wrong = None if values.get(key) is None else type_problem(values[key], str)
        if wrong:
            raise ConfigError(f"{path}: {key} {wrong}")
    check_given(values, str(path))  # every field's type and range, before any of them is used
    return values


def config_changes(config: Config, base: Config) -> list[str]:
    """`name=value` for each field of `config` that differs from `base` (the preset, or the config a resumed
    run was saved with); `vocab_size` comes from the dataset and is left out."""
    out = []
    for section in ("model", "train"):
        new, old = getattr(config, section), getattr(base, section)
        out += [f"{f.name}={SHOWN_AS.get(f.name, lambda v: v)(getattr(new, f.name))}" for f in fields(new)
                if f.name not in NOT_FLAGS and getattr(new, f.name) != getattr(old, f.name)]
    return out
