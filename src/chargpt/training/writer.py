"""What a training run leaves behind: its config, metrics records, checkpoints (and the `latest` link), loss.png and
the tracker's copy of each record. Only the main process of a run with a directory writes; the others stay quiet."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..config import Config
from ..data.dataset import Dataset
from ..errors import NonFiniteLoss
from ..runs import checkpoint, records
from ..runs.plotting import refresh_run_plot
from ..runs.rundir import RunDir
from ..track.tracker import NullTracker, Tracker


@dataclass
class RunWriter:
    """The run directory's writer. `say` prints a line (nothing on other processes, or when quiet)."""

    run: RunDir | None
    data: Dataset
    writes: bool  # this process writes the run (its main process, with a run directory)
    say: Callable[[str], None] = lambda *_: None
    tracker: Tracker = field(default_factory=NullTracker)
    preset: str | None = None
    data_dir: str | None = None
    origin: dict | None = None  # the run this one was fine-tuned from (--init-from)
    model_choice: str | None = None  # the size the time budget chose (no preset given)
    shows_progress: bool = True  # False: quiet (the library's verbose=False), no bar and no lines
    notebook: bool = False  # a tqdm.auto progress bar (a widget in Jupyter) even where stdout is no terminal
    best_val: float = math.inf  # the lowest val estimate so far, whose model best.pt holds
    last_eval: dict = field(default_factory=dict)  # the latest estimate's train_loss and val_loss
    marked_latest: bool = False  # `latest` points at this run since its first checkpoint here
    judge: Any = None  # a sweep's trial: its `judge(step, done, val_loss)` may stop the run, its `record` is summarized
    stopped_early: str | None = None  # why the judge stopped the run early (a sweep's pruner)

    @property
    def where(self) -> str:
        return str(self.run.path) if self.run is not None else "the run directory"

    def write_config(self, config: Config) -> None:
        if self.writes:
            self.run.write_config(records.run_config(config, self.data, self.preset, self.data_dir, self.origin))

    def log(self, record: dict) -> None:
        """One metrics record into metrics.jsonl and to the tracker."""
        if self.writes:
            self.run.log_metrics(record)
            self.tracker.log(record, record["step"])

    def redraw_plot(self) -> None:
        refresh_run_plot(self.run.path)

    def save_checkpoint(self, path: Path | None, **state) -> None:
        """`checkpoint.save(path or ckpt.pt, **state)`; the first ckpt.pt of this process marks the run `latest`."""
        if not self.writes:
            return
        checkpoint.save(path or self.run.ckpt, tokenizer=self.data.tokenizer, dataset_hash=self.data.content_hash,
                        **state)
        if path is None and not self.marked_latest:
            # `latest` is the newest run with a checkpoint, from its first one: resuming, sampling or evaluating
            # `latest` while this run trains, or after it was stopped, means this run
            self.marked_latest = True
            note = self.run.mark_latest()
            if note:
                print(f"warning: {note}", file=sys.stderr)

    def kept(self) -> str:
        has_ckpt = self.run is not None and self.run.ckpt.is_file()
        return f"the last good checkpoint ({self.run.ckpt}) is kept" if has_ckpt else "no checkpoint was written"

    def non_finite(self, what: str) -> NonFiniteLoss:
        return NonFiniteLoss(f"{what}; {self.kept()}. Lower --lr or --muon-lr, or set --grad-clip")
