"""Where and how tensors compute: device detection (cuda, then mps, then cpu), autocast, CUDA fast-path settings."""
from __future__ import annotations

import re
import shutil
from contextlib import nullcontext
from functools import partial

import torch

from .errors import ConfigError


def detect_device() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks the best device; an explicit device that is not there is a clear error."""
    if name == "auto":
        return torch.device(detect_device())
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", name):
        raise ConfigError(f"--device must be auto, cpu, mps, cuda or cuda:N, got {name!r}")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError(f"--device {name}: Apple MPS is not available on this machine; use --device cpu or auto")
    return dev


def autocast_for(device: torch.device, dtype: str = "auto"):
    """A context-manager factory: bf16 autocast on CUDA by default, plain float32 elsewhere."""
    if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda"):
        return partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)
    return nullcontext


def configure_backends(device: torch.device) -> None:
    """TF32 matmuls and flash attention where they help (CUDA)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why torch.compile cannot work here, or None. On CPU inductor builds C++ kernels and needs a compiler."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "torch.compile on CPU needs a C++ compiler (c++, g++ or clang++) on PATH"
    if device.type == "mps":
        return "torch.compile is not used on Apple MPS"
    return None
