"""Values declared once and checked by one set of rules: `option` gives a dataclass field its description and
range, `Literal[...]` its choices; CLI flags, `--help` and tests derive from these declarations. `check_fields`
and `check_value` check a config or a command's value against them, `problem` and `valid` a bare value read from a
file or a request: one wording for every door (the CLI, the library, the server). `parse_int` and `parse_float`
read a number typed as text, and `shown` writes a value into a message, never hundreds of digits long."""
from __future__ import annotations

import difflib
import functools
import math
import os
import re
from argparse import ArgumentTypeError
from dataclasses import field, fields
from types import MappingProxyType
from typing import Callable, Literal, Mapping, get_args, get_origin, get_type_hints

from .errors import ConfigError


def closest(name: str, known, cutoff: float = 0.6) -> str | None:
    """The known name a mistyped `name` was meant to be (one that it extends, like data_dir for data, or the
    closest), else None."""
    known = list(known)
    close = [k for k in known if name.startswith(k)] or difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
    return close[0] if close else None


def did_you_mean(name: str, known, cutoff: float = 0.6) -> str:
    """" (did you mean X?)" for `closest`, else "": the one hint of every door for an unknown flag, keyword,
    field, command or choice."""
    close = closest(name, known, cutoff)
    return f" (did you mean {close}?)" if close else ""


# Options renamed since the last release, each still taken for one more under its old name with a notice: the CLI's
# flags and the library's keywords (one name per option in every door: the flag's, with underscores).
RENAMED = {"--out-dir": "--runs-dir", "--runs": "--runs-dir", "out_dir": "runs_dir", "all_datasets": "all",
           "dtype": "token_dtype"}


def renamed_note(old: str) -> str:
    """The one line a renamed option's old name gets."""
    return f"note: {old} is now {RENAMED[old]}; the old name still works in this release and will be removed in the next"


def option(default, help: str, **bounds):
    """A config field with its one-line description and, where it has one, its range (`min`, `max`,
    `min_open`, `max_open`: every number has a `max`) or its `pattern` (printable text matching it, and the
    `allowed` values it means, for messages); allowed values of a choice live in its `Literal[...]` annotation."""
    return field(default=default, metadata={"help": help, **bounds})


def flag(name: str) -> str:
    """A field's command-line flag: `max_new_tokens` -> `--max-new-tokens`."""
    return "--" + name.replace("_", "-")


def choices(cls, name: str) -> tuple | None:
    """The allowed values of a `Literal[...]` field, or None for a free-valued one."""
    hint = _hints(cls)[name]
    return get_args(hint) if get_origin(hint) is Literal else None


@functools.cache
def _hints(cls) -> dict:
    """The field types of `cls`, evaluated once per class (each evaluation compiles every annotation)."""
    return get_type_hints(cls)


KINDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
         os.PathLike: "a path (a string or a pathlib.Path)"}
MAX_DIGITS = 30  # integer text longer than this is refused unread: no range here reaches 10^30
SHOWN_CHARS = MAX_DIGITS + 2  # a value written longer than this (30 digits, quoted) is shortened in a message


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


def check(name: str, value, kind: type, error: type = ConfigError, **bounds):
    """`value` of argument `name` when it is a `kind` within `bounds` (`problem`'s rules), else `error` (a
    `ChargptError` type) saying what is wrong: for an argument that is no field of a declared dataclass."""
    wrong = problem(value, kind, bounds)
    if wrong:
        raise ConfigError(f"{name} {wrong}", field=name) if error is ConfigError else error(f"{name} {wrong}")
    return value


def value_problem(cls, name: str, value) -> str | None:
    """What is wrong with `value` for field `name` of `cls` ('must be positive, got 0'), or None."""
    bounds = next(f for f in fields(cls) if f.name == name).metadata
    return problem(value, field_kind(cls, name), bounds, choices(cls, name))


def field_kind(cls, name: str) -> type:
    """The type of field `name`'s values: int, float, bool or str (a `Literal[...]` of strings is str)."""
    hint = _hints(cls)[name]
    return type(get_args(hint)[0]) if get_origin(hint) is Literal else hint


