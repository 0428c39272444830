"""Checkpoints: a round trip keeps everything needed to resume; a file never runs code when read; a truncated,
corrupt or foreign file is a clear error; a write interrupted at any moment leaves the previous checkpoint whole."""
from __future__ import annotations

import os
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from chargpt.runs import checkpoint
from chargpt.config import Config, get_preset
from chargpt.errors import CheckpointError, ConfigError
from chargpt.fsutil import load_torch, save_torch
from chargpt.model.gpt import build_model
from chargpt.training.optim import make_optimizers
from chargpt.data.tokenizer import CharTokenizer

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


def tiny_config(**model) -> Config:
    config = get_preset("cpu")
    config.model.n_layer, config.model.n_embd, config.model.n_head, config.model.block_size = 1, 32, 2, 16
    config.model.vocab_size = CharTokenizer.from_text(TEXT).vocab_size
    for k, v in model.items():
        setattr(config.model, k, v)
    return config


def save_tiny(path: Path, config: Config | None = None, step: int = 7) -> dict:
    config = config or tiny_config()
    torch.manual_seed(0)
    model = build_model(config.model)
    optimizers = make_optimizers(model, config.train, "cpu")
    x = torch.randint(config.model.vocab_size, (2, config.model.block_size))
    _, loss = model(x, x)
    loss.backward()
    for opt in optimizers:
        opt.step()
    checkpoint.save(path, model=model, optimizers=optimizers, step=step, config=config,
                    tokenizer=CharTokenizer.from_text(TEXT), dataset_hash="d" * 64,
                    rng={"torch": torch.get_rng_state(), "batch": torch.Generator().get_state()})
    return {k: v.clone() for k, v in model.state_dict().items()}


class Evil:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def write_evil(path: Path, marker: Path, kind: str) -> None:
    state = {"format": checkpoint.FORMAT, "version": 1, "model": Evil(marker), "step": 1}
    if kind == "torch-zip":
        torch.save(state, path)
    else:  # the legacy format: a bare pickle stream
        path.write_bytes(pickle.dumps(state, protocol=2))


