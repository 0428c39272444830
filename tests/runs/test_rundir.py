"""Run directories: `locate_run` (a run's name, its directory, `latest` or a checkpoint file to a path), `latest`
pointing at the newest run with a checkpoint from its first one, and marking it."""
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from chargpt.errors import CheckpointError
from chargpt.runs.rundir import RunDir, locate_run, read_metrics

from conftest import one_error_line, run_cli, run_main


def test_resuming_through_runs_latest_keeps_latest_pointing_at_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir.create("runs", "r1")
    (run.path / "ckpt.pt").write_bytes(b"x")
    run.mark_latest()
    assert os.readlink("runs/latest") == ".latest/r1"
    for _ in range(2):  # the README resumes `runs/latest` twice in a row
        opened = RunDir.open("runs/latest")
        assert opened.path.name == "r1" and str(opened.path) == os.path.join("runs", "r1")
        opened.mark_latest()
        assert os.readlink("runs/latest") == ".latest/r1"
    assert RunDir.open("runs/latest/ckpt.pt").path.name == "r1"


def test_latest_leads_to_the_newest_runs_files_but_not_its_tensorboard_events(tmp_path, monkeypatch):
    """`latest` -> `.latest/<name>/`, links to the run's files, those still to come included; never to its
    `tensorboard/` (TensorBoard walks into links: it would list the newest run twice)."""
    monkeypatch.chdir(tmp_path)
    run = RunDir.create("runs", "r1")
    (run.path / "ckpt.pt").write_bytes(b"first")
    (run.path / "tensorboard").mkdir()
    (run.path / "tensorboard" / "events.out.tfevents.1").write_bytes(b"e")
    run.mark_latest()
    assert Path("runs/latest/ckpt.pt").read_bytes() == b"first"
    assert not os.path.lexists("runs/latest/tensorboard") and not os.path.exists("runs/latest/best.pt")
    (run.path / "best.pt").write_bytes(b"best")  # written after the marking
    assert Path("runs/latest/best.pt").read_bytes() == b"best"
    assert locate_run("runs/latest").run == Path("runs/r1") and locate_run("runs/latest/best.pt").run == Path("runs/r1")
    assert locate_run("runs/latest").ckpt == Path("runs/r1/ckpt.pt")


def test_marking_another_run_latest_removes_the_views_of_runs_nobody_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = {}
    for name in ("a", "b", "c"):
        runs[name] = RunDir.create("runs", name)
        (runs[name].path / "config.json").write_text("{}")
        (runs[name].path / "ckpt.pt").write_bytes(name.encode())
        runs[name].mark_latest()
    # a and b are still being written by this process (their locks held): their views stay for them
    assert sorted(os.listdir("runs/.latest")) == ["a", "b", "c"]
    runs["a"].unlock()
    runs["b"].unlock()
    shutil.rmtree("runs/b")  # a run the user deleted leaves no view behind either
    runs["c"].mark_latest()
    assert os.listdir("runs/.latest") == ["c"] and Path("runs/latest/ckpt.pt").read_bytes() == b"c"
    assert sorted(os.listdir("runs")) == [".latest", "a", "c", "latest"]


