"""The one guarded reader (`fsutil.open_regular`): regular files only, a size cap, no symlink out of a run
directory, never a wait on a FIFO. Real FIFOs, devices and symlinks; real `chargpt` processes for the doors."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chargpt.fsutil import ReadRefused, read_bytes, read_json
from conftest import run_main


def chargpt(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """A real process, bounded in time: a read that waited on a FIFO would show as a timeout here."""
    return subprocess.run([sys.executable, "-m", "chargpt", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_a_fifo_or_a_device_is_refused_at_once_and_never_waited_on(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    with pytest.raises(ReadRefused, match=r"a FIFO \(named pipe\), not a regular file"):
        read_bytes(tmp_path / "fifo")
    with pytest.raises(ReadRefused, match="a device, not a regular file"):
        read_bytes(tmp_path / "zero")
    with pytest.raises(ReadRefused, match="a directory, not a regular file"):
        read_bytes(tmp_path)


def test_a_symlink_is_followed_only_to_a_file_inside_the_run_it_is_read_from(tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (tmp_path / "secret.json").write_text('{"secret": 1}')
    (run / "own.json").write_text('{"own": 1}')
    (run / "summary.json").symlink_to(tmp_path / "secret.json")
    (run / "inside.json").symlink_to("own.json")
    with pytest.raises(ReadRefused, match="a symbolic link to .*secret.json, outside its run directory"):
        read_json(run / "summary.json", within=run)
    assert read_json(run / "inside.json", within=run) == {"own": 1}
    assert read_json(run / "summary.json") == {"secret": 1}  # a file the user names is theirs, wherever it is
    (tmp_path / "runs" / "latest").symlink_to("r")  # the run reached through chargpt's own link
    assert read_json(tmp_path / "runs" / "latest" / "inside.json", within=tmp_path / "runs" / "latest") == {"own": 1}


def test_a_file_over_the_cap_is_refused_without_reading_it_into_memory(tmp_path):
    big = tmp_path / "summary.json"
    with open(big, "wb") as f:
        f.truncate(8 << 30)  # sparse: 8 GB that take no space
    with pytest.raises(ReadRefused, match="over 67,108,864 bytes"):
        read_json(big)
    with open(big, "r+b") as f:
        f.truncate(1000)
    assert read_bytes(big) == bytes(1000)


def test_train_with_a_fifo_or_device_as_config_file_stops_in_one_line(tmp_path):
    os.mkfifo(tmp_path / "cfg.json")
    (tmp_path / "zero.json").symlink_to("/dev/zero")
    for name, what in (("cfg.json", "FIFO"), ("zero.json", "a device")):
        p = run_main("train", "--config", name, "--print-config", cwd=tmp_path)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and what in lines[0], p.stderr


def test_runs_names_a_record_that_leads_out_of_its_run_and_never_reads_it(tmp_path, tiny_run):
    run = tmp_path / "runs" / "r"
    shutil.copytree(tiny_run, run)  # TINY_GPT, 20 steps on tiny Shakespeare
    shutil.copytree(run, tmp_path / "runs" / "fifo")
    (tmp_path / "secret.json").write_text('{"model": "SECRET", "steps": 123456}')
    (run / "summary.json").unlink()
    (run / "summary.json").symlink_to(tmp_path / "secret.json")
    fifo = tmp_path / "runs" / "fifo"
    (fifo / "summary.json").unlink()
    os.mkfifo(fifo / "summary.json")
    (fifo / "metrics.jsonl").unlink()
    (fifo / "metrics.jsonl").symlink_to("/dev/zero")
    listed = chargpt("runs", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert "damaged: summary.json is a symbolic link to" in rows["r"] and "outside its run directory" in rows["r"]
    assert "SECRET" not in listed.stdout and "123456" not in listed.stdout
    assert "damaged: summary.json is a FIFO" in rows["fifo"]
    resumed = chargpt("train", "--resume", "runs/r", "--max-steps", 30, cwd=tmp_path)
    assert resumed.returncode != 0 and "outside its run directory" in resumed.stderr
    sampled = chargpt("sample", "--ckpt", "runs/fifo", "--max-new-tokens", 5, "--device", "cpu", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr  # the checkpoint itself is fine
    (fifo / "ckpt.pt").unlink()
    (fifo / "ckpt.pt").symlink_to(run / "ckpt.pt")  # another run's model
    sampled = chargpt("sample", "--ckpt", "runs/fifo", "--max-new-tokens", 5, "--device", "cpu", cwd=tmp_path)
    assert sampled.returncode != 0 and "outside its run directory" in sampled.stderr.strip().splitlines()[-1]
