"""Checkpoints: a round trip keeps everything needed to resume; a file never runs code when read; a truncated,
corrupt or foreign file is a clear error; a write interrupted at any moment leaves the previous checkpoint whole."""
from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import chargpt
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
    """Every tensor file chargpt opens goes through fsutil.load_torch (torch.load with weights_only=True); the one
    other unpickler is ckptmeta's, which builds no tensor and refuses every global but torch's rebuild functions
    (tests/runs/test_ckptmeta.py)."""
    import ast

    import chargpt

    calls, unpicklers = [], []
    for path in Path(chargpt.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("load", "loads", "Unpickler") \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("torch", "pickle", "np"):
                calls.append((path.name, node.lineno, ast.unparse(node)))
            if isinstance(node, ast.ClassDef) and any("Unpickler" in ast.unparse(b) for b in node.bases):
                unpicklers.append((path.name, node.name))
    assert [(f, src.startswith("torch.load(") and "weights_only=True" in src) for f, _, src in calls] == [
        ("fsutil.py", True)]
    assert unpicklers == [("ckptmeta.py", "_Unpickler")]


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


# ------------------------------------------------------------------------------ what a checkpoint claims
def forge(run: Path, change) -> None:
    """Every checkpoint of `run` changed by `change(state)`, its checksum recomputed: a hand edit the checksum passes."""
    for path in run.glob("*.pt"):
        state = load_torch(path)
        change(state)
        state["checksum"] = checkpoint.digest(state)
        save_torch(path, state)


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_a_config_claiming_a_huge_block_size_is_refused_in_one_line_before_memory_is_spent(tiny_run, tmp_path):
    """A RoPE GPT has no tensor of block_size rows: the claim is held against the memory sampling or scoring would
    take at that size (the old code built it, then died in a numpy MemoryError)."""
    from conftest import one_error_line, run_main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    forge(run, lambda s: s["config"]["model"].update(block_size=1_000_000))
    before = peak_rss_mb()
    for command in (["sample", "--max-new-tokens", "5"], ["eval", "--eval-tokens", "100"],
                    ["attention", "--prompt", "ab", "--out", tmp_path / "a.png"]):
        line = one_error_line(run_main(*command, "--ckpt", run, "--device", "cpu"))
        assert "block_size 1,000,000" in line and "more than the" in line, line
    with pytest.raises(CheckpointError, match="block_size 1,000,000"):
        chargpt.load(run).generate("a", max_new_tokens=3)
    assert peak_rss_mb() - before < 300


@pytest.mark.parametrize("change, message", [
    (lambda s: s["config"]["model"].update(pos="learned"), "does not match its tensors"),  # no position table
    (lambda s: s["config"]["model"].update(n_layer=2), "does not match its tensors"),
    (lambda s: s["model"]["lm_head.weight"].fill_(float("nan")), "not finite"),
    (lambda s: s["model"]["ln_f.weight" if "ln_f.weight" in s["model"] else "lm_head.weight"].fill_(float("inf")),
     "not finite"),
    (lambda s: s["model"].update(extra=torch.zeros(3)), "has no extra"),
    (lambda s: s.update(step=2 ** 70), "'step'"),
])
def test_a_checkpoint_whose_config_disagrees_with_its_tensors_is_refused_by_every_reader(tiny_run, tmp_path, change,
                                                                                         message):
    from conftest import one_error_line, run_main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    forge(run, change)
    line = one_error_line(run_main("sample", "--ckpt", run, "--max-new-tokens", "5", "--device", "cpu"))
    assert message in line, line
    with pytest.raises(CheckpointError, match=message):
        chargpt.load(run).generate("a", max_new_tokens=3)


def test_a_learned_position_table_must_have_block_size_rows(tmp_path):
    save_tiny(tmp_path / "ckpt.pt", tiny_config(pos="learned"))
    state = load_torch(tmp_path / "ckpt.pt")
    state["config"]["model"]["block_size"] = 64  # the table has 16 rows
    state["checksum"] = checkpoint.digest(state)
    save_torch(tmp_path / "forged.pt", state)
    with pytest.raises(CheckpointError, match=r"position_embedding_table.weight has shape \(16, 32\) where its model "
                                              r"has \(64, 32\)"):
        checkpoint.load(tmp_path / "forged.pt")


# Values a hand edit may leave in a checkpoint's fields, and tensors it may put in place of the weights.
ANY_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from([2 ** 20, 2 ** 31, 10 ** 30]),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
                      st.lists(st.integers(0, 3), max_size=3))
