"""Exceptions chargpt raises for problems a user can fix, and the exit codes of the `chargpt` command; the CLI
turns each exception into one line on stderr and its exit code."""
import signal

# One scheme for every subcommand (README: "Exit codes").
EXIT_FAILURE = 1  # it failed while running: a full disk, a training run that diverged
EXIT_USAGE = 2  # bad input: a flag, a value, or a file, dataset, run or checkpoint that cannot be used
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C (SIGINT)
EXIT_TERMINATED = 143  # stopped by SIGTERM
EXIT_HUNG_UP = 129  # stopped by SIGHUP (its terminal or ssh session closed)
# 128+N for the other stop signals (runtime/signals.TERMINATING): SIGQUIT 131, SIGUSR1 138, SIGALRM 142, ...


def exit_code_of(signum: int) -> int:
    """The exit code of a command stopped by signal `signum` (128 + its number, as a shell shows a signal's end)."""
    return 128 + int(signum)


def signal_name(signum: int) -> str:
    """How a stop line names signal `signum`: SIGINT, SIGTERM, SIGUSR1, ..."""
    return signal.Signals(signum).name


def one_line(message) -> str:
    """`message` as one printable line: a control character a user typed (a newline in a path) is written escaped."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(message))


class ChargptError(Exception):
    """Base class: the message says what is wrong, where, and how to fix it, in one line (`one_line`) in every door."""

    exit_code = EXIT_USAGE

    def __str__(self) -> str:
        return one_line(super().__str__())


class DataError(ChargptError):
    """A corpus or dataset directory that cannot be used."""


class VocabularyError(ChargptError, ValueError):
    """Text with a character outside the vocabulary."""


class ConfigError(ChargptError, ValueError):
    """An invalid configuration value or combination; `field` names the value when it is one field's."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class CheckpointError(ChargptError):
    """A checkpoint or run directory that cannot be loaded or resumed."""


class OutputError(ChargptError):
    """An output path chargpt must not write: not a regular file, or a directory that is not chargpt's own."""


class UsageError(ChargptError):
    """A command line argparse rejects (an unknown flag, a missing value)."""


class NonFiniteLoss(ChargptError):
    """Training diverged: a loss, an update or the weights became inf or NaN."""

    exit_code = EXIT_FAILURE


class TrainingInterrupted(ChargptError):
    """Stopped by signal `signum` (SIGINT, SIGTERM, ...) after saving a checkpoint."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = exit_code_of(signum)
