"""The tensorboard tracker: event files in the run directory, read back with TensorBoard's own reader."""
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import chargpt
from chargpt.runs.rundir import read_metrics
from conftest import TINY_GPT, run_main


def events(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def text(acc: EventAccumulator, tag: str) -> str:
    (event,) = acc.Tensors(f"{tag}/text_summary")
    return event.tensor_proto.string_val[0].decode()


def test_train_tracker_tensorboard_writes_every_metrics_record_images_and_summary_as_event_files(dataset_dir,
                                                                                              tmp_path):
    p = run_main("train", "--data", dataset_dir, *TINY_GPT, "--log-interval", "5", "--name", "t", "--tracker",
                 "tensorboard", cwd=tmp_path, check=True)
    run_dir = tmp_path / "runs/t"
    assert f"tensorboard: writing runs/t/tensorboard; view with: tensorboard --logdir runs/t/tensorboard" in p.stdout
    acc = events(run_dir)
    logged = defaultdict(set)  # (key, step) -> values: a step with a training record and an evaluation has two lr
    for key in acc.Tags()["scalars"]:
        for event in acc.Scalars(key):
            logged[key, event.step].add(event.value)
    records = read_metrics(run_dir)
    assert {r["step"] for r in records} == {0, 5, 10, 15, 20}
    for record in records:  # the same record feeds metrics.jsonl and the tracker: every key, every step
        for key, value in record.items():
            if key != "step":
                assert any(v == pytest.approx(value, rel=1e-6) for v in logged[key, record["step"]]), (key, record)
    summary = json.loads((run_dir / "summary.json").read_text())
    (val_loss_full,) = logged["summary/val_loss_full", 20]
    assert val_loss_full == pytest.approx(summary["val_loss_full"], rel=1e-6)
    images = {tag: acc.Images(tag) for tag in acc.Tags()["images"]}
    assert sorted(images) == ["attention", "loss_curve"]
    assert all(image.step == 20 and image.width > 100 for (image,) in images.values())
    assert "1 layer x 2 heads" in text(acc, "attention/caption")  # the label `chargpt attention` writes
    assert summary["sample"] in text(acc, "sample").replace("\n    ", "\n")
    # where each checkpoint is: the final one last (best.pt before it when that is an earlier step)
    models = [e.tensor_proto.string_val[0].decode() for e in acc.Tensors("model/text_summary")]
    assert models[-1].startswith(("latest, best, step-20: runs/t/ckpt.pt", "latest, step-20: runs/t/ckpt.pt"))
    assert len(models) == 1 or models[0].startswith("best, step-") and "runs/t/best.pt" in models[0]


def test_the_library_writes_the_same_event_files_with_tracker_tensorboard(dataset_dir, tmp_path, capfd):
    run = chargpt.train("cpu", dataset_dir, runs_dir=tmp_path, name="p", tracker="tensorboard", n_layer=1, n_embd=16,
                        n_head=2, block_size=8, batch_size=4, max_steps=6, eval_interval=3, eval_iters=1,
                        sample_tokens=0, compile=False, device="cpu", threads=1, verbose=False)
    acc = events(run.path)
    assert [(e.step, e.value) for e in acc.Scalars("val_loss")] == [
        (r["step"], pytest.approx(r["val_loss"], rel=1e-6)) for r in run.metrics if "val_loss" in r]
    assert json.loads(text(acc, "config").replace("\n    ", "\n"))["model"]["n_embd"] == 16
    assert capfd.readouterr().out == ""  # verbose=False shows nothing: the tracker's line where it writes neither


# ---------------------------------------------------------------------- a tracker writes only inside its run
def scalar_steps(run_dir, key: str) -> list[int]:
    return [e.step for e in events(run_dir).Scalars(key)]


def test_a_resumed_run_hides_what_a_killed_process_logged_past_its_checkpoint(dataset_dir, tmp_path):
    """kill -9 after the checkpoint of step 4 and the records up to 8: the resumed run logs 5-8 again, and
    TensorBoard showed each of those steps twice (metrics.jsonl drops them on resume)."""
    short = [*TINY_GPT, "--log-interval", "1", "--eval-interval", "2", "--tracker", "tensorboard", "--eval-tokens",
             "2000"]
    run_main("train", "--data", dataset_dir, *short, "--max-steps", "4", "--name", "k", cwd=tmp_path, check=True)
    run_dir = tmp_path / "runs/k"
    at_4 = (run_dir / "ckpt.pt").read_bytes()
    run_main("train", "--resume", "runs/k", "--max-steps", "8", "--tracker", "tensorboard", cwd=tmp_path, check=True)
    (run_dir / "ckpt.pt").write_bytes(at_4)  # what kill -9 just before the checkpoint of step 8 leaves
    (run_dir / "summary.json").unlink()
    run_main("train", "--resume", "runs/k", "--max-steps", "8", "--tracker", "tensorboard", cwd=tmp_path, check=True)
    assert scalar_steps(run_dir, "loss") == list(range(1, 9))
    assert scalar_steps(run_dir, "loss") == [r["step"] for r in read_metrics(run_dir) if "loss" in r]


def test_a_tensorboard_directory_that_links_out_of_the_run_is_refused_in_one_warning_and_training_goes_on(
        dataset_dir, tmp_path):
    run_main("train", "--data", dataset_dir, *TINY_GPT, "--max-steps", "2", "--eval-interval", "2", "--eval-tokens",
             "2000", "--name", "s", cwd=tmp_path, check=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "runs/s/tensorboard").symlink_to(elsewhere)
    p = run_main("train", "--resume", "runs/s", "--max-steps", "4", "--tracker", "tensorboard", cwd=tmp_path,
                 check=True)
    assert list(elsewhere.iterdir()) == []  # nothing written through the link
    (line,) = p.stderr.splitlines()
    assert line.startswith("warning: tensorboard: starting failed; training goes on without tensorboard") and \
        "runs/s/tensorboard is a symbolic link" in line, line
    assert json.loads((tmp_path / "runs/s/summary.json").read_text())["steps"] == 4


@contextlib.contextmanager
def unwritable(directory: Path):
    """`directory` read-only for this process: its mode, and for root (whom modes do not stop) the effective uid of
    nobody while the block runs (every thread's: the kernel checks a thread's own ids). Its parents must be
    searchable by everyone."""
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


def test_an_event_file_that_cannot_be_written_is_one_warning_never_a_thread_traceback(capfd, monkeypatch):
    """TensorBoard writes event files in a thread of its own, which reports a failed write by raising there:
    Python printed that thread's traceback, the run went on (exit 0)."""
    import threading

    from torch.utils.tensorboard import SummaryWriter  # noqa: F401 (imported before the uid changes)

    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)  # Python's own, not pytest's

    from chargpt.runs.rundir import RunDir
    from chargpt.track.tracker import make_tracker

    home = Path(tempfile.mkdtemp())
    try:
        home.chmod(0o755)
        (home / "r/tensorboard").mkdir(parents=True)
        tracker = make_tracker("tensorboard")
        with unwritable(home / "r/tensorboard"):
            tracker.start(RunDir(home / "r"), {"model": {}}, None)
            for step in range(30):
                tracker.log({"step": step, "loss": 1.0}, step)
            time.sleep(0.5)  # the writer thread's turn
            tracker.finish({"steps": 30})
        err = capfd.readouterr().err
        assert "Traceback" not in err and "Exception in thread" not in err, err
        (line,) = err.splitlines()
        assert line.startswith("warning: tensorboard: ") and "PermissionError" in line, line
        assert list((home / "r/tensorboard").iterdir()) == []
    finally:
        shutil.rmtree(home)


