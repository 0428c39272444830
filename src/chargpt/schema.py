"""Values declared once and checked by one set of rules: `option` gives a dataclass field its description and
range, `Literal[...]` its choices; CLI flags, `--help` and tests derive from these declarations. `check_fields`
and `check_value` check a config or a command's value against them, `problem` and `valid` a bare value read from a
file or a request: one wording for every door (the CLI, the library, the server)."""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import field, fields
from types import MappingProxyType
from typing import Callable, Literal, Mapping, get_args, get_origin, get_type_hints

from .errors import ConfigError


def did_you_mean(name: str, known, cutoff: float = 0.6) -> str:
    """" (did you mean X?)" for the known name a mistyped `name` was meant to be (one that it extends, like data_dir
    for data, or the closest), else "": the one hint of every door for an unknown flag, keyword or field."""
    known = list(known)
    close = [k for k in known if name.startswith(k)] or difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
    return f" (did you mean {close[0]}?)" if close else ""


def option(default, help: str, **bounds):
    """A config field with its one-line description and, where it has one, its range (`min`, `max`,
    `min_open`, `max_open`) or its `pattern` (and the `allowed` values it means, for messages); allowed values of
    a choice live in its `Literal[...]` annotation."""
    return field(default=default, metadata={"help": help, **bounds})


def flag(name: str) -> str:
    """A field's command-line flag: `max_new_tokens` -> `--max-new-tokens`."""
    return "--" + name.replace("_", "-")


def choices(cls, name: str) -> tuple | None:
    """The allowed values of a `Literal[...]` field, or None for a free-valued one."""
    hint = get_type_hints(cls)[name]
    return get_args(hint) if get_origin(hint) is Literal else None


KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def check_fields(config, spell: Callable[[str], str] = flag) -> None:
    """Check every field of a config dataclass against its declaration (type, choices, range, pattern). A message
    names the field as `spell` writes it: a flag for the CLI, the keyword for the library, the JSON key for the
    server."""
    for f in fields(config):
        check_value(type(config), f.name, getattr(config, f.name), spell)


def check_value(cls, name: str, value, spell: Callable[[str], str] = flag, error: type = ConfigError) -> None:
    """Raise `error` (a `ChargptError` type) when `value` does not fit field `name` of `cls`, with the message
    `check_fields` gives: the field as `spell` writes it, then what is wrong."""
    wrong = value_problem(cls, name, value)
    if wrong:
        message = f"{spell(name)} {wrong}"
        raise ConfigError(message, field=name) if error is ConfigError else error(message)


def value_problem(cls, name: str, value) -> str | None:
    """What is wrong with `value` for field `name` of `cls` ('must be positive, got 0'), or None."""
    bounds = next(f for f in fields(cls) if f.name == name).metadata
    return problem(value, field_kind(cls, name), bounds, choices(cls, name))


def field_kind(cls, name: str) -> type:
    """The type of field `name`'s values: int, float, bool or str (a `Literal[...]` of strings is str)."""
    hint = get_type_hints(cls)[name]
    return type(get_args(hint)[0]) if get_origin(hint) is Literal else hint


def problem(value, kind: type, bounds: Mapping = MappingProxyType({}), allowed: tuple | None = None) -> str | None:
    """What is wrong with `value` as a `kind` ('must be an integer, got 'x''), outside `bounds` (`min`, `max`,
    `min_open`, `max_open`, or a `pattern` with the `allowed` text it means) or not among `allowed` values; None
    when nothing is. A number must be finite."""
    if allowed is not None:
        return None if value in allowed else f"must be one of {', '.join(map(str, allowed))}, got {value!r}"
    wrong = type_problem(value, kind)
    if wrong:
        return wrong
    if "pattern" in bounds and not re.fullmatch(bounds["pattern"], value):
        return f"must be {bounds['allowed']}, got {value!r}"
    if kind in (int, float) and not in_range(value, bounds):
        return f"must be {describe_range(bounds, kind)}, got {value}"
    return None


def valid(value, kind: type, **bounds) -> bool:
    """Whether `value` is a `kind` within `bounds` (see `problem`): for values read back from files."""
    return problem(value, kind, bounds) is None


def type_problem(value, kind: type) -> str | None:
    """'must be an integer, got 'x'' when `value` is no `kind`, else None: the type alone, its range unchecked."""
    return None if _is_a(value, kind) else f"must be {KINDS[kind]}, got {value!r}"


def _is_a(value, kind) -> bool:
    """`isinstance` as JSON and TOML mean it: True is no number, and an integer is also a float."""
    if isinstance(value, bool) or kind is bool:
        return kind is bool and isinstance(value, bool)
    return isinstance(value, (int, float) if kind is float else kind)


def in_range(value: float, bounds: Mapping) -> bool:
    """Whether `value` is finite and within `bounds`."""
    lo, hi = bounds.get("min"), bounds.get("max")
    return math.isfinite(value) and not (
        (lo is not None and (value <= lo if bounds.get("min_open") else value < lo))
        or (hi is not None and (value >= hi if bounds.get("max_open") else value > hi)))


def describe_range(bounds: Mapping, kind: type = float) -> str:
    """'positive', 'an integer >= 0', 'a finite number > 0', 'in [0, 1)': how a range reads in a message."""
    lo, hi, lo_open, hi_open = bounds.get("min"), bounds.get("max"), bounds.get("min_open"), bounds.get("max_open")
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{_bound(lo)}, {_bound(hi)}{')' if hi_open else ']'}"
    if lo == 1 and not lo_open:
        return "positive"
    number = "an integer" if kind is int else "a finite number"
    if lo is not None:
        return f"{number} {'>' if lo_open else '>='} {_bound(lo)}"
    return number if hi is None else f"{number} {'<' if hi_open else '<='} {_bound(hi)}"


def _bound(x: float) -> str:
    """1.0 reads as 1, and 2**64 as 2^64, not as twenty digits."""
    if isinstance(x, int) and x >= 2 ** 32 and x & (x - 1) == 0:
        return f"2^{x.bit_length() - 1}"
    return f"{x:g}" if isinstance(x, float) else str(x)
