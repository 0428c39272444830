"""The progress display: what a budget run and a step run show, on a terminal and in a log."""
import io
import os
import re
import select
import time

import pytest

from chargpt.runtime.progress import Progress, Working, format_duration

from conftest import run_main


class Terminal(io.StringIO):
    def isatty(self):
        return True


def screen(stream) -> list[str]:
    """What a terminal shows: each carriage return starts the line over."""
    return [line.split("\r")[-1] for line in stream.getvalue().split("\n")]


def test_a_budget_bar_shows_time_of_total_step_loss_tokens_per_second_and_eta():
    out = Terminal()
    bar = Progress(total_steps=5000, budget=150, stream=out)
    bar.update(1234, 1.8765, 12345.6, 45.0)
    shown = screen(out)[-1]
    assert shown.startswith(" 30%")
    for part in ("45.0s/2m30s", "step 1,234", "loss 1.8765", "12,346 tok/s", "eta 1m45s"):
        assert part in shown, (part, shown)
    assert "s/s" not in shown and "5000" not in shown and "5,000" not in shown  # steps are not the measure here
    bar.close(1300, 150.2)
    assert screen(out)[-2].startswith("100%") and screen(out)[-1] == ""


def test_extending_a_budget_on_resume_ends_the_bar_at_100_percent():
    out = Terminal()
    bar = Progress(total_steps=10**9, budget=40, step=500, seconds=20.0, stream=out)
    assert screen(out)[-1].startswith(" 50%")
    bar.update(960, 2.0, 1000.0, 38.9)  # the last update of the loop comes before the budget is reached
    assert screen(out)[-1].startswith(" 97%")
    bar.close(985, 40.0)
    assert screen(out)[-2].startswith("100%") and "40.0s/40.0s" in screen(out)[-2]


def test_a_budget_bar_shows_the_training_done_and_ends_at_100_percent_before_the_final_pass():
    """A budget's last part is its final pass: training ends at ~70-90% of the budget's seconds. The percentage is
    the training done as the run's clock counts it, so a finished run's last line says 100% (it stopped at 71%)."""
    out = io.StringIO()
    bar = Progress(total_steps=10**9, budget=100, stream=out, done=0.0)
    for i in range(1, 10):
        bar.update(100 * i, 2.0, 1000.0, 7.1 * i, done=i / 10 + 0.001)  # the seconds reach 64 of 100
    bar.close(1000, 71.0, done=1.0)  # the clock's last step: training done, 71 s of the budget gone
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("100% | 1m11s/1m40s | step 1,000") and "eta 29.0s" in lines[-1]
    assert [line[:4] for line in lines[:-1]] == [f"{p:3d}%" for p in range(10, 100, 10)]


def test_a_budget_run_without_a_terminal_ends_its_progress_lines_at_100_percent(dataset_dir, tmp_path):
    p = run_main("train", "--preset", "bigram", "--data", dataset_dir, "--time-budget", "4", "--eval-iters", "2",
                 "--name", "timed", cwd=tmp_path, check=True)
    progress = [line for line in p.stdout.splitlines() if re.match(r"^ *\d+% \|", line)]
    assert progress and progress[-1].startswith("100% |"), p.stdout


def test_a_step_bar_shows_steps_of_total_and_eta_from_this_sessions_pace():
    out = Terminal()
    bar = Progress(total_steps=100, step=20, seconds=10.0, stream=out)
    bar.update(60, 2.5, 500.0, 30.0)  # 40 steps in 20 s: 40 steps left take 20 s
    shown = screen(out)[-1]
    assert shown.startswith(" 60%") and "step 60/100" in shown and "eta 20.0s" in shown
    assert "| step 60/100 |" in shown and ", step" not in shown  # the bar, then the text: no stray ", "


