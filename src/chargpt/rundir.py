"""The local record of a run: `runs/<name>/` with config, metrics log, checkpoint, sample and summary."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError
from .fsutil import append_line, write_json, write_text

CONFIG, METRICS, SUMMARY, SAMPLE, CKPT, BEST, PLOT = ("config.json", "metrics.jsonl", "summary.json", "sample.txt",
                                                     "ckpt.pt", "best.pt", "loss.png")


@dataclass
class RunDir:
    path: Path

    @classmethod
    def create(cls, out_dir: str | os.PathLike, name: str) -> "RunDir":
        path = Path(out_dir) / name
        if path.exists() and any(path.iterdir()):
            raise CheckpointError(f"run directory {path} already exists; pass --resume {path} to continue it "
                                  f"or --name to start another")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot create run directory {path} ({e.strerror}); choose a writable --out-dir") from None
        if not os.access(path, os.W_OK):
            raise CheckpointError(f"run directory {path} is not writable; choose a writable --out-dir")
        return cls(path)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RunDir":
        """The run at `path` (its directory, or a file in it). A link such as `runs/latest` is followed, so the
        run keeps its own name: marking it latest again must not point `latest` at itself."""
        path = real_path(Path(path))
        if path.is_file():
            path = path.parent
        if not (path / CKPT).is_file():
            raise CheckpointError(f"cannot resume {path}: no {CKPT} there; pass the directory of a chargpt run")
        return cls(path)

    @property
    def ckpt(self) -> Path:
        return self.path / CKPT

    @property
    def best(self) -> Path:
        """The checkpoint of the lowest validation estimate so far (the latest one is `ckpt`)."""
        return self.path / BEST

    def write_config(self, config: dict) -> None:
        write_json(self.path / CONFIG, config)

    def log_metrics(self, record: dict) -> None:
        append_line(self.path / METRICS, json.dumps(record))

    def metrics(self) -> list[dict]:
        return read_metrics(self.path)

    def recover(self, step: int) -> None:
        """Before resuming at `step`, undo what a crash can leave: evaluations logged after the checkpoint was
        saved, a torn last line, and half-written temporary files of atomic writes."""
        for tmp in self.path.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        path = self.path / METRICS
        if not path.is_file():
            return
        kept = "".join(json.dumps(r) + "\n" for r in read_metrics(self.path) if r.get("step", 0) <= step)
        if kept != path.read_text(encoding="utf-8"):
            write_text(path, kept)

    def write_summary(self, summary: dict) -> None:
        write_json(self.path / SUMMARY, summary)

    def write_sample(self, text: str) -> None:
        write_text(self.path / SAMPLE, text)

    def mark_latest(self) -> None:
        """Point `<out_dir>/latest` at this run (a symlink replaced atomically)."""
        target = real_path(self.path)
        link = target.parent / "latest"
        tmp = target.parent / f".latest.{os.getpid()}"
        if target.name == "latest":
            return  # never a link to itself
        try:
            if tmp.is_symlink():
                tmp.unlink()
            tmp.symlink_to(target.name)
            os.replace(tmp, link)
        except OSError:
            pass  # a filesystem without symlinks only loses the convenience name


def real_path(path: Path) -> Path:
    """`path` with its links followed, kept relative to the working directory when it is under it (messages
    then show `runs/<name>`, not an absolute path)."""
    if not path.exists():
        return path
    real = path.resolve()
    try:
        return real.relative_to(Path.cwd().resolve())
    except ValueError:
        return real


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Records of a metrics log; a torn last line (crash mid-write) is skipped."""
    out = []
    try:
        lines = (Path(path) / METRICS).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def default_name(model: str, preset: str | None) -> str:
    label = "baseline" if model == "bigram" else (preset or "custom")
    return f"train-{model}-{label}-{time.strftime('%Y%m%d-%H%M%S')}"
