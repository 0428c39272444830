"""A dataset directory replaced whole: the new files are built in a directory beside it, then swapped into its
place in one step (Linux `renameat2(RENAME_EXCHANGE)`), so that a reader, or a process killed at any moment, finds
the old dataset or the new one, never a mix. One writer at a time holds the lock `.NAME.prepare.lock` beside it.

Where the system cannot exchange two directories, the swap is two renames: the old directory waits beside the
target (`.NAME.XXXXXXXX.replaced`) until the new one is in place, and the next prepare or load puts it back if the
writer died in between. Files in the directory that are not the dataset's own (a corpus the user keeps there) are
hard-linked into the new directory, or moved into it right after the swap.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import DataError
from ..fsutil import kind_of, open_lock
from ..runtime.signals import StopSignals

BUILDING, REPLACED = ".replacing", ".replaced"  # suffixes of the directories a writer makes beside the target
NO_LOCK = -1  # where no lock file can be made


class DirectoryWriter:
    """The one writer of directory `path` (created if absent), whose files named `owned` it replaces whole with
    `build`. Entering takes the lock, refusing while another process holds it, and tidies what a writer killed
    before left beside the directory; leaving after a failure removes the directory if entering created it."""

    def __init__(self, path: str | os.PathLike, owned: tuple[str, ...]):
        self.named = Path(path)  # as the user wrote it, for messages
        self.path = Path(os.path.realpath(path))  # a symlinked dataset directory is replaced where it lies
        self.owned = owned
        self._lock: int | None = None
        self._created = False

    def __enter__(self) -> "DirectoryWriter":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _take_lock(self.path)
        except OSError as e:
            if not self.path.is_dir():
                raise DataError(f"cannot create dataset directory {self.named} ({e.strerror}); choose a writable "
                                f"--out") from None
            self._lock = NO_LOCK  # a read-only parent: no writer can swap a directory there either (`build` says so)
        if self._lock is None:
            raise DataError(f"{self.named} is being written by another process (`chargpt prepare`); wait for it "
                            f"to end, then retry")
        try:
            _restore(self.path)  # the lock is held: whoever left these is gone
            for leftover in _leftovers(self.path):
                _tidy(leftover, self.path, self.owned)
            if not self.path.exists():
                self.path.mkdir()
                self._created = True
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self._created:
            try:
                self.path.rmdir()  # nothing was prepared: leave no empty directory behind
            except OSError:
                pass
        if self._lock not in (None, NO_LOCK):
            _release_lock(self.path, self._lock)
        self._lock = None

    @contextmanager
    def build(self) -> Iterator[Path]:
        """A new, empty directory beside `path` to write the new files into; swapped into `path`'s place when the
        block ends without an exception, removed otherwise. Where no directory can be made beside an empty `path`
        (its parent is read-only), the files are written into `path` itself: there is nothing to lose."""
        try:
            new = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=BUILDING, dir=self.path.parent))
        except OSError as e:
            if any(self.path.iterdir()):
                raise DataError(f"cannot replace {self.named}: the new dataset is built beside it, in "
                                f"{self.path.parent} ({e.strerror}), and swapped in whole; make that directory "
                                f"writable, or choose another --out") from None
            with self._in_place() as here:
                yield here
            return
        swapped = False
        try:
            os.chmod(new, os.stat(self.path).st_mode & 0o7777)
            try:
                yield new
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                    raise
                # named by the directory the user gave: the temporary that could not be written is removed below
                raise OSError(e.errno, e.strerror, str(self.named)) from None
            with StopSignals(at_once=lambda signum: None):  # the swap and its tidying are never cut in two
                _link_others(self.path, new, self.owned)
                old = swap(new, self.path)
                swapped = True
                _tidy(old, self.path, self.owned)
        finally:
            if not swapped:
                _tidy(new, self.path, self.owned)

    @contextmanager
    def _in_place(self) -> Iterator[Path]:
        try:
            yield self.path
        except BaseException:
            for name in self.owned:
                (self.path / name).unlink(missing_ok=True)
            raise


def swap(new: Path, target: Path) -> Path:
    """Put directory `new` at `target` in one step; return where the old `target` is now (to be tidied away)."""
    if exchange(new, target):
        return new
    old = new.with_name(new.name.removesuffix(BUILDING) + REPLACED)
    os.rename(target, old)  # from here to the next rename, `restore` puts the old one back if this process dies
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    return old


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap the directories `a` and `b` in one step; False where this system or filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not Linux, or a C library before glibc 2.28
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def restore(target: str | os.PathLike) -> None:
    """If a writer died between the two renames of a swap (`target` is missing, the old directory waits beside
    it), put the old directory back; nothing while a writer is at work."""
    target = Path(os.path.realpath(target))
    if os.path.lexists(target) or not _leftovers(target, REPLACED):
        return
    try:
        lock = _take_lock(target)
    except OSError:  # a read-only parent: no writer could have left anything there since
        return
    if lock is not None:
        try:
            _restore(target)
        finally:
            _release_lock(target, lock)


def _restore(target: Path) -> None:
    if not os.path.lexists(target):
        for old in _leftovers(target, REPLACED):
            os.rename(old, target)
            return


def _leftovers(target: Path, suffix: str | None = None) -> list[Path]:
    """The directories beside `target` that its writers make (a new one being built, the old one being replaced),
    newest first."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}({re.escape(BUILDING)}|{re.escape(REPLACED)})")
    try:
        names = os.listdir(target.parent)
    except OSError:
        return []
    found = [target.parent / n for n in names if (m := pattern.fullmatch(n)) and suffix in (None, m[1])]
    return sorted((p for p in found if kind_of(p) == "a directory"), key=lambda p: -p.stat().st_mtime_ns)


