"""Loss-curve PNGs: one run's curves, refreshed by the training loop, and several runs overlaid."""
import json
import math
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chargpt.training.writer  # noqa: F401  (the module, reached through sys.modules)
from chargpt.config import get_preset
from chargpt.data.dataset import load_dataset
from chargpt.runs.plotting import plot_run, plot_runs, refresh_run_plot
from chargpt.runs.rundir import RunDir
from conftest import run_main, train_config


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def write_metrics(run: Path, steps=(0, 10, 20), val=(4.2, 3.1, 2.6)) -> None:
    run.mkdir(parents=True, exist_ok=True)
    with open(run / "metrics.jsonl", "w") as f:
        for i, (step, v) in enumerate(zip(steps, val)):
            f.write(json.dumps({"step": step, "train_loss": v + 0.05, "val_loss": v, "lr": 1e-3,
                                "tokens_seen": step * 256, "train_seconds": 0.5 * i, "tokens_per_sec": 500.0}) + "\n")


def test_plot_run_draws_two_panels_into_loss_png_and_leaves_no_temporary_file(tmp_path):
    run = tmp_path / "r"
    write_metrics(run)
    out = plot_run(run)
    assert out == run / "loss.png"
    assert png_size(out) == (1000, 400)  # two side-by-side panels: against steps and against seconds
    assert sorted(p.name for p in run.iterdir()) == ["loss.png", "metrics.jsonl"]


