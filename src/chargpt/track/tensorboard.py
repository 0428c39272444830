"""TensorBoard: the `tensorboard` tracker writes event files into the run directory's `tensorboard/` (view them
with `tensorboard --logdir runs`): every metrics record as scalars, the config, the images, where the checkpoints
are, the summary and the sample. A resumed run appends to the same directory from its checkpoint's step, so its
charts continue, and what a killed process logged past that step is hidden (TensorBoard's purge_step)."""
from __future__ import annotations

import json
from pathlib import Path

SUBDIR = "tensorboard"


class TensorBoardTracker:
    """Its failures are reported by `tracker.GuardedTracker`, which `make_tracker` wraps it in."""

    def __init__(self):
        self.writer = None  # None before start, and on a rank that writes nothing

    def start(self, run, config: dict, data) -> None:
        if run is None:
            return
        from torch.utils.tensorboard import SummaryWriter

        from .tracker import notice

        logdir = run.subdir(SUBDIR)  # a directory of the run, never a link out of it
        resumed = resumed_step(run)
        # a resumed run hides the events a killed process logged after its checkpoint: they are logged again
        self.writer = SummaryWriter(str(logdir), purge_step=None if resumed is None else resumed + 1)
        notice("tensorboard", f"writing {logdir}; view with: tensorboard --logdir {logdir}")
        self.writer.add_text("config", _code(json.dumps(config, indent=2)), 0)

    def log(self, record: dict, step: int) -> None:
        if self.writer is None:
            return
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(key, value, step)

    def image(self, key: str, path: Path, caption: str, step: int) -> None:
        if self.writer is None:
            return
        from matplotlib.image import imread

        pixels = imread(str(path))[..., :3]  # HWC floats in [0, 1]; the alpha channel dropped
        self.writer.add_image(key, pixels, step, dataformats="HWC")
        self.writer.add_text(f"{key}/caption", caption, step)

    def artifact(self, kind: str, files: dict[str, Path], aliases: list[str], metadata: dict) -> None:
        # TensorBoard keeps no files: it records which checkpoint each alias names
        if self.writer is not None:
            self.writer.add_text(kind, f"{', '.join(aliases)}: {', '.join(str(path) for path in files.values())}")

    def finish(self, summary: dict) -> None:
        if self.writer is None:
            return
        steps = int(summary.get("steps") or 0)
        scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.writer.add_text("summary", _code(json.dumps({k: v for k, v in summary.items() if k != "sample"},
                                                         indent=2)), steps)
        for key, value in scalars.items():
            self.writer.add_scalar(f"summary/{key}", value, steps)
        if summary.get("sample"):
            self.writer.add_text("sample", _code(summary["sample"]), steps)
        writer, self.writer = self.writer, None
        writer.close()

    def abandon(self) -> None:
        """After a failure: close the event file, whatever state its writer is in."""
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # the failure that brought us here, again
                pass


def resumed_step(run) -> int | None:
    """The step a run continues from (its checkpoint's), or None for a new run (no checkpoint yet)."""
    from ..fsutil import load_torch

    if not Path(run.ckpt).is_file():
        return None
    return int(load_torch(run.ckpt, within=run.path, mmap=True)["step"])


def _code(text: str) -> str:
    """Text that TensorBoard's markdown shows as written (indented: a code block)."""
    return "\n".join("    " + line for line in text.splitlines())


TRACKER = TensorBoardTracker
