"""The local record of a run: `runs/<name>/` with config, metrics log, checkpoint, sample and summary, and
`locate_run`, the one place where a run's name, its directory, `latest` or a checkpoint file becomes a path.

One process writes a run at a time: the writer holds an OS lock on the run's `.lock` (flock), which the kernel
drops when the process ends however it ends, so a `kill -9` never leaves a stale lock. Readers never take it."""
from __future__ import annotations

import errno
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError, OutputError
from ..config import DEFAULT_RUN, LATEST, RunOptions
from .ckptmeta import is_checkpoint
from .records import SHOWN_BYTES, MetricsLog, read_metrics_log
from ..schema import check_value
from ..fsutil import (LATEST_VIEWS, METRICS_LIMIT, append_line, chargpt_directory, kind_of, open_lock, read_bytes,
                      read_json, read_json_object, read_problem, real_run, remove_stale_temporaries, stale_temporaries,
                      write_json, write_text)

CONFIG, METRICS, SUMMARY, SAMPLE, CKPT, BEST, EMA, PLOT = ("config.json", "metrics.jsonl", "summary.json",
                                                          "sample.txt", "ckpt.pt", "best.pt", "ema.pt", "loss.png")
LOCK = ".lock"
VIEWED = (CONFIG, METRICS, SUMMARY, SAMPLE, CKPT, BEST, EMA, PLOT)  # what `latest` shows of a run (see `mark_latest`)
_held: dict[str, int] = {}  # run directory (real path) -> the descriptor holding its lock in this process


