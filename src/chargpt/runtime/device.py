"""Where and how tensors compute: device detection (cuda, then mps, then cpu), autocast, CUDA fast-path settings."""
from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import re
import shutil
import sys
import time
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch

from ..errors import ConfigError


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


def native_bf16(device: torch.device) -> bool:
    """Whether matmuls in bfloat16 run natively here: CUDA, or a CPU with AVX512-BF16 or AMX-BF16 (where oneDNN's
    bf16 matmul is ~2.2x float32's; without them bf16 is emulated and slower than float32)."""
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


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def keep_freed_memory_for_reuse(device: torch.device) -> bool:
    """On a CPU with glibc: serve tensors up to 64 MB from the heap and keep what they free for the next step.

    By default glibc maps each large tensor fresh and unmaps it when freed, so every training step faults in
    and zeroes its activations' pages again: 16% more steps in 60 s for the cpu preset without it, at the same
    peak memory (the next step reuses what the last one freed). Returns whether it applied."""
    if device.type != "cpu" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt): nothing to tune
        return False


def compile_unavailable_reason(device: torch.device) -> str | None:
    """Why torch.compile cannot work here, or None. On CPU inductor builds C++ kernels and needs a compiler."""
    if device.type == "cpu" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        return "torch.compile on CPU needs a C++ compiler (c++, g++ or clang++) on PATH"
    if device.type == "mps":
        return "torch.compile is not used on Apple MPS"
    return _unwritable_compile_cache()


def _unwritable_compile_cache() -> str | None:
    """Why inductor could not write its cache (a HOME that is a file, a read-only cache), or None: compiling
    would then fail mid-run, and a cache it cannot write should cost the compile, not the run."""
    import tempfile

    from ..fsutil import cache_dir

    path = Path(_USERS_INDUCTOR_CACHE or cache_dir() / f"torchinductor-{torch.__version__}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        return f"the compile cache {path} cannot be written ({e.strerror or e})"
    return None


def compile_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """torch.compile(model). On the CPU, dropout's random masks come from torch's own generator (inductor's
    generated random kernels made a compiled step with dropout 0.1 ~1.5x slower there, against ~1.1x this way);
    the masks then also match an eager run's."""
    if device.type == "cpu":
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True
    return torch.compile(model)


def use_persistent_compile_cache() -> str:
    """Keep torch.compile's caches (inductor's compiled kernels and graphs) in the user's cache directory, so a
    repeated run of the same shape skips most of compilation (10-30 s of a time budget, minutes on a busy
    machine) also after /tmp, torch's default place, is cleared. A TORCHINDUCTOR_CACHE_DIR the user set wins.
    Returns the directory."""
    users = _USERS_INDUCTOR_CACHE
    if users:
        return users
    from ..fsutil import cache_dir

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / f"torchinductor-{torch.__version__}")
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def prepare_compile() -> None:
    """What torch.compile is told before it compiles here: the persistent cache, and the kernels inductor compiles
    at once: one on a machine of 2 CPUs or fewer, where each parallel g++ holds ~200 MB and the cores are shared
    anyway (a cold 3 layers x 128 compile: 931 MB across its processes with two at once; issue 24). A
    TORCHINDUCTOR_COMPILE_THREADS the user set wins."""
    use_persistent_compile_cache()
    if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        from torch._inductor import config

        from .distributed import cpu_count

        if cpu_count() <= 2:
            config.compile_threads = 1


# Below this time budget a first compile (10-40 s on 2 CPU cores) costs more of the budget than compiled steps win
# back (2-core EPYC, cpu preset, 30 s budget: 1 step with a cold cache, 169 eager, 163 compiled from a warm one).
COLD_COMPILE_BUDGET = 150.0


def compile_key(*parts) -> str:
    """A name for what torch.compile builds from `parts` (torch version, device, precision, model shape...)."""
    return hashlib.sha256(json.dumps([torch.__version__, *parts], sort_keys=True, default=str).encode()).hexdigest()[:20]


def _compiled_marker(key: str) -> Path | None:
    if _USERS_INDUCTOR_CACHE:  # the user's own cache directory: chargpt keeps nothing of its own there
        return None
    return Path(use_persistent_compile_cache()) / "chargpt-compiled" / key


def compiled_before(key: str) -> bool | None:
    """Whether a chargpt run compiled `key` into chargpt's compile cache; None where the user chose the cache."""
    marker = _compiled_marker(key)
    return None if marker is None else marker.is_file()


def mark_compiled(key: str) -> None:
    """Remember that `key` is in the compile cache (an empty file beside inductor's own; cleared with it)."""
    marker = _compiled_marker(key)
    if marker is not None:
        try:
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
        except OSError:  # a cache that cannot be written only means the next run compiles again
            pass


def _users_inductor_cache() -> str | None:
    """The TORCHINDUCTOR_CACHE_DIR the user set, if any. inductor writes its own default (/tmp/torchinductor_<user>)
    back into the environment the first time it looks, so that value is not taken for the user's choice."""
    value = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not value:
        return None
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    return None if os.path.abspath(value) == os.path.abspath(default_cache_dir()) else value


_USERS_INDUCTOR_CACHE = _users_inductor_cache()  # read when chargpt is imported, before it compiles anything


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


def set_threads(threads: int, distributed: bool = False) -> None:
    """torch's CPU threads from `--threads` (every command's): N, or for 0 the cores not busy right now; 0 in a
    process of a `--nproc` run keeps the share of the cores `distributed.init` gave it."""
    if threads or not distributed:
        torch.set_num_threads(threads or idle_threads())


def idle_threads() -> int:
    """CPU threads when `--threads` is 0 (its default): the cores not busy right now.

    torch's intra-op threads wait for each other at the end of every parallel operation; when another process
    holds one of the cores, every operation waits for the thread that was scheduled out. On a busy 2-core
    machine a full-pass evaluation took 16-21 s with 2 threads and 2.9 s with 1 (issue 13); on a quiet one, 6.5 s
    with 2 and 8.9 s with 1. The load average is not the measure: it still counts, for a minute, processes that
    have ended (the quiet machine right after a run read as busy and got 1 thread: 8.0 s). So: the CPUs this
    process may use, less those busy over the last 0.1 s (rounded), and at least 1; the load average only where
    there is no /proc/stat."""
    from .distributed import cpu_count

    cpus = cpu_count()
    busy = busy_cpus()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average (Windows): torch's own default
            return torch.get_num_threads()
    return max(1, min(cpus, round((os.cpu_count() or cpus) - busy)))
