"""Run configuration as dataclasses, the named presets, and the CLI flags derived from them."""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError
from .evaluate import EVAL_TOKENS
from .model import ModelConfig


MAX_THREADS = 1024  # torch crashes (not an error: a segfault) when asked for 100,000


@dataclass
class TrainConfig:
    batch_size: int = 64  # sequences per micro-batch (per process)
    grad_accum: int = 1  # micro-batches per optimizer step
    max_steps: int = 5000  # optimizer steps (ignored when time_budget is set)
    time_budget: float = 0.0  # seconds of training (e.g. 150, 150s, 5m, 1h); 0 = use max_steps
    optimizer: str = "adamw"  # adamw | muon (Muon for hidden matrices, AdamW for the rest)
    lr: float = 3e-4  # AdamW learning rate
    muon_lr: float = 0.02  # Muon learning rate (hidden 2-D weights)
    weight_decay: float = 0.0  # AdamW weight decay on matrices and embeddings
    beta1: float = 0.9
    beta2: float = 0.999
    grad_clip: float = 1.0  # max gradient norm; 0 = no clipping
    schedule: str = "constant"  # constant | cosine | wsd (warmup, stable, linear decay to 0)
    warmup: float = 0.0  # fraction of training spent warming up the learning rate
    decay: float = 0.35  # wsd: final fraction of training that decays the learning rate to 0
    min_lr_frac: float = 0.1  # cosine: final learning rate as a fraction of the peak
    eval_interval: int = 500  # steps between estimates of train/val loss
    eval_iters: int = 200  # batches per estimate
    budget_evals: int = 10  # with a time budget: estimates at this many evenly spaced times (not eval_interval)
    ckpt_interval: int = 0  # steps between checkpoints; 0 = at every evaluation
    log_interval: int = 10  # steps between progress updates and training-loss records in metrics.jsonl
    seed: int = 1337
    device: str = "auto"  # auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 autocast on CUDA and bf16-capable CPUs, else float32) | float32 | bfloat16
    compile: bool = False  # torch.compile the model
    threads: int = 0  # CPU threads for torch; 0 = torch's default
    sample_tokens: int = 500  # characters sampled into the run directory at the end
    eval_tokens: int = EVAL_TOKENS  # characters of val scored at the end (evenly spread); 0 or `all` = exact pass

    def validate(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{f.name.replace('_', '-')} must be a finite number, got {value}")
        for name in ("batch_size", "grad_accum", "max_steps", "eval_interval", "eval_iters", "budget_evals",
                     "log_interval"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("lr", "muon_lr"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number > 0, got {getattr(self, name)}")
        for name in ("time_budget", "weight_decay", "grad_clip", "ckpt_interval", "threads", "sample_tokens",
                     "eval_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if self.threads > MAX_THREADS:
            raise ConfigError(f"--threads must be at most {MAX_THREADS} (0 = torch's default), got {self.threads}")
        if not 0 <= self.seed < 2 ** 64:
            raise ConfigError(f"--seed must be in [0, 2^64), got {self.seed}")
        for name in ("warmup", "decay", "min_lr_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        if self.warmup + (self.decay if self.schedule == "wsd" else 0) > 1.0:
            raise ConfigError("--warmup plus --decay must not exceed 1")
        for name, allowed in (("optimizer", ("adamw", "muon")), ("schedule", ("constant", "cosine", "wsd")),
                              ("dtype", ("auto", "float32", "bfloat16"))):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device):
            raise ConfigError(f"--device must be auto, cpu, mps, cuda or cuda:N, got {self.device!r}")


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
    if not isinstance(values, dict):
        raise TypeError(f"{kind.__name__} values are {type(values).__name__}, not an object")
    default = kind()
    for name, value in values.items():
        if not hasattr(default, name):
            raise TypeError(f"unknown field {name!r}")
        want = type(getattr(default, name))
        ok = (isinstance(value, want) and (want is bool or not isinstance(value, bool))) or \
             (want is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise TypeError(f"{name} is {value!r}, not a {want.__name__}")
    return kind(**{k: (float(v) if type(getattr(default, k)) is float else v) for k, v in values.items()})


# ------------------------------------------------------------------------------------------- presets
MODERN = dict(pos="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, bias=False, zero_init=True, dropout=0.0)

PRESETS: dict[str, Config] = {
    # The notebook's baseline: a lookup table of next-character logits.
    "bigram": Config(
        ModelConfig(model="bigram", block_size=8, dropout=0.0),
        TrainConfig(batch_size=32, max_steps=3000, lr=1e-2, eval_interval=300, eval_iters=200),
    ),
    # The lecture's run (a GPU model: ~16 s per step on 2 CPU cores).
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
    # The modern variant sized for minutes on a 2-core CPU (chosen by the ablations in benchmarks/RESULTS.md).
    "cpu": Config(
        ModelConfig(model="gpt", block_size=128, n_layer=3, n_head=4, n_embd=128, tie_weights=False, **MODERN),
        TrainConfig(batch_size=16, max_steps=2500, optimizer="muon", lr=3e-3, muon_lr=0.02, beta2=0.95,
                    schedule="wsd", warmup=0.0, decay=0.35, eval_interval=500, eval_iters=20, compile=True),
    ),
    # The modern variant sized for one large GPU. Dropout 0.2: without it the 10.7M model memorizes tiny
    # Shakespeare within 60 s on an H200 (val 1.53 at step 250, 4.13 at the end; benchmarks/RESULTS.md).
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
    """'150', '150s', '2.5m', '1h' -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h)?\s*", str(text))
    if not m:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}; use seconds (150), or 150s, 5m, 1h")
    return float(m.group(1)) * {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}[m.group(2)]


def parse_eval_tokens(text: str | int) -> int:
    """'all' -> 0 (every character: the exact pass), else a count of characters."""
    if isinstance(text, int) or str(text).strip().isdigit():
        return int(text)
    if str(text).strip().lower() == "all":
        return 0
    raise argparse.ArgumentTypeError(f"invalid count {text!r}; use a number of characters, or all")


NOT_FLAGS = {"vocab_size"}  # set from the dataset, never by hand
PARSERS = {"time_budget": parse_duration, "eval_tokens": parse_eval_tokens}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per field of ModelConfig and TrainConfig; unset flags keep the preset's value."""
    base = Config()
    for section in ("model", "train"):
        group = parser.add_argument_group(f"{section} config (defaults come from the preset; shown: "
                                          f"the '{'cpu'}' preset)")
        preset = PRESETS["cpu"]
        for f in fields(getattr(base, section)):
            if f.name in NOT_FLAGS:
                continue
            default = getattr(getattr(preset, section), f.name)
            kind = type(getattr(getattr(base, section), f.name))
            kw: dict[str, Any] = dict(dest=f.name, default=None, help=f"(default: {default})")
            if kind is bool:
                kw["action"] = argparse.BooleanOptionalAction
            else:
                kw["type"] = PARSERS.get(f.name, kind)
                kw["metavar"] = kind.__name__.upper()
            group.add_argument(_flag(f.name), **kw)


def apply_overrides(config: Config, args: argparse.Namespace) -> list[str]:
    """Set every flag the user gave on `config`; return their names."""
    changed = []
    for section in ("model", "train"):
        obj = getattr(config, section)
        for f in fields(obj):
            value = getattr(args, f.name, None)
            if f.name not in NOT_FLAGS and value is not None:
                setattr(obj, f.name, value)
                changed.append(f.name)
    return changed


def config_changes(config: Config, base: Config) -> list[str]:
    """`name=value` for each field of `config` that differs from `base` (the preset, or the config a resumed
    run was saved with); `vocab_size` comes from the dataset and is left out."""
    out = []
    for section in ("model", "train"):
        new, old = getattr(config, section), getattr(base, section)
        out += [f"{f.name}={getattr(new, f.name)}" for f in fields(new)
                if f.name not in NOT_FLAGS and getattr(new, f.name) != getattr(old, f.name)]
    return out
