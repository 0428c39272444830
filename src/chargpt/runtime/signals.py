"""How a chargpt command stops on SIGINT (Ctrl-C) and the other catchable stop signals (`TERMINATING`: SIGTERM,
SIGHUP, SIGQUIT, SIGUSR1/2 as a scheduler's warning before a time limit, SIGALRM, SIGXCPU): one home for every
command and the server.

While a command runs, SIGINT raises KeyboardInterrupt and a terminating signal raises `Terminated`, so every
temporary file is removed on the way out and the CLI ends with one line and the signal's exit code, 128+N
(`errors.exit_code_of`). Work that can stop at a good point (a training step, an evaluation pass, the server's
streams) holds the signals with `StopSignals`. Once the command is done, a signal ends the process by its default
action (a shell shows the same 128+N): the interpreter's exit is never interrupted into a traceback. A signal set
to be ignored (`nohup`) stays ignored.
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

# SIGHUP: a closed terminal; SIGUSR1: Slurm's warning before a time limit; SIGXCPU: a CPU-time limit (ulimit -t)
TERMINATING = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM",
                                                 "SIGXCPU") if hasattr(signal, n))
STOP_SIGNALS = (signal.SIGINT, *TERMINATING)


class Terminated(KeyboardInterrupt):
    """A terminating signal (`signum`: SIGTERM, SIGHUP, ...), raised like Ctrl-C's KeyboardInterrupt so that every
    temporary file is removed on the way out."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__()
        self.signum = signum


def interruption(signum: int) -> KeyboardInterrupt:
    """The exception that stops a command at once on `signum`."""
    return Terminated(signum) if signum in TERMINATING else KeyboardInterrupt()


def _raise(signum, frame):
    raise interruption(signum)


@contextmanager
def command_signals(program: bool) -> Iterator[None]:
    """The `TERMINATING` signals raise `Terminated` while a command runs (SIGINT raises KeyboardInterrupt by Python's
    default). `program`: this process is the command, not a caller of `cli.main` that lives on: once the command is
    done, the signals take their default action."""
    previous = {}
    try:
        for s in TERMINATING:
            if signal.getsignal(s) in (signal.SIG_DFL, None):  # not one ignored (nohup) or handled by the caller
                previous[s] = signal.signal(s, _raise)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        if program:
            for s in STOP_SIGNALS:
                if signal.getsignal(s) in (_raise, signal.default_int_handler):
                    signal.signal(s, signal.SIG_DFL)
        else:
            for s, h in previous.items():
                signal.signal(s, h)


@dataclass
class StopSignals:
    """While held, the first of the `STOP_SIGNALS` is recorded (`received`) for the work to stop at its next good
    point; a further one calls `at_once` (default: raise `interruption`, stopping now; atomic writes keep files
    whole).

    A signal is never lost: one the work did not act on (the block ends without an exception and without `take()`)
    is raised again as the block ends, for the handler outside it."""

    at_once: Callable[[int], None] | None = None
    received: int | None = None
    _old: dict = field(default_factory=dict)
    _taken: bool = False

    def _handle(self, signum, frame):
        if self.received is None:
            self.received = signum
        elif self.at_once is not None:
            self.at_once(signum)
        else:
            raise interruption(signum)

    def take(self) -> int | None:
        """The signal received (None if none), acted on by the caller: it is not raised again."""
        self._taken = True
        return self.received

    def __enter__(self):
        for s in STOP_SIGNALS:
            try:
                if signal.getsignal(s) != signal.SIG_IGN:  # an ignored signal stays ignored (nohup's SIGHUP)
                    self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def __exit__(self, exc_type, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}
        if self.received is not None and exc_type is None and not self._taken:
            signal.raise_signal(self.received)
