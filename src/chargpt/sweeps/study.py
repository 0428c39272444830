"""A sweep's Optuna study: where it is kept (a SQLite file in sweeps/NAME by default, or any Optuna storage that
many machines share), the settings all its workers must share, and the sampler and pruner each worker brings.
A worker that stops giving heartbeats (killed mid-trial) has its trial failed and queued again."""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from ..errors import ConfigError, OutputError
from ..fsutil import chargpt_directory, kind_of, open_regular

SWEEPS_DIR = "sweeps"  # sweeps/NAME holds a sweep's study (by default), best.toml and plots
STUDY_DB = "study.db"
PrunerName = Literal["percentile", "median", "halving", "none"]
DEFAULT_PRUNER: PrunerName = "percentile"
HEARTBEATS = 5  # heartbeats a worker sends in each grace period
MAX_RETRIES = 3  # times one trial is queued again after its worker died
PRUNE_FROM = 20  # percent of its budget a trial trains before a pruner may stop it
# ... and after which none does: under the wsd schedule the estimates past a run's stable half rank trials by what
# their decay gains, which the stable half does not foresee (a replay of a 16-trial sweep: benchmarks/RESULTS.md,
# "Session 14"); a trial pruned later would have saved less than half its budget anyway.
PRUNE_UNTIL = 50
KEEP_PERCENTILE = 33.3  # the percentile pruner keeps a trial while its estimate is in the best third there
MEDIAN_STARTUP = 4  # trials finished before the median pruner stops any
PERCENTILE_STARTUP = 3  # ... and before the percentile pruner does
HALVING_FACTOR = 3  # successive halving keeps the best third at each rung
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database
OPTUNA_TABLES = {"studies", "alembic_version"}  # tables every Optuna SQLite storage has from its first opening
JOURNAL_LOCK = ".lock"  # Optuna's journal lock: a symlink beside the journal, which Optuna deletes when stale
JOURNAL_LINE_LIMIT = 1 << 20  # a journal's first record (a study's creation) is far shorter


def sweep_dir(name: str) -> Path:
    return Path(SWEEPS_DIR) / name


def storage_url(name: str, storage: str | None, flag: str = "--storage") -> str:
    """The study's storage: `storage` as given (by `flag`), else the SQLite file sweeps/NAME/study.db; refused
    (before anything is written) when it is a file inside a run or a dataset directory, whose files only chargpt
    writes, or a file that is not a study's (see `study_file_problem`)."""
    url = storage or f"sqlite:///{sweep_dir(name) / STUDY_DB}"
    file = storage_file(url)
    if not file:
        return url
    named = f"{flag} {shown(url)}" if storage else file
    owner = chargpt_directory(Path(os.path.realpath(file)))
    if owner:
        raise OutputError(f"{named} is inside {owner}, whose files only chargpt writes; keep the study outside it")
    problem = study_file_problem(file, journal="://" not in url)
    if problem:
        fix = f"give {flag} a new file, or one holding a study" if storage else \
            "move it away, or choose another sweep name"
        raise OutputError(f"{named} {problem}; chargpt keeps a study only in a file of its own: {fix}")
    return url


def study_file_problem(file: str, journal: bool) -> str | None:
    """Why a study may not be kept in `file`, an Optuna journal (`journal`) or SQLite database (None: it may).
    Optuna appends to a journal and adds its tables to a database whatever else is there, so only a new or empty
    file, or one holding Optuna's records already, is taken: never a symlink, FIFO (opening it would wait forever),
    device or directory, nor a file of the user's. Read only, before Optuna opens it."""
    kind = kind_of(file)
    if kind is None:
        return None
    if kind != "a regular file":
        return f"is {kind}, not a regular file"
    if journal and kind_of(file + JOURNAL_LOCK) not in (None, "a symbolic link"):
        return f"has {file + JOURNAL_LOCK} beside it, {kind_of(file + JOURNAL_LOCK)} that Optuna would take for its " \
               f"lock and delete"
    try:
        with open_regular(file) as f:
            head = f.readline(JOURNAL_LINE_LIMIT) if journal else f.read(len(SQLITE_HEADER))
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if not head:
        return None
    if journal:
        return None if _journal_record(head) else \
            "is a file that is not an Optuna journal (its first line is not an Optuna record)"
    if head != SQLITE_HEADER:
        return "is a file that is not a SQLite database"
    tables = _sqlite_tables(file)
    if tables is None:
        return "is a SQLite database that cannot be read"
    if tables and not OPTUNA_TABLES <= tables:
        listed = ", ".join(sorted(tables)[:3]) + (", ..." if len(tables) > 3 else "")
        return f"is a SQLite database of other tables ({listed}), to which Optuna would add its own"
    return None


def _journal_record(line: bytes) -> bool:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(record, dict) and "op_code" in record


