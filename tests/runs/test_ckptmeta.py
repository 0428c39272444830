"""A checkpoint's step read without torch: the same object `torch.load` reads, on checkpoints chargpt writes; a file
that is no checkpoint, or one that would run code, gives no step and runs nothing; `chargpt runs` never imports
torch."""
from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from chargpt.config import get_preset
from chargpt.data.tokenizer import CharTokenizer
from chargpt.fsutil import load_torch
from chargpt.model.gpt import build_model
from chargpt.runs import checkpoint
from chargpt.runs.ckptmeta import Tensor, saved_object, saved_step
from chargpt.training.optim import make_optimizers

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


def _save(path: Path, step: int, optimizer: str = "adamw", **model) -> None:
    """A checkpoint written by `checkpoint.save`, after one real optimizer step (so the optimizers hold state)."""
    config = get_preset("cpu")
    config.model.n_layer, config.model.n_embd, config.model.n_head, config.model.block_size = 1, 32, 2, 16
    config.model.vocab_size = CharTokenizer.from_text(TEXT).vocab_size
    config.train.optimizer = optimizer
    for k, v in model.items():
        setattr(config.model, k, v)
    torch.manual_seed(0)
    net = build_model(config.model)
    optimizers = make_optimizers(net, config.train, "cpu")
    x = torch.randint(config.model.vocab_size, (2, config.model.block_size))
    net(x, x)[1].backward()
    for opt in optimizers:
        opt.step()
    checkpoint.save(path, model=net, optimizers=optimizers, step=step, config=config,
                    tokenizer=CharTokenizer.from_text(TEXT), dataset_hash="d" * 64,
                    rng={"torch": torch.get_rng_state(), "batch": torch.Generator().get_state()})


def _shape(obj):
    """`obj` with each tensor (torch's, or the reader's stand-in) replaced by one marker: what both readers share."""
    if isinstance(obj, (torch.Tensor, Tensor)):
        return "<tensor>"
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map(_shape, obj))
    return obj


@pytest.mark.parametrize("step, optimizer, model", [
    (7, "adamw", {}), (123_456_789_012, "muon", {}), (0, "adamw", {"tie_weights": True, "pos": "rope"}),
    (50, "adamw", {"model": "bigram"})])
def test_the_step_read_without_torch_is_the_step_torch_loads(tmp_path, step, optimizer, model):
    _save(tmp_path / "ckpt.pt", step, optimizer, **model)
    state = load_torch(tmp_path / "ckpt.pt")
    assert saved_step(tmp_path / "ckpt.pt", within=tmp_path) == state["step"] == step
    assert _shape(saved_object(tmp_path / "ckpt.pt")) == _shape(state)  # the whole object, not only its step


def test_a_trained_runs_checkpoints_read_the_same_steps_with_and_without_torch(tiny_run):
    names = [p.name for p in tiny_run.glob("*.pt")]
    assert "ckpt.pt" in names and "best.pt" in names
    for name in names:
        assert saved_step(tiny_run / name, within=tiny_run) == load_torch(tiny_run / name)["step"]
        assert _shape(saved_object(tiny_run / name)) == _shape(load_torch(tiny_run / name))


