"""Run directories: `locate_run` (a run's name, its directory, `latest` or a checkpoint file to a path), `latest`
pointing at the newest run with a checkpoint from its first one, and marking it."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from chargpt.errors import CheckpointError
from chargpt.runs.rundir import RunDir, locate_run

from conftest import one_error_line, run_cli, run_main


def test_resuming_through_runs_latest_keeps_latest_pointing_at_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir.create("runs", "r1")
    (run.path / "ckpt.pt").write_bytes(b"x")
    run.mark_latest()
    assert os.readlink("runs/latest") == "r1"
    for _ in range(2):  # the README resumes `runs/latest` twice in a row
        opened = RunDir.open("runs/latest")
        assert opened.path.name == "r1" and str(opened.path) == os.path.join("runs", "r1")
        opened.mark_latest()
        assert os.readlink("runs/latest") == "r1"
    assert RunDir.open("runs/latest/ckpt.pt").path.name == "r1"


def test_a_run_outside_the_working_directory_is_opened_by_its_real_path(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "runs", "r2")
    (run.path / "ckpt.pt").write_bytes(b"x")
    run.mark_latest()
    monkeypatch.chdir("/")
    assert RunDir.open(tmp_path / "runs/latest").path == (tmp_path / "runs/r2").resolve().relative_to("/")


def test_only_rank_0_of_a_distributed_run_becomes_the_resumed_runs_writer(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "runs", "r")
    (run.path / "ckpt.pt").write_bytes(b"x")
    run.unlock()
    monkeypatch.setenv("RANK", "1")
    RunDir.open(run.path)
    assert not (run.path / ".lock").exists()
    monkeypatch.setenv("RANK", "0")
    RunDir.open(run.path).unlock()  # the lock file lives while its writer holds it
    monkeypatch.delenv("RANK")
    writer = RunDir.open(run.path)
    assert (run.path / ".lock").is_file()
    writer.unlock()


def test_locate_finds_a_run_by_name_directory_link_or_checkpoint_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir.create("runs", "r1")
    (run.path / "config.json").write_text("{}")
    (run.path / "ckpt.pt").write_bytes(b"x")
    (run.path / "best.pt").write_bytes(b"x")
    run.mark_latest()
    for target in ("runs/r1", "runs/latest", "runs/r1/ckpt.pt", "runs/latest/ckpt.pt"):
        found = locate_run(target)
        assert (found.run, found.ckpt, found.name) == (Path("runs/r1"), Path("runs/r1/ckpt.pt"), "r1"), target
    assert locate_run("r1", "runs").within == Path("runs/r1")  # a run's own checkpoint is read only inside it
    assert locate_run("runs/r1/ckpt.pt").within is None  # a file named directly is the user's choice
    best = locate_run("runs/latest/best.pt")
    assert (str(best.run), best.ckpt.name, best.name) == (os.path.join("runs", "r1"), "best.pt", "r1/best.pt")
    assert locate_run("latest", "runs").run == locate_run("runs/r1").run


def test_a_missing_latest_says_there_is_no_run_yet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="no run yet"):
        locate_run("runs/latest")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs/latest").symlink_to("gone")  # its run was removed
    with pytest.raises(CheckpointError, match="no run yet"):
        locate_run("runs/latest")
    line = one_error_line(run_main("sample", cwd=tmp_path))
    assert line.startswith("error: no run yet: runs/latest") and "chargpt train" in line


def test_a_run_without_a_checkpoint_yet_and_a_fifo_for_a_checkpoint_are_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir.create("runs", "young")
    (run.path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="has no checkpoint yet"):
        locate_run("runs/young")
    assert locate_run("runs/young", checkpoint=False).run == run.path
    os.mkfifo(run.path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="is a FIFO"):  # never opened: reading it would wait forever
        locate_run("runs/young")
    with pytest.raises(CheckpointError, match="no run 'nope'"):
        locate_run("nope", "runs")


def test_readme_ctrl_c_then_resume_latest_continues_the_interrupted_run(dataset_dir, tmp_path):
    """A finished run, then another stopped by Ctrl-C (SIGINT) mid-run: `latest` is the stopped one from its first
    checkpoint on, so sampling it while it trains and `--resume runs/latest` after the Ctrl-C both use it."""
    short = ["--preset", "bigram", "--data", dataset_dir, "--eval-iters", "2", "--sample-tokens", "10"]
    run_main("train", *short, "--max-steps", "20", "--eval-interval", "10", "--name", "old", cwd=tmp_path, check=True)
    proc = subprocess.Popen([sys.executable, "-m", "chargpt", "train", *map(str, short), "--max-steps", "1000000",
                             "--eval-interval", "20", "--name", "new"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        deadline = time.monotonic() + 240
        while not (tmp_path / "runs/new/ckpt.pt").exists() or os.readlink(tmp_path / "runs/latest") != "new":
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"latest never pointed at the run training: {proc.communicate()}")
            time.sleep(0.01)
        sample = run_main("sample", "--ckpt", "runs/latest", "--max-new-tokens", "5", cwd=tmp_path, check=True)
        assert len(sample.stdout) == 6
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    stopped = int(err.split("stopped at step ")[1].split()[0])
    resumed = run_cli("train", "--resume", "runs/latest", "--max-steps", str(stopped + 20), cwd=tmp_path, check=True)
    assert resumed.stdout.startswith(f"resuming {os.path.join('runs', 'new')} at step {stopped} ")
    assert os.readlink(tmp_path / "runs/latest") == "new"
