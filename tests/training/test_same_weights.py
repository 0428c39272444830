"""The training run's refactoring changed no number: the same seed and config train the same weights as the code of
commit 3a2711b (the last one before the package was split into subpackages), bit for bit."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO

BEFORE = "3a2711b"
TINY = ["--preset", "cpu", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16",
        "--batch-size", "4", "--eval-interval", "5", "--eval-iters", "2", "--sample-tokens", "20", "--no-compile",
        "--seed", "7", "--device", "cpu", "--threads", "1"]

# Runs `chargpt` commands (separated by "--then") in one process from the source tree given first, refusing to run
# another copy (an editable install of the working tree would otherwise win over PYTHONPATH); prints the package's
# location for the test to check.
LAUNCH = ("import sys; src = sys.argv[1]; sys.path.insert(0, src); import chargpt, chargpt.cli; "
          "assert chargpt.__file__.startswith(src), chargpt.__file__; print('package:', chargpt.__file__); "
          "args = ' '.join(sys.argv[2:]).split(' --then '); "
          "sys.exit(max(chargpt.cli.main(a.split()) for a in args))")


@pytest.fixture(scope="module")
def old_source(tmp_path_factory) -> Path:
    """The source tree of commit `BEFORE`, extracted with `git archive`."""
    if not (REPO / ".git").exists():
        pytest.skip("the repository has no git history (an unpacked archive): the old code cannot be checked out")
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{BEFORE}^{{commit}}"]).returncode:
        pytest.skip(f"commit {BEFORE} is not in this clone (a shallow one?): the old code cannot be checked out")
    out = tmp_path_factory.mktemp("before")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive.stdout, check=True)
    return out / "src"


def chargpt(src: Path, cwd: Path, commands: list[list[str]]) -> None:
    env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled")
    args = [a for i, command in enumerate(commands) for a in ([] if i == 0 else ["--then"]) + command]
    p = subprocess.run([sys.executable, "-c", LAUNCH, str(src), *args], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"chargpt {' '.join(args)} from {src} exited {p.returncode}:\n{p.stderr}"
    assert f"package: {src}" in p.stdout, p.stdout


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_equal_weights(before: Path, after: Path) -> None:
    old, new = weights(before), weights(after)
    assert old.keys() == new.keys()
    different = [k for k in old if not torch.equal(old[k], new[k])]
    assert not different, f"{after} differs from {before} in {different}"


def train_both(old_source: Path, tmp_path: Path, dataset_dir: Path, runs: list[list[str]]) -> tuple[Path, Path]:
    """The same `chargpt train` commands (in order, in one process, into one runs directory each) with the old and
    the new code."""
    dirs = []
    for label, src in (("before", old_source), ("after", REPO / "src")):
        cwd = tmp_path / label
        cwd.mkdir()
        chargpt(src, cwd, [["train", "--data", str(dataset_dir), *args] for args in runs])
        dirs.append(cwd / "runs")
    return dirs[0], dirs[1]


@pytest.mark.slow
def test_an_averaged_resumed_run_trains_the_same_weights_as_before_the_refactoring(old_source, dataset_dir,
                                                                                    tmp_path):
    """The final model, its average and the best estimate's checkpoint, through a resume."""
    ema = ["--ema", "0.9", "--ema-from", "0.25"]
    before, after = train_both(old_source, tmp_path, dataset_dir, [
        ["--name", "averaged", *TINY, *ema, "--max-steps", "12"],
        ["--resume", "runs/averaged", "--max-steps", "20", "--threads", "1"],
    ])
    for name in ("ckpt.pt", "ema.pt", "best.pt"):
        assert_equal_weights(before / "averaged" / name, after / "averaged" / name)
