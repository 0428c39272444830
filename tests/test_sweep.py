"""`chargpt sweep`: an Optuna study whose trials are ordinary runs. Real studies (SQLite, read back with
optuna.load_study; PostgreSQL where a server can be started), real worker processes, a real SIGKILL; tiny models
and trials of a few dozen steps or seconds."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest

from chargpt.fsutil import written_by_chargpt
from conftest import one_error_line, run_cli, run_main

pytestmark = pytest.mark.usefixtures("one_thread")

# Every trial: a one-layer GPT on 16 characters, 2-batch estimates, a small final pass, no sample, no compile.
TINY = {"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 16, "batch_size": 4, "eval_interval": 10,
        "eval_iters": 2, "sample_tokens": 0, "compile": False, "threads": 1, "eval_tokens": 2000, "device": "cpu"}
LR = "lr = {low = 1e-3, high = 3e-2, log = true}"


def write_space(where: Path, *lines: str, **fixed) -> Path:
    """A space file: the tiny model's fields (`fixed` overriding them, `lines` replacing them), then `lines`."""
    searched = {line.split("=")[0].strip() for line in lines}
    values = {k: v for k, v in (TINY | fixed).items() if k not in searched}
    path = where / "space.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()) + "".join(f"{x}\n" for x in lines))
    return path