# --------------------------------------------------------------------------------------- round trip
def test_round_trip_keeps_weights_optimizer_vocab_config_and_dataset_hash(tmp_path):
    weights = save_tiny(tmp_path / "ckpt.pt")
    state = checkpoint.load(tmp_path)  # a run directory resolves to its ckpt.pt
    assert state["step"] == 7 and state["dataset_hash"] == "d" * 64
    assert state["vocab"] == CharTokenizer.from_text(TEXT).to_dict()
    assert Config.from_dict(state["config"]) == tiny_config()
    assert state["optimizers"] and all("state" in o for o in state["optimizers"])
    model, tok, _ = checkpoint.load_model(tmp_path / "ckpt.pt")
    assert tok == CharTokenizer.from_text(TEXT)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_checkpoint_file_is_readable_by_plain_weights_only_torch_load(tmp_path):
    save_tiny(tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert state["format"] == checkpoint.FORMAT


# --------------------------------------------------------------------------------- files never run code
@pytest.mark.parametrize("kind", ["torch-zip", "bare-pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, kind):
    marker = tmp_path / "pwned"
    write_evil(tmp_path / "ckpt.pt", marker, kind)
    with pytest.raises(CheckpointError, match="refused.*system"):
        checkpoint.load(tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="refused"):
        checkpoint.load_model(tmp_path / "ckpt.pt")
    assert not marker.exists()


def test_only_the_weights_only_loader_reads_torch_or_pickle_files():
    """Every tensor file chargpt opens goes through fsutil.load_torch (torch.load with weights_only=True)."""
    import ast

    import chargpt

    calls = []
    for path in Path(chargpt.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("load", "loads", "Unpickler") \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("torch", "pickle", "np"):
                calls.append((path.name, node.lineno, ast.unparse(node)))
    assert [(f, src) for f, _, src in calls] == [("fsutil.py", "torch.load(os.path.realpath(path) if mmap else f, map_location='cpu', weights_only=True, mmap=mmap)")]


def test_the_malicious_file_really_would_run_code_with_a_plain_unpickler(tmp_path):
    """Guards the tests above: the payload is live, so its refusal means something."""
    marker = tmp_path / "pwned"
    write_evil(tmp_path / "evil.pt", marker, "torch-zip")
    code = f"import torch; torch.load({str(tmp_path / 'evil.pt')!r}, weights_only=False)"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    assert marker.exists()


# --------------------------------------------------------------------- truncated, corrupt, foreign files
@pytest.mark.parametrize("keep", [0, 1, 100, 0.5, -1])
def test_truncated_checkpoint_is_a_clear_error(tmp_path, keep):
    save_tiny(tmp_path / "ckpt.pt")
    data = (tmp_path / "ckpt.pt").read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    (tmp_path / "ckpt.pt").write_bytes(data[:n])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load(tmp_path / "ckpt.pt")


@pytest.mark.parametrize("content", [b"hello, not a checkpoint\n", bytes(range(256)) * 8, b"PK\x03\x04" + b"\0" * 64])
def test_garbage_file_is_a_clear_error(tmp_path, content):
    (tmp_path / "ckpt.pt").write_bytes(content)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load(tmp_path / "ckpt.pt")


def test_flipped_bit_in_the_weights_is_caught_by_the_checksum(tmp_path):
    weights = save_tiny(tmp_path / "ckpt.pt")
    data = bytearray((tmp_path / "ckpt.pt").read_bytes())
    needle = next(iter(weights.values())).reshape(-1)[:4].numpy().tobytes()
    at = data.find(needle)
    assert at > 0
    data[at] ^= 1
    (tmp_path / "ckpt.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        checkpoint.load(tmp_path / "ckpt.pt")


def test_a_tensor_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a chargpt checkpoint"):
        checkpoint.load(tmp_path / "other.pt")


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=str(tmp_path / "ckpt.pt")):
        checkpoint.load(tmp_path)


def test_checkpoint_of_another_model_shape_is_a_clear_error(tmp_path):
    save_tiny(tmp_path / "ckpt.pt")
    state = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    state["config"]["model"]["n_embd"] = 64  # the recorded config no longer fits the weights
    state["checksum"] = checkpoint.digest(state)
    save_torch(tmp_path / "forged.pt", state)
    with pytest.raises(CheckpointError, match="does not match"):
        checkpoint.load_model(tmp_path / "forged.pt")
    with pytest.raises(CheckpointError, match="does not match"):
        checkpoint.restore(state, Config.from_dict(state["config"]), tmp_path / "forged.pt")


@pytest.mark.parametrize("change, flag", [({"n_embd": 64}, "--n-embd"), ({"n_layer": 2}, "--n-layer"),
                                          ({"pos": "learned"}, "--pos")])
def test_resuming_as_another_model_is_refused(tmp_path, change, flag):
    save_tiny(tmp_path / "ckpt.pt")
    state = checkpoint.load(tmp_path / "ckpt.pt")
    with pytest.raises(ConfigError, match=flag):
        checkpoint.restore(state, tiny_config(**change), tmp_path)


def test_resuming_with_another_optimizer_is_refused(tmp_path):
    save_tiny(tmp_path / "ckpt.pt")
    state = checkpoint.load(tmp_path / "ckpt.pt")
    config = tiny_config()
    config.train.optimizer = "adamw"
    with pytest.raises(ConfigError, match="--optimizer"):
        checkpoint.restore(state, config, tmp_path)
    checkpoint.restore(state, tiny_config(), tmp_path)  # the saved config itself is fine


# --------------------------------------------------------------------- interrupted writes keep the old file
def test_interrupt_during_a_save_keeps_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    weights = save_tiny(tmp_path / "ckpt.pt", step=1)
    before = (tmp_path / "ckpt.pt").read_bytes()

    def torn_save(obj, f, *a, **kw):  # half a file, then Ctrl-C
        Path(f).write_bytes(before[: len(before) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        save_tiny(tmp_path / "ckpt.pt", step=2)
    monkeypatch.undo()
    assert (tmp_path / "ckpt.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temporary file left behind
    model, _, state = checkpoint.load_model(tmp_path / "ckpt.pt")
    assert state["step"] == 1 and all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    save_tiny(tmp_path / "ckpt.pt", step=1)
    before = (tmp_path / "ckpt.pt").read_bytes()

    def full_disk(obj, f, *a, **kw):
        Path(f).write_bytes(b"partial")
        raise OSError(28, "No space left on device", str(f))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        save_tiny(tmp_path / "ckpt.pt", step=2)
    monkeypatch.undo()
    assert (tmp_path / "ckpt.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


SAVER = textwrap.dedent("""
    import sys, torch
    from chargpt.runs import checkpoint
    from chargpt.fsutil import save_torch
    path, i = sys.argv[1], 0
    while True:  # ever-changing ~8 MB checkpoints, as fast as possible
        i += 1
        w = torch.full((2_000_000,), float(i))
        state = {"format": checkpoint.FORMAT, "version": 1, "step": i, "model": {"w": w}}
        state["checksum"] = checkpoint.digest(state)
        save_torch(path, state)
        if i == 1:
            print("saved", flush=True)
""")


@pytest.mark.slow
def test_kill_9_at_random_moments_of_saving_leaves_a_loadable_checkpoint(tmp_path):
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    path = tmp_path / "ckpt.pt"
    for attempt in range(4):
        p = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().strip() == "saved"
            delay = rng.uniform(0.0, 1.0)
            time.sleep(delay)
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
        state = load_torch(path)  # whole, and its checksum holds (not a full checkpoint: load() would refuse it)
        assert state["checksum"] == checkpoint.digest(state)
        assert torch.equal(state["model"]["w"], torch.full((2_000_000,), float(state["step"]))), (attempt, delay)


# ------------------------------------------------------------------------------------------ fine-tuning
@pytest.mark.parametrize("model_kw", [dict(), dict(tie_weights=True), dict(model="bigram")])
def test_fine_tuning_keeps_the_rows_of_shared_characters_and_gives_new_ones_fresh_rows(model_kw):
    old_tok, new_tok = CharTokenizer("abcxy"), CharTokenizer("bcdy")
    config = tiny_config(**model_kw)
    config.model.vocab_size = old_tok.vocab_size
    torch.manual_seed(0)
    old = build_model(config.model)
    state = {"model": old.state_dict(), "vocab": old_tok.to_dict()}
    config.model.vocab_size = new_tok.vocab_size
    torch.manual_seed(1)
    new = build_model(config.model)
    fresh = {k: v.clone() for k, v in new.state_dict().items()}
    info = checkpoint.transfer_weights(state, new, new_tok)
    assert info == {"shared_chars": 3, "new_chars": 1, "dropped_chars": 2}
    got, was = new.state_dict(), state["model"]
    rows = {"b": (1, 0), "c": (2, 1), "y": (4, 3)}  # character: (old row, new row)
    emb = "token_embedding_table.weight"
    for ch, (o, n) in rows.items():
        assert torch.equal(got[emb][n] if model_kw.get("model") != "bigram" else got[emb][n, [0, 1, 3]],
                           was[emb][o] if model_kw.get("model") != "bigram" else was[emb][o, [1, 2, 4]]), ch
        if "lm_head.weight" in got:
            assert torch.equal(got["lm_head.weight"][n], was["lm_head.weight"][o]), ch
    d = new_tok.stoi["d"]
    assert torch.equal(got[emb][d], fresh[emb][d])  # a new character keeps its fresh initialisation
    for key in got:
        if key not in checkpoint.VOCAB_DIMS[config.model.model]:
            assert torch.equal(got[key], was[key]), key


def test_fine_tuning_another_model_shape_is_one_clear_error():
    config = tiny_config()
    old = build_model(config.model)
    state = {"model": old.state_dict(), "vocab": CharTokenizer.from_text(TEXT).to_dict()}
    other = tiny_config(n_embd=64)
    with pytest.raises(CheckpointError, match="fine-tune with the model it was trained as"):
        checkpoint.transfer_weights(state, build_model(other.model), CharTokenizer.from_text(TEXT))
