"""What this machine has for a run: memory (a run's or a sample's estimated need against what is free; glibc told
to keep freed tensor memory for reuse) and the CPUs other processes keep busy.

A size that cannot fit is one line naming the flag (and what would fit), not the kernel's OOM killer or a
huge-allocation traceback after minutes of training.

The estimates are deliberately rough (float32 weights, gradients and two optimizer moments; the activations
a backward pass keeps; the buffers of generation). They exist to catch sizes off by orders of magnitude.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import Config, ModelConfig
from ..errors import ConfigError

if TYPE_CHECKING:
    import torch

GB = 1 << 30
FLOAT = 4


def available_bytes(device: torch.device | str) -> int | None:
    """Memory free for this process on `device` (RAM for the CPU, within a cgroup limit), or None if unknown."""
    import torch  # here: `chargpt runs` counts a model's parameters through this module without torch

    device = torch.device(device)
    if device.type == "cuda":
        try:
            return torch.cuda.mem_get_info(device)[0]
        except Exception:  # noqa: BLE001 - a driver that cannot say: no check rather than a crash
            return None
    if device.type != "cpu":
        return None
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    if free is None and hasattr(os, "sysconf"):
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            pass
    try:  # a container's limit (cgroup v2)
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = min(free if free is not None else 1 << 62, int(limit) - used)
    except (OSError, ValueError):
        pass
    return free


def num_params(mc: ModelConfig) -> int:
    """Parameters of the model `mc` describes, counted exactly without building it (or importing torch): what
    `build_model(mc).num_params()` returns (tests/runs/test_listing.py holds every kind of model to it)."""
    V, C, T, L, b = mc.vocab_size, mc.n_embd, mc.block_size, mc.n_layer, int(mc.bias)
    if mc.model == "bigram":
        return V * V
    norm = 0 if mc.norm == "rmsnorm" else (2 if b else 1) * C  # RMSNorm has no parameters
    block = 12 * C * C + b * (3 * C + C + 4 * C + C) + 2 * norm  # attention, feed-forward, their two norms
    return V * C + (T * C if mc.pos == "learned" else 0) + L * block + norm + (0 if mc.tie_weights else V * C) + b * V


def generation_bytes(mc: ModelConfig, batch: int, length: int) -> dict[str, int]:
    """Buffers of generating `batch` sequences of `length` tokens: the token ids, the key/value cache and, on
    the fast CPU path, a causal mask and the scores of a window's prefill (block_size squared)."""
    T, C = mc.block_size, mc.n_embd
    parts = {"ids": 2 * 8 * batch * length, "logits": 4 * FLOAT * batch * mc.vocab_size}
    if mc.model != "bigram":
        parts["cache"] = 2 * FLOAT * mc.n_layer * batch * T * (C + mc.n_head)
        parts["block"] = FLOAT * T * T * (2 + mc.n_head * batch)
    return parts


def train_bytes(config: Config) -> dict[str, int]:
    """Peak memory of a training step (and of the sample drawn at its end), by part."""
    mc, tc = config.model, config.train
    B, T, C, V = tc.batch_size, mc.block_size, mc.n_embd, mc.vocab_size
    per_token = 3 * V + 2 * C if mc.model == "bigram" else mc.n_layer * (18 * C + 2 * mc.n_head * T) + 3 * V + 2 * C
    parts = {"weights": 4 * FLOAT * num_params(mc), "activations": FLOAT * B * T * per_token}
    if tc.sample_tokens:
        sample = generation_bytes(mc, 1, tc.sample_tokens + 1)
        parts["sample"] = sample["ids"] + sample.get("cache", 0) + sample["logits"]
        parts["block"] = sample.get("block", 0)
    return parts


def _gb(n: int) -> str:
    return f"{n / GB:,.1f} GB" if n >= GB / 10 else f"{n / (1 << 20):,.0f} MB"


def check_train_fits(config: Config, device: torch.device | str) -> None:
    """Refuse a training configuration whose estimated memory exceeds what `device` has free."""
    free = available_bytes(device)
    parts = train_bytes(config)
    need = sum(parts.values())
    if free is None or need <= free:
        return
    worst = max(parts, key=parts.get)
    mc, tc = config.model, config.train
    if worst == "activations":
        per_seq = parts["activations"] // tc.batch_size
        fits = max(0, (free - need + parts["activations"]) // per_seq)
        advice = (f"lower --batch-size (at most {fits:,} would fit)" if fits else
                  "lower --block-size, --n-layer or --n-embd")
    elif worst == "weights":
        advice = ("the vocabulary is too large for a bigram table" if mc.model == "bigram"
                  else "lower --n-layer or --n-embd")
    elif worst == "sample":
        per_token = 2 * 8
        fits = max(0, (free - need + parts["sample"]) // per_token)
        advice = f"lower --sample-tokens (at most {fits:,} would fit; 0 skips the sample)"
    else:
        advice = "lower --block-size (sampling needs block_size squared floats)"
    raise ConfigError(f"this run needs about {_gb(need)} of memory on {device} ({worst} {_gb(parts[worst])}), more "
                      f"than the {_gb(free)} free: {advice}")


def check_sample_fits(mc: ModelConfig, batch: int, length: int, device: torch.device | str) -> None:
    """Refuse generating `batch` samples of `length` tokens when the buffers cannot fit on `device`."""
    free = available_bytes(device)
    parts = generation_bytes(mc, batch, length)
    parts["weights"] = FLOAT * num_params(mc)
    need = sum(parts.values())
    if free is None or need <= free:
        return
    worst = max(parts, key=parts.get)
    if worst == "ids":
        fits = max(0, (free - need + parts["ids"]) // (16 * batch))
        advice = f"lower --max-new-tokens or --num-samples (at most {fits:,} tokens per sample would fit)"
    elif worst in ("cache", "logits"):
        advice = "lower --num-samples"
    else:
        advice = "this checkpoint's model is too large to sample on this machine"
    raise ConfigError(f"generating {batch:,} x {length:,} tokens needs about {_gb(need)} of memory on {device}, more "
                      f"than the {_gb(free)} free: {advice}")


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def keep_freed_memory_for_reuse(device: torch.device) -> bool:
    """On a CPU with glibc: serve tensors up to 64 MB from the heap and keep what they free for the next step.

    By default glibc maps each large tensor fresh and unmaps it when freed, so every training step faults in
    and zeroes its activations' pages again; kept, the next step reuses what the last one freed, at the same
    peak memory. Returns whether it applied."""
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to tune
        return False


def busy_cpus(window: float = 0.1) -> float | None:
    """How many of the machine's CPUs other processes keep busy right now: the non-idle share of /proc/stat's
    CPU time over `window` seconds (this process sleeps meanwhile), times the machine's CPU count. None where
    there is no /proc/stat (macOS, Windows)."""
    def snapshot() -> tuple[int, int]:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        return sum(values), values[3] + values[4]

    try:
        total0, idle0 = snapshot()
        time.sleep(window)
        total1, idle1 = snapshot()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1.0 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)
