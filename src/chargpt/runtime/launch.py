"""The other Python processes chargpt starts: the same command under torchrun (`chargpt train --nproc N`), and
short-lived helpers that keep a library's memory out of the training process (the loss plot, a first compile)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from .distributed import cpu_count, thread_share
from ..errors import EXIT_INTERRUPTED, ConfigError


def strip_nproc(argv: list[str]) -> list[str]:
    """`argv` without `--nproc N` / `--nproc=N`, so the launched processes do not launch again."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "chargpt", *strip_nproc(argv)]


def max_nproc() -> int:
    """More processes than this machine has CPUs (or GPUs) only slows each one down."""
    import torch

    return max(2, cpu_count(), torch.cuda.device_count() if torch.cuda.is_available() else 0)


def check_nproc(nproc: int) -> None:
    if not 1 <= nproc <= max_nproc():
        raise ConfigError(f"--nproc must be between 1 and {max_nproc()} (the CPUs or GPUs of this machine), got {nproc}")


def relaunch_with_torchrun(nproc: int, argv: list[str]) -> int:
    """Run `chargpt <argv>` as `torchrun --standalone --nproc_per_node=nproc -m chargpt ...`; return its exit code.

    Unless OMP_NUM_THREADS is already set, each process gets an equal share of this machine's CPUs,
    max(1, cpus // nproc), instead of torchrun's default of 1.
    """
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(thread_share(nproc)))
    proc = subprocess.Popen(torchrun_command(nproc, argv), env=env)
    old = signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signum))
    interrupted = False
    try:
        while True:
            try:
                code = proc.wait()
                return EXIT_INTERRUPTED if interrupted and code != 0 else code  # torchrun itself exits 1 on a signal
            except KeyboardInterrupt:
                interrupted = True  # Ctrl-C reached torchrun and its workers too: wait while they checkpoint
    finally:
        signal.signal(signal.SIGTERM, old)



def run_helper(function: str, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Call `function` ("chargpt.module.name") with string `args` in a fresh Python process that imports this same
    chargpt, wait for it (at most `timeout` seconds: then it is killed and `subprocess.TimeoutExpired` raised) and
    return it, its output captured. Spawned, never forked (the caller has threads), in a session of its own: a
    Ctrl-C at the terminal reaches the caller, which ends the helper if it stops waiting."""
    module, name = function.rsplit(".", 1)
    code = f"import sys; from {module} import {name}; {name}(*sys.argv[1:])"
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, start_new_session=True)
