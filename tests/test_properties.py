"""Generated input finds no traceback: the tokenizer round-trips any text, `prepare` turns any bytes into a dataset
or a DataError, and the command line answers any argv with a return code and at most one line on stderr."""
from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chargpt import cli
from chargpt.config import SECTIONS, config_fields
from chargpt.model.sampling import SAMPLING_FIELDS
from chargpt.schema import field_kind
from chargpt.data.dataset import load_dataset, prepare
from chargpt.errors import DataError, VocabularyError
from chargpt.data.tokenizer import CharTokenizer
from chargpt.schema import valid

QUICK = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SLOWER = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Any code point, lone surrogates included (what undecodable command-line bytes turn into).
ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, categories=None, exclude_categories=())


# ------------------------------------------------------------------------------------------ tokenizer
@QUICK
@given(st.text(min_size=1))
@example("\n")
@example("hello\x00world\U0010ffff")
def test_tokenizer_round_trips_any_text(text):
    tok = CharTokenizer.from_text(text)
    ids = tok.encode(text)
    assert len(ids) == len(text) and all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert CharTokenizer.from_dict(tok.to_dict()) == tok


@QUICK
@given(vocab=st.text(min_size=1, max_size=30), text=st.text(alphabet=ANY_CHAR, max_size=30))
@example(vocab="abc", text="a\udcffb")
def test_encoding_text_outside_the_vocabulary_is_a_vocabulary_error(vocab, text):
    tok = CharTokenizer.from_text(vocab)
    try:
        assert tok.decode(tok.encode(text)) == text
    except VocabularyError as e:
        assert "not in the vocabulary" in str(e)


@QUICK
@given(vocab=st.text(min_size=1, max_size=30), ids=st.lists(st.integers(-5, 100), max_size=20))
def test_decoding_any_ids_gives_text_or_a_vocabulary_error(vocab, ids):
    tok = CharTokenizer.from_text(vocab)
    try:
        assert tok.encode(tok.decode(ids)) == ids
    except VocabularyError:
        assert any(not 0 <= i < tok.vocab_size for i in ids)


# -------------------------------------------------------------------------------------------- prepare
CORPORA = st.one_of(
    st.binary(max_size=400),  # anything: invalid UTF-8, NUL bytes, empty
    st.text(max_size=400).map(lambda t: t.encode("utf-8")),  # valid UTF-8 of every kind
    st.tuples(st.text(min_size=1, max_size=200), st.binary(max_size=4), st.text(max_size=200)).map(
        lambda t: t[0].encode("utf-8") + t[1] + t[2].encode("utf-8")),  # mostly text with a bad spot
)


@SLOWER
@given(raw=CORPORA, val_fraction=st.one_of(st.floats(0.01, 0.99), st.floats(allow_nan=True, allow_infinity=True)),
       dtype=st.sampled_from(["auto", "auto", "uint8", "int16", "int64", "float32", ""]))
@example(raw=b"ab\x00cd" * 10, val_fraction=0.1, dtype="auto")
@example(raw=b"caf\xe9 " * 10, val_fraction=0.1, dtype="auto")
@example(raw=b"\xed\xa0\x80 surrogate" * 5, val_fraction=0.1, dtype="auto")
@example(raw="".join(map(chr, range(0x100, 0x300))).encode() * 2, val_fraction=0.5, dtype="uint8")
def test_prepare_gives_a_dataset_or_a_data_error_for_any_bytes(raw, val_fraction, dtype):
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "input.txt", Path(tmp) / "data"
        src.write_bytes(raw)
        try:
            prepare(src, out, val_fraction=val_fraction, dtype=dtype)
        except DataError as e:
            assert "\n" not in str(e)
            return
        text = raw.decode("utf-8")  # only valid UTF-8 may succeed ...
        data = load_dataset(out)  # ... and it reads back to exactly the input
        assert 0 < val_fraction < 1 and "\x00" not in text
        assert data.tokenizer.decode(data.train.tolist() + data.val.tolist()) == text


# ----------------------------------------------------------------------------------------- the CLI
def _flags() -> list[str]:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    flags = {s for p in [parser, *sub.choices.values()] for a in p._actions for s in a.option_strings}
    return sorted(flags) + sorted(sub.choices)


TOKENS = _flags()
VALUES = st.one_of(st.sampled_from(["0", "-1", "1e6", "nan", "inf", "-0", "cpu", "cuda", "tpu", "", "=", "--",
                                    "5m", "1h", "abc", "runs/nope", "\n", "é"]),
                   st.integers(-10**6, 10**6).map(str), st.floats().map(str), st.text(alphabet=ANY_CHAR, max_size=8))
