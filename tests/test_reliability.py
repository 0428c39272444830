"""Runs survive signals and crashes and resume exactly; files never run code; same seed, same run (issue 7).

Every run here is a real `python -m chargpt` process on a tiny model, compared bit for bit (a run that is only
resumed may start as a copy of the session's tiny run); the malicious files are opened in-process."""
from __future__ import annotations

import contextlib
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from chargpt.runs import checkpoint
from chargpt.config import get_preset
from chargpt.data.dataset import load_dataset
from chargpt.runs.rundir import RunDir, read_metrics
from chargpt.errors import TrainingInterrupted, exit_code_of

from conftest import ckpt_commands, on_cpu, run_main, train_config

STEPS = 300  # long enough that a signal sent at the first checkpoint lands mid-run
EVAL = 15  # leaves at least clock.CURVE_POINTS estimates in STEPS // 2 steps too: no cheap ones, whose steps would
#            depend on the --max-steps of the run's first part, so a run resumed to STEPS evaluates where a straight one does
TINY = ["--preset", "cpu", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16",
        "--batch-size", "4", "--eval-interval", str(EVAL), "--eval-iters", "2", "--sample-tokens", "20",
        "--threads", "1", "--device", "cpu", "--no-compile",
        "--dropout", "0.1",  # dropout draws from torch's RNG: resume must restore it
        "--schedule", "constant"]  # so that the first half of a run is the same as a shorter run


