"""Shared fixtures: the real tiny-Shakespeare corpus and a dataset prepared from it once per session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chargpt.data import prepare

REPO = Path(__file__).resolve().parents[1]


def _find_shakespeare() -> Path:
    candidates = []
    if os.environ.get("CHARGPT_DATA"):
        candidates.append(Path(os.environ["CHARGPT_DATA"]) / "tinyshakespeare/input.txt")
    candidates.append(REPO.parent / "shared/data/tinyshakespeare/input.txt")
    for c in candidates:
        if c.is_file():
            return c
    pytest.fail("tiny Shakespeare not found: set CHARGPT_DATA to a directory holding tinyshakespeare/input.txt")


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    return _find_shakespeare()


@pytest.fixture(scope="session")
def dataset_dir(shakespeare_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "shakespeare"
    prepare(shakespeare_path, out, name="shakespeare")
    return out


TINY_GPT = ["--preset", "cpu", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16",
            "--batch-size", "4", "--max-steps", "20", "--eval-interval", "10", "--eval-iters", "2",
            "--sample-tokens", "20", "--no-compile"]


def run_cli(*args, cwd=None, env=None, timeout=300, check=False) -> subprocess.CompletedProcess:
    """Run `python -m chargpt ARGS` as a real process."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    p = subprocess.run([sys.executable, "-m", "chargpt", *map(str, args)], cwd=cwd, env=full_env,
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"chargpt {' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p