ARGV = st.lists(st.one_of(st.sampled_from(TOKENS), VALUES), max_size=8)


@pytest.fixture
def parse_only(monkeypatch, tmp_path):
    """Every command replaced by a stub: what runs is argument parsing and the error boundary."""
    monkeypatch.chdir(tmp_path)
    for name in [n for n in vars(cli) if n.startswith("cmd_")]:
        monkeypatch.setattr(cli, name, lambda args: 0)


@QUICK
@given(argv=ARGV)
@example(argv=["--help"])
@example(argv=["train", "--time-budget", "soon"])
@example(argv=["sample", "--prompt"])
@example(argv=["train", "--preset", "\udcff"])
def test_argument_parsing_never_raises(parse_only, capsys, argv):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert isinstance(code, int)
    assert "Traceback" not in err
    assert len(err.splitlines()) <= 1, err
    assert (code == 0) == (not err), (code, err)


SAFE = [t for t in TOKENS if not t.startswith(("--wandb", "--nproc", "--data", "--dataset", "--out", "--name",
                                               "--ckpt", "--input", "--resume", "--artifact"))]
# Real commands, pointed at nothing: whatever else argv says, each must fail with one line, never a traceback.
REAL = st.tuples(st.sampled_from([["train", "--data", "no-such-data"], ["sample", "--ckpt", "no-such-run"],
                                  ["eval", "--ckpt", "no-such-run"], ["prepare", "--input", "no-such.txt"],
                                  ["train", "--resume", "no-such-run"]]),
                 st.lists(st.one_of(st.sampled_from(SAFE), VALUES), max_size=6)).map(lambda t: t[0] + t[1])


