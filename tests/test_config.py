"""Configuration is declared once: each field's choices (`Literal[...]`), range and description drive the
CLI flags, `--help`, validation and these tests."""
import dataclasses
import json
import re
from typing import get_args

import pytest

from chargpt.config import (PRESETS, Config, TokenDtype, TrainConfig, config_changes, config_fields, get_preset,
                            parse_duration, parse_eval_tokens, read_config_file, set_fields)
from chargpt.data.dataset import prepare
from chargpt.errors import ConfigError, DataError
from chargpt.serve.app import bind
from chargpt.model.gpt import ModelConfig
from chargpt.schema import choices
from conftest import one_error_line, run_main

CHOICE_FIELDS = [(s, f.name, choices(type(getattr(Config(), s)), f.name)) for s, f in config_fields()
                 if choices(type(getattr(Config(), s)), f.name)]
RANGED_FIELDS = [(s, f) for s, f in config_fields() if "min" in f.metadata or "max" in f.metadata]


def test_every_field_has_a_one_line_description():
    for _, f in config_fields():
        assert f.metadata.get("help") and "\n" not in f.metadata["help"], f.name


def test_the_choices_are_the_ones_the_code_implements():
    names = {name: allowed for _, name, allowed in CHOICE_FIELDS}
    assert names["optimizer"] == ("adamw", "muon") and names["schedule"] == ("constant", "cosine", "wsd")
    assert names["model"] == ("bigram", "gpt") and names["mlp"] == ("relu", "relu2", "gelu")


@pytest.mark.parametrize("section, name, allowed", CHOICE_FIELDS)
def test_each_allowed_value_validates_and_any_other_is_refused_naming_the_flag(section, name, allowed):
    for value in allowed:
        config = get_preset("cpu")
        setattr(getattr(config, section), name, value)
        if name == "schedule":
            config.train.decay = 0.0
        config.validate()
    config = get_preset("cpu")
    setattr(getattr(config, section), name, "nonsense")
    with pytest.raises(ConfigError, match=f"--{name.replace('_', '-')} must be one of"):
        config.validate()


@pytest.mark.parametrize("section, f", RANGED_FIELDS, ids=[f.name for _, f in RANGED_FIELDS])
def test_a_value_outside_a_fields_range_is_refused_naming_the_flag(section, f):
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    bad = lo - 1 if lo is not None else hi + 1
    config = get_preset("cpu")
    setattr(getattr(config, section), f.name, bad)
    with pytest.raises(ConfigError, match=f"--{f.name.replace('_', '-')} must be"):
        config.validate()
    if f.metadata.get("min_open") or f.metadata.get("max_open"):
        setattr(getattr(config, section), f.name, lo if f.metadata.get("min_open") else hi)
        with pytest.raises(ConfigError):
            config.validate()


def test_every_preset_validates():
    for name in PRESETS:
        get_preset(name).validate()


def test_config_files_set_fields_flat_or_in_sections(tmp_path):
    (tmp_path / "a.toml").write_text('n_layer = 2\ntime_budget = "2m"\n[train]\nlr = 0.01\n')
    config = get_preset("cpu")
    set_fields(config, read_config_file(tmp_path / "a.toml"), "a.toml")
    assert (config.model.n_layer, config.train.time_budget, config.train.lr) == (2, 120.0, 0.01)
    saved = Config(ModelConfig(n_layer=1), TrainConfig(seed=7)).to_dict() | {"preset": "cpu"}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    config = get_preset("lecture")
    set_fields(config, read_config_file(tmp_path / "config.json"), "config.json")
    assert dataclasses.asdict(config.model) == dataclasses.asdict(ModelConfig(n_layer=1))


@pytest.mark.parametrize("text, needle", [('n_layers = 2', "unknown config field 'n_layers'"),
                                          ('n_layer = "2"', "n_layer must be an integer, got '2'"),
                                          ('n_layer = [', "not valid TOML")])
def test_a_bad_config_file_is_a_clear_error(tmp_path, text, needle):
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError, match=needle):
        set_fields(get_preset("cpu"), read_config_file(tmp_path / "c.toml"), "c.toml")