def study_of(where: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{where / 'sweeps' / name / 'study.db'}")


def summary_of(where: Path, trial) -> dict:
    return json.loads((where / trial.user_attrs["run"] / "summary.json").read_text())


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


@pytest.fixture(scope="module")
def swept(dataset_dir, tmp_path_factory):
    """A two-trial sweep of 40-step trials over the learning rate, shown."""
    where = tmp_path_factory.mktemp("sweep")
    space = write_space(where, LR)
    p = run_main("sweep", "s", "--data", dataset_dir, "--trials", 2, "--trial-budget", "40steps", "--space", space,
                 "--seed", 7, "--show", cwd=where, check=True)
    return where, p


def test_a_sweeps_study_holds_its_trials_with_the_runs_figures(swept):
    where, p = swept
    study = study_of(where, "s")
    assert states(study) == ["COMPLETE"] * 2
    runs = set()
    for trial in study.trials:
        summary = summary_of(where, trial)
        assert trial.value == summary["val_loss_full"]
        assert (summary["sweep"], summary["trial"], summary["steps"]) == ("s", trial.number, 40)
        assert 1e-3 <= trial.params["lr"] <= 3e-2
        runs.add(trial.user_attrs["run"])
    assert runs == {"runs/s-t000", "runs/s-t001"}
    assert f"best: trial {study.best_trial.number} (runs/s-t00{study.best_trial.number})" in p.stdout
    table = p.stdout[p.stdout.index("trial  state"):].splitlines()
    assert table[1 + study.best_trial.number].split()[0] == f"{study.best_trial.number}*"
    for png in ("history.png", "importances.png", "parallel.png"):
        assert (where / "sweeps/s" / png).read_bytes()[:4] == b"\x89PNG"
        assert written_by_chargpt(where / "sweeps/s" / png)  # marked: a figure chargpt drew


def test_show_redraws_the_sweeps_own_plots_but_refuses_a_png_chargpt_did_not_draw(swept):
    """--show replaces only the figures chargpt drew (marked): an unmarked history.png in their place is refused in
    one line, before any plot is drawn, and left as it was."""
    where, _ = swept
    history = where / "sweeps/s/history.png"
    theirs = b"\x89PNG\r\n\x1a\n a drawing of the user's, without chargpt's mark"
    history.write_bytes(theirs)
    drawn = {png: (where / "sweeps/s" / png).read_bytes() for png in ("importances.png", "parallel.png")}
    p = run_main("sweep", "s", "--show", cwd=where)
    assert p.returncode == 2 and "sweeps/s/history.png is a file chargpt did not write" in one_error_line(p)
    assert history.read_bytes() == theirs and p.stdout == ""
    assert all((where / "sweeps/s" / png).read_bytes() == data for png, data in drawn.items())
    history.unlink()
    p = run_main("sweep", "s", "--show", cwd=where, check=True)  # its own drawings and best.toml: replaced
    assert "wrote sweeps/s/history.png" in p.stdout and written_by_chargpt(history)


def test_best_toml_retrains_to_the_best_trials_figure(swept, dataset_dir):
    where, _ = swept
    best = study_of(where, "s").best_trial
    run_main("train", "--config", "sweeps/s/best.toml", "--data", dataset_dir, "--name", "again", cwd=where,
             check=True)
    assert json.loads((where / "runs/again/summary.json").read_text())["val_loss_full"] == best.value


def test_one_worker_repeats_a_sweep_for_the_same_seed_from_the_library_too(swept, dataset_dir, monkeypatch):
    import chargpt

    where, _ = swept
    monkeypatch.chdir(where)
    space = TINY | {"lr": {"low": 1e-3, "high": 3e-2, "log": True}}  # the space file's, as a dict
    twin = chargpt.sweep("twin", dataset_dir, trials=2, trial_budget="40steps", space=space, seed=7, verbose=False)
    first = study_of(where, "s").trials
    assert [(t.params, t.value) for t in twin.trials] == [(t.params, t.value) for t in first]


def test_a_combination_the_model_cannot_take_is_skipped_and_a_hopeless_trial_pruned(dataset_dir, tmp_path):
    """Queued in order: a good trial, one whose width the heads cannot split, one whose learning rate is hopeless
    (successive halving stops it at its first rung, behind the good one)."""
    space = write_space(tmp_path, "lr = [1e-2, 1e-6]", "n_head = [2, 3]", optimizer="adamw", eval_interval=8)
    (tmp_path / "sweeps/p").mkdir(parents=True)
    study = optuna.create_study(study_name="p", storage=f"sqlite:///{tmp_path / 'sweeps/p/study.db'}")
    for lr, heads in ((1e-2, 2), (1e-6, 3), (1e-6, 2)):
        study.enqueue_trial({"lr": lr, "n_head": heads})
    p = run_main("sweep", "p", "--data", dataset_dir, "--trials", 2, "--trial-budget", "40steps", "--space", space,
                 "--pruner", "halving", cwd=tmp_path, check=True)
    trials = study_of(tmp_path, "p").trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "PRUNED"]
    assert "divisible" in trials[1].user_attrs["skipped"] and "trial 1: skipped" in p.stdout
    pruned = summary_of(tmp_path, trials[2])
    assert pruned["steps"] < 40 and "pruned by the halving pruner" in pruned["pruned"]
    # its estimates were all the pruner needed: no final pass over val, no sample; the table shows its last estimate
    assert pruned["val_loss_full"] is None and "eval_seconds" not in pruned and "sample" not in pruned
    assert not (tmp_path / trials[2].user_attrs["run"] / "sample.txt").exists()
    estimate = trials[2].intermediate_values[trials[2].last_step]
    assert pruned["val_loss"] == pytest.approx(estimate)
    table = run_main("sweep", "p", "--show", cwd=tmp_path, check=True).stdout
    assert any(line.split()[:5] == ["2", "pruned", "at", f"{trials[2].last_step}%", f"({estimate:.4f})"]
               for line in table.splitlines())
    listing = run_main("runs", cwd=tmp_path, check=True).stdout
    assert [line.split()[-1] for line in listing.splitlines() if line.startswith("p-t00")] == ["finished", "pruned"]


