"""Checkpoints: everything needed to sample, evaluate or resume a run, in one file, written atomically and
read without ever running code from it (`torch.load(..., weights_only=True)`)."""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import random

import torch

from ..config import Config, ModelConfig
from ..errors import ChargptError, CheckpointError, ConfigError
from ..fsutil import ReadRefused, load_torch, refused_global, save_torch
from ..schema import valid
from ..model.gpt import LanguageModel, build_model
from .ckptmeta import FORMAT
from .records import MAX_STEP, size_text
from .rundir import Located, locate_run
from ..data.tokenizer import CharTokenizer


def save(path: str | os.PathLike, *, model: LanguageModel, optimizers, step: int, config: Config,
         tokenizer: CharTokenizer, dataset_hash: str, rng: dict, extra: dict | None = None) -> None:
    state = {
        "format": FORMAT,
        "version": 1,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizers": [opt.state_dict() for opt in optimizers],
        "step": step,
        "config": config.to_dict(),
        "vocab": tokenizer.to_dict(),
        "dataset_hash": dataset_hash,
        "rng": rng,
        "extra": extra or {},
    }
    state["checksum"] = digest(state)
    save_torch(path, state)


def digest(state: dict) -> str:
    """A hash of every value and tensor byte in `state` (but its own "checksum"): a flipped bit is caught on load."""
    h = hashlib.blake2b(digest_size=16)

    def feed(obj) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(obj, dict):
            h.update(b"{")
            for k in sorted(obj, key=repr):
                if k != "checksum":
                    h.update(repr(k).encode())
                    feed(obj[k])
            h.update(b"}")
        elif isinstance(obj, (list, tuple)):
            h.update(b"[")
            for v in obj:
                feed(v)
            h.update(b"]")
        else:
            h.update(repr(obj).encode())

    feed(state)
    return h.hexdigest()


def load(path: str | os.PathLike | Located) -> dict:
    """Read a checkpoint's contents (a checkpoint file, or a run's as `rundir.locate_run` finds it, or what it
    found); never unpickles arbitrary objects. The checkpoint of a run directory is read only from inside it (a
    symlink out of the run is refused); a checkpoint file named directly is the user's choice, wherever it leads."""
    found = path if isinstance(path, Located) else locate_run(path)
    path = found.ckpt
    try:
        state = load_torch(path, within=found.within)
    except ReadRefused as e:
        raise CheckpointError(f"cannot read {path}: it is {e.strerror}; pass a checkpoint file written by "
                              f"`chargpt train`") from None
    except PermissionError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
    except (FileNotFoundError, NotADirectoryError):  # gone since it was located
        raise CheckpointError(f"no checkpoint at {path}; pass a run directory or a .pt file written by "
                              f"`chargpt train`") from None
    except Exception as e:  # a damaged file can fail inside zip, pickle or storage code: all mean the same here
        blocked = refused_global(e)
        if blocked:
            raise CheckpointError(f"{path} refused: loading it would call {blocked}, and chargpt never runs code "
                                  f"from a file; only load checkpoints written by chargpt") from None
        raise CheckpointError(f"{path} is truncated or corrupt ({e.__class__.__name__}); "
                              f"use an earlier checkpoint or retrain") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a chargpt checkpoint")
    if "checksum" in state and state["checksum"] != digest(state):
        raise CheckpointError(f"{path} is corrupt: its contents do not match their checksum; "
                              f"use an earlier checkpoint or retrain")
    problem = state_problem(state)
    if problem:
        raise CheckpointError(f"{path} is not a chargpt checkpoint ({problem}); use a checkpoint written by "
                              f"`chargpt train`")
    return state