@pytest.mark.parametrize("door", ["flag", "keyword", "config file"])
@pytest.mark.parametrize("typed, meant", [("n_layr", "n_layer"), ("time_budgets", "time_budget"),
                                          ("temprature", None)])
def test_every_door_hints_the_same_field_for_a_mistyped_name(tmp_path, capsys, door, typed, meant):
    """A flag, a keyword of `chargpt.train` and a config file's field are one name, with one hint."""
    import chargpt
    from chargpt.cli import main

    if door == "flag":
        assert main(["train", f"--{typed.replace('_', '-')}", "2", "--print-config"]) == 2
        said = capsys.readouterr().err
        meant = meant and f"--{meant.replace('_', '-')}"
    elif door == "keyword":
        with pytest.raises(ConfigError) as e:
            chargpt.train("cpu", tmp_path, **{typed: 2})
        said = str(e.value)
    else:
        (tmp_path / "c.toml").write_text(f"{typed} = 2\n")
        with pytest.raises(ConfigError) as e:
            set_fields(get_preset("cpu"), read_config_file(tmp_path / "c.toml"), "c.toml")
        said = str(e.value)
    assert (f"(did you mean {meant}?)" in said) if meant else ("did you mean" not in said), said


@pytest.mark.parametrize("content,message", [
    ('{"train": 5}', "train must be a table of train fields, got 5"),
    ('{"model": [1, 2]}', "model must be a table of model fields"),
    ('{"preset": ["cpu"]}', "preset must be a string, got ['cpu']"),
    ('{"data_dir": {"a": 1}}', "data_dir must be a string"),
    ('{"train": {"device": 3}}', "device must be a string, got 3"),
    ('{"device": 3}', "device must be a string, got 3"),
    ('{"a": ' * 50_000 + "1" + "}" * 50_000, "nested too deeply"),
], ids=["section-int", "section-list", "preset-list", "data_dir-object", "device-int", "flat-device-int", "deep"])
def test_a_config_file_of_the_wrong_shape_is_one_line_naming_the_field(tmp_path, capsys, content, message):
    from chargpt.cli import main

    (tmp_path / "c.json").write_text(content)
    assert main(["train", "--config", str(tmp_path / "c.json"), "--print-config"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err


def test_a_saved_config_is_read_back_with_each_value_of_its_fields_type():
    saved = Config().to_dict()
    saved["train"]["lr"] = 1  # an integer stands for a float
    assert Config.from_dict(saved).train.lr == 1.0 and isinstance(Config.from_dict(saved).train.lr, float)
    for section, name, value in [("model", "n_layer", True), ("model", "pos", 3), ("train", "lr", "0.1")]:
        bad = Config().to_dict()
        bad[section][name] = value
        with pytest.raises(ConfigError, match=f"not a chargpt config \\({name} must be "):
            Config.from_dict(bad)


@pytest.mark.parametrize("argv, library, call", [
    (["prepare", "--input", "x.txt", "--val-fraction", "1"], DataError,
     lambda: prepare("x.txt", "ds", val_fraction=1.0)),
    (["prepare", "--input", "x.txt", "--val-fraction", "nan"], DataError,
     lambda: prepare("x.txt", "ds", val_fraction=float("nan"))),
    (["serve", "--port", "70000"], ConfigError, lambda: bind("127.0.0.1", 70000)),
], ids=["val-fraction-1", "val-fraction-nan", "port"])
def test_a_command_option_gets_the_same_check_from_the_cli_and_the_library(tmp_path, monkeypatch, capsys, argv,
                                                                            library, call):
    from chargpt.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    with pytest.raises(library) as e:
        call()
    assert capsys.readouterr().err == f"error: {e.value}\n" and str(e.value).startswith(argv[-2])


def test_the_token_dtypes_offered_are_the_declared_ones_and_prepare_refuses_others(tmp_path):
    from chargpt.cli import build_parser
    from chargpt.data.dataset import DTYPES

    flag = next(a for a in build_parser().commands()["prepare"]._actions if a.dest == "token_dtype")
    assert tuple(flag.choices) == get_args(TokenDtype) == ("auto", *DTYPES)
    with pytest.raises(DataError, match="--token-dtype must be one of auto, uint8, int16, int32, int64, got 'float16'"):
        prepare(tmp_path / "x.txt", tmp_path / "ds", dtype="float16")


# ------------------------------------------------------------------------------- numbers without bounds
BIG = "9" * 400


@pytest.mark.parametrize("argv", [
    ["train", "--max-new-tokens", BIG], ["sample", "--max-new-tokens", BIG], ["train", "--seed", BIG],
    ["train", "--batch-size", BIG], ["train", "--batch-size", "9" * 5000], ["sample", "--seed", "-" + BIG],
    ["sample", "--num-samples", BIG], ["serve", "--port", BIG], ["attention", "--window", BIG],
    ["eval", "--eval-tokens", "9" * 5000], ["train", "--nproc", BIG], ["train", "--lr", BIG],
    ["train", "--time-budget", "9" * 308], ["train", "--time-budget", "9" * 308 + "h"], ["train", "--n-layer", "1e400"],
], ids=lambda argv: f"{argv[0]}{argv[1]}-{len(argv[2])}")
def test_a_number_of_hundreds_of_digits_in_any_flag_is_one_short_line(tmp_path, argv):
    p = run_main(*argv, *(["--print-config"] if argv[0] == "train" else ["--ckpt", "nowhere"]), cwd=tmp_path)
    line = one_error_line(p)
    assert len(line) < 250 and not re.search(r"\d{31}", line), line
    assert not any(tmp_path.iterdir())


def test_a_time_budget_is_at_most_a_year():
    p = run_main("train", "--time-budget", "9" * 308, "--print-config")
    assert "--time-budget must be in [0, 31536000], got 1e+308" in one_error_line(p)
    assert run_main("train", "--time-budget", "8760h", "--print-config").returncode == 0


def test_a_change_is_shown_in_the_words_its_flag_takes_back():
    """The header's `changed from ...` line: a budget dropped is `time_budget=none`, not 0.0; every eval token is
    `eval_tokens=all`; each shown value read back by its flag's parser is the value changed."""
    base = get_preset("cpu")
    base.train.time_budget, base.train.eval_tokens = 300.0, 5000
    for budget, tokens in [(0.0, 0), (90.0, 0), (0.0, 123), (2.5, 7)]:
        config = get_preset("cpu")
        config.train.time_budget, config.train.eval_tokens = budget, tokens
        shown = dict(c.split("=", 1) for c in config_changes(config, base))
        assert parse_duration(shown["time_budget"]) == budget and parse_eval_tokens(shown["eval_tokens"]) == tokens
        assert shown["time_budget"] == ("none" if budget == 0 else f"{budget:g}s")
    assert run_main("train", "--time-budget", "none", "--print-config").returncode == 0


@pytest.mark.parametrize("suffix, value", [(".toml", "1" + "0" * 400), (".json", "1" + "0" * 400),
                                           (".toml", "9" * 5000), (".json", "9" * 5000),
                                           (".json", "-" + "9" * 5000), (".toml", "1e400"), (".json", "1e400")],
                         ids=["toml-1e400", "json-1e400", "toml-5000-digits", "json-5000-digits",
                              "json-negative-5000-digits", "toml-float-1e400", "json-float-1e400"])
@pytest.mark.parametrize("name", ["n_layer", "seed", "max_steps", "time_budget", "lr"])
def test_a_huge_number_in_a_config_file_is_one_short_line(tmp_path, suffix, value, name):
    path = tmp_path / f"c{suffix}"
    path.write_text(f"{name} = {value}\n" if suffix == ".toml" else f'{{"{name}": {value}}}')
    line = one_error_line(run_main("train", "--config", path, "--print-config"))
    assert len(line) < 250 and not re.search(r"\d{31}", line), line


def test_a_run_name_with_a_newline_or_a_separator_is_refused_by_the_flag_before_anything_is_read(tmp_path):
    for name in ("a\nb", "a\\b", "\u2028"):
        line = one_error_line(run_main("train", "--name", name, "--data", tmp_path / "nowhere", cwd=tmp_path))
        assert line.startswith("error: --name must be a plain run name"), line
    assert not any(tmp_path.iterdir())