def test_latest_made_by_an_earlier_chargpt_is_replaced_by_the_view(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir.create("runs", "r1")
    (run.path / "config.json").write_text("{}")
    (run.path / "ckpt.pt").write_bytes(b"x")
    os.symlink("r1", "runs/latest")  # `latest` as chargpt made it before views
    assert locate_run("runs/latest", checkpoint=False).run == Path("runs/r1")
    assert run.mark_latest() is None
    assert os.readlink("runs/latest") == ".latest/r1"


def test_a_dot_latest_that_is_not_chargpts_leaves_latest_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir.create("runs", "r1")
    (run.path / "ckpt.pt").write_bytes(b"x")
    Path("runs/.latest").mkdir()
    Path("runs/.latest/notes.txt").write_text("mine")
    reason = run.mark_latest()
    assert reason and "runs/.latest" in reason and "did not make" in reason
    assert not os.path.lexists("runs/latest") and Path("runs/.latest/notes.txt").read_text() == "mine"


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


@pytest.mark.parametrize("given", ["user.txt", "data/meta.json", "runs/young/config.json"])
def test_resuming_a_file_that_is_no_runs_checkpoint_names_the_path_given_and_writes_nothing(tmp_path, monkeypatch,
                                                                                           given):
    """--resume user.txt said "no run 'ckpt.pt': nothing at ckpt.pt", a file the user never named (and took the
    directory holding user.txt for the run, locking it)."""
    monkeypatch.chdir(tmp_path)
    for name in ("user.txt", "data/meta.json", "runs/young/config.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}")
    with pytest.raises(CheckpointError, match=f"^cannot resume '{given}': its directory {Path(given).parent} holds no "
                                              f"ckpt.pt to continue; pass a run directory"):
        RunDir.open(given)
    line = one_error_line(run_main("train", "--resume", given, "--max-steps", "3", cwd=tmp_path))
    assert line.startswith(f"error: cannot resume '{given}'") and "ckpt.pt'" not in line, line
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["config.json", "data", "meta.json", "runs", "user.txt",
                                                           "young"]


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
        while not (tmp_path / "runs/new/ckpt.pt").exists() or os.readlink(tmp_path / "runs/latest") != ".latest/new":
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
    assert os.readlink(tmp_path / "runs/latest") == ".latest/new"


# ------------------------------------------------------------------------- links and the lines that say why
def test_resuming_a_hard_linked_snapshot_never_writes_into_the_run_it_was_copied_from(tiny_run, tmp_path):
    """`cp -al run snap` shares every file's inode: metrics.jsonl, appended in place, grew in both."""
    original = tmp_path / "runs/orig"
    shutil.copytree(tiny_run, original)
    subprocess.run(["cp", "-al", str(original), str(tmp_path / "runs/snap")], check=True)
    kept = {p.name: p.read_bytes() for p in original.iterdir()}
    run_main("train", "--resume", "runs/snap", "--max-steps", "24", "--log-interval", "1", cwd=tmp_path, check=True)
    assert {p.name: p.read_bytes() for p in original.iterdir()} == kept
    assert max(r["step"] for r in read_metrics(tmp_path / "runs/snap")) == 24


def test_a_run_resumed_through_a_symlink_is_marked_latest_beside_the_link_not_beside_its_target(tmp_path,
                                                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = RunDir.create("store", "x")
    (run.path / "ckpt.pt").write_bytes(b"x")
    run.unlock()
    Path("runs").mkdir()
    Path("runs/x").symlink_to(Path("../store/x"))
    for named in ("runs/x", "runs/x/ckpt.pt"):
        opened = RunDir.open(named)
        opened.mark_latest()
        opened.unlock()
        assert not os.path.lexists("store/latest")  # nothing written outside the runs folder named
        assert os.readlink("runs/latest") == ".latest/x" and RunDir.open("runs/latest").path == opened.path
        RunDir.open("runs/latest").unlock()


@contextlib.contextmanager
def unwritable(directory: Path):
    """`directory` read-only for this process: its mode, and for root (whom modes do not stop) the effective uid of
    nobody while the block runs. Its parents must be searchable by everyone."""
    directory.chmod(0o555)
    try:
        if os.geteuid() == 0:
            os.seteuid(65534)
            try:
                yield
            finally:
                os.seteuid(0)
        else:
            yield
    finally:
        directory.chmod(0o755)


def test_a_run_in_a_directory_that_cannot_be_written_says_so_not_to_remove_what_is_not_there():
    home = Path(tempfile.mkdtemp())
    try:
        home.chmod(0o755)
        run = RunDir.create(home, "r")
        (run.path / "ckpt.pt").write_bytes(b"x")
        run.unlock()
        with unwritable(run.path), pytest.raises(CheckpointError) as e:
            RunDir.open(run.path)
        message = str(e.value)
        assert message.startswith(f"cannot write in {run.path} (Permission denied), so it cannot be resumed there; "
                                  f"make it writable, or copy the run elsewhere") and "remove" not in message
    finally:
        shutil.rmtree(home)


def test_a_dead_run_without_a_checkpoint_says_there_is_nothing_to_resume_not_to_wait(tmp_path):
    run = RunDir.create(tmp_path / "runs", "dead")
    (run.path / "config.json").write_text("{}")
    run.unlock()  # its process ended (as a kill -9 does: the kernel drops the lock) before its first checkpoint
    line = one_error_line(run_main("train", "--resume", "runs/dead", cwd=tmp_path))
    assert "nothing to continue" in line and "wait" not in line, line


def test_a_runs_folder_inside_a_dataset_or_a_run_is_refused_before_anything_is_written(dataset_dir, tiny_run,
                                                                                       tmp_path):
    """`--runs-dir DATASET` made runs inside the dataset (and `Run.out_dir` inside a run): directories whose files
    only chargpt writes, and that it replaces whole."""
    before = {d: sorted(p.name for p in d.iterdir()) for d in (dataset_dir, tiny_run)}
    for inside in (dataset_dir, tiny_run / "sub"):
        p = run_main("train", "--preset", "bigram", "--data", dataset_dir, "--max-steps", "1", "--runs-dir", inside,
                     cwd=tmp_path)
        assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
        assert "is inside the" in p.stderr and "choose a --runs-dir outside it" in p.stderr
    assert {d: sorted(p.name for p in d.iterdir()) for d in (dataset_dir, tiny_run)} == before