def problem(value, kind: type, bounds: Mapping = MappingProxyType({}), allowed: tuple | None = None) -> str | None:
    """What is wrong with `value` as a `kind` ('must be an integer, got 'x''), outside `bounds` (`min`, `max`,
    `min_open`, `max_open`, or a `pattern` with the `allowed` text it means) or not among `allowed` values; None
    when nothing is. A number must be finite."""
    if allowed is not None:
        return None if value in allowed else f"must be one of {', '.join(map(str, allowed))}, got {shown(value)}"
    wrong = type_problem(value, kind)
    if wrong:
        return wrong
    if "pattern" in bounds and not (re.fullmatch(bounds["pattern"], value) and value.isprintable()):
        return f"must be {bounds['allowed']}, got {shown(value)}"
    if kind in (int, float) and not in_range(value, bounds):
        return f"must be {describe_range(bounds, kind)}, got {shown(value)}"
    return None


def valid(value, kind: type, **bounds) -> bool:
    """Whether `value` is a `kind` within `bounds` (see `problem`): for values read back from files."""
    return problem(value, kind, bounds) is None


def type_problem(value, kind: type) -> str | None:
    """'must be an integer, got 'x'' when `value` is no `kind`, else None: the type alone, its range unchecked."""
    return None if _is_a(value, kind) else f"must be {KINDS[kind]}, got {shown(value)}"


def _is_a(value, kind) -> bool:
    """`isinstance` as JSON and TOML mean it: True is no number, an integer is also a float, and a path is a
    string or a path object."""
    if isinstance(value, bool) or kind is bool:
        return kind is bool and isinstance(value, bool)
    return isinstance(value, {float: (int, float), os.PathLike: (str, os.PathLike)}.get(kind, kind))


def as_kind(value, kind: type):
    """`value` as a field of `kind` holds it: an integer given for a float becomes one, unless it is too large
    for a float (it stays as given, and its range refuses it with its own digits, not as inf)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            return value
    return value


def in_range(value: float, bounds: Mapping) -> bool:
    """Whether `value` is finite and within `bounds` (an integer of any size is compared exactly)."""
    lo, hi = bounds.get("min"), bounds.get("max")
    return (isinstance(value, int) or math.isfinite(value)) and not (
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
    """1.0 reads as 1, 2**64 as 2^64 and 10**9 as 10^9, not as ten or twenty digits."""
    if isinstance(x, int) and x >= 2 ** 20 and x & (x - 1) == 0:
        return f"2^{x.bit_length() - 1}"
    if x >= 10 ** 6 and x == int(x) and re.fullmatch(r"10*", str(int(x))):
        return f"10^{len(str(int(x))) - 1}"
    return f"{x:g}" if isinstance(x, float) else str(x)


# ------------------------------------------------------------------------------- numbers typed as text
def parse_int(text: str) -> int:
    """An integer typed as text (a flag's value): text of more than MAX_DIGITS digits is refused unread, in
    one short line, before `int` spends time on it (Python refuses 4,300 digits with a traceback)."""
    if len(text.strip().lstrip("+-")) > MAX_DIGITS:
        raise ArgumentTypeError(f"{shown(text)} is too long for an integer here (at most {MAX_DIGITS} digits)")
    try:
        return int(text)
    except ValueError:
        raise ArgumentTypeError(f"invalid int value: {shown(text)}") from None


def parse_float(text: str) -> float:
    """A number typed as text; what is not one is refused with the text shortened (`shown`)."""
    try:
        return float(text)
    except ValueError:
        raise ArgumentTypeError(f"invalid float value: {shown(text)}") from None


def shown(value) -> str:
    """`value` as a message writes it (`repr`), shortened to its start and its length when longer than
    SHOWN_CHARS: an integer of 400 digits reads as such, not as the digits."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10 ** MAX_DIGITS:
        return f"{'a negative' if value < 0 else 'an'} integer of {_digits(value):,} digits"
    try:
        text = repr(value)
    except ValueError:  # a container holding an integer too long to write out
        return f"a {type(value).__name__} holding a huge integer"
    if len(text) <= SHOWN_CHARS:
        return text
    if isinstance(value, str):  # its start, as many characters as 20 fit once escaped (a \U0001f600 takes 10)
        start = value[:20]
        while len(repr(start)) > 22:
            start = start[:-1]
        return f"{start!r}... ({len(value):,} characters)"
    return shortened(text)


def shortened(text: str) -> str:
    """`text`, or its start and its length when it is longer than SHOWN_CHARS."""
    return text if len(text) <= SHOWN_CHARS else f"{text[:20]}... ({len(text):,} characters)"


def _digits(n: int) -> int:
    try:
        return len(str(abs(n)))
    except ValueError:  # past Python's limit on writing out an integer (4,300 digits): its logarithm tells
        return int(math.log10(abs(n))) + 1
