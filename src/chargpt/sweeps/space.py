"""A sweep's search space: the config fields a trial samples, each from a range or a list of values, and those every
trial takes as given. Read from TOML (a file, or `--search NAME=VALUE` lines) and checked by the config's one
schema before any trial runs: an unknown field gets "did you mean", a bound out of its field's range the field's
own message."""
from __future__ import annotations

import argparse
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import PARSERS, PRESETS, SECTIONS, Config, config_fields
from ..errors import ConfigError
from ..schema import KINDS, check_value, choices, did_you_mean, field_kind, problem

# Fields a sweep sets for every trial itself: a space that searched them would make its trials incomparable.
SET_BY_SWEEP = {"time_budget": "--trial-budget", "max_steps": "--trial-budget", "seed": "--seed"}
RANGE_KEYS = ("low", "high", "log", "step")
EXAMPLE = "lr = {low = 1e-4, high = 3e-2, log = true}, n_layer = [2, 3, 4]"


@dataclass(frozen=True)
class Dimension:
    """One sampled field: a range from `low` to `high` (on a log scale, or in steps of `step`), or `choices`."""

    name: str
    kind: type  # int, float, bool or str: the field's
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple | None = None

    def suggest(self, trial) -> Any:
        """This field's value for an Optuna `trial`."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def spec(self) -> Any:
        """The TOML value that declares this dimension (what a space file holds)."""
        if self.choices is not None:
            return list(self.choices)
        return {"low": self.low, "high": self.high, **({"log": True} if self.log else {}),
                **({"step": self.step} if self.step is not None else {})}

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.name} in {{{', '.join(map(_shown, self.choices))}}}"
        scale = " log" if self.log else f" step {_shown(self.step)}" if self.step is not None else ""
        return f"{self.name} in [{_shown(self.low)}, {_shown(self.high)}]{scale}"


def _shown(value) -> str:
    return f"{value:g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class Space:
    dimensions: tuple[Dimension, ...]
    fixed: dict  # config fields (and a preset) that every trial takes as given

    def sample(self, trial) -> dict[str, Any]:
        return {d.name: d.suggest(trial) for d in self.dimensions}

    def as_dict(self) -> dict[str, Any]:
        """The space as a table of TOML values: `build_space` reads it back as the same space."""
        return self.fixed | {d.name: d.spec() for d in self.dimensions}

    def describe(self) -> str:
        parts = [d.describe() for d in self.dimensions] + [f"{k}={_shown(v)}" for k, v in self.fixed.items()]
        return ", ".join(parts) or "nothing to search"


def read_space(path: str | Path) -> dict[str, Any]:
    """The table of a space file (TOML)."""
    from ..fsutil import read_text

    try:
        text = read_text(path)
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read --space {path} ({getattr(e, 'strerror', None) or e}); pass a TOML file of "
                          f"fields and their values, e.g. {EXAMPLE}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--space {path} is not valid TOML ({e}); write e.g. {EXAMPLE}") from None


def search_values(lines: list[str]) -> dict[str, Any]:
    """`--search NAME=VALUE` lines as one table. VALUE is a TOML value (`0.1`, `[2, 3]`, `{low = 1e-4, high = 1e-2,
    log = true}`, `"rope"`); a bare word stands for a string (`rope`)."""
    values: dict[str, Any] = {}
    for line in lines:
        name, sep, text = line.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name:
            raise ConfigError(f"--search {line!r} must be NAME=VALUE, e.g. --search 'n_layer=[2, 3, 4]' or --search "
                              f"'lr={{low=1e-4, high=3e-2, log=true}}'")
        try:
            values[name] = tomllib.loads(f"value = {text}")["value"]
        except tomllib.TOMLDecodeError:
            if not re.fullmatch(r"[\w.:+-]+", text):
                raise ConfigError(f"--search {name}: {text!r} is not a value; give a number, a list such as [2, 3, 4] "
                                  f"or a range such as {{low=1e-4, high=3e-2, log=true}}") from None
            values[name] = text
    return values


def build_space(values: dict[str, Any], where: str) -> Space:
    """The space of `values` (flat, or in model/train tables, as a config file): a list is a choice, a table with
    low and high a range, anything else a fixed value. `where` names the source in messages."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat.update(value if key in SECTIONS and isinstance(value, dict) else {key: value})
    known = {f.name: SECTIONS[section] for section, f in config_fields()}
    dimensions, fixed = [], {}
    for name, value in flat.items():
        if name == "preset":
            if value not in PRESETS:
                raise ConfigError(f"{where}: preset must be one of {', '.join(PRESETS)}, got {value!r}")
            fixed[name] = value
        elif name in SET_BY_SWEEP:
            raise ConfigError(f"{where}: {name} is set by {SET_BY_SWEEP[name]} for every trial alike; drop it")
        elif name not in known:
            raise ConfigError(f"{where}: unknown config field {name!r}{did_you_mean(name, known)}; see "
                              f"`chargpt train --help` for the fields")
        elif isinstance(value, list):
            dimensions.append(_choices(known[name], name, value, where))
        elif isinstance(value, dict):
            dimensions.append(_range(known[name], name, value, where))
        else:
            fixed[name] = _checked(known[name], name, value, f"{where}: {{}}")
    return Space(tuple(dimensions), fixed)