def state_problem(state: dict) -> str | None:
    """What is missing or of the wrong type in a loaded checkpoint, if anything: checked once, here, so that
    every command that reads one (resume, sample, eval, attention) can rely on its fields."""
    model = state.get("model")
    if not isinstance(model, dict) or not model or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items()):
        return "'model' is not a dictionary of tensors"
    optimizers = state.get("optimizers")
    if not isinstance(optimizers, list) or not all(isinstance(o, dict) for o in optimizers):
        return "'optimizers' is not a list of optimizer states"
    if not valid(state.get("step"), int, min=0, max=MAX_STEP, max_open=True):
        return f"'step' is {state.get('step')!r}, not a count"
    if not isinstance(state.get("dataset_hash"), str):
        return "'dataset_hash' is not a string"
    try:
        config = Config.from_dict(state.get("config"))
        tokenizer = CharTokenizer.from_dict(state.get("vocab"))
        config.model.validate()
        config.train.validate()
    except (ChargptError, KeyError, TypeError) as e:
        return f"'config' or 'vocab': {e}"
    if config.model.vocab_size != tokenizer.vocab_size:
        return f"its config's vocab_size {config.model.vocab_size} is not its vocabulary's {tokenizer.vocab_size}"
    wrong = model_problem(config.model, model)
    if wrong:
        return wrong
    wrong = rng_problem(state.get("rng"))
    if wrong:
        return wrong
    return extra_problem(state.get("extra"), config.model)


def rng_problem(rng) -> str | None:
    """What keeps a resume from setting a checkpoint's random generators (`training.state.restore_rng`), if anything.
    torch checks a generator state, and Python's `random` its state, only as it is set: each state a resume would
    set is set here first, on a throwaway generator."""
    if not isinstance(rng, dict):
        return "'rng' lacks the generator states"
    per_rank = rng.get("batch_per_rank")
    if per_rank is not None and not isinstance(per_rank, (list, tuple)):
        return "'rng.batch_per_rank' is not a list of generator states"
    states = {"torch": rng.get("torch"), "batch": rng.get("batch")}
    states |= {f"batch_per_rank[{i}]": s for i, s in enumerate(per_rank or ())}
    for name, s in states.items():
        if not isinstance(s, torch.Tensor) or s.dtype != torch.uint8:
            return f"'rng.{name}' is not a generator state"
        try:
            torch.Generator().set_state(s)
        except (RuntimeError, ValueError, TypeError) as e:
            return f"'rng.{name}' is not a state torch's generator can take ({_first_line(e)})"
    if rng.get("python") is not None:  # checkpoints of tests and older versions may lack it
        try:
            if not isinstance(rng["python"], (list, tuple)):
                raise TypeError("not a list")
            random.Random().setstate((rng.get("python_version"), tuple(rng["python"]), None))
        except (TypeError, ValueError, OverflowError) as e:
            return f"'rng.python' is not a state Python's random can take ({_first_line(e)})"
    return None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]


# What a resume reads of a checkpoint's `extra` besides its strings: seconds of training and of the budget, the
# steps of the weights' average (each checked when present; budget_origin may be None, not yet measured).
SECONDS, STEPS = (float, {"min": 0}), (int, {"min": 0, "max": MAX_STEP, "max_open": True})
EXTRA_NUMBERS = {"train_seconds": SECONDS, "budget_seconds": SECONDS, "budget_origin": SECONDS, "ema_start": STEPS,
                 "ema_steps": STEPS}


