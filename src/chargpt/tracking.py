"""Experiment tracking behind one small interface. The local run directory is always written by the
training loop; a tracker adds a service such as Weights & Biases."""
from __future__ import annotations


class NullTracker:
    """Tracks nothing (no `--wandb`)."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def finish(self, summary: dict, run=None) -> None:
        pass
