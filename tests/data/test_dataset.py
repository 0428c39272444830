import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chargpt.data.dataset import load_dataset, prepare
from chargpt.errors import DataError
from conftest import one_error_line, run_cli, run_main


def test_prepare_tiny_shakespeare_matches_the_notebook_split(shakespeare_path, tmp_path):
    res = prepare(shakespeare_path, tmp_path / "ds", name="shakespeare")
    m = res.meta
    assert res.changed
    assert (m["total_chars"], m["vocab_size"], m["train_tokens"], m["val_tokens"]) == (1115394, 65, 1003854, 111540)
    assert m["source_sha256"] == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    # What the notebook computes, read back with the notebook's own torch.load call.
    text = shakespeare_path.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(data))
    train = torch.load(tmp_path / "ds" / "train.pt", weights_only=True)
    val = torch.load(tmp_path / "ds" / "val.pt", weights_only=True)
    assert train.ndim == 1 and not train.is_floating_point()
    assert torch.equal(train.long(), data[:n]) and torch.equal(val.long(), data[n:])
    meta = json.loads((tmp_path / "ds" / "meta.json").read_text())
    assert meta["vocab"] == "".join(chars) and meta["val_fraction"] == 0.1


def test_prepare_twice_changes_nothing(shakespeare_path, tmp_path):
    prepare(shakespeare_path, tmp_path / "ds")
    files = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "ds").iterdir()}
    time.sleep(0.01)
    res = prepare(shakespeare_path, tmp_path / "ds")
    assert not res.changed
    assert files == {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (tmp_path / "ds").iterdir()}