def _checked(cls, name: str, value, spell: str):
    """`value` for field `name` of `cls`, checked by its declaration (a duration or `all` read as the CLI reads
    it); `spell` names it in a message (`{}` is the field)."""
    if name in PARSERS and isinstance(value, str):
        try:
            value = PARSERS[name](value)
        except argparse.ArgumentTypeError as e:
            raise ConfigError(f"{spell.format(name)}: {e}") from None
    check_value(cls, name, value, spell=spell.format)
    return float(value) if field_kind(cls, name) is float else value


def _choices(cls, name: str, values: list, where: str) -> Dimension:
    if not values:
        raise ConfigError(f"{where}: {name} = [] offers no value; list at least one, e.g. {name} = [a, b]")
    checked = tuple(_checked(cls, name, v, f"{where}: {{}}") for v in values)
    return Dimension(name, field_kind(cls, name), choices=tuple(dict.fromkeys(checked)))


def _range(cls, name: str, spec: dict, where: str) -> Dimension:
    kind = field_kind(cls, name)
    unknown = [k for k in spec if k not in RANGE_KEYS]
    if unknown:
        raise ConfigError(f"{where}: {name} takes {', '.join(RANGE_KEYS)}, not {unknown[0]!r}"
                          f"{did_you_mean(unknown[0], RANGE_KEYS)}")
    if kind not in (int, float) or choices(cls, name):
        raise ConfigError(f"{where}: {name} is {KINDS[kind]}, not a number with a range; list its values instead, "
                          f"e.g. {name} = [...]")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: {name} needs low and high, e.g. {name} = {{low = 1, high = 4}}")
    low, high = (_checked(cls, name, spec[k], f"{where}: {{}} {k}") for k in ("low", "high"))
    log, step = spec.get("log", False), spec.get("step")
    wrong = problem(log, bool) or (None if step is None else problem(step, kind, {"min": 0, "min_open": True}))
    if wrong:
        raise ConfigError(f"{where}: {name} {'log' if problem(log, bool) else 'step'} {wrong}")
    if not low < high:
        raise ConfigError(f"{where}: {name} low ({_shown(low)}) must be below high ({_shown(high)})")
    if log and low <= 0:
        raise ConfigError(f"{where}: {name} on a log scale must start above 0, got low = {_shown(low)}")
    if log and step is not None:
        raise ConfigError(f"{where}: {name} takes log or step, not both")
    return Dimension(name, kind, low, high, log, None if step is None else kind(step))


def default_space(config: Config) -> Space:
    """A space around `config` (the budget's choice for this machine, or the preset): its learning rates a factor
    of 3 either way on a log scale and, for a GPT, a layer fewer or more and dropout up to 0.2."""
    mc, tc = config.model, config.train

    def around(x: float) -> dict:
        return {"low": float(f"{x / 3:.3g}"), "high": float(f"{x * 3:.3g}"), "log": True}

    values: dict[str, Any] = {"lr": around(tc.lr)}
    if tc.optimizer == "muon":
        values["muon_lr"] = around(tc.muon_lr)
    if mc.model == "gpt":
        values["n_layer"] = sorted({max(1, mc.n_layer - 1), mc.n_layer, mc.n_layer + 1})
        values["dropout"] = {"low": 0.0, "high": 0.2}
    return build_space(values, "the default space")
