"""Exceptions chargpt raises for problems a user can fix; the CLI turns each into one line on stderr."""


class ChargptError(Exception):
    """Base class: the message says what is wrong, where, and how to fix it."""


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


class TrainingInterrupted(ChargptError):
    """Stopped by SIGINT/SIGTERM after saving a checkpoint; `exit_code` is 130 or 143."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
