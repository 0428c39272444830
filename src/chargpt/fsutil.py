"""Safe writes and reads of files: every output goes through `atomic_path` (a temporary file in the same
directory, fsync, then a rename over the target), which replaces only regular files (never a device, FIFO,
socket, directory or symlink the user named), turns a full disk into one clear error, and names its
temporaries so that a later run can remove those a killed process left.

Every input goes through `open_regular`: a regular file only (a FIFO would wait forever, a device could return
anything), never more than a size cap, and, for a file found inside a run directory, never through a symlink
that leads out of it. Tensor files are read one way: `torch.load(..., weights_only=True)`, which never runs
code from a file. No other module opens a file for reading (tests/test_fsutil.py parses them all to hold this),
the kernel's own files under /proc and /sys aside."""
from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import stat
import tempfile
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from .errors import OutputError

_UMASK = os.umask(0)  # reading the umask means setting it: put it straight back
os.umask(_UMASK)


def real_run(path: str | os.PathLike) -> Path:
    """`path` resolved, where `runs/.latest/<name>` (what `runs/latest` leads to: links to the files of run
    `<name>`) stands for the run directory `runs/<name>` itself."""
    real = Path(os.path.realpath(path))
    if real.parent.name == LATEST_VIEWS and os.path.isdir(real.parent.parent / real.name):
        return Path(os.path.realpath(real.parent.parent / real.name))
    return real


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


# The files that make a directory a run (runs/rundir.py) or a dataset (data/dataset.py): one holding every name of
# an entry is chargpt's own. Declared here, below both, so that every output is held against them. A name other
# tools use too counts only beside another (pytest locks its temporary directories with a `.lock`).
RUN_MARKERS = (("metrics.jsonl",), ("ckpt.pt",), ("best.pt",), ("ema.pt",), ("config.json", ".lock"))
DATASET_MARKERS = (("train.pt",), ("val.pt",))
# A runs folder's `latest` leads to `<runs>/.latest/<name>/`, a directory of links to that run's files but not to its
# TensorBoard events: `tensorboard --logdir runs` walks into links, and would list the newest run twice through one.
LATEST_VIEWS = ".latest"


@dataclass(frozen=True)
class Output:
    """A file the user named for chargpt to write (`name`: the flag or keyword that named it) and the inputs of the
    same command, which it must never replace. Made by `claim_output`, written by `save_figure`."""

    path: Path
    inputs: tuple[Path, ...] = ()
    name: str = "--out"


def claim_output(path: str | os.PathLike | Output, inputs: tuple = (), name: str = "--out",
                 directory: bool = False) -> Output:
    """`path` checked as an output before any work is done for it (OutputError otherwise, one line): its directory
    exists; it is none of `inputs` (compared resolved and by inode, so a symlink or a hard link to an input is
    that input) and inside none of them; it is inside no run or dataset directory; it is new or a regular file; its
    name has no control character. With `directory`, `path` is a directory the command makes (parents included) or
    replaces whole (a dataset): its parent need not exist, and it may already be a directory."""
    out = path if isinstance(path, Output) else Output(Path(path), name=name)
    out = replace(out, inputs=out.inputs + tuple(Path(p) for p in inputs if p is not None))
    problem = output_problem(out.path, out.inputs, directory)
    if problem:
        raise OutputError(f"{out.name} {out.path} {problem}")
    if not directory:
        check_output(out.path)
    return out


