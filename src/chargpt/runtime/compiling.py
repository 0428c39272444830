"""torch.compile for a training run: whether it can work here, its persistent cache, which shapes that cache
already holds, and whether compiling pays in a time budget on this machine's measured figures."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .progress import format_duration

# Compiled training must see this many times the tokens eager training would: speeds and compile times measured
# on one run vary by a few percent on the next, and near the break-even point compiling wins nothing.
COMPILE_MARGIN = 1.05


@dataclass(frozen=True)
class CompileFigures:
    """What compiling one model costs and wins on this machine, measured by earlier runs (None: not measured):
    the seconds a compile adds from a cold cache and from a warm one, and training tokens/s compiled and eager."""

    cold_seconds: float | None = None
    warm_seconds: float | None = None
    compiled_speed: float | None = None
    eager_speed: float | None = None


def compile_decision(training_seconds: float | None, cached: bool | None,
                     figures: CompileFigures, span: str = "this budget trains") -> tuple[bool, str]:
    """Whether a run with `training_seconds` left to train (None: not known) compiles, and the line that says why
    ("" when there is nothing to say); `span` says what trains them (a budget, or a run's steps at the eager
    speed measured here). `cached`: whether the compile cache holds the model (None: the user's own cache, which
    chargpt cannot tell: treated as warm, as before figures were kept).

    A run whose training time is not known compiles. Another compiles where, on this machine's figures for the model,
    (training_seconds - compile seconds) x compiled speed > COMPILE_MARGIN x training_seconds x eager speed,
    the compile seconds being the cold cache's or the warm one's. Without figures, a cold cache trains eagerly
    (a first compile can cost more of a budget than its faster steps return) and a warm one compiles."""
    if training_seconds is None:
        return True, ""
    cold = cached is False
    cost = figures.cold_seconds if cold else figures.warm_seconds
    compiled, eager = figures.compiled_speed, figures.eager_speed
    if cost is None or not compiled or not eager:
        if cold:
            return False, ("compile: skipped: what a first compile of this model costs and wins on this machine is "
                           "not measured yet, and it may cost more of the budget than its faster steps return")
        return True, "compile: compiling first, from the compile cache" if cached else ""
    gain = compiled / eager - 1
    what = "a first compile of this model" if cold else "loading this model's compiled graphs from the cache"
    if compiled <= COMPILE_MARGIN * eager:
        pace = (f"only {gain:.0%} faster here than eager ones, too little to pay for {what} "
                f"(~{format_duration(cost)})" if gain > 0 else f"{-gain:.0%} slower here than eager ones")
        return False, f"compile: skipped: compiled steps of this model run {pace}"
    pays = (training_seconds - cost) * compiled > COMPILE_MARGIN * training_seconds * eager
    break_even = cost * compiled / (compiled - COMPILE_MARGIN * eager)
    return pays, (f"compile: {'compiling first' if pays else 'skipped'}: {what} costs ~{format_duration(cost)} "
                  f"here for {gain:.0%} faster steps, which pays {'after' if pays else 'only after'} "
                  f"~{format_duration(break_even)} of training; {span} "
                  f"~{format_duration(max(0.0, training_seconds))}")


@dataclass
class CompileRun:
    """What a compiling run measures of its compile: whether the cache was cold (None: unknown), the seconds a
    helper process spent filling it, and the training process's first step (which compiles or loads the graphs)."""

    cold: bool | None
    helper_seconds: float = 0.0
    first_step_seconds: float | None = None

    def figures(self, steps: int, seconds: float, tokens_per_step: int) -> tuple[float | None, float | None]:
        """(seconds the compile added, compiled training tokens/s) of a run of `steps` steps in `seconds` of
        training; None where it trained too few steps to tell."""
        if self.first_step_seconds is None or steps < 2:
            return None, None
        step = max(seconds - self.first_step_seconds, 1e-9) / (steps - 1)  # a compiled step, once compiled
        return max(0.0, self.helper_seconds + self.first_step_seconds - step), tokens_per_step / step


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


def skip_dynamo_import() -> None:
    """Keep torch.optim from importing torch._dynamo (1.3-1.8 s of a 2-core CPU, a tenth of a 22 s budget's
    training) in a process that compiles no optimizer, as `chargpt train`'s never does (it compiles the model, which
    imports dynamo then). torch.optim wraps Optimizer's methods so that torch.compile skips them: each wrapper
    imports dynamo at its first call, and keeps the disabled method in an attribute of the original, which is set
    here to the original itself; Adam's step imports dynamo for two graph breaks, and is unwrapped here to its
    update under no_grad, which is what it computes outside torch.compile. For the CLI's process only: a library
    user may compile an optimizer of their own in theirs. Where torch differs (it is pinned), nothing is changed."""
    import inspect

    import torch.optim

    if "torch._dynamo" in sys.modules:
        return
    for attr in list(vars(torch.optim.Optimizer).values()):
        code = getattr(attr, "__code__", None)
        if code is not None and code.co_name == "inner" and Path(code.co_filename).match("torch/_compile.py"):
            original = inspect.unwrap(attr)
            setattr(original, "__dynamo_disable", original)
    adam_step = torch.optim.Adam.step
    if getattr(adam_step, "__code__", None) is not None and adam_step.__code__.co_name == "_use_grad":
        torch.optim.Adam.step = torch.no_grad()(inspect.unwrap(adam_step))


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