@SLOWER
@given(argv=REAL)
@example(argv=["train", "--data", "no-such-data", "--device", "tpu"])
@example(argv=["sample", "--ckpt", "no-such-run", "--prompt", "\udcff"])
@example(argv=["train", "--data", "no-such-data", "--print-config"])
def test_real_commands_answer_bad_argv_with_one_line(tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    code = cli.main(argv)
    out, err = capsys.readouterr()
    if code == 0:  # only --help, --version or train's --print-config (also abbreviated) may succeed
        shows_config = out.startswith("{") and "model" in json.loads(out)
        assert not err and ("usage:" in out or out.startswith("chargpt ") or shows_config), (argv, out, err)
        assert not any(tmp_path.iterdir()), argv
        return
    assert code != 0, (argv, out)
    assert len(err.splitlines()) == 1 and err.startswith("error: "), (argv, err)
    assert not any(tmp_path.iterdir()), argv  # nothing written


# ------------------------------------------------------------- damaged files (issue 11, section 3)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=6)
DAMAGE = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
TINY_TRAIN = ["--preset", "cpu", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16",
              "--batch-size", "4", "--eval-interval", "5", "--eval-iters", "2", "--sample-tokens", "5",
              "--threads", "1", "--device", "cpu", "--no-compile"]


@pytest.fixture(scope="module")
def tiny_run(dataset_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert cli.main(["train", *TINY_TRAIN, "--max-steps", "2", "--data", str(dataset_dir), "--runs-dir", str(out),
                     "--name", "base"]) == 0
    return out / "base"


def _damaged(original: dict, key, value, drop: bool):
    """`original` with one field (chosen by `key` among its own) replaced by `value`, or removed."""
    out = json.loads(json.dumps(original))
    keys = sorted(out)
    k = keys[key % len(keys)]
    if drop:
        del out[k]
    else:
        out[k] = value
    return out


def one_line_or_success(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    if code != 0:
        assert len(err.splitlines()) == 1 and err.startswith("error: "), err


@DAMAGE
@given(whole=st.one_of(st.none(), JSON), key=st.integers(0, 100), value=JSON, drop=st.booleans(),
       raw=st.one_of(st.none(), st.binary(max_size=20)))
@example(whole=[1, 2], key=0, value=None, drop=False, raw=None)
@example(whole=None, key=0, value=None, drop=False, raw=b"\xff\xfe{")
@example(whole=None, key=9, value="x" * 3, drop=False, raw=None)
def test_damaged_meta_json_is_one_line(dataset_dir, tmp_path, capsys, whole, key, value, drop, raw):
    meta = json.loads((dataset_dir / "meta.json").read_text())
    ds = Path(tempfile.mkdtemp(dir=tmp_path))
    for split in ("train.pt", "val.pt"):
        (ds / split).symlink_to(dataset_dir / split)
    text = raw if raw is not None else json.dumps(whole if whole is not None else _damaged(meta, key, value, drop)).encode()
    (ds / "meta.json").write_bytes(text)
    # --batch-size far too large: a dataset that loads still ends in one line (memory), before any work
    code = cli.main(["train", *TINY_TRAIN, "--data", str(ds), "--batch-size", "100000000",
                     "--runs-dir", str(ds / "runs")])
    out, err = capsys.readouterr()
    assert code != 0
    one_line_or_success(code, err)
    assert not (ds / "runs").exists()


@DAMAGE
@given(summary=st.one_of(st.none(), JSON, st.builds(lambda k, v, d: ("edit", k, v, d), st.integers(0, 50), JSON,
                                                    st.booleans())),
       lines=st.lists(st.one_of(JSON.map(json.dumps), st.text(max_size=10)), max_size=4))
@example(summary=[], lines=[])
@example(summary=None, lines=['{"step": "x", "val_loss": "low"}', "not json", '{"step": 1}'])
def test_damaged_summary_or_metrics_leave_runs_listing_every_run(tiny_run, tmp_path, capsys, summary, lines):
    runs = Path(tempfile.mkdtemp(dir=tmp_path))
    shutil.copytree(tiny_run, runs / "good", ignore=shutil.ignore_patterns("*.pt", "*.png"))
    shutil.copytree(runs / "good", runs / "bad")
    original = json.loads((tiny_run / "summary.json").read_text())
    if isinstance(summary, tuple) and summary and summary[0] == "edit":
        summary = _damaged(original, summary[1], summary[2], summary[3])
    (runs / "bad" / "summary.json").write_text(json.dumps(summary))
    with open(runs / "bad" / "metrics.jsonl", "a") as f:
        f.write("".join(line.replace("\n", " ") + "\n" for line in lines))
    code = cli.main(["runs", "--runs-dir", str(runs)])
    out, err = capsys.readouterr()
    assert code == 0 and err == "", err
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert set(rows) == {"good", "bad"} and "finished" in rows["good"]


CKPT_PATHS = [(), ("config",), ("config", "model"), ("config", "train"), ("extra",), ("rng",), ("vocab",)]


@DAMAGE
@given(where=st.sampled_from(CKPT_PATHS), key=st.integers(0, 100), value=JSON, drop=st.booleans())
@example(where=(), key=0, value=None, drop=True)
@example(where=("config", "model"), key=3, value="3", drop=False)
def test_damaged_checkpoint_fields_are_one_line(tiny_run, tmp_path, capsys, where, key, value, drop):
    import torch

    from chargpt.runs import checkpoint

    state = torch.load(tiny_run / "ckpt.pt", weights_only=True)
    node = state
    for part in where:
        node = node[part]
    keys = sorted(node, key=str)
    k = keys[key % len(keys)]
    if drop:
        del node[k]
    else:
        node[k] = value
    state["checksum"] = checkpoint.digest(state)
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "ckpt.pt"
    torch.save(state, path)
    code = cli.main(["sample", "--ckpt", str(path), "--max-new-tokens", "3", "--device", "cpu"])
    out, err = capsys.readouterr()
    one_line_or_success(code, err)


# ------------------------------------------------------------------------------------------- schema
@QUICK
@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=3), st.lists(st.integers())))
def test_a_value_read_back_is_a_number_only_when_it_is_a_finite_number_and_not_a_bool(value):
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    assert valid(value, float) == number
    assert valid(value, int) == (number and isinstance(value, int))
    assert valid(value, str) == isinstance(value, str)
    assert valid(value, bool) == isinstance(value, bool)


# ----------------------------------------------------------------------------- numbers through every door
def _numeric_flags() -> list[tuple[list[str], str]]:
    """(the command with a placeholder for each argument it requires, flag) of every flag that takes a number,
    from the parser itself."""
    from chargpt.schema import flag

    out = []
    for command, parser in cli.build_parser().commands().items():
        required = ["x" for a in parser._actions if not a.option_strings and a.required]
        for action in parser._actions:
            cls = getattr(action, "field_of", None)
            if cls is not None and field_kind(cls, action.dest) in (int, float):
                out.append(([command, *required], flag(action.dest)))
    return out


NUMERIC_FLAGS = _numeric_flags()
# Numbers outside every range declared (every minimum is 0 or more, every maximum below 2^64 or 1e20), as a
# user types them: huge, negative, not finite, and integers of 300 to 5,000 digits.
LONG_DIGITS = st.builds(lambda sign, first, n: sign + first + "9" * n, st.sampled_from(["", "-", "+"]),
                        st.sampled_from("123456789"), st.integers(299, 4999))