def output_problem(path: Path, inputs: tuple[Path, ...] = (), directory: bool = False) -> str | None:
    """Why `claim_output` refuses `path` (a directory with `directory`), with what to do instead (None: it may be
    written)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in path.name):
        return "has a control character (a newline, a tab, ...) in its name; choose a plain file name"
    parent = path.parent
    if not directory and not os.path.isdir(parent):
        if os.path.lexists(parent):
            return f"is under {parent}, which is not a directory; choose another output path"
        return f"is in a directory that does not exist ({parent}); create it first or choose another output path"
    real = Path(os.path.realpath(path))
    for given in inputs:
        source = Path(os.path.realpath(given))
        if real == source or _same_file(path, given):
            return f"is also an input of this command ({given}): writing it would destroy it; choose another output path"
        if source.is_dir() and real.is_relative_to(source):
            return f"is inside {given}, an input of this command; choose an output path outside it"
    owner = chargpt_directory(real.parent)
    if owner:
        return f"is inside {owner}, whose files only chargpt writes; choose an output path outside it"
    if not directory and kind_of(path) == "a regular file" and not written_by_chargpt(path):
        return ("is a file chargpt did not write (it replaces only a figure it drew itself); choose another output "
                "path, or remove the file first")
    return None


# What `save_figure` writes into every PNG (a tEXt chunk, before the image data): how a figure chargpt drew is told
# from a file of the user's, which an --out must never replace (a checkpoint, a photo, notes).
FIGURE_MARK = {"Software": "chargpt"}
_MARK_CHUNK = (b"tEXt", b"Software\x00chargpt")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def written_by_chargpt(path: str | os.PathLike) -> bool:
    """Whether the regular file `path` is a PNG that `save_figure` wrote: a well-formed PNG whose chunks before
    its image data (each with its checksum) include the text chunk FIGURE_MARK. Bytes that merely contain the
    mark, or a PNG whose chunk around it is damaged, are not."""
    try:
        with open_regular(path) as f:
            head = f.read(4096)
    except OSError:
        return False
    if not head.startswith(_PNG_SIGNATURE):
        return False
    at = len(_PNG_SIGNATURE)
    while at + 12 <= len(head):
        size = int.from_bytes(head[at:at + 4], "big")
        kind, data = head[at + 4:at + 8], head[at + 8:at + 8 + size]
        crc = head[at + 8 + size:at + 12 + size]
        if len(data) < size or len(crc) < 4 or zlib.crc32(kind + data).to_bytes(4, "big") != crc:
            return False
        if (kind, data) == _MARK_CHUNK:
            return True
        if kind in (b"IDAT", b"IEND"):
            return False
        at += 12 + size
    return False


def chargpt_directory(path: Path) -> str | None:
    """The run or dataset directory, or a runs folder's `.latest` (the views of runs that its `latest` leads to),
    that the resolved directory `path` is or lies in, described; None if none."""
    for d in (path, *path.parents):
        for kind, markers in (("run", RUN_MARKERS), ("dataset", DATASET_MARKERS)):
            if _marked(d, markers):
                return f"the {kind} directory {_shown(d)}"
        if d.name == LATEST_VIEWS and any(_marked(view, RUN_MARKERS) for view in _subdirectories(d)):
            return f"the latest run's views {_shown(d)}"
    return None


def _marked(d: Path, markers: tuple[tuple[str, ...], ...]) -> bool:
    return any(all(os.path.lexists(d / name) for name in names) for names in markers)


def _subdirectories(d: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(d) if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _shown(path: Path) -> Path:
    """A resolved `path` as messages show it: relative to the working directory when it is under it."""
    try:
        return path.relative_to(Path.cwd().resolve())
    except (ValueError, OSError):
        return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except (OSError, ValueError):
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def save_figure(fig, out: str | os.PathLike | Output) -> Path:
    """A matplotlib Figure written as a PNG to the output `out`, atomically, once `claim_output` accepts it (again:
    what is on disk may have changed since it was claimed). Every figure a user names a file for is written here."""
    out = claim_output(out)
    with atomic_path(out.path) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=MISSING_GLYPH)
        fig.savefig(tmp, format="png", metadata=FIGURE_MARK)
    return out.path


# A character the font lacks (a run name or prompt in another script) is drawn as a box; matplotlib's warning per
# glyph (two lines each, one naming an FT2Font object) says nothing more.
MISSING_GLYPH = r"Glyph \d+ .* missing from font"


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


READ_LIMIT = 64 << 20  # a JSON record (config, summary, a --config file): far more than chargpt ever writes
METRICS_LIMIT = 1 << 30  # a metrics log grows a line per logged step


class ReadRefused(OSError):
    """A file chargpt will not read: not a regular file, too large, or a symlink out of its run directory.
    An OSError, so that every reader's handling of an unreadable file covers it; `strerror` says why."""


def read_problem(path: str | os.PathLike, within: str | os.PathLike | None = None) -> str | None:
    """Why `path` would be refused by `open_regular` (None: it would be read), without opening it."""
    try:
        _target(Path(path), within)
    except ReadRefused as e:
        return e.strerror
    except OSError as e:
        return "missing" if isinstance(e, (FileNotFoundError, NotADirectoryError)) else (e.strerror or str(e))
    return None


def _target(path: Path, within: str | os.PathLike | None) -> Path:
    """The file `path` leads to, checked to be a regular file (inside `within`, when given) before it is opened:
    opening a FIFO would wait for a writer, opening some devices acts on them."""
    target = Path(os.path.realpath(path)) if os.path.islink(path) else path  # then opened without following
    if within is not None and target is not path:
        base = str(real_run(within))
        if os.path.commonpath([base, target]) != base:
            raise ReadRefused(errno.EACCES, f"a symbolic link to {target}, outside its run directory {within}", str(path))
    mode = os.stat(target).st_mode
    if not stat.S_ISREG(mode):
        raise ReadRefused(errno.EINVAL, f"{not_regular(target)}, not a regular file", str(path))
    return target