@pytest.fixture(scope="module")
def two_tensorboard_runs(dataset_dir, tmp_path_factory):
    """A runs folder where runs a and b trained with `--tracker tensorboard` (b the newest: `latest`)."""
    root = tmp_path_factory.mktemp("tb-runs")
    for name in ("a", "b"):
        run_main("train", "--data", dataset_dir, "--name", name, "--preset", "bigram", "--max-steps", "4",
                 "--eval-interval", "2", "--eval-iters", "1", "--sample-tokens", "0", "--eval-tokens", "1000",
                 "--device", "cpu", "--threads", "1", "--tracker", "tensorboard", cwd=root, check=True)
    return root / "runs"


def test_tensorboard_over_the_runs_folder_lists_each_run_once(two_tensorboard_runs):
    """`tensorboard --logdir runs` as TensorBoard's Python logdir loader reads it: `latest` leads to the newest
    run's files but not to its events, so the loader (which walks into links) finds each run once."""
    from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer

    runs_dir = two_tensorboard_runs
    assert os.path.realpath(runs_dir / "latest/ckpt.pt") == os.path.realpath(runs_dir / "b/ckpt.pt")
    assert json.loads((runs_dir / "latest/config.json").read_text()) == json.loads((runs_dir / "b/config.json").read_text())
    assert not (runs_dir / "latest/tensorboard").exists()
    runs = EventMultiplexer().AddRunsFromDirectory(str(runs_dir)).Runs()
    assert sorted(runs) == ["a/tensorboard", "b/tensorboard"]


@pytest.mark.slow
def test_a_tensorboard_server_over_the_runs_folder_lists_each_run_once(two_tensorboard_runs):
    """The same through a real `tensorboard --logdir runs` process and its HTTP API (its Rust data server where
    installed, which follows links too)."""
    import socket
    import subprocess
    import sys
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(two_tensorboard_runs),
                               "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        runs, deadline = [], time.monotonic() + 60
        while len(runs) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
            with contextlib.suppress(OSError):
                runs = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5).read())
        time.sleep(3)  # more than one reload after both runs appeared: a third would be there by now
        runs = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5).read())
        assert sorted(runs) == ["a/tensorboard", "b/tensorboard"]
    finally:
        server.terminate()
        server.wait(timeout=30)