def test_prepare_again_after_the_input_changes_rewrites_with_replace(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("abcdefghij" * 10)
    prepare(src, tmp_path / "ds")
    src.write_text("abcdefghijk" * 10)
    res = prepare(src, tmp_path / "ds", replace=True)
    assert res.changed and res.meta["vocab_size"] == 11


def test_int64_dtype_for_the_notebook(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("hello world\n" * 20)
    prepare(src, tmp_path / "ds", dtype="int64")
    assert torch.load(tmp_path / "ds" / "train.pt", weights_only=True).dtype == torch.int64
    assert load_dataset(tmp_path / "ds").train.dtype == torch.int64


def test_prepare_writes_no_temporary_files(shakespeare_path, tmp_path):
    prepare(shakespeare_path, tmp_path / "ds")
    assert sorted(p.name for p in (tmp_path / "ds").iterdir()) == ["meta.json", "train.pt", "val.pt"]


def test_non_default_val_fraction(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("x" * 70 + "y" * 30)
    res = prepare(src, tmp_path / "ds", val_fraction=0.3)
    assert (res.meta["train_tokens"], res.meta["val_tokens"]) == (70, 30)


def test_unicode_corpus_split_across_chunks(tmp_path, monkeypatch):
    import chargpt.data.dataset as data_mod

    monkeypatch.setattr(data_mod, "CHUNK", 7)  # multi-byte characters straddle chunk boundaries
    text = "añb€c🙂d\n" * 50
    src = tmp_path / "u.txt"
    src.write_text(text, encoding="utf-8")
    prepare(src, tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert ds.tokenizer.decode(torch.cat([ds.train, ds.val]).tolist()) == text


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"", "empty"),
    (b"caf\xe9 au lait\n" * 10, "not valid UTF-8"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
    (b"a", "too few"),
])
def test_bad_inputs_are_clear_errors(tmp_path, content, message):
    src = tmp_path / "in.txt"
    if content is not None:
        src.write_bytes(content)
    with pytest.raises(DataError, match=message):
        prepare(src, tmp_path / "ds")
    assert not (tmp_path / "ds" / "train.pt").exists()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_val_fraction_must_be_inside_zero_one(tmp_path, fraction):
    src = tmp_path / "in.txt"
    src.write_text("hello world " * 10)
    with pytest.raises(DataError, match="val-fraction"):
        prepare(src, tmp_path / "ds", val_fraction=fraction)


def test_load_dataset_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="chargpt prepare"):
        load_dataset(tmp_path / "nope")


# ------------------------------------------------------------------------------------- identity is content
def sha256(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_same_text_prepared_in_two_directories_gives_byte_identical_files(shakespeare_path, tmp_path):
    prepare(shakespeare_path, tmp_path / "one", name="shakespeare")
    prepare(shakespeare_path, tmp_path / "elsewhere" / "two", name="shakespeare")
    for name in ("train.pt", "val.pt"):
        assert sha256(tmp_path / "one" / name) == sha256(tmp_path / "elsewhere" / "two" / name)
    assert load_dataset(tmp_path / "one").content_hash == load_dataset(tmp_path / "elsewhere" / "two").content_hash


def test_the_dataset_hash_is_of_the_tokens_not_of_the_files_bytes(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("hello world\n" * 20)
    small, wide = prepare(src, tmp_path / "small", dtype="uint8"), prepare(src, tmp_path / "wide", dtype="int64")
    assert sha256(tmp_path / "small/train.pt") != sha256(tmp_path / "wide/train.pt")
    assert small.meta["content_hash"] == wide.meta["content_hash"] == load_dataset(tmp_path / "small").content_hash
    other = tmp_path / "b.txt"
    other.write_text("hello world\n" * 19 + "hello wordl\n")  # the same characters and sizes, other tokens
    assert prepare(other, tmp_path / "other").meta["content_hash"] != small.meta["content_hash"]


def write_old_format_dataset(src, out):
    """A dataset as chargpt wrote it before content hashes: uint8 tensors saved under a random temporary name
    (so the archive's top folder differs every time) and a meta.json without a content hash."""
    import tempfile

    res = prepare(src, out, dtype="uint8")
    meta = {k: v for k, v in res.meta.items() if k != "content_hash"}
    for name in ("train", "val"):
        t = torch.load(out / f"{name}.pt", weights_only=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.pt.{os.getpid()}.", suffix=".tmp", dir=out)
        os.close(fd)
        torch.save(t, tmp)
        os.replace(tmp, out / f"{name}.pt")
        meta[f"{name}_sha256"] = sha256(out / f"{name}.pt")
    (out / "meta.json").write_text(json.dumps(meta))
    from chargpt.data.dataset import file_hash

    return file_hash(out / "train.pt", out / "val.pt")


def test_a_run_of_an_older_chargpt_is_recognised_on_its_dataset_and_after_re_preparing_it(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("To be, or not to be, that is the question.\n" * 30)
    old_hash = write_old_format_dataset(src, tmp_path / "ds")
    assert load_dataset(tmp_path / "ds").is_identified_by(old_hash)
    res = prepare(src, tmp_path / "ds")  # int64 now, and deterministic bytes: the files change, the tokens do not
    assert res.changed and res.meta["dtype"] == "int64"
    again = load_dataset(tmp_path / "ds")
    assert again.is_identified_by(old_hash) and again.is_identified_by(again.content_hash)
    assert not again.is_identified_by("0" * 64)
    assert not load_dataset(prepare(src, tmp_path / "fresh").out_dir).is_identified_by(old_hash)


def test_prepare_over_a_dataset_of_other_text_refuses_unless_replace(tmp_path):
    from chargpt.data.dataset import DatasetExists

    mine, other = tmp_path / "mine.txt", tmp_path / "other.txt"
    mine.write_text("abcdefghij" * 10)
    other.write_text("klmnopqrst" * 10)
    prepare(mine, tmp_path / "ds", name="mine")
    before = (tmp_path / "ds/train.pt").read_bytes()
    with pytest.raises(DatasetExists, match=r"holds another dataset, 'mine' \(100 characters from .*mine.txt.*--replace"):
        prepare(other, tmp_path / "ds", name="other")
    assert (tmp_path / "ds/train.pt").read_bytes() == before
    assert not prepare(mine, tmp_path / "ds", name="renamed").changed  # the same text: nothing changed
    assert prepare(other, tmp_path / "ds", replace=True).meta["name"] == "other"


# ------------------------------------------------------------------------------------- the notebook's tensors
def test_the_seed_notebooks_cells_run_unchanged_on_a_prepared_directory(dataset_dir):
    import torch.nn as nn
    from torch.nn import functional as F

    data_dir = str(dataset_dir)
    # Load the datasets
    train = torch.load(os.path.join(data_dir, 'train.pt'))
    val = torch.load(os.path.join(data_dir, 'val.pt'))
    # Context window size
    block_size = 8
    assert repr(train[:block_size+1]) == "tensor([18, 47, 56, 57, 58,  1, 15, 47, 58])"
    torch.manual_seed(1337)
    batch_size = 4
    block_size = 8

    def get_batch(split: str):
        # Generate a batch of inputs x and targets y
        data = train if split == 'train' else val
        ix = torch.randint(len(data) - block_size, (batch_size,))
        x = torch.stack([data[i:i+block_size] for i in ix])
        y = torch.stack([data[i+1:i+block_size+1] for i in ix])
        return x, y

    xb, yb = get_batch('train')
    assert xb.tolist()[0] == [24, 43, 58, 5, 57, 1, 46, 43] and yb.tolist()[3] == [17, 27, 10, 0, 21, 1, 54, 39]

    class BigramLanguageModel(nn.Module):  # the lecture's baseline
        def __init__(self, vocab_size):
            super().__init__()
            self.token_embedding_table = nn.Embedding(vocab_size, vocab_size)

        def forward(self, idx, targets=None):
            logits = self.token_embedding_table(idx)  # (B,T,C)
            if targets is None:
                loss = None
            else:
                B, T, C = logits.shape
                logits = logits.view(B*T, C)
                targets = targets.view(B*T)
                loss = F.cross_entropy(logits, targets)
            return logits, loss

    logits, loss = BigramLanguageModel(65)(xb, yb)
    assert logits.shape == (32, 65)
    assert 3.5 < loss.item() < 5.5  # about -ln(1/65) = 4.17 for an untrained table


def test_a_corpus_past_the_int64_limit_is_stored_small_and_says_how_to_get_int64(tmp_path, monkeypatch):
    import chargpt.data.dataset as data_mod

    monkeypatch.setattr(data_mod, "NOTEBOOK_DTYPE_CHARS", 100)
    src = tmp_path / "a.txt"
    src.write_text("hello world\n" * 20)
    res = prepare(src, tmp_path / "ds")
    assert res.meta["dtype"] == "uint8" and "--token-dtype int64" in res.note
    assert torch.load(tmp_path / "ds/train.pt", weights_only=True).dtype == torch.uint8
    assert prepare(src, tmp_path / "ds64", dtype="int64").note is None


# ------------------------------------------------------------------------------------------- the split
def test_a_val_fraction_too_small_for_the_corpus_says_so_and_gives_the_smallest_that_works(shakespeare_path, tmp_path):
    """4.4M characters are plenty to split: what is wrong is a val split of under 2 characters."""
    big = tmp_path / "big.txt"
    big.write_bytes(shakespeare_path.read_bytes() * 4)
    with pytest.raises(DataError) as e:
        prepare(big, tmp_path / "ds", val_fraction=1e-9)
    message = str(e.value)
    assert "too few" not in message and "\n" not in message
    assert "--val-fraction 1e-09 leaves 4,461,575 of" in message and "and 1 for val" in message
    smallest, largest = (float(x) for x in re.search(r"use a fraction from (\S+) to (\S+)$", message).groups())
    res = prepare(big, tmp_path / "ds", val_fraction=smallest, dtype="uint8")
    assert res.meta["val_tokens"] >= 2 and not (tmp_path / "ds2").exists()
    with pytest.raises(DataError, match="and 1 for val"):
        prepare(big, tmp_path / "ds2", val_fraction=smallest * 0.8)
    assert prepare(big, tmp_path / "ds2", val_fraction=largest, dtype="uint8").meta["train_tokens"] >= 2


def test_a_val_split_under_one_block_names_the_fraction_that_gives_one(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("abcdefghij" * 100)
    ds = load_dataset(prepare(src, tmp_path / "ds", val_fraction=0.005).out_dir)  # 5 characters of val
    with pytest.raises(DataError, match=r"the val split .* has 5 tokens, fewer than one block \(16 \+ 1\); .*"
                                        r"--val-fraction of at least (\S+)$") as e:
        ds.check_block_size(16)
    fraction = float(str(e.value).rsplit(" ", 1)[1])
    load_dataset(prepare(src, tmp_path / "ds", val_fraction=fraction, replace=True).out_dir).check_block_size(16)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(size=st.integers(1, 400), val_fraction=st.one_of(
    st.floats(min_value=0.0, max_value=1.0, exclude_min=True, exclude_max=True),
    st.floats(min_value=1e-300, max_value=1e-3), st.floats(min_value=0.99, max_value=1.0, exclude_max=True)))
@example(size=3, val_fraction=0.5)
@example(size=400, val_fraction=1e-9)
@example(size=400, val_fraction=0.999999)
def test_any_val_fraction_gives_a_dataset_or_one_line_whose_advice_works(size, val_fraction):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "c.txt"
        src.write_text(("abcdefghijklmnopqrstuvwxyz\n" * 20)[:size])
        try:
            res = prepare(src, Path(tmp) / "ds", val_fraction=val_fraction)
        except DataError as e:
            message = str(e)
            assert "\n" not in message and not (Path(tmp) / "ds").exists()
            advice = re.search(r"use a fraction from (\S+) to (\S+)$", message)
            assert advice or (size < 4 and "too few to split" in message), message
            for fraction in map(float, advice.groups() if advice else ()):
                done = prepare(src, Path(tmp) / f"ds{fraction}", val_fraction=fraction)
                assert min(done.meta["train_tokens"], done.meta["val_tokens"]) >= 2
            return
        ds = load_dataset(res.out_dir)
        assert len(ds.train) == res.meta["train_tokens"] >= 2 and len(ds.val) == res.meta["val_tokens"] >= 2


# -------------------------------------------------------------------------------------------- the locale
def test_prepare_into_a_non_ascii_directory_under_the_c_locale(tmp_path):
    """Python names such a path with surrogates there, which torch could not encode to map the file: a traceback,
    and an empty directory left behind."""
    src = tmp_path / "a.txt"
    src.write_text("hello world\n" * 30)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONIOENCODING", "LANG", "LC_CTYPE")}
    env.update(LC_ALL="C", PYTHONUTF8="0", PYTHONCOERCECLOCALE="0")
    p = run_cli("prepare", "--input", src, "--out", tmp_path / "d\u00e9j\u00e0 vu", env=env, cwd=tmp_path)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr  # it maps the files it writes, to check them
    assert load_dataset(tmp_path / "d\u00e9j\u00e0 vu").meta["total_chars"] == 360


# -------------------------------------------------------------------------------------------- a full disk
@pytest.fixture
def small_filesystem(tmp_path):
    """A 600 KiB tmpfs, for a disk that really fills up: mounting needs root, which CI may not grant."""
    full = tmp_path / "full"
    full.mkdir()
    try:
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(full)], capture_output=True,
                           text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"cannot mount a small tmpfs here: {e}")
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {p.stderr.strip() or p.returncode}")
    try:
        yield full
    finally:
        subprocess.run(["umount", str(full)], check=True, timeout=30)


@pytest.mark.parametrize("before", ["nothing", "a smaller dataset"])
def test_a_dataset_that_does_not_fit_on_the_disk_is_one_line_and_leaves_the_disk_as_it_was(
        shakespeare_path, small_filesystem, before):
    """The splits are written through mappings of their files: a page the full disk had no room for was a SIGBUS
    (rc 135, nothing printed, an empty --out, the lock and a half-written temporary left). A real process: a
    regression kills the process that runs it."""
    out = small_filesystem / "ds"
    if before != "nothing":
        small = small_filesystem.parent / "small.txt"
        small.write_text("a small corpus, of a few lines.\n" * 20)
        run_cli("prepare", "--input", small, "--out", out, check=True)
    files = {p.name: p.read_bytes() for p in out.iterdir()} if out.exists() else None
    p = run_cli("prepare", "--input", shakespeare_path, "--out", out, "--replace")
    line = one_error_line(p)
    assert p.returncode == 1 and f"No space left on device ({out})" in line and "free space" in line, line
    assert [q.name for q in small_filesystem.iterdir()] == ([] if files is None else ["ds"])
    if files is not None:
        assert {q.name: q.read_bytes() for q in out.iterdir()} == files
        assert load_dataset(out).meta["total_chars"] == 640


# -------------------------------------------------------------------------------------------- where --out may be
def test_prepare_never_writes_inside_a_run_or_a_dataset(tmp_path, tiny_run):
    """--out is checked as every output is (`fsutil.claim_output`): inside a run directory, the views `runs/latest`
    leads to, or another dataset, prepare is refused in one line, exit 2, nothing written (it wrote a dataset
    there, and `train` then left `latest` alone: `runs/.latest is a directory that chargpt did not make`)."""
    shutil.copytree(tiny_run.parent, tmp_path / "runs", symlinks=True)
    corpus = tmp_path / "small.txt"
    corpus.write_text("a small corpus, of a few lines.\n" * 20)
    run_main("prepare", "--input", corpus, "--out", tmp_path / "data" / "small", check=True)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for out in ("runs/tiny/sub", "runs/.latest/sub", "runs/.latest/tiny/sub", "runs/latest/sub", "runs/latest",
                "data/small/sub", "data/small/a/b"):
        p = run_main("prepare", "--input", corpus, "--out", out, cwd=tmp_path)
        line = one_error_line(p)
        assert p.returncode == 2 and f"--out {out} is inside the " in line and "choose" in line, line
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    p = run_main("prepare", "--input", corpus, "--out", "data/other", cwd=tmp_path)  # beside them: as before
    assert p.returncode == 0 and load_dataset(tmp_path / "data" / "other").meta["total_chars"] == 640


def test_a_mistyped_dataset_directory_is_answered_with_the_dataset_beside_it(dataset_dir, tmp_path):
    """`--data data/shakespear` said only that it does not exist, and to create it with `chargpt prepare --out
    data/shakespear`, a command that cannot run as shown. The dataset it nearly names is offered, and the command
    is whole."""
    shutil.copytree(dataset_dir, tmp_path / "data" / "shakespeare")
    p = run_main("train", "--data", "data/shakespear", "--max-steps", "1", cwd=tmp_path)
    line = one_error_line(p)
    assert "data/shakespear does not exist (did you mean data/shakespeare?)" in line
    assert "chargpt prepare --input FILE --out data/shakespear" in line
    p = run_main("train", "--data", "data/other", "--max-steps", "1", cwd=tmp_path)
    assert "did you mean" not in one_error_line(p)
