"""The one set of rules every value is checked by: each number a user can give has a range, a number of any size
is compared exactly, a message never repeats hundreds of digits, and a run name is one printable path component."""
from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from argparse import ArgumentTypeError

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import chargpt
from chargpt.config import RunOptions
from chargpt.errors import ConfigError
from chargpt.schema import MAX_DIGITS, check_value, describe_range, field_kind, parse_int, problem, shown


def declarations() -> list[type]:
    """Every dataclass of the package whose fields are declared with `option` (a description each)."""
    found = []
    for info in pkgutil.walk_packages(chargpt.__path__, "chargpt."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        found += [v for v in vars(module).values() if isinstance(v, type) and dataclasses.is_dataclass(v)
                  and v.__module__ == module.__name__
                  and any("help" in f.metadata for f in dataclasses.fields(v))]
    return found


NUMBERS = [(cls, f) for cls in declarations() for f in dataclasses.fields(cls)
           if field_kind(cls, f.name) in (int, float)]


def test_the_declarations_found_include_every_door():
    names = {cls.__name__ for cls, _ in NUMBERS}
    assert {"ModelConfig", "TrainConfig", "SamplingParams", "PrepareOptions", "ServeOptions", "SampleOptions",
            "AttentionOptions", "LaunchOptions"} <= names


@pytest.mark.parametrize("cls, f", NUMBERS, ids=[f"{cls.__name__}.{f.name}" for cls, f in NUMBERS])
def test_every_number_a_user_can_give_has_a_lower_and_an_upper_bound(cls, f):
    assert f.metadata.get("min") is not None and f.metadata.get("max") is not None, (
        f"{cls.__name__}.{f.name} has no range; give it min= and max= in option(...)")
    assert f.metadata["max"] < 10 ** MAX_DIGITS  # integer text longer than MAX_DIGITS can then be refused unread


@pytest.mark.parametrize("value", [10 ** 400, -10 ** 400, 10 ** 5000, 2 ** 64],
                         ids=["1e400", "-1e400", "1e5000", "2^64"])
def test_an_integer_of_any_size_is_refused_by_its_range_in_a_short_message(value):
    wrong = problem(value, int, {"min": 0, "max": 2 ** 64, "max_open": True})
    assert wrong.startswith("must be in [0, 2^64), got ") and len(wrong) < 80, wrong
    assert not re.search(r"\d{31}", wrong)
    with pytest.raises(ConfigError, match=r"^--n-layer must be in \[1, 1024\], got an integer of 401 digits$"):
        check_value(chargpt.config.ModelConfig, "n_layer", 10 ** 400)


def test_a_huge_negative_integer_says_so():
    assert shown(-10 ** 400) == "a negative integer of 401 digits"
    assert shown(10 ** 5000) == "an integer of 5,001 digits"


@given(st.one_of(st.integers(), st.integers(300, 5000).map(lambda n: 10 ** n), st.floats(),
                 st.text(max_size=6000), st.lists(st.integers(), max_size=300),
                 st.lists(st.just(10 ** 5000), min_size=1, max_size=2)))
@example("000000000\x1f\x1f\x1f\x1f\U00011747\U00018cd6\U00018cd6\U00018d09\U00018d09")  # escapes longer than the text
@settings(max_examples=150, deadline=None)
def test_a_message_never_shows_more_than_a_short_part_of_a_value(value):
    for kind in (int, float, str):
        wrong = problem(value, kind, {"min": 0, "max": 10})
        assert wrong is None or len(wrong) < 120, wrong


@pytest.mark.parametrize("digits", [MAX_DIGITS + 1, 310, 5000])
def test_integer_text_of_more_than_max_digits_is_refused_unread_in_one_short_line(digits):
    for text in ("9" * digits, "-" + "1" * digits, " +" + "7" * digits):
        with pytest.raises(ArgumentTypeError) as e:
            parse_int(text)
        assert "too long for an integer" in str(e.value) and len(str(e.value)) < 120
    assert parse_int("9" * MAX_DIGITS) == int("9" * MAX_DIGITS) and parse_int(" -12 ") == -12


def test_a_range_reads_short():
    assert describe_range({"min": 0, "max": 10 ** 9}, int) == "in [0, 10^9]"
    assert describe_range({"min": 1, "max": 2 ** 20}, int) == "in [1, 2^20]"
    assert describe_range({"min": 0.0, "max": 10.0 ** 6}) == "in [0, 10^6]"
    assert describe_range({"min": 0, "max": 65535}, int) == "in [0, 65535]"


@pytest.mark.parametrize("name", ["a\nb", "a\tb", "tab\x00", "a/b", "a\\b", ".hidden", "..", "latest", "", "x" * 101,
                                  "line\u2028sep", "bidi\u202eeman", "\udcff"])
def test_a_run_name_is_refused_unless_it_is_one_printable_path_component(name):
    with pytest.raises(ConfigError, match="must be a plain run name") as e:
        check_value(RunOptions, "name", name)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["r", "my run", "train-gpt-cpu-20260101-120000", "café", "ラン", "a.b", "latest-2",
                                  "x" * 100])
def test_a_plain_run_name_is_taken(name):
    check_value(RunOptions, "name", name)
