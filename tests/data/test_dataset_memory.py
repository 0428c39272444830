"""Corpora larger than memory (data.py, tensorfile.py): the notebook's int64 files still load; prepare streams
in chunks; loading checks the ids without making the split resident, and training's own (anonymous) memory stays
flat in the corpus size."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import chargpt.data.dataset as data_mod
from chargpt.data.batch import get_batch, windows
from chargpt.config import get_preset
from chargpt.data.dataset import load_dataset, load_split, prepare
from chargpt.errors import DataError
from chargpt.training.evaluate import bigram_optimum, full_pass_loss
from chargpt.model.gpt import ModelConfig, build_model
from conftest import train_config

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
    cfg.train.sample_tokens, cfg.train.compile = 0, False
    _, summary = train_config(cfg, ds, tmp_path, "run")
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
    val = ds.val[:5_000].to(torch.uint8)
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="gpt", vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=32,
                                    dropout=0.0))
    assert val.dtype == torch.uint8
    assert full_pass_loss(model, val, 16, "cpu") == full_pass_loss(model, val.long(), 16, "cpu")


@linux_only
def test_prepare_memory_is_bounded_by_the_chunk_not_the_corpus(shakespeare_path, tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "CHUNK", 1 << 20)
    monkeypatch.setattr(data_mod, "NOTEBOOK_DTYPE_CHARS", 10**7)  # a corpus past it, as a large one is
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
def test_loading_checks_ids_without_making_the_split_resident(shakespeare_path, tmp_path, monkeypatch):
    monkeypatch.setattr(data_mod, "NOTEBOOK_DTYPE_CHARS", 10**7)  # a corpus past it, as a large one is
    corpus = repeat(shakespeare_path, tmp_path / "corpus.txt", 32 * 10**6)
    prepare(corpus, tmp_path / "ds")
    before = memory()
    ds = load_dataset(tmp_path / "ds")
    after = memory()
    assert ds.train.dtype == torch.uint8 and len(ds.train) == 28_800_000
    grew = after["RssFile"] + after["RssAnon"] - before["RssFile"] - before["RssAnon"]
    assert grew < 4 * 2**20, f"loading a 32 MB dataset made {grew / 1e6:.0f} MB resident"
    assert json.loads((tmp_path / "ds/meta.json").read_text())["dtype"] == "uint8"


@pytest.mark.parametrize("layout", ["prepared", "notebook"])
def test_windows_of_the_mapped_split_are_the_tensors_windows(shakespeare_path, dataset_dir, tmp_path, layout):
    ds = load_dataset(dataset_dir if layout == "prepared" else notebook_dataset(shakespeare_path, dataset_dir, tmp_path / "nb"))
    for name in ("train", "val"):
        t = ds.split(name)
        starts = torch.randint(len(t) - 100, (64,), generator=torch.Generator().manual_seed(0))
        starts[:2] = torch.tensor([0, len(t) - 100])  # the first and the last window
        got = windows(t, starts, 100)
        assert got.dtype == torch.int64 and torch.equal(got, torch.stack([t[s:s + 100] for s in starts]).long())
    with pytest.raises(IndexError):  # the notebook's train.pt stores val's tokens after train's: never read them
        windows(t, torch.tensor([len(t) - 99]), 100)


def test_a_split_saved_as_a_view_of_a_larger_storage_reads_only_the_view(tmp_path):
    torch.save(torch.arange(1000, dtype=torch.int16)[10:500], tmp_path / "view.pt")
    t = load_split(tmp_path / "view.pt")
    assert len(t) == 490 and int(t[0]) == 10
    assert torch.equal(windows(t, torch.tensor([0, 5, 480]), 10), torch.stack([t[0:10], t[5:15], t[480:490]]).long())


def test_get_batch_on_the_mapped_split_equals_get_batch_in_memory(dataset_dir):
    ds = load_dataset(dataset_dir)
    in_memory = ds.train.clone()
    for seed in (0, 1337):
        a = get_batch(in_memory, 32, 64, generator=torch.Generator().manual_seed(seed))
        b = get_batch(ds.train, 32, 64, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.manual_seed(1337)  # the notebook's way: the global RNG
    a = get_batch(in_memory, 4, 8)
    torch.manual_seed(1337)
    b = get_batch(ds.train, 4, 8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_full_pass_and_bigram_optimum_on_the_mapped_splits_equal_in_memory(dataset_dir):
    ds = load_dataset(dataset_dir)
    torch.manual_seed(0)
    model = build_model(ModelConfig(model="gpt", vocab_size=65, block_size=16, n_layer=1, n_head=2, n_embd=32,
                                    dropout=0.0))
    assert full_pass_loss(model, ds.val, 16, "cpu") == full_pass_loss(model, ds.val.clone(), 16, "cpu")
    whole = bigram_optimum(ds.train.clone(), ds.val.clone(), 65, chunk=len(ds.train))
    assert bigram_optimum(ds.train, ds.val, 65, chunk=1000) == pytest.approx(whole, abs=1e-12)


def _train_tiny(ds, tmp_path: Path, name: str) -> dict:
    cfg = get_preset("cpu")
    cfg.model.vocab_size = ds.tokenizer.vocab_size
    cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head, cfg.model.block_size = 1, 32, 2, 64
    cfg.train.batch_size, cfg.train.max_steps, cfg.train.eval_interval, cfg.train.eval_iters = 32, 20, 10, 2
    cfg.train.sample_tokens, cfg.train.compile = 0, False
    return train_config(cfg, ds, tmp_path, name)[1]


@linux_only
@pytest.mark.slow
def test_training_on_a_64_mb_corpus_keeps_it_out_of_resident_memory(shakespeare_path, dataset_dir, tmp_path,
                                                                  monkeypatch):
    monkeypatch.setattr(data_mod, "NOTEBOOK_DTYPE_CHARS", 10**7)  # a corpus past it, as a large one is
    prepare(repeat(shakespeare_path, tmp_path / "corpus.txt", 64 * 10**6), tmp_path / "ds", val_fraction=0.001)
    (tmp_path / "corpus.txt").unlink()
    big = load_dataset(tmp_path / "ds")
    _train_tiny(load_dataset(dataset_dir), tmp_path, "warm-up")  # libraries' code and allocator pools, once
    before = memory()
    summary = _train_tiny(big, tmp_path, "big")
    after = memory()
    grew = {k: after[k] - before[k] for k in ("RssFile", "RssAnon")}
    report = "training on a 64 MB corpus grew RSS by " + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in grew.items())
    # The split is memory-mapped: pages around the windows read stay mapped (RssFile, clean page cache that the
    # kernel reclaims under pressure) and are bounded by the windows read, not the corpus. The process's own
    # memory (RssAnon) grows by ~10 MB whatever the corpus (allocator pools); a copy of the split would be 64 MB.
    assert grew["RssAnon"] < 24 * 2**20, report
    assert grew["RssFile"] < 48 * 2**20, report
    assert summary["steps"] == 20