def test_a_note_or_error_after_close_starts_on_its_own_line_and_no_bar_is_redrawn():
    out = Terminal()
    bar = Progress(total_steps=100, stream=out)
    bar.update(10, 3.0, 100.0, 1.0)
    bar.close(11, 1.1)
    text = out.getvalue()
    assert text.endswith("\n")
    bar.note("step 11: train 3.0, val 3.0")  # after close: a plain line, nothing redrawn
    assert out.getvalue()[len(text):] == "step 11: train 3.0, val 3.0\n"


def test_without_a_terminal_a_line_every_tenth_of_the_run():
    out = io.StringIO()
    bar = Progress(total_steps=100, stream=out)
    for step in range(1, 101):
        bar.update(step, 2.0, 100.0, step * 0.1)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("100% | step 100/100")
    bar.close(100, 10.0)
    assert len(out.getvalue().splitlines()) == 10


def test_durations_read_as_seconds_minutes_hours():
    assert [format_duration(s) for s in (None, 5, 59.9, 125, 3700)] == ["-", "5.0s", "59.9s", "2m05s", "1h01m"]


def test_a_command_started_with_its_stdout_or_stderr_closed_runs_as_with_head(dataset_dir, tiny_run, tmp_path):
    """`chargpt ... >&-`: Python's sys.stdout is None. Training used to end at its first line with an AttributeError,
    its new run removed; a sample failed the same way. The output is discarded instead, as a closed pipe's."""
    import json
    import subprocess
    import sys

    def closed(redirects: str, *args) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-c", f'exec "$@" {redirects}', "bash", sys.executable, "-m", "chargpt", *args],
                              cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)

    p = closed(">&-", "train", "--preset", "bigram", "--data", str(dataset_dir), "--max-steps", "30",
               "--eval-interval", "10", "--eval-iters", "2", "--name", "shut")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert json.loads((tmp_path / "runs/shut/summary.json").read_text())["steps"] == 30
    for redirects in (">&-", "2>&- >&-"):
        p = closed(redirects, "sample", "--ckpt", str(tiny_run), "--max-new-tokens", "5")
        assert p.returncode == 0 and p.stderr == "", (redirects, p.stderr)


def test_work_that_takes_a_while_says_what_it_is_how_long_it_expects_and_when_it_is_done():
    said, out = [], io.StringIO()
    with Working("compile: compiling", "typically 1 min", said.append, stream=out, done="compile"):
        time.sleep(0.05)
    assert said[0] == "compile: compiling (typically 1 min)..."
    assert re.fullmatch(r"compile: done in 0\.\ds", said[1]) and len(said) == 2
    assert out.getvalue() == ""  # no counter where no person watches (a log file, a pipe)
    said.clear()
    with pytest.raises(KeyError), Working("x", "y", said.append, stream=out):
        raise KeyError
    assert said == ["x (y)..."]  # failed: no done line


def test_on_a_terminal_the_seconds_count_while_it_works_and_the_counter_is_cleared():
    import pty

    leader, follower = pty.openpty()
    with os.fdopen(follower, "w") as terminal:
        with Working("compile: compiling", "a while", lambda _: None, stream=terminal, tick=0.05):
            time.sleep(0.3)
        terminal.flush()
        shown = ""
        while not shown.endswith("\r\x1b[K") and select.select([leader], [], [], 2)[0]:  # a loaded machine
            shown += os.read(leader, 4096).decode()  # hands the terminal's output over in pieces
    os.close(leader)
    assert "so far" in shown and shown.endswith("\r\x1b[K")


def test_a_long_passs_plain_lines_end_at_100_percent_in_single_spaced_words():
    """Without a terminal, a pass's lines came every 10% and the last shown could be 99% (`val:  99% (110,592 of
    111,539 characters)`, two spaces before it): it looked unfinished. Its end is a line of its own."""
    import io

    from chargpt.runtime.progress import EvalProgress

    out = io.StringIO()
    progress = EvalProgress("final evaluation of val", delay=0.0, stream=out)
    total = 111_539
    for done in [*range(0, total, 9_216), total]:
        progress(done, total)
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("final evaluation of val: 100% (111,539 of 111,539 characters) | ")
    assert all("  " not in line for line in lines) and len(lines) <= 11