TENSOR = st.builds(lambda shape, fill, dtype: torch.full(shape, fill).to(dtype),
                   st.lists(st.integers(0, 40), max_size=3).map(tuple),
                   st.sampled_from([0.0, 1.0, float("nan"), float("inf"), -1e30]),
                   st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.bool]))
EDIT = st.one_of(
    st.tuples(st.just("config"), st.sampled_from(["model", "train"]), st.integers(0, 40), ANY_VALUE),
    st.tuples(st.just("state"), st.just(None), st.integers(0, 40), ANY_VALUE),
    st.tuples(st.just("extra"), st.just(None), st.integers(0, 40), ANY_VALUE),
    st.tuples(st.just("tensor"), st.just(None), st.integers(0, 40), TENSOR),
    st.tuples(st.just("fill"), st.just(None), st.integers(0, 40), st.sampled_from([float("nan"), float("inf"), 1e30])),
)


def _edit(state: dict, edit) -> None:
    kind, section, key, value = edit
    node = state
    for part in {"config": ("config", section), "tensor": ("model",), "fill": ("model",), "extra": ("extra",),
                 "state": ()}[kind]:
        node = node.get(part) if isinstance(node, dict) else None
    names = sorted(k for k in node if k != "checksum") if isinstance(node, dict) else []
    target = node[names[key % len(names)]] if names else None
    if kind == "fill":
        if isinstance(target, torch.Tensor) and target.is_floating_point():
            target.fill_(value)  # the same shape, values training never saves
    elif names:  # an earlier edit may have replaced the field's section by a value
        node[names[key % len(names)]] = value


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(edits=st.lists(EDIT, min_size=1, max_size=3))
@example(edits=[("config", "model", 1, 2 ** 20)])  # block_size at the schema's limit (2^20)
@example(edits=[("config", "model", 8, 10 ** 30)])  # n_layer
@example(edits=[("fill", None, 0, float("nan"))])
def test_any_edit_of_a_checkpoint_samples_and_scores_or_is_one_checkpoint_error_without_allocating_much(
        tiny_run, tmp_path, edits):
    """The fields and tensors of a checkpoint edited (types, NaN, infinity, huge numbers, shapes), its checksum
    recomputed: loading, sampling and scoring it either work or raise one CheckpointError, and memory stays small."""
    from chargpt.model.engine import Engine
    from chargpt.model.sampling import SamplingParams
    from chargpt.training.evaluate import full_pass_loss

    state = load_torch(tiny_run / "ckpt.pt")
    for edit in edits:
        _edit(state, edit)
    state["checksum"] = checkpoint.digest(state)
    path = tmp_path / "edited.pt"
    save_torch(path, state)
    before = peak_rss_mb()
    try:
        model, tok, _ = checkpoint.load_model(path)
    except CheckpointError as e:
        assert "\n" not in str(e)
    else:
        ids = torch.tensor(tok.encode("First Citizen:\nBefore we"))
        assert list(Engine(model).sample(ids[:3].tolist(), SamplingParams.checked(str, max_new_tokens=3, seed=1)))
        assert isinstance(full_pass_loss(model, ids, model.config.block_size, "cpu"), float)  # NaN for 1e30 weights
    assert peak_rss_mb() - before < 300, edits


def test_resuming_a_checkpoint_whose_optimizer_state_has_other_shapes_is_one_line_not_a_crash(tiny_run, dataset_dir,
                                                                                               tmp_path):
    """torch loads an optimizer's state without checking its shapes: a forged one crashed the fused AdamW step
    (SIGSEGV, or std::bad_alloc)."""
    from conftest import one_error_line, run_cli

    def other_shapes(state: dict) -> None:
        for opt in state["optimizers"]:
            for held in opt["state"].values():
                held.update({k: torch.zeros(7, 3) for k, t in held.items() if isinstance(t, torch.Tensor) and t.dim()})

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    forge(run, other_shapes)
    p = run_cli("train", "--resume", run, "--max-steps", 30, "--data", dataset_dir, "--device", "cpu", "--threads", 1)
    assert "has shape (7, 3) for a parameter of shape" in one_error_line(p)