@pytest.mark.parametrize("pruner", ["percentile", "median", "halving"])
def test_a_pruner_is_asked_only_between_its_first_and_last_percent(pruner):
    """Estimates are reported at every mark, but the pruner may stop a trial only from PRUNE_FROM to PRUNE_UNTIL
    percent of its budget: a trial far behind the finished ones is stopped inside that window, never after it."""
    from chargpt.sweeps.study import PRUNE_FROM, PRUNE_UNTIL, make_pruner
    from chargpt.sweeps.trial import Judge

    study = optuna.create_study(pruner=make_pruner(pruner))
    for _ in range(5):  # finished trials, far ahead at every mark (and asked there: halving's rungs)
        trial = study.ask()
        for at in range(10, 100, 10):
            trial.report(1.0, at)
            trial.should_prune()
        study.tell(trial, 1.0)
    marks = [at / 100 for at in range(10, 100, 10)]
    late, early = study.ask(), study.ask()
    late_verdicts = [Judge(late, pruner, {}, evals=10).judge(step=1 + i, done=d, val_loss=9.0)
                     for i, d in enumerate(marks) if d * 100 > PRUNE_UNTIL]
    assert late_verdicts and not any(late_verdicts) and study.trials[late.number].last_step == 90
    judge = Judge(early, pruner, {}, evals=10)
    stopped_at = next(round(d * 100) for i, d in enumerate(marks) if judge.judge(step=1 + i, done=d, val_loss=9.0))
    assert PRUNE_FROM <= stopped_at <= PRUNE_UNTIL and f"pruned by the {pruner} pruner" in judge.record["pruned"]


def test_ctrl_c_stops_after_the_trials_checkpoint_and_the_same_command_resumes(dataset_dir, tmp_path):
    """Tracked in TensorBoard too: the trial's values and figure land in its hparams view."""
    space = write_space(tmp_path, LR)
    command = ["sweep", "c", "--data", dataset_dir, "--trials", 1, "--trial-budget", "3s", "--space", space,
               "--tracker", "tensorboard"]
    ckpt = tmp_path / "runs/c-t000/ckpt.pt"

    def interrupt():
        deadline = time.monotonic() + 120
        while not ckpt.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    p = run_main(*command, cwd=tmp_path)
    assert p.returncode == 130 and "sweep c stopped by SIGINT in trial 0" in one_error_line(p)
    assert states(study_of(tmp_path, "c")) == ["FAIL", "WAITING"]
    run_main(*command, cwd=tmp_path, check=True)
    trials = study_of(tmp_path, "c").trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"] and trials[1].user_attrs["run"] == "runs/c-t000"
    assert list((tmp_path / "runs/c-t000/tensorboard/hparams").glob("events.out.tfevents.*"))


