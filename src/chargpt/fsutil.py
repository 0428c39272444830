"""Safe writes and reads of files: every output goes through `atomic_path` (a temporary file in the same
directory, fsync, then a rename over the target), which replaces only regular files (never a device, FIFO,
socket, directory or symlink the user named), turns a full disk into one clear error, and names its
temporaries so that a later run can remove those a killed process left. Tensor files are read one way:
`torch.load(..., weights_only=True)`, which never runs code from a file."""
from __future__ import annotations

import errno
import json
import os
import re
import stat
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import OutputError

_UMASK = os.umask(0)  # reading the umask means setting it: put it straight back
os.umask(_UMASK)


def kind_of(path: str | os.PathLike) -> str | None:
    """What is at `path` without following a symlink: None (nothing), "a regular file", "a directory", ..."""
    try:
        mode = os.lstat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    for test, kind in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def check_output(path: str | os.PathLike) -> None:
    """Refuse an output path that holds anything but a regular file: replacing a device node, a FIFO, a
    socket, a directory or a symlink would destroy something that is not chargpt's (as root, `/dev/null`)."""
    kind = kind_of(path)
    if kind not in (None, "a regular file"):
        raise OutputError(f"{path} is {kind}; chargpt writes only new or regular files and leaves this one "
                          f"as it is: choose another output path")


def not_regular(path: str | os.PathLike) -> str | None:
    """What `path` is when it is not a regular file (following symlinks), None when it is one: reading a FIFO
    would wait forever, reading a device could return anything."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    if stat.S_ISREG(mode):
        return None
    return kind_of(path) if not os.path.islink(path) else f"a symbolic link to {kind_of(os.path.realpath(path))}"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."  # the pid tells a later run whether the writer is still alive


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one rename.

    A crash at any moment leaves either the old file or the new one, never a partial file. Only a regular
    file is ever replaced (see `check_output`).
    """
    path = Path(path)
    check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; the result should look like any new file
        check_output(path)  # again: something may have appeared there meanwhile
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


_TEMP = re.compile(r"\.(?P<name>.+?)\.(?:(?P<pid>\d+)\.)?[A-Za-z0-9_]+\.tmp")


def remove_stale_temporaries(directory: str | os.PathLike, names: tuple[str, ...] | None = None) -> list[Path]:
    """Delete the temporaries of `atomic_path` in `directory` (for `names` only, if given) whose writer is gone:
    a process killed mid-write (kill -9, power loss) leaves them, as large as the file it was writing."""
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP.fullmatch(p.name)
        if not m or (names is not None and m["name"] not in names) or kind_of(p) != "a regular file":
            continue
        if m["pid"] and _alive(int(m["pid"])):
            continue
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2 ** 31
    return True


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # torch reports a failed write (a full disk) as "[enforce fail at inline_container.cc]"
            if "inline_container" not in str(e) and "write" not in str(e).lower():
                raise
            raise write_failed(tmp, path) from None


def write_failed(tmp: Path, path: str | os.PathLike) -> OSError:
    """The OSError behind a failed write to `tmp` (for `path`): ENOSPC when its filesystem is (nearly) full."""
    try:
        st = os.statvfs(tmp.parent)
        full = st.f_bavail * st.f_frsize < max(1 << 20, tmp.stat().st_size // 10)
    except OSError:
        full = False
    code = errno.ENOSPC if full else errno.EIO
    return OSError(code, os.strerror(code), str(path))


def load_torch(path: str | os.PathLike, **kwargs) -> Any:
    """Read a torch file building only tensors and plain containers; a file that would run code is refused."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about pickle protocols of files it then refuses: not news
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)


def refused_global(error: BaseException) -> str | None:
    """The callable or class a weights-only load refused to build (a file that wanted to run code), if any."""
    m = re.search(r"GLOBAL ([\w.]+)", str(error))
    return m.group(1) if m else None


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line and flush it to disk (metrics logs: a crash loses at most the line being written)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())
