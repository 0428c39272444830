"""Weights & Biases tracking, run for real in offline mode inside temporary directories and read back from the
run's .wandb file with wandb's own inspector (`wandb leet inspect --json`)."""
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import platform

import pytest
import torch

from chargpt import __version__
from chargpt.runs import provenance
from chargpt.data.dataset import load_dataset, prepare
from chargpt.track.tracker import GuardedTracker, run_config, separate_best
from chargpt.track.wandb import (INIT_TIMEOUT, WandbTracker, dataset_artifact_name, default_run_name,
                                    download_dataset)

BIGRAM = ["--preset", "bigram", "--max-steps", "20", "--eval-interval", "10", "--eval-iters", "2",
          "--log-interval", "5", "--sample-tokens", "20"]


@pytest.fixture
def wandb_dir(tmp_path, monkeypatch) -> Path:
    """wandb confined to tmp_path, with no credentials of the machine it runs on."""
    root = tmp_path / "wandb-home"
    for var, sub in (("WANDB_DIR", "dir"), ("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"),
                     ("WANDB_CONFIG_DIR", "config")):
        (root / sub).mkdir(parents=True)
        monkeypatch.setenv(var, str(root / sub))
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_INIT_TIMEOUT", "WANDB_IDENTITY_TOKEN_FILE",
                "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(root / "no-netrc"))
    monkeypatch.setenv("PYTHONUNBUFFERED", "1")
    return root / "dir"