BAD_NUMBER_TEXT = st.one_of(
    st.integers(min_value=2 ** 64, max_value=10 ** 40).map(str), st.integers(-10 ** 40, -1).map(str),
    st.floats(min_value=1e20).map(repr), st.floats(max_value=-1e-9).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "NaN", "1e400", "-1e400"]), LONG_DIGITS)
BAD_NUMBERS = st.one_of(
    st.integers(min_value=2 ** 64), st.integers(max_value=-1), st.floats(min_value=1e20), st.floats(max_value=-1e-9),
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.builds(lambda n, sign: sign * (10 ** n - 1), st.integers(300, 5000), st.sampled_from([1, -1])))
EACH = settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))  # per flag or field


def short_one_line(message: str) -> None:
    """A message of one line that shows no long value: never hundreds of digits."""
    assert "Traceback" not in message and len(message.strip().splitlines()) == 1, message
    assert len(message) < 300 and not re.search(r"\d{31}", message), message


@pytest.fixture
def refused_before_work(monkeypatch, tmp_path):
    """Every command replaced by one that fails the test: a value outside its range must be refused before."""
    monkeypatch.chdir(tmp_path)

    def reached(args):
        raise AssertionError(f"a value outside its range reached chargpt {args.command}")

    for name in [n for n in vars(cli) if n.startswith("cmd_")]:
        monkeypatch.setattr(cli, name, reached)


@pytest.mark.parametrize("command, name", NUMERIC_FLAGS, ids=[f"{c[0]}{n}" for c, n in NUMERIC_FLAGS])
@EACH
@given(text=BAD_NUMBER_TEXT)
@example(text="9" * 400)
@example(text="9" * 308)
@example(text="-" + "9" * 5000)
def test_a_flag_refuses_any_number_outside_its_range_in_one_short_line(refused_before_work, capsys, command, name,
                                                                       text):
    code = cli.main([*command, f"{name}={text}"])
    err = capsys.readouterr().err
    assert code == 2, (command, name, text, err)
    short_one_line(err)


CONFIG_NUMBERS = [(section, f.name) for section, f in config_fields()
                  if field_kind(SECTIONS[section], f.name) in (int, float)]


@pytest.mark.parametrize("section, name", CONFIG_NUMBERS, ids=[name for _, name in CONFIG_NUMBERS])
@EACH
@given(text=BAD_NUMBER_TEXT, suffix=st.sampled_from([".toml", ".json"]), nested=st.booleans())
@example(text="1" + "0" * 400, suffix=".toml", nested=False)
@example(text="9" * 5000, suffix=".json", nested=True)
def test_a_config_file_refuses_any_number_outside_a_fields_range_in_one_short_line(tmp_path, capsys, section, name,
                                                                                   text, suffix, nested):
    value = {"nan": "nan", "NaN": "nan", "inf": "inf", "-inf": "-inf"}.get(text, text)
    if suffix == ".json":
        value = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}.get(value, value).lstrip("+")
        body = f'{{"{section}": {{"{name}": {value}}}}}' if nested else f'{{"{name}": {value}}}'
    else:
        body = f"[{section}]\n{name} = {value}\n" if nested else f"{name} = {value}\n"
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / f"c{suffix}"
    path.write_text(body)
    code = cli.main(["train", "--config", str(path), "--data", str(tmp_path / "nowhere"), "--runs-dir",
                     str(tmp_path / "runs"), "--print-config"])
    err = capsys.readouterr().err
    assert code == 2, (body[:80], err)
    short_one_line(err)


@pytest.mark.parametrize("name", [name for _, name in CONFIG_NUMBERS])
@EACH
@given(value=BAD_NUMBERS)
@example(value=10 ** 400)
@example(value=-10 ** 5000)
def test_a_keyword_of_train_refuses_any_number_outside_its_fields_range_before_any_work(tmp_path, name, value):
    import chargpt
    from chargpt.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        chargpt.train("cpu", tmp_path / "nowhere", runs_dir=tmp_path / "runs", verbose=False, **{name: value})
    short_one_line(str(e.value))
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def tiny_loaded(tiny_run):
    import chargpt

    return chargpt.load(tiny_run)


@pytest.mark.parametrize("name", SAMPLING_FIELDS)
@EACH
@given(value=BAD_NUMBERS)
@example(value=10 ** 400)
def test_a_sampling_keyword_refuses_any_number_outside_its_range(tiny_loaded, name, value):
    from chargpt.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        tiny_loaded.generate("a", **{name: value})
    short_one_line(str(e.value))
