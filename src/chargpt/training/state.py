"""What a training process trains: the model, its optimizers, the batches it draws and the average of its weights,
with the clock that times it and the writer that records it."""
from __future__ import annotations

import copy
import random
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..config import Config
from ..data.batch import get_batch
from ..data.dataset import Dataset
from ..runtime import distributed
from ..runtime.compiling import CompileRun
from ..runtime.device import autocast_for
from .clock import BudgetClock
from .writer import RunWriter


@dataclass
class Batches:
    """The training batches of one process: `accum` micro-batches of `micro_batch` windows a step, drawn by `gen`
    (each process draws its own)."""

    data: Dataset
    micro_batch: int
    accum: int
    block_size: int
    gen: torch.Generator

    def get(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return get_batch(self.data.train, self.micro_batch, self.block_size, device, self.gen)

    @property
    def splits(self) -> dict[str, torch.Tensor]:
        return {"train": self.data.train, "val": self.data.val}


class Average:
    """The average of the weights (--ema): the plain mean of every step since averaging began (`start`), until
    that spans 1 / (1 - decay) steps, then an exponential moving average with `decay`."""

    def __init__(self, model: torch.nn.Module, start: int, steps: int = 1):
        self.model = model.requires_grad_(False)
        self.start, self.steps = start, steps

    @classmethod
    def of(cls, model: torch.nn.Module, step: int) -> Average:
        return cls(copy.deepcopy(model), step)

    def update(self, model: torch.nn.Module, decay: float) -> None:
        """Fold `model`'s weights after this step into the average."""
        self.steps += 1
        weight = max(1.0 / self.steps, 1.0 - decay)
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], weight)

    def saved(self) -> dict:
        """What a checkpoint keeps of the average, for a resume to go on with."""
        return {"ema": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "ema_start": self.start, "ema_steps": self.steps}


@dataclass
class Training:
    """One training process: what `setup` builds, `loop` advances and `finish` summarizes."""

    config: Config
    device: torch.device
    dist: distributed.DistInfo
    precision: str  # "bfloat16" (autocast) or "float32"
    batches: Batches
    model: torch.nn.Module
    optimizers: list
    fwd: torch.nn.Module  # what the loop calls: the model, compiled and/or wrapped in DDP
    clock: BudgetClock
    writer: RunWriter
    step: int = 0
    ema: Average | None = None  # the average of the weights (--ema), from its start on
    compiled: str | None = None  # compile_key of the compiled model, None when training eagerly
    compile_run: CompileRun | None = None  # what the run measures of its compile, for the next runs' choice

    @property
    def data(self) -> Dataset:
        return self.batches.data

    @cached_property
    def autocast(self) -> Callable:
        return autocast_for(self.device, self.precision)

    @property
    def ddp_model(self) -> DDP | None:
        return self.fwd if isinstance(self.fwd, DDP) else None

    @property
    def tokens_per_step(self) -> int:
        b = self.batches
        return b.micro_batch * b.accum * self.dist.world_size * b.block_size

    def lr(self) -> float:
        return self.optimizers[0].param_groups[0]["lr"]


def rng_state(gen: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "batch": gen.get_state(), "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0]}


def restore_rng(state: dict, gen: torch.Generator, batch_state: torch.Tensor | None = None) -> None:
    """Set the generators a checkpoint saved (`rng_state`): each state was proven settable when the checkpoint was
    loaded (`runs.checkpoint.rng_problem`), so a damaged one never fails here, after the run was opened."""
    torch.set_rng_state(state["torch"])
    gen.set_state(batch_state if batch_state is not None else state["batch"])
    if state.get("python") is not None:  # checkpoints of tests and older versions may lack it
        random.setstate((state["python_version"], tuple(state["python"]), None))
