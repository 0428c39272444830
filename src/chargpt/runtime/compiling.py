"""torch.compile for a training run: whether it can work here, its persistent cache, and which shapes that cache
already holds (so a short time budget is not spent compiling)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

# Below this time budget a first compile costs more of the budget than compiled steps win back; with a warm cache,
# compiling pays at any budget.
COLD_COMPILE_BUDGET = 150.0


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
    """torch.compile(model). On the CPU, dropout's random masks come from torch's own generator: inductor's
    generated random kernels are much slower there, and the masks then also match an eager run's."""
    if device.type == "cpu":
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True
    return torch.compile(model)


def use_persistent_compile_cache() -> str:
    """Keep torch.compile's caches in the user's cache directory rather than /tmp (torch's default, cleared on
    reboot), so a repeated run of the same shape skips most of compilation. A TORCHINDUCTOR_CACHE_DIR the user set
    wins. Returns the directory."""
    users = _USERS_INDUCTOR_CACHE
    if users:
        return users
    from ..fsutil import cache_dir

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / f"torchinductor-{torch.__version__}")
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


def prepare_compile() -> None:
    """Tell torch.compile, before it compiles: the persistent cache, and on a machine of 2 CPUs or fewer one
    kernel compiled at a time (each parallel g++ holds its own memory and the cores are shared anyway). A
    TORCHINDUCTOR_COMPILE_THREADS the user set wins."""
    use_persistent_compile_cache()
    if "TORCHINDUCTOR_COMPILE_THREADS" not in os.environ:
        from torch._inductor import config

        from .distributed import cpu_count

        if cpu_count() <= 2:
            config.compile_threads = 1


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


_USERS_INDUCTOR_CACHE = _users_inductor_cache()  # read on import, before chargpt compiles anything