def _tidy(leftover: Path, target: Path, owned: tuple[str, ...]) -> None:
    """Empty directory `leftover` (a build never swapped in, or the old dataset swapped out) into `target`, then
    remove it. The dataset's own files and links to files `target` holds go; anything else (a file the user put
    there) moves into `target`, or stays, under this recognisable name, where `target` already has that name."""
    try:
        entries = list(os.scandir(leftover))
    except OSError:
        return
    for entry in entries:
        here, there = Path(entry.path), target / entry.name
        try:
            if _ours(entry, owned) or _same_file(here, there):
                here.unlink()
            elif kind_of(there) is None:
                os.rename(here, there)
        except OSError:
            continue
    try:
        leftover.rmdir()
    except OSError:
        pass


def _link_others(target: Path, new: Path, owned: tuple[str, ...]) -> None:
    """Hard-link the files in `target` that are not the dataset's into `new`, so that they stay in place across
    the swap; what cannot be linked (a directory) is moved by `_tidy` right after it."""
    for entry in os.scandir(target):
        if _ours(entry, owned) or entry.is_dir(follow_symlinks=False):
            continue
        try:
            os.link(entry.path, new / entry.name, follow_symlinks=False)
        except OSError:
            pass


def _ours(entry: os.DirEntry, owned: tuple[str, ...]) -> bool:
    """Whether `entry` is one of the dataset's files or a temporary of one (`.train.pt.<pid>.<random>.tmp`)."""
    temporary = entry.name.endswith(".tmp") and any(entry.name.startswith(f".{name}.") for name in owned)
    return (entry.name in owned or temporary) and not entry.is_dir(follow_symlinks=False)


def _same_file(a: Path | os.stat_result, b: Path) -> bool:
    """Whether `a` (a path or what `os.fstat` said of a descriptor) is the file `b` names (symlinks not followed)."""
    try:
        x, y = a if isinstance(a, os.stat_result) else os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (x.st_dev, x.st_ino) == (y.st_dev, y.st_ino)


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.prepare.lock"


def _take_lock(target: Path) -> int | None:
    """A descriptor holding the flock that makes this process `target`'s one writer; None while another holds
    it. The lock file is removed as the lock is released (see `rundir.RunDir.lock`, the same scheme)."""
    path = _lock_path(target)
    while True:
        fd = open_lock(path)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except (ImportError, OSError):  # no locks here (some network mounts): one writer is the user's to keep
            return fd
        if _same_file(os.fstat(fd), path):
            return fd
        os.close(fd)  # the writer before removed that file as it ended: lock the one there now


def _release_lock(target: Path, fd: int) -> None:
    try:
        os.unlink(_lock_path(target))
    except OSError:
        pass
    os.close(fd)