# --------------------------------------------------------------------------------------------- PostgreSQL
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL server from the OS's packages (.ci/run installs them), as its own user when this runs
    as root; skipped, with the reason, where none can be started."""
    bindir = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)), None)
    if bindir is None or not (bindir / "initdb").exists():
        pytest.skip("no PostgreSQL server binaries (Debian's postgresql package) in /usr/lib/postgresql")
    as_user = []
    if os.getuid() == 0:
        if shutil.which("runuser") is None or subprocess.run(["id", "postgres"], capture_output=True).returncode:
            pytest.skip("running as root without a postgres user to start PostgreSQL as")
        as_user = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="chargpt-pg-"))  # not under pytest's folders: the postgres user reaches it
    if as_user:
        shutil.chown(root, "postgres")
    port, data = _free_port(), root / "data"
    started = subprocess.run(as_user + [bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "-N"],
                             capture_output=True, text=True)
    if started.returncode == 0:
        started = subprocess.run(as_user + [bindir / "pg_ctl", "-D", data, "-l", root / "log", "-w", "-t", "60",
                                            "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
                                            "start"], capture_output=True, text=True)
    try:
        if started.returncode:
            pytest.skip(f"cannot start PostgreSQL: {(started.stderr or started.stdout).strip()[-300:]}")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


# slow for SQLite: every other sweep test keeps its study there
@pytest.mark.parametrize("storage", [pytest.param("sqlite", marks=pytest.mark.slow), "postgresql"])
def test_two_workers_take_disjoint_trials_and_a_killed_ones_trial_runs_again(storage, request, dataset_dir,
                                                                              tmp_path):
    """`--workers 2`; the first worker is killed (SIGKILL) in its first trial, after its checkpoint: the other
    takes that trial for dead once its heartbeats stop, runs it again (its run resumed) and ends the study with N."""
    url = request.getfixturevalue("postgres") if storage == "postgresql" else None
    space = write_space(tmp_path, LR)
    command = ["sweep", "w", "--data", dataset_dir, "--trials", 3, "--trial-budget", "3s", "--space", space,
               "--workers", 2, "--grace-period", 2, *(["--storage", url] if url else [])]
    first = subprocess.Popen([sys.executable, "-m", "chargpt", *map(str, command)], cwd=tmp_path, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True)
    ckpt, deadline = tmp_path / "runs/w-t000/ckpt.pt", time.monotonic() + 120
    try:
        while not ckpt.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        output = first.communicate(timeout=300)[0]  # the pipe stays open until the other worker is done too
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(first.pid, signal.SIGKILL)  # the other worker, should it still run
    study = optuna.load_study(study_name="w", storage=url or f"sqlite:///{tmp_path / 'sweeps/w/study.db'}")
    killed, *rest = study.trials
    assert killed.state.name == "FAIL" and killed.user_attrs["worker"].endswith(f":{first.pid}"), output
    assert [t.state.name for t in rest] == ["COMPLETE"] * 3, output
    retry = next(t for t in rest if t.system_attrs.get("failed_trial") == 0)
    assert retry.params == killed.params and retry.user_attrs["run"] == "runs/w-t000"  # resumed, not restarted
    assert len({t.user_attrs["run"] for t in rest}) == 3 and len({t.user_attrs["worker"] for t in study.trials}) == 2
    assert all(t.value == summary_of(tmp_path, t)["val_loss_full"] for t in rest)
    assert (tmp_path / "sweeps/w/study.db").exists() == (url is None)


# ------------------------------------------------------------------------------------------------ bad input
BAD = {
    "unknown field": (["--search", "n_layers=[2, 3]"], "unknown config field 'n_layers' (did you mean n_layer?)"),
    "bound out of range": (["--search", "dropout={low = 0.0, high = 1.5}"], "dropout high must be in [0, 1)"),
    "empty range": (["--search", "lr={low = 0.01, high = 0.001}"], "lr low (0.01) must be below high (0.001)"),
    "range of a choice": (["--search", "pos={low = 1, high = 2}"], "pos is a string, not a number with a range"),
    "log from zero": (["--search", "dropout={low = 0.0, high = 0.1, log = true}"], "must start above 0"),
    "set by the sweep": (["--search", "seed=[1, 2]"], "seed is set by --seed"),
    "bad TOML": (["--space", "broken.toml"], "is not valid TOML"),
    "bad budget": (["--trial-budget", "0s"], "--trial-budget must be a duration"),
    "unreachable storage": (["--storage", "postgresql://nobody:secret@127.0.0.1:1/none"],
                            "cannot open the study's storage postgresql://nobody:***@127.0.0.1:1/none"),
    "storage in a dataset": (["--storage", "sqlite:///{data}/study.db"], "is inside the dataset directory"),
    "journal in a dataset": (["--storage", "{data}/journal.log"], "is inside the dataset directory"),
}


@pytest.mark.parametrize("args, message", BAD.values(), ids=BAD.keys())
def test_a_bad_space_or_storage_is_one_line_and_writes_nothing(args, message, dataset_dir, tmp_path):
    (tmp_path / "broken.toml").write_text("lr = {low = \n")
    given = ["--trial-budget", "40steps", "--search", "n_layer=1", *(a.replace("{data}", str(dataset_dir)) for a in args)]
    dataset = sorted(x.name for x in dataset_dir.iterdir())
    p = run_main("sweep", "bad", "--data", dataset_dir, "--trials", 2, *given, cwd=tmp_path)
    assert p.returncode == 2 and message in one_error_line(p)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["broken.toml"]
    assert sorted(x.name for x in dataset_dir.iterdir()) == dataset  # a study is never kept in a dataset


def test_showing_a_sweep_that_never_ran_says_how_to_start_it(tmp_path):
    p = run_main("sweep", "nothing", "--show", cwd=tmp_path)
    assert p.returncode == 2 and "start it with: chargpt sweep nothing --data" in one_error_line(p)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- where a sweep may write: refused first
def snapshot(where: Path) -> dict:
    """Everything under `where`, without following a link or opening a FIFO: each path's kind and contents."""
    seen = {}
    for path in sorted(where.rglob("*")):
        st = os.lstat(path)
        seen[str(path.relative_to(where))] = (os.readlink(path) if path.is_symlink() else
                                              path.read_bytes() if path.is_file() else st.st_mode)
    return seen


