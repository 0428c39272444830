"""Corpora larger than memory (data.py): the notebook's int64 files still load; prepare streams in chunks;
loading checks the ids without making the memory-mapped split resident."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import chargpt.data as data_mod
from chargpt.config import get_preset
from chargpt.data import load_dataset, prepare
from chargpt.errors import DataError
from chargpt.evaluate import full_pass_loss
from chargpt.model import ModelConfig, build_model
from chargpt.rundir import RunDir
from chargpt.train import train

PROC = Path("/proc/self/status")
linux_only = pytest.mark.skipif(not PROC.exists(), reason="reads this process's memory from /proc (Linux)")


def memory() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in PROC.read_text().splitlines())
    return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def repeat(source: Path, out: Path, size: int) -> Path:
    text = source.read_bytes()
    out.write_bytes(text * (size // len(text)) + text[: size % len(text)])
    return out


def notebook_dataset(shakespeare_path: Path, dataset_dir: Path, out: Path) -> Path:
    """train.pt/val.pt written as the notebook writes them (int64), next to the meta.json of `prepare`."""
    text = shakespeare_path.read_text(encoding="utf-8")
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    n = int(0.9 * len(data))
    out.mkdir()
    torch.save(data[:n], out / "train.pt")  # a view: torch.save keeps the whole storage
    torch.save(torch.tensor(data[n:].tolist(), dtype=torch.long), out / "val.pt")
    shutil.copy(dataset_dir / "meta.json", out / "meta.json")
    return out


def test_notebook_int64_splits_with_a_meta_json_load_and_train(shakespeare_path, dataset_dir, tmp_path):
    ds = load_dataset(notebook_dataset(shakespeare_path, dataset_dir, tmp_path / "nb"))
    assert ds.train.dtype == ds.val.dtype == torch.int64
    prepared = load_dataset(dataset_dir)
    assert torch.equal(ds.train, prepared.train.long()) and torch.equal(ds.val, prepared.val.long())
    cfg = get_preset("cpu")
    cfg.model.vocab_size = ds.tokenizer.vocab_size
    cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head, cfg.model.block_size = 1, 32, 2, 16
    cfg.train.batch_size, cfg.train.max_steps, cfg.train.eval_interval, cfg.train.eval_iters = 4, 30, 15, 2
    cfg.train.sample_tokens = 0
    summary = train(cfg, ds, RunDir.create(tmp_path, "run"), preset="cpu", echo=lambda *_: None)
    assert summary["steps"] == 30 and summary["val_loss_full"] < math.log(65)


def test_ids_beyond_the_vocabulary_are_a_clear_error(shakespeare_path, dataset_dir, tmp_path):
    out = notebook_dataset(shakespeare_path, dataset_dir, tmp_path / "nb")
    torch.save(torch.tensor([1, 2, 70, 3], dtype=torch.long), out / "val.pt")
    with pytest.raises(DataError, match="val.pt has token ids beyond the vocabulary"):
        load_dataset(out)
    torch.save(torch.tensor([1, -2, 3], dtype=torch.long), out / "val.pt")
    with pytest.raises(DataError, match="beyond the vocabulary"):
        load_dataset(out)


def test_full_pass_on_a_uint8_split_equals_int64(dataset_dir):
    ds = load_dataset(dataset_dir)
    val = ds.val[:5_000]
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="gpt", vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=32,
                                    dropout=0.0))
    assert val.dtype == torch.uint8
    assert full_pass_loss(model, val, 16, "cpu") == full_pass_loss(model, val.long(), 16, "cpu")


@linux_only
def test_prepare_memory_is_bounded_by_the_chunk_not_the_corpus(shakespeare_path, tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "CHUNK", 1 << 20)
    corpus = repeat(shakespeare_path, tmp_path / "corpus.txt", 32 * 10**6)
    before = memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")  # restart the peak (VmHWM) from the current RSS
    except OSError:
        pytest.skip("cannot reset this process's peak RSS (/proc/self/clear_refs)")
    prepare(corpus, tmp_path / "ds")
    grew = memory()["VmHWM"] - before["VmRSS"]
    assert grew < 20 * 2**20, f"prepare of a 32 MB corpus in 1 MiB chunks raised peak RSS by {grew / 1e6:.0f} MB"
    assert load_dataset(tmp_path / "ds").tokenizer.vocab_size == 65


@linux_only
def test_loading_checks_ids_without_making_the_split_resident(shakespeare_path, tmp_path):
    corpus = repeat(shakespeare_path, tmp_path / "corpus.txt", 32 * 10**6)
    prepare(corpus, tmp_path / "ds")
    before = memory()
    ds = load_dataset(tmp_path / "ds")
    after = memory()
    assert ds.train.dtype == torch.uint8 and len(ds.train) == 28_800_000
    grew = after["RssFile"] + after["RssAnon"] - before["RssFile"] - before["RssAnon"]
    assert grew < 4 * 2**20, f"loading a 32 MB dataset made {grew / 1e6:.0f} MB resident"
    assert json.loads((tmp_path / "ds/meta.json").read_text())["dtype"] == "uint8"