def _sqlite_tables(file: str) -> set[str] | None:
    """The tables of the SQLite database `file`, opened read-only (nothing is created or changed); None if it cannot
    be read."""
    from urllib.parse import quote

    try:
        db = sqlite3.connect(f"file:{quote(os.path.abspath(file))}?mode=ro", uri=True, timeout=60)
    except sqlite3.Error:
        return None
    try:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    return {r[0] for r in rows if not r[0].startswith("sqlite_")}


def storage_file(url: str) -> str | None:
    """The file a storage URL keeps its study in: a journal file's path or a SQLite database's (None: a server's,
    or SQLite in memory)."""
    if "://" not in url:
        return url
    if not url.split("://")[0].startswith("sqlite") or ":///" not in url:
        return None
    file = url.split(":///", 1)[1].split("?")[0]
    return None if file in ("", ":memory:") else file


def shown(url: str) -> str:
    """`url` as messages show it: without its password."""
    if "://" not in url:
        return url
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL sqlalchemy reads: shown as given, less anything between ':' and '@'
        return url.split("@")[-1] if "@" in url else url


@contextmanager
def quiet_optuna():
    """Optuna's own log lines and its warnings that an API is experimental stay out of chargpt's output."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def open_storage(url: str, grace_period: float):
    """The Optuna storage at `url`: a database URL (with heartbeats, so that a dead worker's trial is retried) or a
    path (Optuna's journal file). A URL that cannot be opened is a `ConfigError` naming it, its password hidden."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    try:
        if "://" not in url:
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(url))
        scheme = url.split("://")[0].split("+")[0]
        timeout = {"sqlite": {"timeout": 60}, "postgresql": {"connect_timeout": 10}, "mysql": {"connect_timeout": 10}}
        return RDBStorage(url, engine_kwargs={"connect_args": timeout.get(scheme, {}), "pool_pre_ping": True},
                          heartbeat_interval=max(1, int(grace_period) // HEARTBEATS), grace_period=int(grace_period),
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES))
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        fix = ("install the database's driver (PostgreSQL: pip install 'psycopg[binary]'; MySQL: pip install pymysql "
               "and a mysql+pymysql:// URL)" if isinstance(e, ImportError) else
               "check the URL (sqlite:///FILE, postgresql://USER@HOST/DB, mysql://USER@HOST/DB or a journal file's "
               "path) and that its server runs and can be reached")
        raise ConfigError(f"cannot open the study's storage {shown(url)} ({type(e).__name__}: {first}); "
                          f"{fix}") from None


def has_heartbeat(storage) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


def make_pruner(name: PrunerName):
    """The pruner `name`. Trials report at percents of their budget, so that trials of different speeds compare."""
    import optuna

    if name == "percentile":
        return optuna.pruners.PercentilePruner(KEEP_PERCENTILE, n_startup_trials=PERCENTILE_STARTUP,
                                               n_warmup_steps=PRUNE_FROM)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP, n_warmup_steps=PRUNE_FROM)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=PRUNE_FROM, reduction_factor=HALVING_FACTOR)
    return optuna.pruners.NopPruner()


def make_sampler(seed: int, number: int):
    """The sampler of trial `number`, seeded by the sweep's seed and that number: one worker samples the same
    trials for the same seed, and workers that share a study sample different ones."""
    import optuna

    return optuna.samplers.TPESampler(seed=(seed * 1_000_003 + number) % 2 ** 32)


def open_study(name: str, storage, url: str, pruner: PrunerName, create: bool):
    """The study `name` in `storage` (opened from `url`), created when `create` and it is not there yet; else a
    `ConfigError` saying how to start it."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage, pruner=make_pruner(pruner))
    except KeyError:
        if not create:
            raise ConfigError(f"no sweep {name} in {shown(url)}; start it with: chargpt sweep {name} --data DIR "
                              f"--trials N --trial-budget B") from None
    try:
        return optuna.create_study(study_name=name, storage=storage, direction="minimize",
                                   pruner=make_pruner(pruner), load_if_exists=True)
    except Exception as e:
        raise ConfigError(f"cannot create sweep {name} in {shown(url)} ({type(e).__name__}: {e})") from None


def check_settings(study, settings: dict, name: str, url: str) -> dict:
    """Record `settings` (what makes trials comparable: the space, the trial budget, the seed, the dataset) in a new
    study; in one started before, refuse settings that differ. Return the study's settings."""
    stored = study.user_attrs.get("chargpt")
    if stored is None:
        study.set_user_attr("chargpt", settings)
        return settings
    for key, value in settings.items():
        if value is not None and stored.get(key) != value:
            raise ConfigError(f"sweep {name} in {shown(url)} was started with {key} {stored.get(key)}, not {value}; "
                              f"pass the same to join it (or nothing, for its space), or choose another name")
    return stored