def env() -> dict:
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def chargpt(*args, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chargpt", *map(str, args)], cwd=cwd, env=env(), text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def start(*args, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "chargpt", *map(str, args)], cwd=cwd, env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)


def wait_for_checkpoint(run: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not (run / "ckpt.pt").exists():
        if proc.poll() is not None:
            pytest.fail(f"training ended (exit {proc.returncode}) before its first checkpoint:\n{proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("no checkpoint appeared")
        time.sleep(0.01)


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, f"exit {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    return lines[0]


def curve(run: Path) -> list[tuple]:
    """The evaluation records: step, train and val estimates, lr."""
    return [(r["step"], r.get("train_loss"), r["val_loss"], r["lr"]) for r in read_metrics(run) if "val_loss" in r]


def training_losses(run: Path) -> dict[int, tuple]:
    """The training loss logged every --log-interval steps (and at a stop): step -> (loss, lr)."""
    return {r["step"]: (r["loss"], r["lr"]) for r in read_metrics(run) if "loss" in r}


def assert_same_run(a: Path, b: Path, steps: int = STEPS) -> None:
    """Same loss curve and bitwise-equal final weights and optimizer state. An interrupted run also logged the
    training loss at the step it stopped; every step both runs logged has the same loss."""
    assert curve(a) == curve(b)
    la, lb = training_losses(a), training_losses(b)
    assert la and lb and all(la[s] == lb[s] for s in la.keys() & lb.keys())
    assert set(la) >= set(lb) or set(lb) >= set(la)
    sa, sb = checkpoint.load(a / "ckpt.pt"), checkpoint.load(b / "ckpt.pt")  # the latest, not the one recommended
    assert sa["step"] == sb["step"] == steps
    assert sa["model"].keys() == sb["model"].keys()
    for k in sa["model"]:
        assert torch.equal(sa["model"][k], sb["model"][k]), k
    assert checkpoint.digest({"o": sa["optimizers"]}) == checkpoint.digest({"o": sb["optimizers"]})


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def straight(home, dataset_dir) -> Path:
    """The reference: STEPS steps in one uninterrupted run."""
    ok(chargpt("train", *TINY, "--data", dataset_dir, "--max-steps", STEPS, "--name", "straight", cwd=home))
    return home / "runs" / "straight"


# ------------------------------------------------------------------------------------- exact resume
@pytest.mark.slow
def test_resume_continues_the_same_loss_curve_and_weights(home, dataset_dir, straight):
    half = home / "runs" / "half"
    ok(chargpt("train", *TINY, "--data", dataset_dir, "--max-steps", STEPS // 2, "--name", "half", cwd=home))
    assert checkpoint.load(half)["step"] == STEPS // 2
    with open(half / "metrics.jsonl", "a") as f:  # what a crash can leave: a record past the checkpoint, a torn line
        f.write('{"step": %d, "train_loss": 9.0, "val_loss": 9.0, "lr": 0.1}\n{"step": 2' % (STEPS // 2 + 50))
    ok(chargpt("train", "--resume", half, "--max-steps", STEPS, cwd=home))
    assert_same_run(half, straight)


@pytest.mark.slow
def test_sigterm_mid_run_saves_prints_how_to_resume_and_resumes_to_the_same_result(home, dataset_dir, straight):
    run = home / "runs" / "term"
    p = start("train", *TINY, "--data", dataset_dir, "--max-steps", STEPS, "--ckpt-interval", 1, "--name", "term",
              cwd=home)
    wait_for_checkpoint(run, p)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=240)
    assert p.returncode == 143, f"exit {p.returncode}:\n{out}\n{err}"
    line = one_line(err)
    assert "SIGTERM" in line and "chargpt train --resume runs/term" in line, line
    stopped = checkpoint.load(run)["step"]
    assert 0 < stopped < STEPS
    assert f"stopped at step {stopped}" in line
    ok(chargpt("train", "--resume", "runs/term", "--ckpt-interval", 0, cwd=home))  # how often it saves changes nothing
    assert_same_run(run, straight)


@pytest.mark.parametrize("after, delay, signals", [
    ("step 20:", 0, (signal.SIGTERM,)),  # the last estimate and checkpoint: the old code lost it and exited 0
    ("step 20:", 0.1, (signal.SIGTERM,)),  # the final pass over val
    ("full-pass", 0, (signal.SIGTERM, signal.SIGTERM)),  # the sample, the summary and the way out
    ("full-pass", 0.2, (signal.SIGINT, signal.SIGTERM))])
def test_a_signal_as_a_run_ends_stops_it_with_its_exit_code_never_lost_nor_a_traceback(
        tmp_path, dataset_dir, after, delay, signals):
    p = start("train", *TINY, "--data", dataset_dir, "--max-steps", 20, "--name", "r", cwd=tmp_path)
    for line in p.stdout:
        if line.startswith(after):
            break
    time.sleep(delay)
    for i, s in enumerate(signals):
        time.sleep(0.05 if i else 0)
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(s)
    out, err = p.communicate(timeout=120)
    assert "Traceback" not in err and len(err.splitlines()) <= 1, err
    if p.returncode < 0:  # it landed once the command was done: the default action, which a shell shows as 130/143
        assert -p.returncode in signals
    else:
        assert p.returncode in {exit_code_of(s) for s in signals}, (p.returncode, err)
        assert not err.startswith("error: ") and ("SIGTERM" in err or "terminated" in err or "interrupted" in err), err
    assert checkpoint.load(tmp_path / "runs" / "r")["step"] == 20


@pytest.mark.slow
def test_kill_9_at_a_random_moment_leaves_a_loadable_checkpoint_that_resumes_exactly(home, dataset_dir, straight):
    run = home / "runs" / "killed"
    delay = random.Random(int.from_bytes(os.urandom(4), "little")).uniform(0.0, 1.0)
    p = start("train", *TINY, "--data", dataset_dir, "--max-steps", STEPS, "--ckpt-interval", 1, "--name", "killed",
              cwd=home)
    wait_for_checkpoint(run, p)
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    state = checkpoint.load(run)  # whole, checksum verified
    model, _, _ = checkpoint.load_model(run)
    assert 0 < state["step"] <= STEPS and model.num_params() > 0, delay
    ok(chargpt("train", "--resume", "runs/killed", "--ckpt-interval", 0, cwd=home))
    assert not list(run.glob(".*.tmp"))  # a save cut short by the kill leaves nothing behind after the resume
    assert_same_run(run, straight)


# ---------------------------------------------------------------------------------------- determinism
@pytest.mark.slow
def test_same_seed_and_config_give_identical_loss_curves_and_weights(home, dataset_dir, straight):
    ok(chargpt("train", *TINY, "--data", dataset_dir, "--max-steps", STEPS, "--name", "again", cwd=home))
    again = home / "runs" / "again"
    assert_same_run(again, straight)
    assert (again / "sample.txt").read_text() == (straight / "sample.txt").read_text()
    assert len(curve(straight)) == STEPS // EVAL + 1


# --------------------------------------------------------------------------------------- second signal
@pytest.mark.slow
def test_second_ctrl_c_stops_at_once_with_exit_130_and_files_whole(home, dataset_dir):
    run = home / "runs" / "twice"
    p = start("train", *TINY, "--data", dataset_dir, "--max-steps", STEPS, "--ckpt-interval", 1, "--name", "twice",
              cwd=home)
    wait_for_checkpoint(run, p)
    p.send_signal(signal.SIGINT)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=240)
    assert p.returncode == 130, f"exit {p.returncode}:\n{out}\n{err}"
    assert "interrupt" in one_line(err).lower() or "SIGINT" in err
    assert 0 < checkpoint.load(run)["step"] < STEPS
    assert not [f.name for f in run.iterdir() if f.name.endswith(".tmp")]  # no half-written file left behind
    assert all("step" in r for r in read_metrics(run))  # the metrics log reads back whole


class SignalAt:
    """A tracker that sends this process SIGINT `times` times when step `at` is logged."""

    def __init__(self, at: int, times: int):
        self.at, self.times = at, times

    def start(self, run, config, data) -> None:
        pass

    def image(self, key, path, caption, step) -> None:
        pass

    def artifact(self, kind, files, aliases, metadata) -> None:
        pass

    def log(self, record: dict, step: int) -> None:
        if step == self.at:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)

    def finish(self, summary, run=None) -> None:
        pass


def tiny_config(steps: int = 40):
    config = get_preset("cpu")
    m, t = config.model, config.train
    m.n_layer, m.n_embd, m.n_head, m.block_size = 1, 32, 2, 16
    t.batch_size, t.max_steps, t.eval_interval, t.eval_iters, t.ckpt_interval = 4, steps, 10, 2, 5
    t.sample_tokens, t.device, t.log_interval, t.threads, t.compile = 0, "cpu", 1, 1, False
    return config


@pytest.fixture
def keep_threads():
    """train() sets torch's thread count for the process; give pytest's back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_ctrl_c_finishes_the_step_saves_and_exits_130(tmp_path, dataset_dir, keep_threads):
    data = load_dataset(dataset_dir)
    config = tiny_config()
    config.model.vocab_size = data.tokenizer.vocab_size
    with pytest.raises(TrainingInterrupted, match=r"stopped at step 13 by SIGINT.*--resume") as e:
        train_config(config, data, tmp_path, "run", preset=None, tracker=SignalAt(13, 1))
    run = RunDir(tmp_path / "run")
    assert e.value.exit_code == 130
    assert checkpoint.load(run.path)["step"] == 13


def test_second_ctrl_c_raises_at_once_and_keeps_the_last_checkpoint(tmp_path, dataset_dir, keep_threads):
    data = load_dataset(dataset_dir)
    config = tiny_config()
    config.model.vocab_size = data.tokenizer.vocab_size
    with pytest.raises(KeyboardInterrupt):
        train_config(config, data, tmp_path, "run", preset=None, tracker=SignalAt(13, 2))
    run = RunDir(tmp_path / "run")
    assert checkpoint.load(run.path)["step"] == 10  # the last periodic checkpoint, untouched
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


class SignalAtStart(SignalAt):
    """A tracker that is Ctrl-C'd as it starts: after the new run's directory exists, before its first step."""

    def start(self, run, config, data) -> None:
        os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_before_a_new_run_trains_removes_it_and_says_which(tmp_path, dataset_dir, keep_threads):
    """A Ctrl-C during the first compile removed the new run, and the line said only that "a new run stopped before
    it trained is removed": `--resume runs/latest` then resumed another run. The line names the run removed."""
    from chargpt.cli import _stopped_at_once

    data = load_dataset(dataset_dir)
    config = tiny_config()
    config.model.vocab_size = data.tokenizer.vocab_size
    with pytest.raises(KeyboardInterrupt) as e:
        train_config(config, data, tmp_path, "fresh", preset=None, tracker=SignalAtStart(0, 1))
    assert e.value.removed_run == tmp_path / "fresh" and not (tmp_path / "fresh").exists()
    line = _stopped_at_once(signal.SIGINT, "train", e.value.removed_run)
    assert f"before {tmp_path / 'fresh'} began training: it is removed" in line and "\n" not in line


def test_checkpoints_follow_ckpt_interval_not_just_evaluations(tmp_path, dataset_dir, keep_threads, monkeypatch):
    data = load_dataset(dataset_dir)
    config = tiny_config(steps=10)
    config.model.vocab_size = data.tokenizer.vocab_size
    config.train.ckpt_interval, config.train.eval_interval = 3, 10
    config.train.log_interval = 10  # no cheap estimates between (clock.CURVE_POINTS): one evaluation after step 0
    saved = []
    real_save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", lambda path, **kw: (saved.append((Path(path).name, kw["step"])),
                                                                real_save(path, **kw)))
    train_config(config, data, tmp_path, "run", preset=None)
    assert [step for name, step in saved if name == "ckpt.pt"] == [3, 6, 9, 10]
    assert [step for name, step in saved if name == "best.pt"] == [10]  # the one evaluation after step 0


# ----------------------------------------------------------------------------------------- non-finite
BLOWUP = ["--preset", "bigram", "--batch-size", "4", "--eval-interval", "50", "--eval-iters", "2", "--threads", "1",
          "--device", "cpu", "--max-steps", "50", "--ckpt-interval", "1"]  # the bigram table has no norm to tame it


@pytest.mark.slow
def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(home, dataset_dir):
    """The largest rates a flag takes (--lr 100 with --weight-decay 100: AdamW's decay multiplies each weight by
    1 - 10^4 a step) overflow float32 within ten steps: a clear stop, never a run of NaN."""
    run = home / "runs" / "blowup"
    p = chargpt("train", *BLOWUP, "--data", dataset_dir, "--lr", "100", "--weight-decay", "100", "--name", "blowup",
                cwd=home)
    assert p.returncode == 1, p.stdout + p.stderr
    line = one_line(p.stderr)
    m = re.search(r"(?:loss|weights) became (?:train )?(?:nan|inf|-inf|non-finite).* (?:at|by) step (\d+)", line)
    assert m and "checkpoint" in line and "Lower --lr" in line, line
    state = checkpoint.load(run)
    assert 0 < state["step"] <= int(m.group(1))
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in read_metrics(run) if "val_loss" in r)


# ------------------------------------------------------------------------------- files never run code
class Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)