def chargpt(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chargpt", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=240, stdin=subprocess.DEVNULL)


def offline_runs(wandb_dir: Path) -> list[Path]:
    return sorted((wandb_dir / "wandb").glob("offline-run-*"))


def inspect(run_dir: Path, *extra) -> str:
    p = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", *extra, str(run_dir)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in inspect(run_dir).splitlines() if line.strip()]


def artifacts(recs: list[dict]) -> dict[str, dict]:
    return {r["artifact"]["name"]: r["artifact"] for r in recs if r["type"] == "artifact"}


def history(recs: list[dict]) -> dict[int, dict]:
    return {int(r["history"]["step"].get("num", 0)): r["history"]["item"] for r in recs if r["type"] == "history"}


def wandb_core_processes(wandb_dir: Path) -> list[int]:
    """wandb-core processes started for this test (recognised by the WANDB_DIR in their environment)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            argv0 = (proc / "cmdline").read_bytes().split(b"\0")[0]
            environ = (proc / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"wandb-core" in Path(argv0.decode(errors="replace")).name.encode() and \
                f"WANDB_DIR={wandb_dir}".encode() in environ:
            found.append(int(proc.name))
    return found


def assert_no_wandb_core_left(wandb_dir: Path) -> None:
    deadline = time.monotonic() + 5
    while wandb_core_processes(wandb_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert wandb_core_processes(wandb_dir) == []


def md5_b64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


# ----------------------------------------------------------------------------------------------- names
def test_tiny_shakespeare_gets_the_notebook_artifact_name_by_name_or_by_content():
    assert dataset_artifact_name({"name": "shakespeare"}) == "mini-shakespeare-tensors"
    sha = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    assert dataset_artifact_name({"name": "input", "source_sha256": sha}) == "mini-shakespeare-tensors"
    assert dataset_artifact_name({"name": "war and peace", "source_sha256": "0" * 64}) == "war-and-peace-tensors"


def test_default_run_names_read_like_the_notebook():
    assert default_run_name("bigram", "bigram") == "train-bigram-baseline"
    assert default_run_name("gpt", "cpu") == "train-gpt-cpu"
    assert default_run_name("gpt", None) == "train-gpt-custom"


# ------------------------------------------------------------------------------------- offline, for real
def test_prepare_wandb_logs_the_dataset_artifact_offline_with_one_sync_line(shakespeare_path, wandb_dir, tmp_path):
    p = chargpt("prepare", "--input", shakespeare_path, "--out", "data/shakespeare", "--wandb", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    (run_dir,) = offline_runs(wandb_dir)
    shown = run_dir.relative_to(tmp_path)  # the path as typed from the working directory
    sync_lines = [line for line in p.stdout.splitlines() if "wandb sync" in line]
    assert sync_lines == [f"wandb: not logged in, so tracking offline in {shown}; upload later with: "
                          f"wandb sync {shown}"]
    assert "Traceback" not in p.stderr and "warning" not in p.stderr

    recs = records(run_dir)
    (run,) = [r["run"] for r in recs if r["type"] == "run"]
    assert run["job_type"] == "dataset-prep" and run["project"] == "nanogpt"  # the notebook's, with no .env
    art = artifacts(recs)["mini-shakespeare-tensors"]
    assert art["type"] == "dataset"
    files = {c["path"]: c for c in art["manifest"]["contents"]}
    assert set(files) == {"train.pt", "val.pt", "meta.json"}
    data_dir = tmp_path / "data/shakespeare"
    for name in ("train.pt", "val.pt"):
        assert files[name]["digest"] == md5_b64(data_dir / name)
    meta = json.loads(art["metadata"])
    local = json.loads((data_dir / "meta.json").read_text())
    assert meta["vocab_size"] == 65 == local["vocab_size"]
    assert (meta["train_tokens"], meta["val_tokens"]) == (local["train_tokens"], local["val_tokens"])
    assert meta["val_fraction"] == 0.1 and meta["source_sha256"] == local["source_sha256"]
    assert_no_wandb_core_left(wandb_dir)


def test_train_wandb_offline_records_config_metrics_summary_samples_and_model(dataset_dir, wandb_dir, tmp_path):
    p = chargpt("train", "--data", dataset_dir, *BIGRAM, "--name", "b", "--wandb", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    (run_dir,) = offline_runs(wandb_dir)
    notices = [line for line in p.stdout.splitlines() if line.startswith("wandb:")]
    shown = run_dir.relative_to(tmp_path)
    assert notices[0] == f"wandb: not logged in, so tracking offline in {shown}; upload later with: wandb sync {shown}"
    data = load_dataset(dataset_dir)
    assert notices[1].startswith("wandb: offline runs cannot use artifacts: the local dataset")
    assert data.content_hash[:12] in notices[1] and len(notices) == 2
    assert "Traceback" not in p.stderr and "warning" not in p.stderr

    local_run = tmp_path / "runs/b"
    local_metrics = [r for r in map(json.loads, (local_run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    local_summary = json.loads((local_run / "summary.json").read_text())
    recs = records(run_dir)
    (run,) = [r["run"] for r in recs if r["type"] == "run"]
    # The notebook's names: `wandb.init(name='train-bigram-baseline', job_type='training')` in project nanogpt.
    assert run["job_type"] == "training" and run["display_name"] == "train-bigram-baseline"
    assert run["project"] == "nanogpt"

    state = json.loads(inspect(run_dir, "--summary"))
    config = state["config"]
    assert config["model"]["model"] == "bigram" and config["model"]["vocab_size"] == 65
    assert config["train"]["max_steps"] == 20 and config["train"]["eval_interval"] == 10
    assert config["preset"] == "bigram"
    assert config["dataset"]["hash"] == data.content_hash
    assert config["dataset"]["artifact"] == "mini-shakespeare-tensors"
    origin = config["provenance"]
    assert origin["chargpt_version"] == __version__ and origin["torch_version"] == torch.__version__
    assert origin["python_version"] == platform.python_version() and origin["device_name"]
    assert origin["command"].startswith(f"chargpt train --data {dataset_dir} --preset bigram")
    assert origin["git_commit"] == provenance.git_commit(provenance.PACKAGE_DIR)[0]

    rows = history(recs)
    assert sorted(rows) == [0, 5, 10, 15, 20]
    for record in local_metrics:  # every evaluation, with the same keys and values as metrics.jsonl
        row = rows[record["step"]]
        for key in ("train_loss", "val_loss", "tokens_seen", "train_seconds"):
            assert row[key] == pytest.approx(record[key]), key
    for step in (5, 10, 15, 20):  # every log interval
        assert {"loss", "lr", "grad_norm", "tokens_per_sec"} <= set(rows[step])
        assert rows[step]["lr"] == pytest.approx(0.01)

    summary = state["summary"]
    assert summary["val_loss_full"] == pytest.approx(local_summary["val_loss_full"])
    assert summary["val_bpc_full"] == pytest.approx(local_summary["val_bpc_full"])
    assert summary["params"] == 65 * 65 and summary["steps"] == 20
    assert summary["samples"]["_type"] == "table-file" and summary["samples"]["nrows"] == 1
    table = json.loads((run_dir / "files" / summary["samples"]["path"]).read_text())
    assert table["columns"] == ["step", "sample"]
    assert table["data"] == [[20, (local_run / "sample.txt").read_text()]]

    model = artifacts(recs)["train-bigram-baseline-model"]
    assert model["type"] == "model"
    files = {c["path"]: c for c in model["manifest"]["contents"]}
    assert set(files) == {"ckpt.pt", "config.json", "summary.json"}
    assert files["ckpt.pt"]["digest"] == md5_b64(local_run / "ckpt.pt")
    assert set(model["aliases"]) == {"latest", "best", "step-20"}  # no separate best.pt: the final one is the best
    assert rows[20]["loss_curve._type"] == "image-file" and "attention._type" not in rows[20]  # a bigram has none
    assert state["state"] == "finished" and state["exit_code"] == 0
    assert_no_wandb_core_left(wandb_dir)


@pytest.mark.slow
def test_an_unreachable_server_with_a_key_set_starts_promptly_and_falls_back_to_offline(
        dataset_dir, wandb_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)  # well-formed, fake
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    proc = subprocess.Popen([sys.executable, "-m", "chargpt", "train", "--data", str(dataset_dir), *BIGRAM,
                             "--name", "u", "--wandb"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    header = started = None  # from the run's header line to the line printed once wandb has started
    out = []
    for line in proc.stdout:
        out.append(line)
        if header is None and line.startswith("training "):
            header = time.monotonic()
        if started is None and header is not None and line.startswith("wandb: offline runs cannot use artifacts"):
            started = time.monotonic() - header
    err = proc.stderr.read()
    assert proc.wait(timeout=180) == 0, err
    # wandb alone would wait its 90 s default; chargpt bounds the start and then trains. (Measured from the
    # header, so that imports on a loaded machine do not count.)
    assert started is not None and started < INIT_TIMEOUT + 25, (started, "".join(out), err)
    (run_dir,) = offline_runs(wandb_dir)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert "cannot start an online run" in warnings[0] and f"wandb sync {run_dir.relative_to(tmp_path)}" in warnings[0]
    assert "Traceback" not in err and not [line for line in err.splitlines() if line.startswith("wandb:")]
    assert (tmp_path / "runs/u/summary.json").is_file()
    assert sorted(history(records(run_dir))) == [0, 5, 10, 15, 20]
    assert_no_wandb_core_left(wandb_dir)


# ------------------------------------------------------------------------------------ never breaks training
class BrokenRun:
    """A wandb run whose calls fail, as when wandb-core dies mid-training."""

    def __init__(self):
        self.finished_with = None

    def log(self, *args, **kwargs):
        raise ConnectionResetError("wandb-core went away")

    def finish(self, exit_code=0):
        self.finished_with = exit_code


def test_a_failing_wandb_call_is_one_warning_and_then_the_tracker_goes_quiet(capsys, tmp_path):
    broken = BrokenRun()
    tracker = GuardedTracker(WandbTracker(name="train-x"), "wandb")  # as make_tracker("wandb") builds it
    tracker.tracker.run = broken  # as start() leaves it
    for step in range(3):
        tracker.log({"loss": 1.0}, step)
    tracker.finish({"steps": 3, "val_loss_full": 1.0})
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: wandb: logging metrics failed; training goes on without wandb "
                   "(ConnectionResetError: wandb-core went away)"]
    assert tracker.tracker.run is None and broken.finished_with == 1


def test_disabled_mode_gives_a_tracker_that_does_nothing(dataset_dir, wandb_dir):
    from chargpt.config import get_preset

    data = load_dataset(dataset_dir)
    tracker = WandbTracker(mode="disabled")
    tracker.start(None, run_config(get_preset("bigram"), None, data, "bigram"), data)
    assert tracker.run is None
    assert not (wandb_dir / "wandb").exists()


def test_a_dataset_artifact_is_not_downloaded_offline_or_logged_out_and_the_local_dataset_is_used(wandb_dir, capsys):
    name = "me/chargpt/mini-shakespeare-tensors:latest"
    assert download_dataset(name, mode="offline") is None
    assert download_dataset(name, mode="auto") is None  # no key configured
    assert capsys.readouterr().out.splitlines() == [
        f"wandb: offline mode cannot download {name}; using the local dataset",
        f"wandb: not logged in, so {name} cannot be downloaded; using the local dataset",
    ]


# ------------------------------------------------------------------------ .env and wandb's own variables
@pytest.fixture(scope="module")
def small_dataset(shakespeare_path, tmp_path_factory) -> Path:
    """The first 20,000 characters of tiny Shakespeare: the full-pass evaluation at the end takes no time."""
    text = tmp_path_factory.mktemp("small") / "input.txt"
    text.write_text(shakespeare_path.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    prepare(text, text.parent / "shakespeare", name="shakespeare")
    return text.parent / "shakespeare"


def run_of(recs: list[dict]) -> dict:
    (run,) = [r["run"] for r in recs if r["type"] == "run"]
    return run


@pytest.mark.slow
def test_a_dotenv_file_steers_the_run_and_the_environment_overrides_it(small_dataset, wandb_dir, tmp_path,
                                                                       monkeypatch):
    (tmp_path / ".env").write_text("WANDB_MODE=offline\nWANDB_PROJECT=somewhere\n")
    # A key and a server that nothing answers: an online attempt would cost INIT_TIMEOUT and end in a warning.
    # WANDB_MODE=offline from .env (with --wandb-mode auto) never tries it.
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    p = chargpt("prepare", "--input", small_dataset.parent / "input.txt", "--out", "d", "--wandb", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    lines = p.stdout.splitlines()
    assert lines[0] == f"read {tmp_path / '.env'}: WANDB_MODE, WANDB_PROJECT"
    (run_dir,) = offline_runs(wandb_dir)
    shown = run_dir.relative_to(tmp_path)
    assert f"wandb: WANDB_MODE=offline, so tracking offline in {shown}; upload later with: wandb sync {shown}" in lines
    assert run_of(records(run_dir))["project"] == "somewhere"

    monkeypatch.setenv("WANDB_PROJECT", "elsewhere")  # already in the environment: wins over the file
    p = chargpt("prepare", "--input", small_dataset.parent / "input.txt", "--out", "d", "--wandb", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == f"read {tmp_path / '.env'}: WANDB_MODE; already set, so kept: WANDB_PROJECT"
    (newer,) = set(offline_runs(wandb_dir)) - {run_dir}
    assert run_of(records(newer))["project"] == "elsewhere"
    assert_no_wandb_core_left(wandb_dir)


@pytest.mark.slow
def test_a_malformed_dotenv_file_is_one_warning_and_training_goes_on(small_dataset, wandb_dir, tmp_path):
    (tmp_path / ".env").write_bytes(b"WANDB_MODE=offline\n\x00\xff\xfe\x80\x81binary\nNO_EQUALS_SIGN\n")
    p = chargpt("train", "--data", small_dataset, *BIGRAM, "--name", "m", "--wandb", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines() == [f"warning: {tmp_path / '.env'} lines 2, 3 are not NAME=value text (binary bytes, "
                                     f"or no '='); skipped, the rest was read"]
    assert p.stdout.splitlines()[0] == f"read {tmp_path / '.env'}: WANDB_MODE"
    assert json.loads((tmp_path / "runs/m/summary.json").read_text())["steps"] == 20
    (run_dir,) = offline_runs(wandb_dir)  # the file's good line took effect
    assert "wandb: WANDB_MODE=offline, so tracking offline" in p.stdout


def test_wandb_mode_disabled_from_the_environment_tracks_nothing_with_one_line(small_dataset, wandb_dir, tmp_path,
                                                                               monkeypatch, capsys):
    from chargpt.config import get_preset

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    data = load_dataset(small_dataset)
    tracker = WandbTracker()
    tracker.start(None, run_config(get_preset("bigram"), None, data, None), data)
    assert tracker.run is None
    assert capsys.readouterr().out.splitlines() == ["wandb: WANDB_MODE=disabled, so not tracking train-bigram-baseline"]
    assert not (wandb_dir / "wandb").exists()


def test_the_python_api_reads_the_dotenv_file_too(small_dataset, wandb_dir, tmp_path, monkeypatch, capsys):
    from chargpt.config import get_preset

    (tmp_path / ".env").write_text("WANDB_MODE=disabled\n")
    monkeypatch.chdir(tmp_path)
    data = load_dataset(small_dataset)
    tracker = WandbTracker(mode="auto")
    tracker.start(None, run_config(get_preset("bigram"), None, data, None), data)
    assert tracker.run is None
    assert capsys.readouterr().out.splitlines() == [
        f"read {tmp_path / '.env'}: WANDB_MODE", "wandb: WANDB_MODE=disabled, so not tracking train-bigram-baseline"]


def test_a_dataset_artifact_without_wandb_is_fetched_not_ignored(small_dataset, wandb_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    name = "nanogpt/mini-shakespeare-tensors:latest"
    p = chargpt("train", "--dataset-artifact", name, "--preset", "bigram", "--max-steps", "1", cwd=tmp_path)
    # No dataset in tmp_path and no way to download offline: one line says why, then the usual missing-data error.
    assert f"wandb: WANDB_MODE=offline, so {name} cannot be downloaded; using the local dataset" in p.stdout
    assert p.returncode != 0 and len(p.stderr.splitlines()) == 1 and "data/shakespeare" in p.stderr


def test_the_library_tracks_in_wandb_with_wandb_true_every_record_of_metrics_jsonl(small_dataset, wandb_dir,
                                                                                  tmp_path, monkeypatch):
    import wandb

    import chargpt

    wandb.teardown()  # wandb keeps the settings (WANDB_DIR) of its first use in a process: an earlier test's
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = chargpt.train("bigram", small_dataset, runs_dir=tmp_path, name="w", wandb=True, max_steps=20,
                        eval_interval=10, eval_iters=2, log_interval=5, sample_tokens=20, verbose=False)
    (run_dir,) = offline_runs(wandb_dir)
    recs = records(run_dir)
    rows = history(recs)
    assert sorted(rows) == [0, 5, 10, 15, 20]
    expected: dict[int, dict] = {}  # a step's records merged, as W&B merges the logs of one step into one row
    for record in run.metrics:  # the same record feeds metrics.jsonl and the tracker: every key, every step
        expected.setdefault(record.pop("step"), {}).update(record)
    for step, row in expected.items():
        assert {key: rows[step][key] for key in row} == pytest.approx(row), step
    assert {"grad_norm", "tokens_seen"} <= set(rows[5]) and rows[20]["loss_curve._type"] == "image-file"
    assert json.loads(inspect(run_dir, "--summary"))["summary"]["val_loss_full"] == pytest.approx(
        run.summary["val_loss_full"])
    assert set(artifacts(recs)["train-bigram-baseline-model"]["aliases"]) == {"latest", "best", "step-20"}
    assert_no_wandb_core_left(wandb_dir)


def test_every_tracker_name_is_a_module_holding_a_tracker_and_the_cli_offers_exactly_those():
    from typing import get_args

    from chargpt.cli import build_parser
    from chargpt.config import TrackerName
    from chargpt.track.tracker import Tracker, make_tracker

    names = get_args(TrackerName)
    assert names == ("wandb", "tensorboard")
    assert all(isinstance(make_tracker(name), Tracker) for name in names)
    train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    (flag,) = [a for a in train._actions if a.dest == "tracker"]
    assert tuple(flag.choices) == names


# ------------------------------------------------------------------------------------------- resuming
def test_best_is_a_separate_model_version_only_when_it_is_an_earlier_step(tmp_path):
    assert separate_best(tmp_path) is None  # no checkpoints at all
    torch.save({"step": 40}, tmp_path / "ckpt.pt")
    assert separate_best(tmp_path) is None  # no best.pt: the final checkpoint is the best there is
    torch.save({"step": 40}, tmp_path / "best.pt")
    assert separate_best(tmp_path) is None  # saved at the final step too
    torch.save({"step": 30}, tmp_path / "best.pt")
    assert separate_best(tmp_path) == 30
    (tmp_path / "best.pt").write_bytes(b"not a checkpoint")
    assert separate_best(tmp_path) is None


@pytest.mark.slow
def test_resume_continues_the_same_wandb_run_with_images_and_model_aliases(small_dataset, wandb_dir, tmp_path):
    from conftest import TINY_GPT

    first = chargpt("train", "--data", small_dataset, *TINY_GPT, "--max-steps", "10", "--eval-interval", "5",
                    "--log-interval", "5", "--name", "g", "--wandb", "--wandb-mode", "offline", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    kept = json.loads((tmp_path / "runs/g/wandb-run.json").read_text())
    assert kept["project"] == "nanogpt" and kept["name"] == "train-gpt-cpu"
    second = chargpt("train", "--resume", "runs/g", "--max-steps", "20", "--wandb", "--wandb-mode", "offline",
                     cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "warning" not in first.stderr + second.stderr
    before, after = (records(run) for run in offline_runs(wandb_dir))  # each read once: `wandb leet` is a process
    assert run_of(before)["run_id"] == run_of(after)["run_id"] == kept["id"]  # one W&B run, synced as one chart
    assert run_of(after)["display_name"] == "train-gpt-cpu" and run_of(after)["project"] == "nanogpt"
    assert sorted(history(before)) == [0, 5, 10]
    rows = history(after)
    assert sorted(rows) == [15, 20]  # continues where the first left off
    for recs, steps in ((before, 10), (after, 20)):
        last = history(recs)[steps]
        assert last["loss_curve._type"] == "image-file" and last["attention._type"] == "image-file"
        assert last["attention.width"] > 0
        model = artifacts(recs)["train-gpt-cpu-model"]
        assert set(model["aliases"]) == {"latest", "best", f"step-{steps}"}
    assert_no_wandb_core_left(wandb_dir)


def test_wandb_credentials_notice_stays_silent(tmp_path):
    """wandb prints "wandb: [wandb.login()] Loaded credentials ..." unless WANDB_SILENT is set when its settings are
    first made (chargpt's key check makes them): importing chargpt.track.wandb sets it (issue 11)."""
    code = ("from chargpt.track import wandb as tracking\n"
            "assert tracking.is_logged_in()\n"
            "from wandb.sdk import wandb_setup\n"
            "from wandb.sdk.lib.wbauth import authenticate_session\n"
            "authenticate_session(host=wandb_setup.singleton().settings.base_url, source='wandb.login()',\n"
            "                     prompt=False, update_session=True)\n")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SILENT"}
    env.update(WANDB_API_KEY="0" * 40, WANDB_DIR=str(tmp_path), WANDB_CONFIG_DIR=str(tmp_path))
    p = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "wandb:" not in p.stderr and "Loaded credentials" not in p.stderr, p.stderr


def test_wandb_writes_inside_its_run_and_never_through_a_symlink_out_of_it(small_dataset, wandb_dir, tmp_path,
                                                                            monkeypatch):
    """Without WANDB_DIR, an offline run's files are the run directory's `wandb/`, not the working directory's; a
    `wandb` there that links elsewhere is refused in one warning line, and training goes on."""
    from conftest import run_main

    monkeypatch.delenv("WANDB_DIR")
    short = ["--preset", "bigram", "--max-steps", "4", "--eval-interval", "2", "--eval-iters", "1",
             "--sample-tokens", "0"]
    first = chargpt("train", "--data", small_dataset, *short, "--name", "w", "--wandb", "--wandb-mode", "offline",
                    cwd=tmp_path)
    assert first.returncode == 0 and "warning" not in first.stderr, first.stderr
    (offline,) = (tmp_path / "runs/w/wandb").glob("offline-run-*")
    assert f"tracking offline in {offline.relative_to(tmp_path)}" in first.stdout
    assert not (tmp_path / "wandb").exists()
    shutil.rmtree(tmp_path / "runs/w/wandb")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "runs/w/wandb").symlink_to(elsewhere)
    second = run_main("train", "--resume", "runs/w", "--max-steps", "6", "--wandb", "--wandb-mode", "offline",
                      cwd=tmp_path, check=True)  # refused before wandb starts: in this process
    (line,) = second.stderr.splitlines()
    assert line.startswith("warning: wandb: starting failed; training goes on without wandb") and \
        "runs/w/wandb is a symbolic link" in line, line
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "wandb").exists()
    assert json.loads((tmp_path / "runs/w/summary.json").read_text())["steps"] == 6
