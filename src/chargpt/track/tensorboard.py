"""TensorBoard: the `tensorboard` tracker writes event files into the run directory's `tensorboard/` (view them
with `tensorboard --logdir runs`): every metrics record as scalars, the config, the images, where the checkpoints
are, the summary and the sample. A resumed run appends to the same directory, so its charts continue."""
from __future__ import annotations

import json
from pathlib import Path

from .tracker import warn

SUBDIR = "tensorboard"


class TensorBoardTracker:
    def __init__(self):
        self.writer = None  # None before start, on a rank that writes nothing, and once writing has failed

    def start(self, run, config: dict, data) -> None:
        if run is None:
            return
        logdir = Path(run.path) / SUBDIR
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(logdir))
        except Exception as e:  # tensorboard not installed, or a directory that cannot be written
            warn("cannot write event files; training goes on without them", e, "tensorboard")
            return
        print(f"tensorboard: writing {logdir}; view with: tensorboard --logdir {logdir}", flush=True)
        self._guard("recording the config", lambda: self.writer.add_text("config", _code(json.dumps(config, indent=2)),
                                                                         0))

    def log(self, record: dict, step: int) -> None:
        def add():
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key, value, step)

        self._guard("logging metrics", add)

    def image(self, key: str, path: Path, caption: str, step: int) -> None:
        def add():
            from matplotlib.image import imread

            pixels = imread(str(path))[..., :3]  # HWC floats in [0, 1]; the alpha channel dropped
            self.writer.add_image(key, pixels, step, dataformats="HWC")
            self.writer.add_text(f"{key}/caption", caption, step)

        self._guard(f"logging the image {key}", add)

    def artifact(self, kind: str, files: dict[str, Path], aliases: list[str], metadata: dict) -> None:
        # TensorBoard keeps no files: it records which checkpoint each alias names
        self._guard(f"recording the {kind}", lambda: self.writer.add_text(
            kind, f"{', '.join(aliases)}: {', '.join(str(path) for path in files.values())}"))

    def finish(self, summary: dict) -> None:
        def add():
            steps = int(summary.get("steps") or 0)
            scalars = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            self.writer.add_text("summary", _code(json.dumps({k: v for k, v in summary.items() if k != "sample"},
                                                             indent=2)), steps)
            for key, value in scalars.items():
                self.writer.add_scalar(f"summary/{key}", value, steps)
            if summary.get("sample"):
                self.writer.add_text("sample", _code(summary["sample"]), steps)

        self._guard("recording the summary", add)
        if self.writer is not None:
            self._guard("closing the event file", self.writer.close)
            self.writer = None

    def _guard(self, what: str, fn) -> None:
        if self.writer is None:
            return
        try:
            fn()
        except Exception as e:
            warn(f"{what} failed; training goes on without it", e, "tensorboard")
            self.writer = None


def _code(text: str) -> str:
    """Text that TensorBoard's markdown shows as written (indented: a code block)."""
    return "\n".join("    " + line for line in text.splitlines())


TRACKER = TensorBoardTracker
