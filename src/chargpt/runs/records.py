"""The figures a run reports, named and computed once: the metrics records of metrics.jsonl (and the trackers), the
summary's throughput and full-pass figures, `chargpt eval --json`, and the run's config with its dataset entry."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import Config
    from ..data.dataset import Dataset

LN2 = math.log(2)


def bits_per_char(nats: float) -> float:
    return nats / LN2


def throughput(step: int, tokens_per_step: int, seconds: float) -> dict:
    """Tokens seen by `step` and their rate over `seconds` of training."""
    return {"tokens_seen": step * tokens_per_step,
            "tokens_per_sec": round(step * tokens_per_step / max(seconds, 1e-9), 1)}


def metrics_record(step: int, figures: dict, lr: float, tokens_per_step: int, seconds: float) -> dict:
    """One line of metrics.jsonl at `step`: `figures` (the training loss and gradient norm, or an evaluation's
    losses), the learning rate, tokens seen, training seconds and tokens/s. Trackers get the same record."""
    seen = throughput(step, tokens_per_step, seconds)
    return {"step": step, **figures, "lr": lr, "tokens_seen": seen["tokens_seen"],
            "train_seconds": round(seconds, 3), "tokens_per_sec": seen["tokens_per_sec"]}


def full_pass(result, seconds: float, split: str = "val") -> dict:
    """The figures of a pass over `split` (an `evaluate.PassResult`): `{split}_loss_full` is exact unless a subset
    was scored (then `{split}_loss_full_stderr` is its standard error)."""
    return {f"{split}_loss_full": result.loss, f"{split}_bpc_full": bits_per_char(result.loss),
            f"{split}_loss_full_exact": result.exact, f"{split}_loss_full_stderr": result.stderr,
            f"{split}_eval_tokens": result.tokens, f"{split}_tokens": result.split_tokens,
            "eval_seconds": round(seconds, 3)}


def eval_result(result, seconds: float, split: str, ckpt: str, step: int) -> dict:
    """What `chargpt eval --json` prints: `full_pass`'s figures, and under their earlier short names (loss, bpc,
    tokens, split_tokens, exact, stderr, seconds) for the scripts that read those."""
    short = {"loss": result.loss, "bpc": bits_per_char(result.loss), "tokens": result.tokens,
             "split_tokens": result.split_tokens, "exact": result.exact, "stderr": result.stderr,
             "seconds": round(seconds, 3)}
    return {"split": split, **short, "ckpt": ckpt, "step": step, **full_pass(result, seconds, split)}


def dataset_entry(data: Dataset) -> dict:
    """The dataset a run trains on: its name, directory, content hash and sizes."""
    return {"name": data.meta.get("name"), "dir": str(data.path), "hash": data.content_hash,
            "vocab_size": data.meta.get("vocab_size"), "train_tokens": data.meta.get("train_tokens"),
            "val_tokens": data.meta.get("val_tokens")}


def run_config(config: Config, data: Dataset, preset: str | None, data_dir: str | None = None,
               origin: dict | None = None) -> dict:
    """The run's config as config.json records it (and trackers, with more): every field, the preset, the data
    directory, the dataset, and the run fine-tuned from when there is one."""
    return config.to_dict() | {"preset": preset, "data_dir": data_dir, "dataset": dataset_entry(data)} | (
        {"init_from": origin} if origin else {})