# ------------------------------------------------------------------------------ no code runs, no step
def _hostile(marker: Path) -> bytes:
    """A pickle of {"step": 5, "model": os.system("touch MARKER")}: GLOBAL os.system, called on a shell command."""
    return (b"\x80\x02}(X\x04\x00\x00\x00stepK\x05X\x05\x00\x00\x00model"
            b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntRu.")


def _archive(path: Path, pickled: bytes, member: str = "ckpt/data.pkl") -> Path:
    """A zip laid out as torch writes one (`<archive>/data.pkl` first), holding `pickled`."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(member, pickled)
        z.writestr("ckpt/version", "3\n")
    return path


def test_a_checkpoint_that_would_run_code_gives_no_step_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    assert saved_step(_archive(tmp_path / "ckpt.pt", _hostile(marker))) is None
    assert not marker.exists()

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"step": 5, "model": Evil()}, tmp_path / "saved.pt")  # the same, written by torch itself
    assert saved_step(tmp_path / "saved.pt") is None
    assert not marker.exists()


def test_the_hostile_pickle_really_runs_code_when_unpickled_plainly(tmp_path):
    """Guards the test above: its payload is live, so its refusal means something."""
    marker = tmp_path / "pwned"
    code = f"import pickle; assert pickle.loads({_hostile(marker)!r}) == {{'step': 5, 'model': 0}}"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert marker.exists()


def test_a_file_that_is_no_torch_checkpoint_gives_no_step(tmp_path):
    (tmp_path / "text.pt").write_text("not a zip")
    _archive(tmp_path / "nopickle.pt", b"", member="ckpt/other")
    _archive(tmp_path / "broken.pt", pickle.dumps({"step": 5})[:-3])
    _archive(tmp_path / "list.pt", pickle.dumps([5]))
    _archive(tmp_path / "flat.pt", pickle.dumps({"step": 5}), member="data.pkl")
    os.mkfifo(tmp_path / "fifo.pt")  # refused by open_regular at once, never waited on
    names = ["text.pt", "nopickle.pt", "broken.pt", "list.pt", "flat.pt", "fifo.pt", "missing.pt"]
    assert [saved_step(tmp_path / n) for n in names] == [None] * len(names)
    assert saved_step(_archive(tmp_path / "plain.pt", pickle.dumps({"step": 5}))) == 5  # the layout itself reads


def test_a_checkpoint_linked_from_outside_its_run_gives_no_step(tmp_path, tiny_run):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.pt").symlink_to(tiny_run / "ckpt.pt")
    assert saved_step(run / "ckpt.pt", within=run) is None
    assert saved_step(run / "ckpt.pt") == load_torch(tiny_run / "ckpt.pt")["step"]


def test_a_huge_pickle_is_refused_without_reading_it(tmp_path):
    from chargpt.runs.ckptmeta import PICKLE_LIMIT

    with zipfile.ZipFile(tmp_path / "big.pt", "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open("ckpt/data.pkl", "w", force_zip64=True) as f:
            for _ in range((PICKLE_LIMIT >> 20) + 1):
                f.write(bytes(1 << 20))
    assert saved_step(tmp_path / "big.pt") is None


# --------------------------------------------------------------------------- `chargpt runs` without torch
def _imported(*args, cwd: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """`chargpt ARGS` as a real process, and the modules it imported (as `python -X importtime` lists them)."""
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "chargpt", *map(str, args)], cwd=cwd,
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    modules = {line.rsplit("|", 1)[1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    return p, modules


def test_runs_lists_and_plots_runs_without_importing_torch(tiny_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_run, runs / "done")
    shutil.copytree(tiny_run, runs / "unfinished")
    (runs / "unfinished" / "summary.json").unlink()  # its parameters are counted from its config
    (runs / "latest").symlink_to("done")
    p, modules = _imported("runs", "--runs-dir", runs, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = {line.split()[0]: line for line in p.stdout.splitlines()[1:]}
    assert set(rows) == {"done", "unfinished"} and "unfinished" in rows["unfinished"]
    step = str(load_torch(tiny_run / "ckpt.pt")["step"])
    assert step in rows["done"].split() and step in rows["unfinished"].split()
    assert "chargpt.runs.listing" in modules
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}

    p, modules = _imported("runs", "--runs-dir", runs, "--plot", "--out", tmp_path / "loss.png", cwd=tmp_path)
    assert p.returncode == 0 and (tmp_path / "loss.png").is_file(), p.stderr[-2000:]
    assert "chargpt.runs.plotting" in modules
    assert not {m for m in modules if m == "torch" or m.startswith("torch.")}
