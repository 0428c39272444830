"""The one way into training: a finished run, resumed, is finished by one rule for a step count and a time budget
alike (one line, and its directory left exactly as it was); a larger budget continues it."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from chargpt.data.dataset import load_dataset
from chargpt.runs import checkpoint
from chargpt.runtime.progress import format_duration

from conftest import TINY_GPT, run_main, tiny_config, train_config

TINY = [*TINY_GPT, "--eval-tokens", "2000", "--device", "cpu", "--threads", "1"]


def snapshot(run_dir) -> dict:
    """Every file of a run directory, dot files included, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir())}


@pytest.mark.parametrize("length", [["--max-steps", "4"], ["--time-budget", "3"]], ids=["max-steps", "time-budget"])
def test_resuming_a_finished_run_says_so_in_one_line_and_leaves_its_directory_as_it_was(dataset_dir, tmp_path,
                                                                                        length):
    """It used to leave a `.lock` behind: a change to a run that the README promises is left unchanged."""
    run_main("train", "--data", dataset_dir, *TINY, *length, "--name", "f", cwd=tmp_path, check=True)
    before = snapshot(tmp_path / "runs/f")
    p = run_main("train", "--resume", "runs/f", cwd=tmp_path, check=True)
    assert re.fullmatch(r"runs/f is finished: .*; to train it further, resume with a larger --\S+: "
                        r"chargpt train --resume runs/f --\S+ \S+\n", p.stdout), p.stdout
    assert p.stderr == ""
    assert snapshot(tmp_path / "runs/f") == before


def test_a_larger_budget_continues_the_run_and_its_earlier_seconds_are_not_called_start_up(dataset_dir, tmp_path):
    data = load_dataset(dataset_dir)
    config = tiny_config("cpu", 10 ** 6, n_layer=1, n_embd=32, n_head=2, block_size=16)
    config.train.time_budget, config.train.eval_tokens, config.train.device = 2.0, 2000, "cpu"
    _, first = train_config(config, data, tmp_path, "b", clock_start=time.perf_counter())
    spent = checkpoint.load(tmp_path / "b")["extra"]["budget_seconds"]  # the budget the checkpoint had used
    config.train.time_budget = round(spent) + 8.0
    said = []
    _, summary = train_config(config, data, tmp_path, "b", resume=True, echo=said.append,
                              clock_start=time.perf_counter())
    line = next(line for line in said if line.startswith("budget: "))
    assert f"from the run's start: {format_duration(spent)} used by the run before this resume, " in line, line
    startup = re.search(r"resume, (\S+)s gone to start-up", line).group(1)
    assert float(startup) < 5.0, line  # this process's start-up alone
    assert summary["steps"] > first["steps"] and summary["time_budget"] == config.train.time_budget


def test_a_budget_run_stopped_by_ctrl_c_resumes_with_the_rest_of_its_budget(dataset_dir, tmp_path):
    """README: Ctrl-C, then `chargpt train --resume runs/latest`. A budget run resumed with its own budget was
    taken as finished (its budget no larger than the saved one): it trained no step and was marked finished."""
    proc = subprocess.Popen([sys.executable, "-m", "chargpt", "train", "--data", str(dataset_dir), *TINY,
                             "--time-budget", "8", "--name", "c"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "runs/c/ckpt.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "checkpoint saved" in err, err
    stopped = checkpoint.load(tmp_path / "runs/c")["step"]
    p = run_main("train", "--resume", "runs/latest", cwd=tmp_path, check=True)
    assert f"resuming {os.path.join('runs', 'c')} at step {stopped}" in p.stdout
    summary = json.loads((tmp_path / "runs/c/summary.json").read_text())
    assert summary["steps"] > stopped and summary["val_loss_full"] is not None
    again = run_main("train", "--resume", "runs/c", cwd=tmp_path, check=True)  # now it is finished
    assert again.stdout.startswith(f"{os.path.join('runs', 'c')} is finished: ")


def test_a_resume_that_would_train_nothing_is_refused_in_one_line_and_the_run_is_left_as_it_was(dataset_dir,
                                                                                               tmp_path):
    """`--max-steps` below the checkpoint's step was accepted (a run cannot go back); a budget that the run's earlier
    seconds and the final pass already use up rewrote the run's files and trained nothing."""
    run_main("train", "--data", dataset_dir, *TINY, "--max-steps", "6", "--name", "s", cwd=tmp_path, check=True)
    before = snapshot(tmp_path / "runs/s")
    p = run_main("train", "--resume", "runs/s", "--max-steps", "3", cwd=tmp_path)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "--max-steps 3 is below step 6" in p.stderr and "resume with --max-steps above 6" in p.stderr
    assert snapshot(tmp_path / "runs/s") == before

    p = run_main("train", "--resume", "runs/s", "--time-budget", "0.1", cwd=tmp_path)  # its 6 steps took longer
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    m = re.search(r"leaves nothing to train: .* chargpt train --resume runs/s --time-budget (\d+)s$", p.stderr.strip())
    assert m and int(m.group(1)) >= 1, p.stderr
    assert snapshot(tmp_path / "runs/s") == before