def test_plot_run_skips_a_torn_last_line_and_draws_nothing_before_the_first_evaluation(tmp_path):
    run = tmp_path / "r"
    write_metrics(run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 30, "val_lo')  # a crash mid-write
    assert plot_run(run) == run / "loss.png"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert plot_run(empty) is None and not (empty / "loss.png").exists()


def test_a_plotting_failure_is_one_warning_line_and_not_an_exception(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("chargpt.runs.plotting._warned", False)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    refresh_run_plot(not_a_dir)
    refresh_run_plot(not_a_dir)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: cannot draw the loss curve in {not_a_dir}")


def test_training_refreshes_the_plot_at_the_first_and_last_evaluation_and_between_while_it_is_cheap(
        dataset_dir, tmp_path, monkeypatch):
    calls = []

    def spy(path):
        calls.append(len([r for r in RunDir(Path(path)).metrics() if "val_loss" in r]))
        refresh_run_plot(path)

    monkeypatch.setattr(sys.modules["chargpt.training.writer"], "refresh_run_plot", spy)
    cfg = get_preset("bigram")
    cfg.train.max_steps, cfg.train.eval_interval, cfg.train.eval_iters, cfg.train.sample_tokens = 20, 5, 2, 0
    run, _ = train_config(cfg, load_dataset(dataset_dir), tmp_path, "b", preset="bigram")
    # after the records of steps 0 and 20 are written, and of steps between while redrawing has cost at most
    # PLOT_SHARE of the run (a 20-step bigram run is mostly drawing: a budget's seconds are not spent on it)
    assert calls[0] == 1 and calls[-1] == 5 and calls == sorted(set(calls))
    assert png_size(run.path / "loss.png") == (1000, 400)


def test_plot_runs_overlays_several_runs_into_one_png(tmp_path):
    write_metrics(tmp_path / "a")
    write_metrics(tmp_path / "b", steps=(0, 50), val=(4.1, 2.2))
    (tmp_path / "out").mkdir()  # an output's directory must exist: chargpt never creates one it was not asked for
    out = plot_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "out" / "cmp.png")
    assert png_size(out) == (1000, 400)


@pytest.mark.parametrize("lines", ["", "not json\n", '{"step": 0, "val_loss": NaN}\n'], ids=["empty", "garbage", "nan"])
def test_runs_without_an_estimate_are_one_line_or_a_note_never_an_empty_plot(tmp_path, lines):
    """`chargpt runs --plot r1` of a run whose metrics log holds no val estimate printed matplotlib's two-line
    legend warning and said it wrote the plot; now one line and exit 2, nothing written. Beside a run that has
    estimates it is drawn without it, and the figure says which runs had none."""
    from conftest import one_error_line

    (tmp_path / "runs" / "empty").mkdir(parents=True)
    (tmp_path / "runs" / "empty" / "metrics.jsonl").write_text(lines)
    write_metrics(tmp_path / "runs" / "good")
    p = run_main("runs", "--plot", "empty", "--out", "p.png", cwd=tmp_path)
    assert "nothing to draw: empty has no val estimate" in one_error_line(p) and not (tmp_path / "p.png").exists()
    p = run_main("runs", "--plot", "good", "empty", "--out", "p.png", cwd=tmp_path)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert png_size(tmp_path / "p.png") == (1000, 400)


def test_replotting_a_long_run_stays_cheap(tmp_path):
    n = 2000
    run = tmp_path / "long"
    write_metrics(run, steps=range(0, n * 10, 10), val=[4 - i / n for i in range(n)])
    plot_run(run)  # the first call pays matplotlib's import
    t0 = time.perf_counter()
    plot_run(run)
    assert time.perf_counter() - t0 < 2.0


def test_refreshing_draws_in_a_helper_process_and_matplotlib_never_enters_the_training_process(tmp_path):
    run = tmp_path / "r"
    write_metrics(run)
    code = ("import os, sys; from chargpt.runs.plotting import refresh_run_plot; os.fork = None; "
            "refresh_run_plot(sys.argv[1]); print('matplotlib' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False" and p.stderr == ""
    assert png_size(run / "loss.png") == (1000, 400)


def test_loss_png_draws_every_logged_training_loss_under_the_evaluations_on_a_log_axis(tmp_path):
    from chargpt.runs.plotting import run_figure

    run = tmp_path / "r"
    write_metrics(run, steps=(0, 20), val=(4.2, 3.0))
    with open(run / "metrics.jsonl", "a") as f:
        for step, loss in ((5, 4.0), (10, 3.6), (15, 3.3)):
            f.write(json.dumps({"step": step, "loss": loss, "lr": 1e-3, "train_seconds": step / 20}) + "\n")
    fig = run_figure(run)
    by_step, by_time = fig.axes
    assert by_step.get_yscale() == by_time.get_yscale() == "log"
    lines = {line.get_label(): line for line in by_step.get_lines()}
    assert list(lines["training loss (one batch)"].get_ydata()) == [4.0, 3.6, 3.3]
    assert list(lines["val loss (estimate)"].get_xdata()) == [0, 20]
    assert lines["training loss (one batch)"].get_zorder() < lines["val loss (estimate)"].get_zorder()


def test_a_plot_is_refused_in_one_line_before_drawing_over_a_file_of_its_run_or_a_missing_directory(tiny_run, tmp_path):
    """`Run.plot`, `Run.attention`, `chargpt.compare` and `plot_runs` claim their path before they draw: a file of
    the run (its metrics log, its checkpoint), a directory that does not exist, or the run itself are refused."""
    import shutil

    import chargpt
    from chargpt.errors import OutputError

    run_dir = tmp_path / "R"
    shutil.copytree(tiny_run, run_dir)
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    run = chargpt.load(run_dir)
    missing = tmp_path / "nonexistent" / "dir" / "x.png"
    for call in (lambda: run.plot(run_dir / "metrics.jsonl"), lambda: run.plot(missing),
                 lambda: run.attention("ROMEO:", run_dir / "ckpt.pt"), lambda: chargpt.compare([run], run_dir / "best.pt"),
                 lambda: plot_runs([run_dir], run_dir / "metrics.jsonl"), lambda: plot_runs([run_dir], missing)):
        with pytest.raises(OutputError) as e:
            call()
        assert "\n" not in str(e.value) and str(e.value).startswith(("path ", "--out "))
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before
    assert not (tmp_path / "nonexistent").exists()
    assert run.plot(tmp_path / "loss.png") is not None and png_size(tmp_path / "loss.png") == (1000, 400)


@pytest.mark.parametrize("name", ["日本語ラン", "a$b", "$\\frac{", "_hidden", "emoji🙂run"])
def test_a_run_name_in_any_script_or_with_math_signs_is_drawn_as_written_without_warnings(tmp_path, name):
    """A title or legend is the run's name verbatim: `$` starts no mathtext (which would fail to parse), a leading
    `_` keeps its legend entry, and a glyph the font lacks is a box, not matplotlib's two-line warning."""
    run = tmp_path / name
    run.mkdir()
    write_metrics(run)
    script = ("import sys; from chargpt.runs.plotting import plot_run, plot_runs\n"
              "plot_run(sys.argv[1]); plot_runs([sys.argv[1]], sys.argv[2])\n")
    p = subprocess.run([sys.executable, "-c", script, str(run), str(tmp_path / "cmp.png")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert png_size(run / "loss.png") == (1000, 400) and png_size(tmp_path / "cmp.png") == (1000, 400)


@settings(max_examples=300, deadline=None)
@given(lo=st.floats(1e-3, 50.0), ratio=st.floats(1.001, 1e4))
def test_a_loss_axis_is_labelled_at_four_to_eight_round_losses_across_its_range(lo, ratio):
    """A log axis labels its decades' 1, 2, ..., 9 only: over 1.2 to 4.5, where losses end, just 2, 3 and 4, and
    over 2.4 to 2.9 none at all. Any range: 4 to 8 labels inside it, none bunched at one end (the widest gap at
    most half the range), each as round as the range allows (4 significant digits at most where it spans 10%)."""
    from chargpt.runs.plotting import MIN_TICKS, TICKS, loss_ticks

    hi = lo * ratio
    ticks = loss_ticks(lo, hi)
    assert MIN_TICKS <= len(ticks) <= TICKS and ticks == sorted(set(ticks)) and lo <= ticks[0] and ticks[-1] <= hi
    if ratio >= 1.1:
        gaps = [math.log(b / a) for a, b in zip([lo, *ticks], [*ticks, hi])]
        assert max(gaps) <= 0.5 * math.log(ratio) + 1e-9
        assert all(float(f"{t:.4g}") == pytest.approx(t, rel=1e-9) for t in ticks)
