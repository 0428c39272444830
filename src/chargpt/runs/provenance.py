"""Where a run came from: chargpt's version and git commit, torch and Python, the device's name and the command
line. Recorded with a run (`summary.json`, the W&B config) so that a number can be traced to what made it."""
from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from pathlib import Path

import torch

from .. import __version__

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def provenance(device: str | torch.device = "cpu", argv: list[str] | None = None) -> dict:
    """chargpt version, git commit (and whether the tree was dirty) when run from a checkout, torch and Python
    versions, the CPU or GPU name and the command line (`sys.argv` unless given)."""
    commit, dirty = git_commit(PACKAGE_DIR)
    return {"chargpt_version": __version__, "git_commit": commit, "git_dirty": dirty,
            "torch_version": torch.__version__, "python_version": platform.python_version(),
            "device_name": device_name(device),
            "command": shlex.join(["chargpt", *sys.argv[1:]] if argv is None else argv)}


def git_commit(directory: Path) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout holding `directory`; (None, None) for an installed package."""
    def git(*args) -> str | None:
        try:
            p = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10,
                               stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            return None
        return p.stdout if p.returncode == 0 else None

    if "site-packages" in directory.parts or "dist-packages" in directory.parts:
        return None, None
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), (bool(status.strip()) if status is not None else None)


def device_name(device: str | torch.device) -> str:
    """`NVIDIA H100 80GB HBM3`, `Apple M2 (mps)` or the CPU's model name."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return f"{platform.processor() or platform.machine()} (mps)"
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"
