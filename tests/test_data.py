import json
import os
import time

import pytest
import torch

from chargpt.data import load_dataset, prepare
from chargpt.errors import DataError


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


def test_prepare_again_after_the_input_changes_rewrites(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("abcdefghij" * 10)
    prepare(src, tmp_path / "ds")
    src.write_text("abcdefghijk" * 10)
    res = prepare(src, tmp_path / "ds")
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
    import chargpt.data as data_mod

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