@pytest.mark.slow
def test_malicious_checkpoint_or_dataset_is_refused_by_every_command_and_never_runs(home, dataset_dir, straight):
    marker = home / "PWNED"
    evil_run = home / "runs" / "evil"
    evil_run.mkdir(parents=True)
    shutil.copy(straight / "config.json", evil_run / "config.json")
    torch.save({"format": checkpoint.FORMAT, "version": 1, "model": Evil(marker), "config": Evil(marker)},
               evil_run / "ckpt.pt")
    evil_data = home / "evil_data"
    shutil.copytree(dataset_dir, evil_data)
    torch.save(Evil(marker), evil_data / "train.pt")

    commands = [[cmd, "--ckpt", "runs/evil", *on_cpu(cmd)] for cmd in ckpt_commands()]
    commands += [["eval", "--ckpt", "runs/evil", "--data", dataset_dir],
                 ["train", "--resume", "runs/evil", "--data", dataset_dir],
                 ["train", *TINY, "--data", "evil_data", "--name", "from-evil-data"],
                 ["eval", "--ckpt", "runs/straight", "--data", "evil_data", "--device", "cpu"]]
    results = [(argv, run_main(*argv, cwd=home)) for argv in commands]  # in-process: loading is what is tested
    assert {"sample", "eval"} <= set(ckpt_commands())
    for argv, p in results:
        assert p.returncode != 0, argv
        line = one_line(p.stderr)
        assert "refused" in line and "system" in line, (argv, line)
        assert not marker.exists(), argv
    assert not (home / "runs" / "from-evil-data").exists()


