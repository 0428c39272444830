"""Training progress: a tqdm bar on a terminal, plain periodic lines otherwise (logs, CI, pipes).

Both say the same things: how far the run is (steps of `max_steps`, or seconds of the time budget), the step,
the latest loss, tokens per second and the time left. The output they go to may close under a run (`| head`, a
terminal that hangs up): `output_may_close` keeps that from ending it.
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Iterator

from tqdm import TqdmWarning, tqdm


def format_duration(seconds: float | None) -> str:
    """17.9s, 2m05s, 1h03m; `-` when unknown."""
    if seconds is None or seconds != seconds:
        return "-"
    if seconds < 59.95:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """Progress of one run: `total_steps` steps, or `budget` seconds of training when `budget` is set.

    `step` and `seconds` passed in are the run's own (training seconds, evaluations excluded), counted from its
    first step, so a resumed run continues its bar where it stopped. `done`, where given, is the fraction of the
    training done as the run's clock counts it (`BudgetClock.fraction_done`: a budget's last part is its final
    pass, not training), which the percentage shows; without it, the steps or the seconds of the budget."""

    def __init__(self, total_steps: int, budget: float = 0.0, step: int = 0, seconds: float = 0.0,
                 enabled: bool = True, stream=None, notebook: bool = False, done: float | None = None):
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.tty = enabled and (notebook or self.stream.isatty())
        self.total_steps, self.budget = total_steps, budget
        self.start_step, self.start_seconds = step, seconds
        self.last_tenth = int(min(self._fraction(step, seconds, done), 1.0) * 10)  # plain lines: one per tenth of the run
        self.last: tuple | None = None
        self.bar = None
        if self.tty:
            tqdm.monitor_interval = 0  # no thread redrawing the bar after it was closed or written under
            with warnings.catch_warnings():  # without ipywidgets tqdm.auto is a text bar: no warning about it
                warnings.simplefilter("ignore", TqdmWarning)  # (it warns when imported, so it is imported here)
                if notebook:
                    from tqdm.auto import tqdm as bar  # a widget in Jupyter where ipywidgets is installed
                else:
                    bar = tqdm
                self.bar = bar(total=1.0, initial=min(self._fraction(step, seconds, done), 1.0), file=self.stream,
                               dynamic_ncols=True, leave=True, bar_format="{percentage:3.0f}%|{bar}| {desc}")  # desc: no ", " before it
            self.bar.set_description_str(self._text(step, None, None, seconds), refresh=True)

    def _fraction(self, step: int, seconds: float, done: float | None = None) -> float:
        if done is not None:
            return done
        return seconds / self.budget if self.budget else step / max(self.total_steps, 1)

    def _eta(self, step: int, seconds: float) -> float | None:
        if self.budget:
            return max(0.0, self.budget - seconds)
        done = step - self.start_step
        if done <= 0:
            return None
        return max(0, self.total_steps - step) * (seconds - self.start_seconds) / done

    def _text(self, step: int, loss: float | None, tokens_per_sec: float | None, seconds: float) -> str:
        where = (f"{format_duration(seconds)}/{format_duration(self.budget)} | step {step:,}" if self.budget
                 else f"step {step:,}/{self.total_steps:,} | {format_duration(seconds)}")
        parts = [where]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if tokens_per_sec is not None:
            parts.append(f"{tokens_per_sec:,.0f} tok/s")
        parts.append(f"eta {format_duration(self._eta(step, seconds))}")
        return " | ".join(parts)

    def update(self, step: int, loss: float, tokens_per_sec: float, seconds: float, done: float | None = None) -> None:
        if not self.enabled:
            return
        self.last = (step, loss, tokens_per_sec, seconds)
        fraction = self._fraction(step, seconds, done)
        if self.bar is not None:
            self.bar.n = min(fraction, 1.0)
            self.bar.set_description_str(self._text(step, loss, tokens_per_sec, seconds), refresh=False)
            self.bar.refresh()
        elif int(min(fraction, 1.0) * 10) > self.last_tenth:
            self.last_tenth = int(min(fraction, 1.0) * 10)
            print(f"{min(fraction, 1.0):4.0%} | " + self._text(step, loss, tokens_per_sec, seconds),
                  file=self.stream, flush=True)

    def note(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self, step: int | None = None, seconds: float | None = None, done: float | None = None) -> None:
        """End the bar on a line of its own, before anything else is printed. Given the step and seconds where
        training stopped, show them last (a finished run shows 100%, whatever step its last update was at)."""
        if self.enabled and step is not None and seconds is not None:
            loss, tokens_per_sec = (self.last[1], self.last[2]) if self.last else (None, None)
            fraction = self._fraction(step, seconds, done)
            if self.bar is not None:
                self.bar.n = min(fraction, 1.0)
                self.bar.set_description_str(self._text(step, loss, tokens_per_sec, seconds), refresh=False)
            elif fraction >= 1.0 and self.last_tenth < 10 and step > self.start_step:
                print("100% | " + self._text(step, loss, tokens_per_sec, seconds), file=self.stream, flush=True)
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Working:
    """Work that takes a while before training can go on (a compile): a line saying what it is and how long it is
    expected to take when it starts, the seconds counting on a terminal while it runs, and a line when it is done.
    `say` prints a line (the run's own output: nothing when the run is quiet)."""

    def __init__(self, what: str, expected: str, say, stream=None, tick: float = 1.0, counter: bool = True,
                 done: str | None = None):
        self.what, self.expected, self.say, self.tick, self.counter = what, expected, say, tick, counter
        self.done = done or what  # the done line's subject
        self.stream = stream or sys.stdout
        self.t0 = time.perf_counter()
        self._stop = None

    def __enter__(self) -> "Working":
        import threading

        self.say(f"{self.what} ({self.expected})...")
        self.t0 = time.perf_counter()
        if self.counter and _is_terminal(self.stream):  # a counter a person sees move; never in a log file
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._count, daemon=True)
            self._thread.start()
        return self

    def _count(self) -> None:
        while not self._stop.wait(self.tick):
            try:
                self.stream.write(f"\r  {format_duration(time.perf_counter() - self.t0)} so far")
                self.stream.flush()
            except (OSError, ValueError):
                return

    def __exit__(self, kind, *_) -> None:
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=self.tick + 1)
            try:
                self.stream.write("\r\033[K")
            except (OSError, ValueError):
                pass
        if kind is None:
            self.say(f"{self.done}: done in {format_duration(time.perf_counter() - self.t0)}")


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class EvalProgress:
    """Progress of a long evaluation pass: a transient tqdm bar on a terminal (shown after `delay` seconds),
    elsewhere a line at every further 10% once `delay` seconds have passed. A short pass shows nothing."""

    def __init__(self, what: str, enabled: bool = True, delay: float = 3.0, stream=None):
        self.stream = stream or sys.stdout
        self.what, self.enabled, self.delay = what, enabled, delay
        self.t0 = time.perf_counter()
        self.bar = None
        self.last_plain = 0.0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        elapsed = time.perf_counter() - self.t0
        if self.stream.isatty():
            if self.bar is None:
                self.bar = tqdm(total=total, desc=self.what, unit="char", unit_scale=True, file=self.stream,
                                delay=self.delay, leave=False, dynamic_ncols=True)
            self.bar.n = done
            self.bar.refresh()
        elif elapsed >= self.delay and (done / total - self.last_plain >= 0.1
                                        or done == total and 0 < self.last_plain < 1):  # and its end, once begun
            self.last_plain = done / total
            eta = elapsed * (total - done) / done if done else float("nan")
            print(f"{self.what}: {done / total:.0%} ({done:,} of {total:,} characters) | {elapsed:.1f}s | "
                  f"eta {eta:.1f}s", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ------------------------------------------------------------------------------------ output that may close
class OutlivedStream:
    """stdout or stderr (`name`) of a training run, which may outlive its reader: once a write fails (a pipe whose
    reader is gone, `chargpt train ... 2>&1 | head`; a terminal closed under it), the output from then on is
    discarded, with one note on the `other` stream while that one works, and training goes on."""

    def __init__(self, stream, name: str):
        self.stream, self.name = stream, name
        self.other: OutlivedStream | None = None
        self.lost = False

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                return self.stream.write(text)
            except (OSError, ValueError):  # EPIPE, EIO of a hung-up terminal, a stream closed by someone
                self._lose()
        return len(text)

    def flush(self) -> None:
        if not self.lost:
            try:
                self.stream.flush()
            except (OSError, ValueError):
                self._lose()

    def _lose(self) -> None:
        self.lost = True
        silence(self.stream)
        if self.other is not None and not self.other.lost:
            print(f"note: {self.name} was closed (a pipe to head?); training goes on with its output discarded, and "
                  f"the run directory records everything", file=self.other, flush=True)

    def __getattr__(self, name):
        return getattr(self.stream, name)


def open_missing_outputs() -> None:
    """A stdout or stderr closed before the start (`>&-`: Python's sys.stdout is None) becomes one that discards,
    as a closed pipe's does: nothing written to it fails, and no file opened later takes its descriptor (where a
    helper process would write)."""
    for fd, name in ((1, "stdout"), (2, "stderr")):
        if getattr(sys, name) is not None:
            continue
        try:
            os.fstat(fd)
        except OSError:  # free: /dev/null holds it
            devnull = os.open(os.devnull, os.O_WRONLY)
            if devnull != fd:
                os.dup2(devnull, fd)
                os.close(devnull)
        setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))


@contextmanager
def output_may_close() -> Iterator[None]:
    """While the block runs (a training run), sys.stdout and sys.stderr are `OutlivedStream`s: a closed output
    never ends it."""
    open_missing_outputs()
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = OutlivedStream(out, "stdout"), OutlivedStream(err, "stderr")
    sys.stdout.other, sys.stderr.other = sys.stderr, sys.stdout
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err


def silence(stream) -> None:
    """Point the descriptor under `stream` at /dev/null: what it still buffers, and Python's flush at exit, then go
    nowhere instead of failing again (which would end the process with a traceback or exit code 120)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, stream.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError):  # a stream without a descriptor (a test's StringIO) never breaks anyway
        pass
