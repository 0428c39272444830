"""Data-parallel training across processes with torch.distributed (launched by torchrun): nccl on CUDA,
gloo on CPU. A single process is simply rank 0 of 1."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError


def is_main_process() -> bool:
    """Whether this process is rank 0, the one that writes the run, prints and tracks (torchrun sets RANK in each
    process it starts; a process on its own is rank 0). Read from the environment: it needs no process group."""
    return os.environ.get("RANK", "0") == "0"


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # init() created the process group, so shutdown() destroys it
    launched: bool = False  # started by torchrun: in a process group (and under DDP) even as its only rank
    device: torch.device = torch.device("cpu")  # where collectives run: nccl reduces CUDA tensors only

    @property
    def enabled(self) -> bool:
        return self.world_size > 1 or self.launched

    @property
    def is_main(self) -> bool:
        """This process's rank is 0: in a process `init` set up, the same answer as `is_main_process()`."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """Whether torchrun started this process (it sets RANK and WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or "RANK" in os.environ


def init(device_type: str) -> DistInfo:
    """Join the process group when torchrun started us (it sets RANK and WORLD_SIZE), even as its only process:
    `torchrun --nproc_per_node=1` runs the real DDP path (nccl on one GPU)."""
    if not launched_by_torchrun():
        return DistInfo()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world, launched=True)
    torch.set_num_threads(thread_share(int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
            info.device = torch.device("cuda", info.local_rank)
        dist.init_process_group(backend=backend)
        info.owns_group = True
    return info


def thread_share(local_world_size: int) -> int:
    """CPU threads for one of `local_world_size` processes on this machine.

    torchrun sets OMP_NUM_THREADS=1 in every process, which leaves most cores idle on a CPU run, so that
    value counts as unset: each process takes max(1, cpus // local_world_size). Any other OMP_NUM_THREADS
    is kept, and `--threads N` overrides both.
    """
    asked = os.environ.get("OMP_NUM_THREADS", "")
    if asked.isdigit() and int(asked) > 1:
        return int(asked)
    return max(1, cpu_count() // max(1, local_world_size))


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def split_batch(batch_size: int, grad_accum: int, world_size: int) -> tuple[int, int]:
    """(micro-batch, accumulation steps) per rank that keep the global batch the same for any world size."""
    if grad_accum % world_size == 0:
        return batch_size, grad_accum // world_size
    if batch_size % world_size == 0:
        return batch_size // world_size, grad_accum
    raise ConfigError(f"a global batch of {batch_size} x {grad_accum} sequences cannot be split evenly over "
                      f"{world_size} processes; make --batch-size or --grad-accum a multiple of {world_size}")


def _all_reduce(values: list[float], info: DistInfo, op) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=info.device)
    dist.all_reduce(t, op=op)
    return t.tolist()


def all_max(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise maximum over ranks (agreeing on stop flags and elapsed time)."""
    return _all_reduce(values, info, dist.ReduceOp.MAX)


def all_gather_tensor(t: torch.Tensor, info: DistInfo) -> list[torch.Tensor]:
    if not info.enabled:
        return [t]
    out = [torch.empty_like(t, device=info.device) for _ in range(info.world_size)]
    dist.all_gather(out, t.to(info.device))
    return [o.to(t.device) for o in out]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_sum(values: list[float], info: DistInfo) -> list[float]:
    """Element-wise sum over ranks, in float64 (the sums of a sharded evaluation)."""
    return _all_reduce(values, info, dist.ReduceOp.SUM)