@contextmanager
def open_regular(path: str | os.PathLike, within: str | os.PathLike | None = None) -> Iterator[BinaryIO]:
    """`path` opened for reading, if it is a regular file; with `within` (its run directory), a symlink is
    followed only to a file inside that directory. Raises ReadRefused (an OSError) otherwise.

    The file is opened without blocking and without following a link, then checked again on the open
    descriptor: nothing swapped in between the check and the open is read."""
    target = _target(Path(path), within)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(target, flags)
    except OSError as e:
        if e.errno == errno.ELOOP:  # became a symlink since the check
            raise ReadRefused(errno.ELOOP, "a symbolic link that changed while it was read", str(path)) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ReadRefused(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with f:
        yield f


def read_bytes(path: str | os.PathLike, limit: int = READ_LIMIT, within: str | os.PathLike | None = None) -> bytes:
    """The contents of the regular file `path` (see `open_regular`); a file over `limit` bytes is refused
    rather than read into memory."""
    with open_regular(path, within) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ReadRefused(errno.EFBIG, f"over {limit:,} bytes, more than chargpt reads from such a file", str(path))
    return data


def read_json(path: str | os.PathLike, limit: int = READ_LIMIT, within: str | os.PathLike | None = None) -> Any:
    """The JSON value in `path` (read by `read_bytes`); ValueError for text that is not JSON (or nested too deeply
    to parse)."""
    try:
        return json.loads(read_bytes(path, limit, within).decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{path} is nested too deeply to be a chargpt file") from None


def read_json_object(path: str | os.PathLike, within: str | os.PathLike | None = None) -> dict:
    """The JSON object in `path`, or {} when there is none, it cannot be read, or it holds something else: for
    records that may be absent or damaged (a run still training has no summary)."""
    try:
        value = read_json(path, within=within)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_text(path: str | os.PathLike, limit: int = READ_LIMIT, within: str | os.PathLike | None = None) -> str:
    """The UTF-8 text in `path` (read by `read_bytes`), its line endings read as Python's text files read them
    (CRLF and CR become LF); UnicodeDecodeError for text that is not UTF-8."""
    return io.TextIOWrapper(io.BytesIO(read_bytes(path, limit, within)), encoding="utf-8").read()


def open_lock(path: str | os.PathLike) -> int:
    """A descriptor on the lock file `path`, created if absent: never through a symlink, never waiting (on a FIFO
    put there), never inherited by a child process. Only locked, never read or written."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    return os.open(path, flags, 0o644)


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


_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp")  # `atomic_path`'s: .NAME.PID.<mkstemp's 8>.tmp


def stale_temporaries(directory: str | os.PathLike, names: tuple[str, ...] | None = None) -> list[Path]:
    """The temporaries of `atomic_path` in `directory` (for `names` only, if given) whose writer is gone: a process
    killed mid-write (kill -9, power loss) leaves them, as large as the file it was writing. Nothing but regular
    files named exactly as `atomic_path` names them."""
    try:
        entries = list(Path(directory).iterdir())
    except OSError:
        return []
    return [p for p in entries if (m := _TEMP.fullmatch(p.name)) and (names is None or m["name"] in names)
            and kind_of(p) == "a regular file" and not _alive(int(m["pid"]))]


def remove_stale_temporaries(directory: str | os.PathLike, names: tuple[str, ...] | None = None) -> list[Path]:
    """Delete `stale_temporaries`; return those removed (one that cannot be removed is left, silently)."""
    removed = []
    for p in stale_temporaries(directory, names):
        try:
            p.unlink(missing_ok=True)
        except OSError:  # a read-only directory: nothing chargpt can do about it here
            continue
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
    import torch  # here, not at the top: the CLI answers --help and usage errors through this module without torch

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


def load_torch(path: str | os.PathLike, within: str | os.PathLike | None = None, mmap: bool = False) -> Any:
    """Read a torch file building only tensors and plain containers; a file that would run code is refused.
    `path` is checked as `open_regular` checks it; `mmap` maps the storages instead of reading them."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns about pickle protocols of files it then refuses: not news
        with open_regular(path, within) as f:  # torch maps only a file it opens by name: the one just checked,
            # by its descriptor's name where there is one (torch encodes a name as UTF-8, which a path in a C locale
            # may not be)
            name = f"/proc/self/fd/{f.fileno()}" if os.path.isdir("/proc/self/fd") else os.path.realpath(path)
            return torch.load(name if mmap else f, map_location="cpu", weights_only=True, mmap=mmap)


def refused_global(error: BaseException) -> str | None:
    """The callable or class a weights-only load refused to build (a file that wanted to run code), if any."""
    m = re.search(r"GLOBAL ([\w.]+)", str(error))
    return m.group(1) if m else None


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line and flush it to disk (metrics logs: a crash loses at most the line being written). A file
    with other hard links (a run copied with `cp -al`) first becomes a copy of its own: the append never reaches
    the other names."""
    try:
        shared = os.lstat(path).st_nlink > 1
    except FileNotFoundError:
        shared = False
    if shared:
        with open_regular(path) as src, atomic_path(path) as tmp, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def cache_dir() -> Path:
    """chargpt's cache (downloaded corpora, compiled models): $CHARGPT_CACHE, else $XDG_CACHE_HOME/chargpt, else
    ~/.cache/chargpt."""
    if os.environ.get("CHARGPT_CACHE"):
        return Path(os.environ["CHARGPT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chargpt"