def _extra(**fields):
    def change(state: dict) -> None:
        if "ema" in fields and "ema" not in state["extra"]:
            return  # best.pt and ema.pt keep no average
        state["extra"].update(fields)
    return change


@pytest.mark.parametrize("change, message", [
    (_extra(ema={"lm_head.weight": torch.zeros(3, 3)}), "'extra.ema' (the weights' average): its config does not "
                                                        "match its tensors"),
    (_extra(best_val_loss="low"), "'extra.best_val_loss' is not a loss"),
    (_extra(init_from=torch.zeros(2)), "'extra.init_from' is not the record of a run"),
    (_extra(budget_seconds="x"), "'extra.budget_seconds' is not a number of seconds"),
    (_extra(ema_steps=-1), "'extra.ema_steps' is not a count of steps"),
    (_extra(finished="yes"), "'extra.finished' is not true or false"),
])
def test_resuming_a_checkpoint_whose_extra_records_lie_is_one_line(tiny_run, dataset_dir, tmp_path, change, message):
    """What a resume reads besides the weights (the weights' average, the best loss, the budget's seconds, the run
    it was fine-tuned from) is checked with them: each of these was a traceback (size mismatch, TypeError, ...)."""
    from conftest import one_error_line, run_main

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    forge(run, change)
    p = run_main("train", "--resume", run, "--max-steps", 30, "--data", dataset_dir, "--device", "cpu", "--threads", 1)
    assert message in one_error_line(p)


def _rng(**fields):
    return lambda state: state["rng"].update(fields)


DAMAGED_RNG = {  # what a hand edit may leave of the generator states, and the field the one line names
    "torch-3-bytes": (_rng(torch=torch.zeros(3, dtype=torch.uint8)), "'rng.torch'"),
    "torch-all-zeros": (_rng(torch=torch.zeros(5056, dtype=torch.uint8)), "'rng.torch'"),
    "batch-3-bytes": (_rng(batch=torch.zeros(3, dtype=torch.uint8)), "'rng.batch'"),
    "per-rank-3-bytes": (_rng(batch_per_rank=[torch.zeros(3, dtype=torch.uint8)]), "'rng.batch_per_rank[0]'"),
    "per-rank-all-zeros": (_rng(batch_per_rank=[torch.zeros(5056, dtype=torch.uint8)]), "'rng.batch_per_rank[0]'"),
    "python-index-beyond-its-state": (_rng(python=[0] * 624 + [4_000_000_000]), "'rng.python'"),
    "python-version-7": (_rng(python_version=7), "'rng.python'"),
    "python-values-not-integers": (_rng(python=[0.5] * 625), "'rng.python'"),
}


@pytest.mark.parametrize("name", DAMAGED_RNG)
def test_a_generator_state_a_resume_could_not_set_is_refused_where_the_checkpoint_is_checked(tiny_run, dataset_dir,
                                                                                           tmp_path, name):
    """torch and Python check a generator state only as it is set: a resume set them after the run was opened and
    crashed with a 25-line traceback (RuntimeError from torch.set_rng_state, ValueError from random.setstate).
    Each state is proven settable when the checkpoint is loaded, for every reader."""
    from conftest import one_error_line, run_main

    change, field = DAMAGED_RNG[name]
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    forge(run, change)
    p = run_main("train", "--resume", run, "--max-steps", 30, "--data", dataset_dir, "--device", "cpu", "--threads", 1)
    line = one_error_line(p)
    assert p.returncode == 2 and f"{run / 'ckpt.pt'} is not a chargpt checkpoint ({field}" in line, line
    with pytest.raises(CheckpointError, match=re.escape(f"not a chargpt checkpoint ({field}")):
        checkpoint.load(run / "ckpt.pt")


def test_the_generator_states_training_saves_pass_the_check_and_one_without_python_state_too(tiny_run):
    state = load_torch(tiny_run / "ckpt.pt")
    assert checkpoint.rng_problem(state["rng"]) is None
    assert checkpoint.rng_problem({"torch": torch.get_rng_state(), "batch": torch.Generator().get_state()}) is None
