"""Every way a run can be ended that can be caught (SIGINT, SIGTERM, SIGHUP) stops it at a step with its checkpoint
saved and one plain line that says so, with the signal's exit code; a closed stdout or stderr never ends it.
Real processes, real signals, a real pipe into `head`."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chargpt.runs import checkpoint

from conftest import TINY_GPT, run_main

LONG = [*TINY_GPT, "--max-steps", "1000000", "--eval-interval", "20", "--device", "cpu", "--threads", "1"]  # the
# last of a repeated flag wins; TINY_GPT's --no-compile stays (a million steps would buy a 40 s compile)


def start(*args, cwd: Path, **streams) -> subprocess.Popen:
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE} | streams
    return subprocess.Popen([sys.executable, "-m", "chargpt", *map(str, args)], cwd=cwd, text=True,
                            stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"), **streams)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} never appeared: {proc.communicate()}")
        time.sleep(0.01)


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGUSR1, signal.SIGQUIT], ids=lambda s: s.name)
def test_a_stop_signal_saves_the_checkpoint_and_says_so_in_one_line_with_exit_code_128_plus_n(dataset_dir, tmp_path,
                                                                                               sig):
    """SIGHUP is a closed terminal or ssh session, SIGUSR1 a scheduler's warning before its time limit (Slurm's
    --signal), SIGQUIT Ctrl-\\: each used to end the run at once by its default action, nothing saved since the last
    checkpoint, and `.lock` left behind."""
    proc = start("train", "--data", dataset_dir, *LONG, "--name", "r", cwd=tmp_path)
    wait_for(tmp_path / "runs/r/ckpt.pt", proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (proc.returncode, err)
    step = checkpoint.load(tmp_path / "runs/r")["step"]
    assert err.splitlines() == [f"stopped at step {step} by {sig.name}; checkpoint saved; resume with: chargpt train "
                                f"--resume runs/r"]
    assert not (tmp_path / "runs/r/.lock").exists()


def test_ctrl_c_is_no_error_its_one_line_says_where_the_run_stopped_and_it_exits_130(dataset_dir, tmp_path):
    def interrupt_at_the_first_checkpoint():
        deadline = time.monotonic() + 240
        while not (tmp_path / "runs/c/ckpt.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, to this process, which runs the command

    threading.Thread(target=interrupt_at_the_first_checkpoint, daemon=True).start()
    p = run_main("train", "--data", dataset_dir, *LONG, "--name", "c", cwd=tmp_path)
    step = checkpoint.load(tmp_path / "runs/c")["step"]
    assert p.returncode == 130
    assert p.stderr.splitlines() == [f"stopped at step {step} by SIGINT; checkpoint saved; resume with: chargpt "
                                     f"train --resume runs/c"]


def test_a_run_piped_with_its_stderr_into_head_trains_to_its_end(dataset_dir, tmp_path):
    """`chargpt train ... 2>&1 | head -1`: the reader goes away after the first line, taking stdout and stderr with
    it. The run used to end at once, exit 0, its directory removed."""
    train = start("train", "--data", dataset_dir, *TINY_GPT, "--eval-tokens", "2000", "--name", "piped",
                  cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    head = subprocess.Popen(["head", "-1"], stdin=train.stdout, stdout=subprocess.PIPE, text=True)
    train.stdout.close()  # head alone reads the pipe now: once it exits, nobody does
    first, _ = head.communicate(timeout=240)
    assert train.wait(timeout=240) == 0
    assert first.startswith("training runs/piped")
    summary = json.loads((tmp_path / "runs/piped/summary.json").read_text())
    assert summary["steps"] == 20 and (tmp_path / "runs/piped/ckpt.pt").is_file()
    assert not (tmp_path / "runs/piped/.lock").exists()