# ------------------------------------------------------------------------------------- one writer per run
def test_two_resumes_of_one_run_started_together_leave_one_writer_and_an_ordered_log(tmp_path, tiny_run):
    run = tmp_path / "runs" / "same"
    shutil.copytree(tiny_run, run)  # a finished run of 20 steps
    procs = [start("train", "--resume", "runs/same", "--max-steps", 150, cwd=tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes[0] == 0 and codes[1] != 0, [(p.returncode, err) for p, (_, err) in zip(procs, outs)]
    winner, loser = (0, 1) if procs[0].returncode == 0 else (1, 0)
    line = one_line(outs[loser][1])
    assert f"is being written by another process (pid {procs[winner].pid})" in line, line
    records = [(r["step"], "val_loss" in r) for r in read_metrics(run)]  # a step may log a loss and an evaluation
    assert records == sorted(records) and len(records) == len(set(records)) and records[-1][0] == 150
    assert checkpoint.load(run)["step"] == 150


@pytest.mark.slow
def test_the_writer_lock_dies_with_its_process_and_readers_never_wait_for_it(tmp_path, tiny_run):
    run = tmp_path / "runs" / "r"
    shutil.copytree(tiny_run, run)  # a finished run of 20 steps
    writer = start("train", "--resume", "runs/r", "--max-steps", 100_000, cwd=tmp_path)
    try:
        line = writer.stdout.readline()  # said once the run is opened, and so locked
        assert line.startswith("resuming runs/r"), (line, writer.poll())
        ok(chargpt("runs", cwd=tmp_path))
        ok(chargpt("sample", "--ckpt", "runs/r", "--max-new-tokens", 5, "--device", "cpu", cwd=tmp_path))
        refused = chargpt("train", "--resume", "runs/r", "--max-steps", 200, cwd=tmp_path)
        assert refused.returncode != 0 and f"pid {writer.pid}" in one_line(refused.stderr)
    finally:
        writer.kill()  # kill -9: no handler runs, only the kernel can let go of the lock
        writer.communicate()
    assert (run / ".lock").read_bytes() == b""  # a lock, not a record: nothing in it goes stale
    ok(run_main("train", "--resume", "runs/r", "--max-steps", checkpoint.load(run)["step"] + 10, cwd=tmp_path))


def test_a_finished_run_resumed_and_killed_is_listed_as_its_checkpoint_not_its_old_summary(tmp_path, tiny_run):
    from chargpt.runs.listing import read_run

    run = tmp_path / "runs" / "r"
    shutil.copytree(tiny_run, run)
    assert read_run(run).finished and read_run(run).steps == 20
    first = (run / "ckpt.pt").stat().st_mtime_ns
    writer = start("train", "--resume", "runs/r", "--max-steps", 100_000, "--ckpt-interval", 50, cwd=tmp_path)
    deadline = time.monotonic() + 240
    while (run / "ckpt.pt").stat().st_mtime_ns == first:
        assert writer.poll() is None and time.monotonic() < deadline, writer.communicate()
        time.sleep(0.02)
    time.sleep(random.uniform(0, 1))
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    at = checkpoint.load(run)["step"]
    row = read_run(run)
    assert at > 20 and row.steps == at and not row.finished and row.val_full is None
    assert row.best_step is None or row.best_step <= at
    listed = ok(chargpt("runs", cwd=tmp_path)).stdout
    line = next(ln for ln in listed.splitlines() if ln.startswith("r "))
    assert f" {at} " in line and line.rstrip().endswith("unfinished"), listed


def freeze_mid_write(proc: subprocess.Popen, run: Path, timeout: float = 240) -> list[Path]:
    """Stop `proc` (SIGSTOP) at a moment when one of its atomic writes into `run` is under way, once it has saved
    a checkpoint (before, the write may be the config's, and a run without one is not a run): its temporaries."""
    wait_for_checkpoint(run, proc, timeout)
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        if list(run.glob(".*.tmp")):
            proc.send_signal(signal.SIGSTOP)
            temps = list(run.glob(".*.tmp"))
            if temps:
                return temps
            proc.send_signal(signal.SIGCONT)
        time.sleep(0.002)


@pytest.mark.slow
def test_temporaries_a_killed_writer_left_are_removed_where_runs_are_listed_or_opened_never_while_it_is_written(
        tmp_path, dataset_dir):
    """kill -9 mid-write leaves `.ckpt.pt.<pid>.<random>.tmp` (or loss.png's); the old code removed them only on a
    resume, so a run never resumed kept them for good."""
    from chargpt import load
    from chargpt.serve.runs import ServedRuns

    runs = tmp_path / "runs"
    killed = start("train", *TINY, "--data", dataset_dir, "--max-steps", 100_000, "--ckpt-interval", 1,
                   "--name", "killed", cwd=tmp_path)
    writing = start("train", *TINY, "--data", dataset_dir, "--max-steps", 100_000, "--ckpt-interval", 1,
                    "--name", "writing", cwd=tmp_path)
    try:
        stale = freeze_mid_write(killed, runs / "killed")
        killed.kill()  # kill -9: no handler runs
        killed.communicate()
        own = freeze_mid_write(writing, runs / "writing")  # alive, holding its lock, in the middle of a write
        planted = runs / "writing" / stale[0].name  # a dead writer's temporary in a run that is being written
        shutil.copy(stale[0], planted)
        theirs = [runs / "killed" / n for n in (".loss.png.tmp", "loss.png.bak", ".notes.1.tmp", ".a.1.ABCDEFGH.tmp")]
        for p in theirs:  # not chargpt's pattern: the user's, whatever they look like
            p.write_text("mine")
        for door in ("lib", "server"):
            shutil.copytree(runs / "killed", tmp_path / door / "killed")

        listed = ok(chargpt("runs", cwd=tmp_path)).stdout
        assert "killed " in listed and "writing " in listed, listed
        assert not any(p.exists() for p in stale) and all(p.read_text() == "mine" for p in theirs)
        assert all(p.exists() for p in own) and planted.exists()  # its lock is held: nothing of it is touched

        load(tmp_path / "lib" / "killed")
        ServedRuns(runs_dir=tmp_path / "server").info()
        for door in ("lib", "server"):
            left = sorted(p.name for p in (tmp_path / door / "killed").glob(".*tmp"))
            assert left == sorted(p.name for p in theirs if p.name.startswith(".")), (door, left)
    finally:
        writing.kill()
        writing.communicate()
    ok(chargpt("runs", cwd=tmp_path))  # the writer is gone, and with it its lock
    assert not planted.exists() and not any(p.exists() for p in own)


# ------------------------------------------------------------------------------------ files whose contents lie
def test_the_library_reads_a_runs_checkpoint_only_from_inside_the_run_as_the_cli_does(tiny_run, tmp_path):
    """`chargpt.load(RUN)` read a ckpt.pt that is a symlink out of the run, which `chargpt sample --ckpt RUN` refuses
    (then it returned the Run and refused only its first read); a checkpoint file named directly stays the user's
    choice, in both."""
    import chargpt
    from chargpt.errors import CheckpointError
    from conftest import one_error_line

    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    shutil.copytree(tiny_run, run, ignore=shutil.ignore_patterns("*.pt"))
    shutil.copytree(tiny_run, elsewhere)
    (run / "ckpt.pt").symlink_to(elsewhere / "ckpt.pt")
    assert "outside its run directory" in one_error_line(run_main("sample", "--ckpt", run, "--device", "cpu"))
    with pytest.raises(CheckpointError, match="outside its run directory"):
        chargpt.load(run)  # at once, as the CLI
    assert len(chargpt.load(run / "ckpt.pt").generate("a", max_new_tokens=3)) == 4
    assert run_main("sample", "--ckpt", run / "ckpt.pt", "--device", "cpu").returncode == 0


@pytest.fixture(scope="module")
def small_dataset(dataset_dir, tmp_path_factory) -> Path:
    """A dataset of a few thousand characters with tiny Shakespeare's vocabulary: the tiny run scores it."""
    from chargpt.data.dataset import prepare

    vocab = load_dataset(dataset_dir).tokenizer.chars
    source = tmp_path_factory.mktemp("small") / "small.txt"
    source.write_text(vocab * 40)
    prepare(source, source.parent / "data", name="small")
    return source.parent / "data"


def _dataset_copy(dataset_dir: Path, to: Path) -> Path:
    to.mkdir()
    for name in ("meta.json", "train.pt", "val.pt"):
        shutil.copy(dataset_dir / name, to / name)
    return to


# What a hand edit may leave in meta.json's fields, and split files that claim other sizes, types or ids.

SHAKESPEARE_VOCAB = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
META_VALUE = st.one_of(st.none(), st.booleans(), st.integers(-2, 3), st.sampled_from([65, 64, 66, 10 ** 12, 2 ** 70]),
                       st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
                       st.sampled_from(["abc", "x" * 65, SHAKESPEARE_VOCAB, SHAKESPEARE_VOCAB[::-1][:64] + "~"]))
SPLIT = st.one_of(
    st.builds(lambda n, top, dtype: (torch.arange(n) % top).to(dtype), st.integers(0, 40), st.integers(1, 300),
              st.sampled_from([torch.uint8, torch.int8, torch.int16, torch.int64, torch.float32, torch.bool])),
    st.builds(lambda shape: torch.zeros(shape, dtype=torch.long), st.lists(st.integers(0, 4), max_size=3).map(tuple)),
    st.builds(lambda n: torch.arange(2 * n)[::2], st.integers(1, 20)),  # a strided view of a larger storage
    st.binary(max_size=64),  # not a tensor file at all
)
META_KEYS = ["vocab", "vocab_size", "train_tokens", "val_tokens", "total_chars", "format", "dtype", "content_hash"]
DATA_EDIT = st.one_of(
    st.tuples(st.just("meta.json"), st.sampled_from(META_KEYS), META_VALUE),
    st.tuples(st.sampled_from(["train.pt", "val.pt"]), st.just(None), SPLIT),
    st.tuples(st.sampled_from(["train.pt", "val.pt", "meta.json"]), st.just("truncate"), st.integers(0, 400)))


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(edits=st.lists(DATA_EDIT, min_size=1, max_size=2))
@example(edits=[("meta.json", "vocab_size", 10 ** 12)])
@example(edits=[("val.pt", None, torch.arange(8)[::2])])
def test_a_dataset_whose_files_disagree_is_one_line_for_eval_never_a_traceback(tiny_run, small_dataset, tmp_path,
                                                                                 capsys, edits):
    """meta.json claiming another vocabulary, size or length than the split tensors hold, split files of other
    types, shapes or ids, truncated files: `chargpt eval --data` scores it or says what is wrong in one line."""
    import json
    import tempfile

    from chargpt.cli import main
    from chargpt.fsutil import save_torch

    data = _dataset_copy(small_dataset, Path(tempfile.mkdtemp(dir=tmp_path)) / "data")
    for name, key, value in edits:
        path = data / name
        if key == "truncate":
            path.write_bytes(path.read_bytes()[:value])
        elif name == "meta.json":
            try:
                meta = json.loads(path.read_text())
            except ValueError:
                continue
            meta[key] = value
            path.write_text(json.dumps(meta))
        elif isinstance(value, bytes):
            path.write_bytes(value)
        else:
            save_torch(path, value)
    code = main(["eval", "--ckpt", str(tiny_run), "--data", str(data), "--eval-tokens", "64", "--device", "cpu",
                 "--threads", "1"])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    assert code == 0 or (len(err.splitlines()) == 1 and err.startswith("error: ")), err
