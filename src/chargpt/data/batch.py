"""Random context windows, drawn exactly as the notebook's `get_batch` draws them."""
from __future__ import annotations

import torch

from ..errors import DataError


def windows(data: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """(len(starts), length) int64: row i holds data[starts[i]:starts[i] + length]."""
    return data[starts.unsqueeze(1) + torch.arange(length)].long()  # one gather instead of a Python loop


def get_batch(data: torch.Tensor, batch_size: int, block_size: int, device: str | torch.device = "cpu",
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (x, y), each (batch_size, block_size) int64, y being x shifted left by one.

    Offsets come from `torch.randint(len(data) - block_size, (batch_size,))`, from `generator` when
    given, else from the global RNG, so after `torch.manual_seed(S)` the batches equal the notebook's.
    """
    if len(data) < block_size + 1:
        raise DataError(
            f"a split of {len(data)} tokens is shorter than one block ({block_size} + 1 tokens); "
            f"use a smaller --block-size or a larger corpus"
        )
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    window = windows(data, ix, block_size + 1)  # (B, T+1)
    x, y = window[:, :-1].contiguous(), window[:, 1:].contiguous()
    if torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)
