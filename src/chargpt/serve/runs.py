"""The runs a server offers: the listing it looks run names up in (never joining a name into a path, so no request
reaches another file), and the models in memory, one per checkpoint, reloaded when the file changes."""
from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from ..fsutil import read_json_object
from ..model.engine import Engine
from ..runs.checkpoint import load_model
from ..runs.listing import read_row
from ..runs.rundir import CKPT, CONFIG, SUMMARY, Located, locate_run, metrics_log
from .checks import RequestError


@dataclass
class Loaded:
    """A checkpoint in memory with the Engine that samples it (its numpy decoder copied and probed once)."""
    model: torch.nn.Module
    tokenizer: object
    step: int
    version: tuple
    engine: Engine


class ServedRuns:
    """The runs a server offers: every run directory under `runs_dir` (rescanned on each look-up, so new runs
    appear), or the single checkpoint `ckpt`. Models are loaded on first use and reloaded when their
    checkpoint file changes."""

    def __init__(self, runs_dir: str | os.PathLike | None = None, ckpt: str | os.PathLike | None = None,
                 device: torch.device = torch.device("cpu")):
        self.device = device
        self.runs_dir = None if runs_dir is None else Path(runs_dir)
        self.single: tuple[str, Path] | None = None
        if ckpt is not None:
            found = locate_run(ckpt)
            path = found.ckpt.resolve()
            self.single = (found.run.name if path.name == CKPT else path.stem, path)
        elif self.runs_dir is None or not self.runs_dir.is_dir():
            raise ConfigError(f"no runs directory {runs_dir}; train a model first, or pass --runs-dir DIR or --ckpt RUN")
        self._loaded: dict[str, Loaded] = {}
        self._lock = threading.Lock()
        if self.single:  # a checkpoint named on the command line is checked now, not at the first request
            self._load(*self.locate(self.single[0]))

    def table(self) -> dict[str, Path]:
        """Run name -> its directory (or, for a lone checkpoint file, the file)."""
        if self.single:
            name, path = self.single
            return {name: path.parent if path.name == CKPT else path}
        return {p.name: p for p in sorted(self.runs_dir.iterdir())
                if p.is_dir() and not p.is_symlink() and (p / CONFIG).is_file()}

    def path(self, name) -> Path:
        if not isinstance(name, str):
            raise RequestError(400, "'model' must be a string: a run name from GET /v1/models", "model")
        found = self.table().get(name)
        if found is None:
            raise RequestError(404, f"no run named {name!r}; GET /v1/models lists the runs served", "model",
                               "model_not_found")
        return found

    @staticmethod
    def checkpoint(path: Path) -> Located | None:
        """The run directory's (or the lone checkpoint file's) checkpoint, located, if there is one chargpt
        would read."""
        try:
            return locate_run(path)
        except CheckpointError:
            return None

    def with_checkpoints(self) -> list[tuple[str, Located]]:
        """The runs with a checkpoint and where it is, newest first."""
        found = [(c.ckpt.stat().st_mtime, n, c) for n, p in self.table().items() if (c := self.checkpoint(p))]
        return [(n, c) for _, n, c in sorted(found, key=lambda f: f[:2], reverse=True)]

    def servable(self) -> list[str]:
        """Names of the runs with a checkpoint, newest first."""
        return [name for name, _ in self.with_checkpoints()]

    def locate(self, name: str | None) -> tuple[str, Located]:
        """The run a request names (None: the newest with a checkpoint) and its checkpoint, found once for the
        request: what is loaded is what was found."""
        if name is None:
            newest = self.with_checkpoints()
            if not newest:
                raise RequestError(404, "no run here has a checkpoint yet; train one with `chargpt train`", "model",
                                   "model_not_found")
            return newest[0]
        found = self.checkpoint(self.path(name))
        if found is None:
            raise RequestError(404, f"run {name!r} has no checkpoint (yet) to sample from", "model", "model_not_found")
        return name, found

    def load(self, name: str | None) -> tuple[str, Loaded]:
        """The model of the run a request names (see `locate`), loaded; a checkpoint that cannot be (damaged, or
        too large for this machine) is the request's 409, saying why."""
        name, found = self.locate(name)
        try:
            return self._load(name, found)
        except CheckpointError as e:
            raise RequestError(409, f"run {name!r} cannot be served: {e}", "model", "model_unusable") from None

    def _load(self, name: str, found: Located) -> tuple[str, Loaded]:
        st = found.ckpt.stat()
        version = (st.st_mtime_ns, st.st_size, st.st_ino)  # a checkpoint replaced by a rename is a new inode
        with self._lock:  # one load per checkpoint version, however many requests ask at once
            cached = self._loaded.get(name)
            if cached is None or cached.version != version:
                model, tok, state = load_model(found, self.device)
                cached = self._loaded[name] = Loaded(model, tok, state["step"], version, Engine(model))
        return name, cached

    def info(self) -> list[dict]:
        """The runs table (`chargpt runs`) as JSON rows, oldest first."""
        rows = []
        for name, path in self.table().items():
            ckpt = self.checkpoint(path)
            if path.is_dir():
                r = asdict(read_row(path))
                r.update(name=name, path=str(path))
            else:
                r = {"name": name, "path": str(path), "updated": path.stat().st_mtime, "finished": True}
            r["servable"] = ckpt is not None
            rows.append(r)
        return sorted(rows, key=lambda r: (r["updated"], r["name"]))

    def details(self, name: str) -> dict:
        """A run's config, summary and the end of its metrics log (`metrics_note` says what of it was not read)."""
        path = self.path(name)
        folder = path if path.is_dir() else path.parent
        log = metrics_log(folder)
        return {"name": name, "config": read_json_object(folder / CONFIG, within=folder),
                "summary": read_json_object(folder / SUMMARY, within=folder),
                "metrics": log.records, "metrics_note": log.note}
