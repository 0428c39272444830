"""The figures a run reports, named and computed once: the metrics records of metrics.jsonl (and the trackers), the
summary's throughput and full-pass figures, `chargpt eval --json`, and the run's config with its dataset entry; the
one reader of a metrics log for what is shown (its end, bounded), and the one writer of JSON that leaves chargpt."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..fsutil import open_regular
from ..schema import valid

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


# ------------------------------------------------------------------------------------------ reading them back
SHOWN_BYTES = 8 << 20  # the end of a metrics log a table, a plot or the server reads: some 50,000 records
NUMERIC = ("step", "train_loss", "val_loss", "train_seconds", "lr", "tokens_seen", "tokens_per_sec")


@dataclass
class MetricsLog:
    """The records of a metrics log, as far as it was read, and what was left out of them."""
    records: list[dict] = field(default_factory=list)
    name: str = "metrics.jsonl"
    limit: int = SHOWN_BYTES  # the most bytes read, from the end
    unread: int = 0  # bytes before the part read
    skipped: int = 0  # lines that are not records (a hand edit), a torn last line (a crash's) aside
    damaged: str | None = None  # the first of them, named

    @property
    def note(self) -> str | None:
        """One line saying what was left out, or None when every record was read."""
        parts = []
        if self.unread:
            parts.append(f"only its last {size_text(self.limit)} were read (not the {size_text(self.unread)} before)")
        if self.skipped:
            parts.append(f"{self.skipped:,} line(s) that are not records were skipped")
        return f"{self.name}: {'; '.join(parts)}" if parts else None


def read_metrics_log(path: str | os.PathLike, within: str | os.PathLike | None = None,
                     limit: int = SHOWN_BYTES) -> MetricsLog:
    """The records in the last `limit` bytes of the metrics log `path` (a file of the run `within`), each line that is
    not a record skipped and counted: readers may rely on the types, and memory stays bounded whatever the file's
    size claims. FileNotFoundError and the other OSErrors of `fsutil.open_regular` are the caller's."""
    path = Path(path)
    with open_regular(path, within) as f:
        start = max(0, os.fstat(f.fileno()).st_size - limit)
        f.seek(start)
        data = f.read(limit)
    if start:  # the first line read is the end of one: drop it
        cut = data.find(b"\n") + 1 or len(data)
        start, data = start + cut, data[cut:]
    lines = data.decode("utf-8", errors="replace").splitlines()
    log = MetricsLog(name=path.name, limit=limit, unread=start)
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if is_record(record):
            log.records.append(record)
        elif record is not None or i < len(lines) - 1:  # a torn last line is what a crash leaves mid-write
            log.skipped += 1
            where = f"line {i + 1}" if not start else "a line"
            log.damaged = log.damaged or (f"{path.name} {where} is "
                                          f"{'not JSON' if record is None else 'not a record of finite numbers'}")
    return log


MAX_STEP = 2 ** 63  # no run takes more steps: a larger one is a hand edit


def is_record(record) -> bool:
    """Whether `record` is a metrics record: an object whose known figures are finite numbers (its step an integer
    from 0): what training writes, as it stops at a non-finite loss before logging it."""
    return isinstance(record, dict) and all(
        valid(record[k], int, min=0, max=MAX_STEP, max_open=True) if k == "step" else valid(record[k], float)
        for k in NUMERIC if record.get(k) is not None)


def size_text(n: int) -> str:
    """1,234 bytes, 8.0 MB, 7.5 GB: a size as a message shows it."""
    if n >= 1 << 30:
        return f"{n / (1 << 30):,.1f} GB"
    return f"{n / (1 << 20):,.1f} MB" if n >= 1 << 20 else f"{n:,} bytes"


# ------------------------------------------------------------------------------------------ JSON that leaves
def json_safe(value: Any) -> Any:
    """`value` with every NaN or infinity (in dicts, lists and tuples) as None: JSON has no such numbers, and a file
    edited by hand (or a diverged figure) must not make a server response or a --json line fail."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(value: Any, **options) -> str:
    """The JSON text of `value` (`json.dumps` `options`) as chargpt gives it out: standard JSON, non-finite numbers as
    null. Every response of the server and every --json output goes through it."""
    return json.dumps(json_safe(value), allow_nan=False, **options)
