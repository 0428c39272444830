"""Checkpoints: everything needed to sample, evaluate or resume a run, in one file, written atomically and
read without ever running code from it (`torch.load(..., weights_only=True)`)."""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import torch

from .config import Config
from .errors import ChargptError, CheckpointError, ConfigError
from .fsutil import load_torch, refused_global, save_torch
from .model import LanguageModel, build_model
from .optim import make_optimizers
from .tokenizer import CharTokenizer

CKPT_NAME = "ckpt.pt"
FORMAT = "chargpt-checkpoint"


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run directory holding one."""
    path = Path(path)
    if path.is_dir():
        path = path / CKPT_NAME
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; pass --ckpt RUN_DIR or a .pt file written by `chargpt train`")
    return path


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


def load(path: str | os.PathLike) -> dict:
    """Read a checkpoint's contents; never unpickles arbitrary objects."""
    path = resolve(path)
    try:
        state = load_torch(path)
    except PermissionError as e:
        raise CheckpointError(f"cannot read {path} ({e.strerror or e}); check its permissions") from None
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
    return state


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[LanguageModel, CharTokenizer, dict]:
    """Rebuild the model and tokenizer from a checkpoint, ready for sampling or evaluation."""
    state = load(path)
    try:
        config = Config.from_dict(state["config"])
        tokenizer = CharTokenizer.from_dict(state["vocab"])
        model = build_model(config.model)
        model.load_state_dict(state["model"])
    except (ChargptError, KeyError, RuntimeError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"{resolve(path)} does not match any chargpt model ({(str(e).splitlines() or [e.__class__.__name__])[0][:200]})") from None
    return model.to(device).eval(), tokenizer, state


def check_resumable(state: dict, config: Config, path: str | os.PathLike) -> None:
    """Refuse to resume `state` as `config` when the model or optimizer would differ from the one saved."""
    try:
        saved = Config.from_dict(state["config"])
    except (ConfigError, KeyError) as e:
        raise CheckpointError(f"{path} has no usable config ({e}); it cannot be resumed") from None
    for section, flags in (("model", [f.name for f in dataclasses.fields(saved.model)]), ("train", ["optimizer"])):
        old, new = getattr(saved, section), getattr(config, section)
        changed = [f"--{f.replace('_', '-')} {getattr(new, f)} (saved: {getattr(old, f)})"
                   for f in flags if getattr(old, f) != getattr(new, f)]
        if changed:
            raise ConfigError(f"cannot resume {path} with a different {'model' if section == 'model' else 'optimizer'}: "
                              f"{', '.join(changed)}; "
                              f"drop those flags, or start a new run with --name")
    try:
        model = build_model(config.model)
        model.load_state_dict(state["model"])
        optimizers = make_optimizers(model, config.train, "cpu")
        if len(optimizers) != len(state["optimizers"]):
            raise ValueError(f"{len(state['optimizers'])} optimizer states for {len(optimizers)} optimizers")
        for opt, st in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(st)
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]
        raise CheckpointError(f"{path} does not match the model it records ({first}); "
                              f"it cannot be resumed, start a new run") from None
