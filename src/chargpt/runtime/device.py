"""Where and how tensors compute: device detection (cuda, then mps, then cpu), precision and autocast, CUDA
fast-path settings, and torch's CPU threads."""
from __future__ import annotations

import os
import re
from contextlib import nullcontext
from functools import partial
from typing import Callable

import torch

from ..errors import ConfigError
from ..schema import flag
from .resources import busy_cpus


def detect_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(name: str = "auto", spell: Callable[[str], str] = flag) -> torch.device:
    """`auto` picks the best device; an explicit device that is not there is a clear error (the setting named as
    `spell` writes it: `--device`, or `device` in Python). The index of cuda:N is read here, never by torch, which
    keeps it in 8 bits (cuda:255 is plain cuda, cuda:128 cuda:-128) and raises a traceback beyond 2^31."""
    if name == "auto":
        return torch.device(detect_device())
    what = spell("device")
    found = re.fullmatch(r"cpu|mps|cuda(?::([0-9]+))?", name)  # [0-9]: \d takes any script's digits (cuda:٣)
    if not found:
        raise ConfigError(f"{what} must be auto, cpu, mps, cuda or cuda:N, got {name!r}")
    kind, index = name.split(":")[0], None if found[1] is None else int(found[1])
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{what} {name}: CUDA is not available on this machine; use {what} cpu or auto")
        if index is not None and index >= torch.cuda.device_count():
            raise ConfigError(f"{what} {name}: only {torch.cuda.device_count()} CUDA device(s) here, "
                              f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    if kind == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"{what} {name}: Apple MPS is not available on this machine; use {what} cpu or auto")
    return torch.device(kind, index)


def native_bf16(device: torch.device) -> bool:
    """Whether matmuls in bfloat16 run natively here: CUDA, or a CPU with AVX512-BF16 or AMX-BF16 (where oneDNN's
    bf16 matmul is faster than float32's; without them bf16 is emulated and slower than float32)."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        caps = getattr(torch.cpu, "get_capabilities", dict)()
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    return False


def resolve_dtype(device: torch.device, dtype: str = "auto") -> str:
    """`auto` is bfloat16 where it runs natively (CUDA, bf16-capable CPUs), float32 elsewhere (MPS, older CPUs)."""
    if dtype == "auto":
        return "bfloat16" if native_bf16(device) else "float32"
    return dtype


def autocast_for(device: torch.device, dtype: str = "auto"):
    """A context-manager factory: bf16 autocast (float32 weights, bf16 matmuls) or plain float32."""
    if resolve_dtype(device, dtype) == "bfloat16":
        return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    return nullcontext


def configure_backends(device: torch.device) -> None:
    """TF32 matmuls and flash attention where they help (CUDA)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def set_threads(threads: int, distributed: bool = False) -> None:
    """torch's CPU threads from `--threads` (every command's): N, or for 0 the cores not busy right now; 0 in a
    process of a `--nproc` run keeps the share of the cores `distributed.init` gave it."""
    if threads or not distributed:
        torch.set_num_threads(threads or idle_threads())


def decide_threads(threads: int) -> int | None:
    """Set torch's CPU threads for a training run from its `threads` field (`set_threads`) and return them; under
    torchrun None: `distributed.init` gives each process its share."""
    from .distributed import launched_by_torchrun

    if launched_by_torchrun() and not threads:
        return None
    set_threads(threads)
    return torch.get_num_threads()


def idle_threads() -> int:
    """CPU threads when `--threads` is 0 (its default): the CPUs this process may use, less those other processes
    keep busy right now, and at least 1 (the load average only where there is no /proc/stat).

    torch's threads wait for each other at the end of every parallel operation, so a thread whose core another
    process holds slows every operation down: on a busy machine fewer threads are faster. The load average is not
    the measure: it still counts, for a minute, processes that have ended."""
    from .distributed import cpu_count

    cpus = cpu_count()
    busy = busy_cpus()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average (Windows): torch's own default
            return torch.get_num_threads()
    return max(1, min(cpus, round((os.cpu_count() or cpus) - busy)))