@dataclass
class RunDir:
    path: Path
    link: Path | None = None  # the symlink the run was opened by, when it lives elsewhere: `latest` goes beside it

    @classmethod
    def create(cls, out_dir: str | os.PathLike, name: str, unique: bool = False) -> "RunDir":
        """Make `out_dir/name`, a directory no one else has: creation is exclusive, so two runs started at
        once never share one. With `unique` (a default name), a name already taken gets a suffix -2, -3, ..."""
        check_run_name(name)
        out_dir = Path(out_dir)
        owner = chargpt_directory(Path(os.path.realpath(out_dir)))
        if owner:  # a runs folder holds runs; it is never one, nor inside a run or a dataset
            raise OutputError(f"--runs-dir {out_dir} is inside {owner}, whose files only chargpt writes; choose a "
                              f"--runs-dir outside it")
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CheckpointError(f"cannot create --runs-dir {out_dir} ({e.strerror}); choose a writable --runs-dir") from None
        for n in range(1, 1000 if unique else 2):
            path = out_dir / (name if n == 1 else f"{name}-{n}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            except OSError as e:
                raise CheckpointError(f"cannot create run directory {path} ({e.strerror}); choose a writable --runs-dir") from None
            if not os.access(path, os.W_OK):
                path.rmdir()
                raise CheckpointError(f"run directory {path} is not writable; choose a writable --runs-dir")
            run = cls(path)
            run.lock()
            return run
        path = out_dir / name
        raise CheckpointError(f"run directory {path} already exists; pass --resume {path} to continue it "
                              f"or --name to start another")

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RunDir":
        """The run at `path` (its directory, or a file in it: the run's ckpt.pt is continued, and without one
        `path` names no run, whatever file it is), checked before anything is written into it. A link such as
        `runs/latest` is followed, so the run keeps its own name: marking it latest again must not point `latest` at
        itself. A run opened through a symlink to it is marked `latest` beside that link, in the
        runs folder the user named, never beside the run's real directory."""
        given, path = Path(path), locate_run(path).run
        if read_problem(path / CKPT, within=path) == "missing":  # a file named that is no run's (user.txt)
            where = str(path) if given.is_dir() else f"its directory {path}"
            raise CheckpointError(f"cannot resume {str(given)!r}: {where} holds no {CKPT} to continue; pass a run "
                                  f"directory `chargpt train` wrote (--init-from starts a new run from a checkpoint "
                                  f"file's weights)")
        problem = run_problem(path)
        if problem:
            raise CheckpointError(f"cannot resume {path}: {problem}; start a new run, or repair or remove that file")
        from ..runtime.distributed import is_main_process  # at call time: a resume has torch loaded already

        run = cls(path, _run_link(given, path))
        if is_main_process():  # the other processes of a distributed run write nothing here
            run.lock()
        return run

    def lock(self) -> None:
        """Become the run's one writer until `unlock` or the end of this process; refuse (naming the holder's
        pid) while another process writes it. Taken before the checkpoint is read, so a second writer never
        resumes from a state the first is about to replace."""
        key = os.path.realpath(self.path)
        if key in _held:
            return
        try:
            import fcntl
        except ImportError:  # no flock on this system: one writer per run is then the user's to keep
            return
        while True:
            try:
                fd = open_lock(self.path / LOCK)
            except OSError as e:
                if e.errno == errno.EROFS or not _writable(self.path):  # then there is nothing to remove
                    raise CheckpointError(f"cannot write in {self.path} ({e.strerror}), so it cannot be resumed "
                                          f"there; make it writable, or copy the run elsewhere and resume the "
                                          f"copy") from None
                raise CheckpointError(f"cannot lock {self.path / LOCK} ({e.strerror}); it must be a file chargpt "
                                      f"can write: remove whatever is there") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(os.fstat(fd).st_ino)
                os.close(fd)
                raise CheckpointError(f"{self.path} is being written by another process"
                                      f"{f' (pid {holder})' if holder else ''}; wait for it to end or stop it, "
                                      f"then retry") from None
            except OSError:  # a filesystem without locks (some network mounts): train unguarded, not at all
                os.close(fd)
                return
            try:
                current = os.lstat(self.path / LOCK).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if current:
                break
            os.close(fd)  # the writer before removed that file as it ended: lock the one there now
        _held[key] = fd

    def discard(self) -> None:
        """Remove this new run's directory when it holds only what starting a run writes (its config, its lock):
        a run that failed before training leaves no name taken and nothing that looks resumable."""
        names = {p.name for p in self.path.iterdir()}
        if names <= {CONFIG, LOCK}:
            for name in names:
                (self.path / name).unlink()
            self.path.rmdir()

    def unlock(self) -> None:
        """Stop being the run's writer (a notebook process lives on after its training ends). The lock file goes
        too, while still locked, so a run holds it only while it is written."""
        fd = _held.pop(os.path.realpath(self.path), None)
        if fd is not None:
            try:
                os.unlink(self.path / LOCK)
            except OSError:
                pass
            os.close(fd)

    @property
    def ckpt(self) -> Path:
        return self.path / CKPT

    @property
    def best(self) -> Path:
        """The checkpoint of the lowest validation estimate so far (the latest one is `ckpt`)."""
        return self.path / BEST

    @property
    def ema(self) -> Path:
        """The average of the weights over the last part of training (--ema), written at the end of the run."""
        return self.path / EMA

    def subdir(self, name: str) -> Path:
        """The directory `name` of the run, made if absent: where a tracker writes its own files. Only a directory
        of the run itself, never a symlink (whose files would land outside the run) nor anything else."""
        path = self.path / name
        try:
            path.mkdir()
        except FileExistsError:
            pass
        except OSError as e:
            raise OutputError(f"cannot create {path} ({e.strerror}); the run directory must be writable") from None
        kind = kind_of(path)
        if kind != "a directory":
            raise OutputError(f"{path} is {kind}; chargpt writes only into a directory of the run there: remove or "
                              f"rename it")
        return path

    def write_config(self, config: dict) -> None:
        write_json(self.path / CONFIG, config)

    def log_metrics(self, record: dict) -> None:
        append_line(self.path / METRICS, json.dumps(record))

    def metrics(self) -> list[dict]:
        return read_metrics(self.path)

    def recover(self, step: int) -> None:
        """Before resuming at `step`, undo what a crash can leave: evaluations logged after the checkpoint was
        saved, a torn last line, and half-written temporary files of atomic writes."""
        remove_stale_temporaries(self.path)
        path = self.path / METRICS
        if not path.is_file():
            return
        kept = "".join(json.dumps(r) + "\n" for r in read_metrics(self.path, METRICS_LIMIT) if r.get("step", 0) <= step)
        if kept != read_bytes(path, METRICS_LIMIT, within=self.path).decode("utf-8", errors="replace"):
            write_text(path, kept)

    def summary(self) -> dict:
        """summary.json, or {} when there is none (still training, stopped, crashed) or it is not an object."""
        return read_json_object(self.path / SUMMARY, within=self.path)

    def write_summary(self, summary: dict) -> None:
        write_json(self.path / SUMMARY, summary)

    def write_sample(self, text: str) -> None:
        write_text(self.path / SAMPLE, text)

    def mark_latest(self) -> str | None:
        """Point `<runs>/latest` at this run, unless `latest` (or `.latest`) is something other than chargpt's own
        (a plain name of a run next to it): then it is left alone, and the reason returned.

        `latest` is a symlink, replaced atomically, to `<runs>/.latest/<name>/`: a link to each file of the run
        (`VIEWED`, present or still to come) but not to its `tensorboard/` events, so that `tensorboard --logdir
        runs`, which walks into links, lists every run once. The views of other runs are removed, but for a run
        being written (it may be marking itself now)."""
        target = self.link if self.link is not None else real_path(self.path)
        if target.name == LATEST:
            return None  # never a link to itself
        runs, link = target.parent, target.parent / LATEST
        kind = kind_of(link)
        if kind is not None and not (kind == "a symbolic link" and _latest_name(link) is not None):
            return f"{link} is {kind} that chargpt did not make; left as it is"
        views = runs / LATEST_VIEWS
        kind = kind_of(views)
        if kind not in (None, "a directory") or (kind and not all(_is_view(v) for v in views.iterdir())):
            return f"{views} is {kind} that chargpt did not make; {link} left as it is"
        try:
            view = views / target.name
            view.mkdir(parents=True, exist_ok=True)
            for name in VIEWED:
                _replace_link(view / name, f"../../{target.name}/{name}")
            _replace_link(link, f"{LATEST_VIEWS}/{target.name}")
        except OSError:
            return None  # a filesystem without symlinks only loses the convenience name
        for other in views.iterdir():
            if other.name != target.name and not being_written(runs / other.name):
                _remove_view(other)
        return None


def _replace_link(link: Path, target: str) -> None:
    """Make `link` a symlink to `target` in one step (a reader sees the old link or the new one)."""
    tmp = link.parent / f".{link.name}.{os.getpid()}"
    if tmp.is_symlink():
        tmp.unlink()
    tmp.symlink_to(target)
    os.replace(tmp, link)


def _is_view(path: Path) -> bool:
    """Whether `path` is a view `mark_latest` made: a directory holding only symlinks (temporaries included)."""
    try:
        return path.is_dir() and not path.is_symlink() and all(e.is_symlink() for e in path.iterdir())
    except OSError:
        return False


def _remove_view(view: Path) -> None:
    if _is_view(view):
        try:
            for entry in view.iterdir():
                entry.unlink()
            view.rmdir()
        except OSError:
            pass  # another process removed it, or wrote into it: it is left for the next marking


def _latest_name(link: Path) -> str | None:
    """The name of the run a `latest` symlink made by chargpt points at (`.latest/<name>`, or `<name>` as chargpt
    made it before views); None for any other link."""
    target = os.readlink(link)
    name = target[len(LATEST_VIEWS) + 1:] if target.startswith(f"{LATEST_VIEWS}/") else target
    if "/" in name or name in ("", ".", "..") or name.startswith("."):
        return None
    return name if not (link.parent / name).exists() or (link.parent / name / CONFIG).is_file() else None


def _run_link(given: Path, run: Path) -> Path | None:
    """The symlink to the run directory `run` that `given` (a run, or a file of it) names it by, if any: the run's
    `latest` belongs beside that link. `latest` itself stands for the name it points at."""
    for path in (given, given.parent):
        if path.name == LATEST and os.path.islink(path):
            path = path.parent / (_latest_name(path) or os.readlink(path))
        if os.path.islink(path) and os.path.realpath(path) == os.path.realpath(run):
            return path
    return None


def _writable(directory: Path) -> bool:
    """Whether this process may create files in `directory` (by its effective ids, as the kernel decides)."""
    return os.access(directory, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids)


def _lock_holder(inode: int) -> int | None:
    """The pid holding an flock on the file `inode`, as the kernel lists it (Linux's /proc/locks): the lock file
    itself is never written, so a refused writer changes nothing in the run."""
    return next((pid for pid, at in _flocks() or [] if at == inode), None)


def _flocks() -> list[tuple[int | None, int]] | None:
    """(holder's pid, inode) of every flock held now, as Linux lists them in /proc/locks; None where that list
    cannot be read. Files on other devices may share an inode: a match is "maybe locked", never "free"."""
    try:
        lines = read_bytes("/proc/locks", 1 << 22).decode("ascii", errors="replace").splitlines()
    except OSError:
        return None
    held = []
    for line in lines:
        fields = line.split()
        if "FLOCK" in fields and "->" not in fields and len(fields) >= 6:
            inode = fields[5].rsplit(":", 1)[-1]
            if inode.isdigit():
                held.append((int(fields[4]) if fields[4].isdigit() else None, int(inode)))
    return held


def being_written(path: str | os.PathLike) -> bool:
    """Whether a process writes run `path` now: its `.lock` is locked (or that cannot be told). Seen in the
    kernel's list of locks, never by taking the lock, which could refuse a writer starting at that moment."""
    try:
        inode = os.lstat(Path(path) / LOCK).st_ino
    except FileNotFoundError:  # a writer holds the file for its whole life
        return False
    except OSError:
        return True
    flocks = _flocks()
    return flocks is None or any(at == inode for _, at in flocks)


def clear_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove from run `path` the temporaries a writer killed mid-write left (as large as the file it wrote), when
    nobody writes the run now: every door that lists or opens runs calls it, so a run never resumed sheds them too."""
    if not stale_temporaries(path) or being_written(path):
        return []
    return remove_stale_temporaries(path)


@dataclass(frozen=True)
class Located:
    """What a run name, a run directory, `latest` or a checkpoint file names."""

    run: Path  # the run directory, links followed: `runs/latest` is `runs/<name>`
    ckpt: Path  # the checkpoint meant: the run's ckpt.pt, or the .pt file named
    within: Path | None = None  # where the checkpoint must stay: its run, when the run was named, not the file

    @property
    def name(self) -> str:
        """`r1` for a run's latest checkpoint, `r1/best.pt` for another file of it."""
        return self.run.name if self.ckpt.name == CKPT else f"{self.run.name}/{self.ckpt.name}".lstrip("/")


def locate_run(target: str | os.PathLike, out_dir: str | os.PathLike | None = None, *, checkpoint: bool = True) -> Located:
    """The run or checkpoint `target` names: a run directory, a checkpoint file, a link to either (`runs/latest`),
    or with `out_dir` a run's name under it. With `checkpoint`, the checkpoint must be there and be a regular
    file (never a FIFO or a device, which reading would wait on or misread; a run's own checkpoint only inside
    its run, while a file named directly is the user's choice); without, a run directory is enough, and a file
    named must be a checkpoint (nothing else reads it before it is used)."""
    given = Path(target)
    path = given
    if out_dir is not None and len(given.parts) == 1 and os.path.lexists(Path(out_dir) / given):
        path = Path(out_dir) / given
    if path.name == LATEST and not path.exists():  # absent, or a link to a run since removed
        raise CheckpointError(f"no run yet: {path} points at the newest run with a checkpoint, and there is none; "
                              f"train one with `chargpt train`")
    real = real_path(path)
    if not real.exists():
        under = f" (nor {Path(out_dir) / given})" if out_dir is not None and path == given else ""
        raise CheckpointError(f"no run {str(target)!r}: nothing at {path}{under}; pass a run directory, a .pt file "
                              f"written by `chargpt train`, or {DEFAULT_RUN}")
    run, ckpt = (real, recommended(real)) if real.is_dir() else (real.parent, real)
    within = run if real.is_dir() else None
    if not checkpoint and real.is_dir() and not (run / CONFIG).exists() and not (run / METRICS).exists():
        raise CheckpointError(f"no run {str(target)!r}: {run} holds no {CONFIG} or {METRICS}; pass the directory "
                              f"of a chargpt run")
    problem = read_problem(ckpt, within=within)  # one there that cannot be read is refused with or without `checkpoint`
    if problem == "missing" and not checkpoint:
        return Located(run, ckpt, within)
    if not problem and not checkpoint and not real.is_dir() and not is_checkpoint(ckpt):
        raise CheckpointError(f"no run {str(target)!r}: a file but not a chargpt checkpoint (or a damaged one); pass "
                              f"a run directory or a .pt file written by `chargpt train`")
    if problem == "missing":
        if (run / CONFIG).exists() and being_written(run):
            raise CheckpointError(f"{run} has no checkpoint yet (it is saved at the run's first --eval-interval or "
                                  f"--ckpt-interval); wait for it, or pass another run")
        if (run / CONFIG).exists():
            raise CheckpointError(f"{run} has no checkpoint: it ended before its first one (saved at the run's first "
                                  f"--eval-interval or --ckpt-interval), so there is nothing to continue or read; "
                                  f"start a new run, or pass another run")
        raise CheckpointError(f"no checkpoint at {ckpt}; pass a run directory or a .pt file written by `chargpt train`")
    if problem:
        raise CheckpointError(f"cannot read {ckpt}: it is {problem}; pass a run directory or a .pt file written by "
                              f"`chargpt train`")
    return Located(run, ckpt, within)


def recommended(run: Path) -> Path:
    """The checkpoint a run directory stands for when read (sample, eval, attention, serve, --init-from): best.pt or
    ema.pt where its summary recommends it (it scored lower on the full pass than the final model), else the latest
    ckpt.pt. Resuming continues ckpt.pt."""
    name = read_json_object(run / SUMMARY, within=run).get("recommended")  # {}: no summary yet, or a damaged one
    return run / (name if name in (BEST, EMA) and (run / name).is_file() else CKPT)


def check_run_name(name: str) -> None:
    """A run name is one plain path component (`RunOptions.name` declares it): the run stays inside --runs-dir,
    and `latest` stays chargpt's."""
    check_value(RunOptions, "name", name)


def run_problem(path: Path) -> str | None:
    """What is wrong with the files of run directory `path` (config, summary, metrics log, checkpoints), if anything."""
    for name in (CONFIG, SUMMARY, METRICS, CKPT, BEST, EMA):
        problem = read_problem(path / name, within=path)
        if problem and problem != "missing":
            return f"{name} is {problem}"
    if (path / CONFIG).exists():  # a checkpoint alone (copied by hand) is a run too
        try:
            config = read_json(path / CONFIG, within=path)
        except (OSError, ValueError) as e:
            return f"{CONFIG} is unreadable ({e.__class__.__name__})"
        if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or not isinstance(config.get("train"), dict):
            return f"{CONFIG} is not a chargpt run config (an object with model and train)"
    if (path / SUMMARY).exists():
        try:
            summary = read_json(path / SUMMARY, within=path)
        except (OSError, ValueError) as e:
            return f"{SUMMARY} is unreadable ({e.__class__.__name__})"
        if not isinstance(summary, dict):
            return f"{SUMMARY} is not an object"
    try:
        metrics_problem(path)
    except ValueError as e:
        return str(e)
    return None


def metrics_problem(path: Path) -> None:
    """Raise ValueError naming the first damaged line of the metrics log's end that is read (`read_metrics_log`; a
    torn last line is a crash's, not damage)."""
    try:
        damaged = read_metrics_log(Path(path) / METRICS, within=path).damaged
    except FileNotFoundError:
        return
    except OSError as e:
        raise ValueError(f"{METRICS} is unreadable ({e.__class__.__name__})") from None
    if damaged:
        raise ValueError(damaged)


def real_path(path: Path) -> Path:
    """`path` with its links followed, kept relative to the working directory when it is under it (messages
    then show `runs/<name>`, not an absolute path)."""
    if not path.exists():
        return path
    real = real_run(path)
    try:
        return real.relative_to(Path.cwd().resolve())
    except ValueError:
        return real


def read_metrics(path: str | os.PathLike, limit: int = SHOWN_BYTES) -> list[dict]:
    """Records of the last `limit` bytes of run `path`'s metrics log (see `metrics_log`)."""
    return metrics_log(path, limit).records


def metrics_log(path: str | os.PathLike, limit: int = SHOWN_BYTES) -> MetricsLog:
    """The last `limit` bytes of run `path`'s metrics log, read by its one reader (`records.read_metrics_log`); none
    when there is no log, or it is a FIFO, a device or a link out of the run (nothing chargpt wrote: run_problem
    names it)."""
    try:
        return read_metrics_log(Path(path) / METRICS, within=path, limit=limit)
    except FileNotFoundError:
        return MetricsLog()
    except OSError:
        if not Path(path).is_dir():
            raise
        return MetricsLog()


def default_run_name(model: str, preset: str | None) -> str:
    """Readable and stable across repeats: `train-bigram-baseline`, `train-gpt-cpu` (a W&B run's default name)."""
    return f"train-{model}-{'baseline' if model == 'bigram' else (preset or 'custom')}"


def default_name(model: str, preset: str | None) -> str:
    """A new run directory's default name: `default_run_name` and the time, so that repeats do not collide."""
    return f"{default_run_name(model, preset)}-{time.strftime('%Y%m%d-%H%M%S')}"
