"""`chargpt runs`: the table of runs under runs/ and the overlay plot, checked against the runs' real files."""
import dataclasses
import itertools
import json
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
from chargpt.cli import main
from chargpt.data.dataset import load_dataset
from chargpt.runs.rundir import read_metrics
from chargpt.config import ModelConfig
from chargpt.model.gpt import build_model
from chargpt.runs.listing import _count_params, format_runs, list_runs, read_run
from chargpt.runtime.resources import num_params
from chargpt.schema import choices, field_kind
from conftest import run_main, tiny_config as tiny, train_config

BIGRAM = ["--preset", "bigram", "--max-steps", "1000000", "--eval-interval", "50", "--eval-iters", "2",
          "--sample-tokens", "0"]


@pytest.fixture(scope="module")
def workdir(dataset_dir, tmp_path_factory) -> Path:
    """Two finished runs (trained here) and one that `chargpt train` wrote until SIGTERM stopped it."""
    cwd = tmp_path_factory.mktemp("runs-cwd")
    data = load_dataset(dataset_dir)
    gpt = tiny("cpu", 10, n_layer=1, n_embd=32, n_head=2, block_size=16)
    gpt.train.optimizer = "adamw"
    estimated = tiny("bigram", 20)
    estimated.train.eval_tokens = 5_000  # of 111,540: the final loss is estimated from an evenly spread subset
    for name, preset, cfg in (("bigram", "bigram", tiny("bigram", 20)), ("tiny-gpt", "cpu", gpt),
                              ("estimated", "bigram", estimated)):
        train_config(cfg, data, cwd / "runs", name, preset=preset)
    proc = subprocess.Popen([sys.executable, "-m", "chargpt", "train", "--data", str(dataset_dir), "--name", "stopped",
                             *BIGRAM], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    for line in proc.stdout:
        if line.startswith("step 0:"):
            time.sleep(2.0)  # train a while: the listing must show that time, not the 0.0 s of the step-0 evaluation
            proc.send_signal(signal.SIGTERM)
            break
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    return cwd


def test_runs_lists_every_run_with_the_values_of_its_files(workdir):
    p = run_main("runs", cwd=workdir)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["name", "model", "data", "params", "steps", "best", "val", "at", "step", "val", "full",
                                "wall", "date", "status"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert set(rows) == {"bigram", "tiny-gpt", "estimated", "stopped"}  # `latest` is a link, not a run

    for name in ("bigram", "tiny-gpt"):
        summary = json.loads((workdir / "runs" / name / "summary.json").read_text())
        metrics = [r for r in map(json.loads, (workdir / "runs" / name / "metrics.jsonl").read_text().splitlines())
                   if "val_loss" in r]
        cells = rows[name].split()
        assert f"{summary['val_loss_full']:.4f}" in cells
        assert f"{min(r['val_loss'] for r in metrics):.4f}" in cells
        assert str(summary["steps"]) in cells and cells[-1] == "finished"
    data = ["shakespeare", load_dataset(json.loads((workdir / "runs/bigram/config.json").read_text())["data_dir"])
            .content_hash[:8]]
    assert rows["bigram"].split()[1:5] == ["bigram", *data, "4.2k"]  # 65 x 65 parameters
    assert rows["tiny-gpt"].split()[1:3] == ["gpt", "(cpu)"]
    assert "±" not in rows["bigram"]  # every val character scored: exact

    stopped = rows["stopped"].split()
    assert stopped[2:4] == data  # the dataset of a run still training (or stopped) is in its config.json
    assert stopped[-1] == "unfinished" and stopped[8] == "-"  # no full-pass loss without a summary
    ckpt_step = checkpoint.load(workdir / "runs/stopped")["step"]
    assert ckpt_step > 0 and stopped[5] == str(ckpt_step)  # where its checkpoint is, not its last evaluation (0)
    assert stopped[9] != "0.0s"


def test_an_estimated_full_pass_loss_shows_its_standard_error(workdir):
    summary = json.loads((workdir / "runs/estimated/summary.json").read_text())
    assert summary["val_loss_full_exact"] is False and summary["val_loss_full_stderr"] > 0
    row = next(line for line in format_runs(list_runs(workdir / "runs")).splitlines() if line.startswith("estimated"))
    assert f"{summary['val_loss_full']:.4f} ±{summary['val_loss_full_stderr']:.4f}" in row and row.endswith("finished")


def test_a_run_whose_final_evaluation_was_cut_short_is_not_finished(workdir, tmp_path):
    shutil.copytree(workdir / "runs/bigram", tmp_path / "runs/cut")
    summary = json.loads((tmp_path / "runs/cut/summary.json").read_text())
    # what training writes when Ctrl-C stops its final evaluation
    summary |= {"val_loss_full": None, "eval_cut_short": "by SIGINT after 50,000 of 111,539 characters"}
    (tmp_path / "runs/cut/summary.json").write_text(json.dumps(summary))
    info = read_run(tmp_path / "runs/cut")
    assert not info.finished and info.eval_cut_short
    assert format_runs([info]).splitlines()[1].endswith("eval cut short")


def test_runs_on_different_datasets_are_overlaid_only_with_all(workdir, tmp_path, capsys, monkeypatch):
    from chargpt.data.dataset import prepare

    (tmp_path / "other.txt").write_text("To be, or not to be, that is the question.\n" * 200)
    other = load_dataset(prepare(tmp_path / "other.txt", tmp_path / "other", name="other").out_dir)
    cfg = tiny("bigram", 20)
    cfg.model.vocab_size = other.tokenizer.vocab_size
    train_config(cfg, other, workdir / "runs", "on-other", preset="bigram")
    monkeypatch.chdir(workdir)
    try:
        assert main(["runs", "--plot", "bigram", "on-other", "--out", "mixed.png"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "different datasets (bigram on shakespeare " in err
        assert f"on-other on other {other.content_hash[:8]}" in err and "--all" in err
        assert not (workdir / "mixed.png").exists()
        assert main(["runs", "--plot", "bigram", "on-other", "--out", "mixed.png", "--all"]) == 0
        assert (workdir / "mixed.png").is_file()
    finally:
        shutil.rmtree(workdir / "runs/on-other")


def test_runs_show_where_best_pt_is(workdir):
    for name in ("bigram", "tiny-gpt"):
        best = checkpoint.load(workdir / "runs" / name / "best.pt")
        evals = [r for r in read_metrics(workdir / "runs" / name) if "val_loss" in r]
        assert best["step"] == min(evals, key=lambda r: r["val_loss"])["step"]
        assert read_run(workdir / "runs" / name).best_step == best["step"]


def test_an_unfinished_run_is_read_from_its_config_and_metrics(workdir):
    info = read_run(workdir / "runs" / "stopped")
    assert not info.finished and info.val_full is None
    assert info.params == 65 * 65  # counted from the config
    assert info.steps == checkpoint.load(workdir / "runs/stopped")["step"] and info.best_val is not None
    runs = list_runs(workdir / "runs")
    assert [r.name for r in runs][-1] == "stopped"  # oldest first
    assert "unfinished" in format_runs(runs)


# Every choice of the model's architecture (its Literal and bool fields, as ModelConfig declares them)
ARCHITECTURE = {f.name: choices(ModelConfig, f.name) or (False, True) for f in dataclasses.fields(ModelConfig)
                if choices(ModelConfig, f.name) or field_kind(ModelConfig, f.name) is bool}


def test_an_unfinished_runs_parameters_are_counted_exactly_for_every_kind_of_model():
    """`runs` counts an unfinished run's parameters from its config, without torch: what the model built has, for
    each of the 384 architectures."""
    assert {"model", "pos", "norm", "mlp", "bias", "qk_norm", "zero_init", "tie_weights"} <= set(ARCHITECTURE)
    wrong = []
    for choice in itertools.product(*ARCHITECTURE.values()):
        mc = ModelConfig(**dict(zip(ARCHITECTURE, choice)), vocab_size=67, block_size=24, n_layer=3, n_embd=16,
                         n_head=4)
        with torch.device("meta"):
            built = build_model(mc).num_params()
        if not num_params(mc) == _count_params(dataclasses.asdict(mc)) == built:
            wrong.append((choice, num_params(mc), built))
    assert not wrong


def test_runs_plot_overlays_the_named_runs(workdir, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    (workdir / "cmp").mkdir(exist_ok=True)  # an output's directory must exist
    assert main(["runs", "--plot", "bigram", "runs/tiny-gpt", "--out", "cmp/both.png"]) == 0
    assert capsys.readouterr().out == "wrote cmp/both.png: val loss of bigram, runs/tiny-gpt\n"
    assert (workdir / "cmp/both.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_plot_without_names_overlays_every_listed_run_of_one_dataset(workdir, capsys, monkeypatch):
    """It used to stop at argparse's "expected at least one argument"."""
    monkeypatch.chdir(workdir)
    (workdir / "cmp").mkdir(exist_ok=True)
    listed = [r.name for r in list_runs(workdir / "runs") if r.best_val is not None]
    assert main(["runs", "--plot", "--out", "cmp/all.png"]) == 0
    assert capsys.readouterr().out == f"wrote cmp/all.png: val loss of {', '.join(listed)}\n"
    assert (workdir / "cmp/all.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["runs", "--plot", "--runs-dir", "cmp", "--out", "none.png"]) == 2  # no run there
    assert "has an evaluation to plot yet" in capsys.readouterr().err


def test_each_run_directory_holds_its_loss_png(workdir):
    for name in ("bigram", "tiny-gpt", "stopped"):
        assert (workdir / "runs" / name / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_runs_and_missing_directories_are_one_error_line(workdir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    assert main(["runs", "--plot", "nope", "--out", "x.png"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no run 'nope'") and err.count("\n") == 1
    monkeypatch.chdir(tmp_path)
    assert main(["runs", "--runs-dir", "elsewhere"]) == 2
    assert capsys.readouterr().err == "error: no runs directory elsewhere; train a model first or pass --runs-dir\n"
    (tmp_path / "empty").mkdir()
    assert main(["runs", "--runs-dir", "empty"]) == 0
    assert capsys.readouterr().out == "no runs under empty\n"


# ------------------------------------------------------------------------------------- files whose contents lie
def _copy(tiny_run: Path, to: Path) -> Path:
    shutil.copytree(tiny_run, to, ignore=shutil.ignore_patterns("*.png"))
    return to


def test_a_huge_metrics_log_is_read_only_at_its_end_and_the_table_says_so(tiny_run, tmp_path):
    """An 8 GB (sparse) metrics.jsonl: the old code read 1 GiB of it for each row, without a word."""
    import resource

    run = _copy(tiny_run, tmp_path / "runs" / "huge")
    records = (run / "metrics.jsonl").read_text()
    with open(run / "metrics.jsonl", "r+b") as f:
        f.truncate(8 << 30)  # a hole: no disk, no time
    with open(run / "metrics.jsonl", "a") as f:
        f.write("\n" + records)  # the records at its end are read
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    p = run_main("runs", "--runs-dir", tmp_path / "runs")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert grown_mb < 100, grown_mb  # the old code read 1 GiB
    from chargpt.runs.records import SHOWN_BYTES

    row = next(line for line in p.stdout.splitlines() if line.startswith("huge "))
    best = min(json.loads(line)["val_loss"] for line in records.splitlines() if "val_loss" in line)
    assert f"{best:.4f}" in row, row
    assert row.endswith(f"finished; metrics.jsonl: only its last {SHOWN_BYTES >> 20}.0 MB were read (not the 8.0 GB "
                        f"before)"), row


def test_nan_or_infinity_in_a_runs_files_shows_as_missing_never_as_a_best_value(tiny_run, tmp_path):
    run = _copy(tiny_run, tmp_path / "runs" / "nan")
    summary = json.loads((run / "summary.json").read_text())
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 1, "train_loss": NaN, "val_loss": -Infinity}\n{"step": 2}\n')
    (run / "summary.json").write_text(json.dumps({**summary, "train_seconds": float("inf")}))
    r = read_run(run)
    assert r.best_val == min(x["val_loss"] for x in read_metrics(tiny_run) if "val_loss" in x)
    assert r.seconds is None and "metrics.jsonl line" in r.problem and "1 line(s)" in r.note
    (run / "metrics.jsonl").write_text((tiny_run / "metrics.jsonl").read_text())
    assert "train_seconds of the wrong type or out of range (inf)" in read_run(run).problem
    assert "inf" not in format_runs([r]) and "nan" not in format_runs([r]).replace(r.name, "")


BIG = st.sampled_from([10 ** 30, 10 ** 400, 2 ** 63, -1, -10 ** 30, 1e300, float("nan"), float("inf"), -float("inf"),
                       True, "x\ny", "z" * 5000, [1], {"a": 1}, None, 0])


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(name=st.sampled_from(["summary.json", "config.json", "metrics.jsonl"]),
       where=st.sampled_from([(), ("model",), ("dataset",)]), key=st.integers(0, 60), value=BIG)
@example(name="summary.json", where=(), key=0, value=10 ** 30)  # its params
@example(name="summary.json", where=(), key=0, value="z" * 5000)
@example(name="metrics.jsonl", where=(), key=1, value=10 ** 400)
def test_any_number_or_name_in_a_runs_files_shows_in_one_bounded_row(tiny_run, tmp_path, capsys, name, where, key,
                                                                      value):
    """A field of summary.json, config.json or a metrics record edited to a huge, negative or non-finite number, a
    long or multi-line name: `chargpt runs` still lists every run, each on one row of bounded width (the old code
    printed a 30-digit step count, or ended in an OverflowError traceback for a huge parameter count)."""
    import tempfile

    runs = Path(tempfile.mkdtemp(dir=tmp_path))
    for run in ("good", "edited"):
        shutil.copytree(tiny_run, runs / run, ignore=shutil.ignore_patterns("*.pt", "*.png"))
    path = runs / "edited" / name
    if name == "metrics.jsonl":
        records = [json.loads(line) for line in path.read_text().splitlines()]
        record = records[key % len(records)]
        record[sorted(record)[key % len(record)]] = value
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    else:
        data = json.loads(path.read_text())
        node = data
        for part in where:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node:
            node[sorted(node)[key % len(node)]] = value
        path.write_text(json.dumps(data))
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    rows = out.splitlines()
    assert {row.split()[0] for row in rows[1:]} == {"good", "edited"}
    assert max(map(len, rows)) < 400, max(rows, key=len)[:200]