def _user_sqlite(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE contacts (name TEXT, phone TEXT)")
        db.execute("INSERT INTO contacts VALUES ('Ada', '555')")
        db.commit()


def _journal_with_a_lock_of_the_users(where: Path) -> None:
    from optuna.storages.journal import JournalFileBackend

    optuna.create_study(study_name="other", storage=optuna.storages.JournalStorage(
        JournalFileBackend(str(where / "j.log"))))
    (where / "j.log.lock").write_text("my lock notes\n")


def _notes(where: Path, name: str = "notes.log") -> Path:
    (where / name).write_text("my notes\n")
    return where / name


def _link(link: Path, target: Path) -> None:
    link.symlink_to(target)


def _folder_linked_to_mine(where: Path) -> None:
    (where / "sweeps/d").rmdir()
    _notes(where / "mydir", "best.toml")
    (where / "sweeps/d").symlink_to("../mydir")


def _folder_a_file(where: Path) -> None:
    (where / "sweeps/d").rmdir()
    _notes(where / "sweeps", "d")


# each: what the test puts in place (in a folder with an empty sweeps/d and mydir), the sweep's --storage (None:
# the default, sweeps/d/study.db) and the one line's words
PLACES = {
    "journal over a user's file": (_notes, "notes.log", "--storage notes.log is a file that is not an Optuna journal"),
    "journal through a symlink": (lambda w: _link(w / "link.log", _notes(w)), "link.log",
                                  "--storage link.log is a symbolic link"),
    "journal on a directory": (lambda w: None, "mydir", "--storage mydir is a directory"),
    "journal on a device": (lambda w: None, "/dev/null", "--storage /dev/null is a device"),
    "journal whose lock is a user's file": (_journal_with_a_lock_of_the_users, "j.log",
                                            "has j.log.lock beside it, a regular file that Optuna would take"),
    "SQLite of the user's tables": (lambda w: _user_sqlite(w / "my.db"), "sqlite:///my.db",
                                    "is a SQLite database of other tables (contacts)"),
    "SQLite over a user's file": (lambda w: _notes(w, "my.db"), "sqlite:///my.db",
                                  "my.db is a file that is not a SQLite database"),
    "default study.db a user's file": (lambda w: _notes(w / "sweeps/d", "study.db"), None,
                                       "sweeps/d/study.db is a file that is not a SQLite database"),
    "best.toml of the user's": (lambda w: _notes(w / "sweeps/d", "best.toml"), None,
                                "sweeps/d/best.toml is a file chargpt did not write"),
    "best.toml a symlink": (lambda w: _link(w / "sweeps/d/best.toml", _notes(w, "mine.toml")), None,
                            "sweeps/d/best.toml is a symbolic link"),
    "sweep folder a symlink": (_folder_linked_to_mine, None,
                               "sweeps/d is a symbolic link, not a sweep's own directory"),
    "sweep folder a file": (_folder_a_file, None, "sweeps/d is a regular file, not a sweep's own directory"),
}


@pytest.mark.parametrize("make, storage, message", PLACES.values(), ids=PLACES.keys())
def test_a_storage_or_sweep_folder_that_is_not_chargpts_is_refused_before_any_trial(make, storage, message,
                                                                                    dataset_dir, tmp_path):
    """A study's file must be new, empty or a study's already; sweeps/NAME a directory, not a link; best.toml
    new or one a sweep wrote. Otherwise one line, exit 2, nothing written (no study, no run) and nothing changed."""
    (tmp_path / "sweeps/d").mkdir(parents=True)
    (tmp_path / "mydir").mkdir()
    write_space(tmp_path, LR)
    make(tmp_path)
    before = snapshot(tmp_path)
    p = run_main("sweep", "d", "--data", dataset_dir, "--trials", 1, "--trial-budget", "5steps", "--space",
                 "space.toml", *(["--storage", storage] if storage else []), cwd=tmp_path)
    assert p.returncode == 2 and message in one_error_line(p)
    assert snapshot(tmp_path) == before


def test_a_fifo_as_the_studys_journal_is_one_line_not_a_hang(dataset_dir, tmp_path):
    """A real process, so that a hang fails the test at its timeout instead of stopping the suite."""
    os.mkfifo(tmp_path / "ff")
    p = run_cli("sweep", "f", "--data", dataset_dir, "--trials", 1, "--trial-budget", "5steps", "--search",
                "n_layer=1", "--storage", tmp_path / "ff", cwd=tmp_path, timeout=60)
    assert p.returncode == 2 and f"--storage {tmp_path / 'ff'} is a FIFO (named pipe)" in one_error_line(p)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["ff"]


def test_a_study_is_kept_in_a_new_or_empty_file_or_one_holding_a_study(tmp_path):
    from optuna.storages.journal import JournalFileBackend

    from chargpt.sweeps.study import study_file_problem

    (tmp_path / "empty").touch()
    optuna.create_study(storage=optuna.storages.JournalStorage(JournalFileBackend(str(tmp_path / "j.log"))))
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    _user_sqlite(tmp_path / "both.db")
    optuna.create_study(storage=f"sqlite:///{tmp_path / 'both.db'}")  # the user's tables beside Optuna's: a study's
    for file, journal in (("new.log", True), ("empty", True), ("j.log", True), ("new.db", False), ("empty", False),
                          ("optuna.db", False), ("both.db", False)):
        assert study_file_problem(str(tmp_path / file), journal) is None, file
    assert not (tmp_path / "new.log").exists() and not (tmp_path / "new.db").exists()


def test_the_sweeps_plots_number_trials_as_whole_numbers_and_draw_no_trial_in_white():
    """Optuna's history labelled the trials of a short sweep 0.2, 0.4, ...; its parallel coordinates drew the
    worst trial white on their grey background. Drawn as `--show` draws them, restyled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from matplotlib.collections import LineCollection
    from optuna.visualization import matplotlib as plots

    from chargpt.sweeps.report import _restyled

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: 2.0 + t.suggest_float("lr", 1e-4, 1e-2, log=True) * 10 + t.suggest_int("n_layer", 1, 3),
                   n_trials=2)
    history = plots.plot_optimization_history(study)
    _restyled(history.figure)
    history.figure.canvas.draw()
    labels = [t.get_text().replace("\u2212", "-") for t in history.get_xticklabels()]
    assert labels and all(float(label).is_integer() and "." not in label for label in labels), labels
    assert history.get_ylabel() == "val loss (nats/char, full pass)"
    parallel = plots.plot_parallel_coordinate(study)
    _restyled(parallel.figure)
    (lines,) = [c for c in parallel.collections if isinstance(c, LineCollection)]
    assert lines.get_cmap().name == "viridis" and all(min(rgba[:3]) < 0.9 for rgba in lines.get_colors())
    plt.close("all")