def extra_problem(extra, mc: ModelConfig) -> str | None:
    """What is wrong in a checkpoint's `extra` (what a resume reads besides the weights), if anything: its numbers,
    strings, the run it was fine-tuned from, and the weights' average, held against the config as the weights are."""
    if not isinstance(extra, dict):
        return "'extra' is not a dictionary"
    for key, (kind, bounds) in EXTRA_NUMBERS.items():
        unset = key == "budget_origin" and extra.get(key) is None
        if key in extra and not unset and not valid(extra[key], kind, **bounds):
            return f"'extra.{key}' is not {'a number of seconds' if kind is float else 'a count of steps'}"
    if not isinstance(extra.get("finished", False), bool):  # saved at the run's end: a resume only reports
        return "'extra.finished' is not true or false"
    best = extra.get("best_val_loss")
    if best is not None and best != math.inf and not valid(best, float):
        return "'extra.best_val_loss' is not a loss"
    for key in ("preset", "data_dir"):
        if extra.get(key) is not None and not isinstance(extra[key], str):
            return f"'extra.{key}' is not a string"
    origin = extra.get("init_from")
    if origin is not None and not (isinstance(origin, dict) and all(
            isinstance(v, (str, int, float, type(None))) for v in origin.values())):
        return "'extra.init_from' is not the record of a run"
    average = extra.get("ema")
    if average is not None:
        wrong = model_problem(mc, average) if isinstance(average, dict) and all(
            isinstance(t, torch.Tensor) for t in average.values()) else "it is not a dictionary of tensors"
        if wrong:
            return f"'extra.ema' (the weights' average): {wrong}"
    return None


def model_problem(mc: ModelConfig, tensors: dict[str, torch.Tensor]) -> str | None:
    """Whether `tensors` are the weights of the model `mc` describes, before memory is spent on that model: the same
    names, each of the shape the model built from `mc` gives it (built on the meta device: no memory, whatever size
    `mc` claims; the position table has block_size rows), each finite (training never saves NaN or infinity)."""
    from ..runtime.resources import num_params

    held = sum(t.numel() for t in tensors.values())  # said before even an empty model is built: n_layer may be huge
    if num_params(mc) > 2 * held + 100_000 or (mc.model == "gpt" and 4 * mc.n_layer > len(tensors)):
        return "its config does not match its tensors: it describes a far larger model"
    with torch.device("meta"):
        shapes = {k: tuple(t.shape) for k, t in build_model(mc).state_dict().items()}
    for key, shape in shapes.items():
        if key not in tensors:
            return f"its config does not match its tensors: its model has a {key}, the tensors have none"
        if tuple(tensors[key].shape) != shape:
            return (f"its config does not match its tensors: {key} has shape {tuple(tensors[key].shape)} where its "
                    f"model has {shape}")
    extra = next((k for k in tensors if k not in shapes), None)
    if extra is not None:
        return f"its config does not match its tensors: its model has no {extra}"
    bad = next((k for k, t in tensors.items() if not t.is_floating_point() or not bool(torch.isfinite(t).all())), None)
    return None if bad is None else f"its tensor {bad} holds values that are not finite floating-point numbers"


def check_fits(mc: ModelConfig, path: str | os.PathLike, device: str | torch.device) -> None:
    """Refuse, in one line and before anything is built, a checkpoint whose model cannot be sampled or scored on
    `device`: block_size sets buffers that no tensor of a RoPE GPT or a bigram shows (the rotation tables, the
    key/value cache of a whole block, the fast decoder's block-squared mask)."""
    from ..runtime.resources import FLOAT, available_bytes, generation_bytes, num_params

    need = FLOAT * num_params(mc) + sum(generation_bytes(mc, 1, 1).values())
    free = available_bytes(device)
    if free is not None and need > free:
        raise CheckpointError(f"{path} describes a model (block_size {mc.block_size:,}) that needs about "
                              f"{size_text(need)} of memory on {device} to sample or score, more than the "
                              f"{size_text(free)} free; use a checkpoint of a smaller model, or restore its config "
                              f"if it was edited")


def load_model(path: str | os.PathLike | Located,
               device: str | torch.device = "cpu") -> tuple[LanguageModel, CharTokenizer, dict]:
    """Rebuild the model and tokenizer from a checkpoint (located once), ready for sampling or evaluation."""
    found = path if isinstance(path, Located) else locate_run(path)
    state = load(found)
    config = Config.from_dict(state["config"])
    check_fits(config.model, found.ckpt, device)
    try:
        tokenizer = CharTokenizer.from_dict(state["vocab"])
        model = build_model(config.model)
        model.load_state_dict(state["model"])
    except (ChargptError, KeyError, RuntimeError, TypeError, ValueError, AttributeError, OverflowError, MemoryError) as e:
        raise CheckpointError(f"{found.ckpt} does not match any chargpt model ({_first_line(e)})") from None
    return model.to(device).eval(), tokenizer, state


def restore(state: dict, config: Config, path: str | os.PathLike, *, data=None,
            model: LanguageModel | None = None) -> int:
    """Check that the checkpoint `state` can continue as `config` on `data` and load its weights into `model`
    (built on the CPU just to check, when not given); return its step. The optimizer states are the training's
    to load (`training.optim.load_optimizer_states`).

    The one place a resume is checked: the same model, the same optimizer, the same dataset."""
    try:
        saved = Config.from_dict(state["config"])
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{path} has no usable config ({e}); it cannot be resumed") from None
    if data is not None and not data.is_identified_by(state.get("dataset_hash")):
        raise ConfigError(f"{data.path} is not the dataset {path} was trained on (its files differ); "
                          f"pass --data with the original dataset directory")
    for section, names in (("model", [f.name for f in dataclasses.fields(saved.model)]), ("train", ["optimizer"])):
        old, new = getattr(saved, section), getattr(config, section)
        changed = [f"--{f.replace('_', '-')} {getattr(new, f)} (saved: {getattr(old, f)})"
                   for f in names if getattr(old, f) != getattr(new, f)]
        if changed:
            raise ConfigError(f"cannot resume {path} with a different {'model' if section == 'model' else 'optimizer'}: "
                              f"{', '.join(changed)}; drop those flags, or start a new run with --name")
    try:
        model = model if model is not None else build_model(config.model)
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path} does not match the model it records ({_first_line(e)}); "
                              f"it cannot be resumed, start a new run") from None
    return state["step"]


# The tensors indexed by the vocabulary, and along which dimensions: (GPT's embedding rows and head rows; the
# bigram's table is vocabulary by vocabulary).
VOCAB_DIMS = {"gpt": {"token_embedding_table.weight": (0,), "lm_head.weight": (0,), "lm_head.bias": (0,)},
              "bigram": {"token_embedding_table.weight": (0, 1)}}


def transfer_weights(state: dict, model: LanguageModel, tokenizer: CharTokenizer) -> dict:
    """Copy a checkpoint's weights into `model`, built for `tokenizer`'s vocabulary (fine-tuning on other text):
    a character in both vocabularies keeps its embedding and head rows; a new character keeps the rows `model`
    was initialised with. Every other tensor must have the same shape. Returns what was shared and new."""
    old = CharTokenizer.from_dict(state["vocab"])
    shared = [c for c in tokenizer.chars if c in old.stoi]
    new_idx = torch.tensor([tokenizer.stoi[c] for c in shared], dtype=torch.long)
    old_idx = torch.tensor([old.stoi[c] for c in shared], dtype=torch.long)
    dims = VOCAB_DIMS.get(model.config.model, {})
    target = model.state_dict()
    with torch.no_grad():
        for key, t in target.items():
            if key not in state["model"]:
                raise CheckpointError(f"the checkpoint has no {key}; fine-tune from a run of the same model")
            src = state["model"][key]
            other_dims = [d for d in range(t.dim()) if d not in dims.get(key, ())]
            if src.dim() != t.dim() or any(src.shape[d] != t.shape[d] for d in other_dims):
                raise CheckpointError(f"{key} has shape {tuple(src.shape)} in the checkpoint but "
                                      f"{tuple(t.shape)} here; fine-tune with the model it was trained as")
            if key in dims:
                if dims[key] == (0, 1):
                    t[new_idx[:, None], new_idx[None, :]] = src[old_idx[:, None], old_idx[None, :]].to(t.dtype)
                else:
                    t[new_idx] = src[old_idx].to(t.dtype)
            else:
                t.copy_(src)
    model.load_state_dict(target)
    return {"shared_chars": len(shared), "new_chars": tokenizer.vocab_size - len(shared),
            "dropped_chars": old.vocab_size - len(shared)}
