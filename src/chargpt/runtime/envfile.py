"""The `.env` file of the working directory, read as the notebook's `%dotenv` does (python-dotenv): W&B keys and
settings kept next to the notebook work for chargpt too. Variables already in the environment win.

A malformed file never stops anything: its readable lines are used and one warning names the others.
"""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

ENV_FILE = ".env"
ENV_LIMIT = 16 << 10  # keys and settings take a few hundred bytes; python-dotenv needs seconds for a megabyte
_read: set[Path] = set()  # files already read by this process: one line each, however many callers ask


def load_env_file(directory: str | os.PathLike | None = None, *, say=print) -> Path | None:
    """Read `<directory or cwd>/.env` into `os.environ` (variables already set win) once per process and say in
    one line which file was read; return its path, or None when there is none."""
    path = Path(directory or Path.cwd()).resolve() / ENV_FILE
    if path in _read or not path.is_file():
        return path if path in _read else None
    _read.add(path)
    from ..fsutil import read_bytes

    try:
        raw = read_bytes(path, ENV_LIMIT)
    except OSError as e:
        _warn(path, f"cannot be read ({e.strerror}); going on without it")
        return None
    from dotenv import dotenv_values, load_dotenv
    from dotenv.parser import parse_stream

    text = raw.decode("utf-8", errors="replace")
    good, bad = [], []
    for binding in parse_stream(io.StringIO(text)):
        line = binding.original.string
        if binding.error or (binding.key is not None and binding.value is None) or "\ufffd" in line:
            bad.append(binding.original.line)
        else:
            good.append(line if line.endswith("\n") else line + "\n")
    clean = "".join(good)
    names = [k for k, v in dotenv_values(stream=io.StringIO(clean)).items() if v is not None]
    kept = [k for k in names if k in os.environ]
    load_dotenv(stream=io.StringIO(clean), override=False)
    from .distributed import is_main_process  # at call time: its module imports torch, this one does not

    if is_main_process():
        what = ", ".join(k for k in names if k not in kept) or "nothing new"
        also = f"; already set, so kept: {', '.join(kept)}" if kept else ""
        say(f"read {path}: {what}{also}")
        if bad:
            lines = ", ".join(map(str, bad[:5])) + (", ..." if len(bad) > 5 else "")
            _warn(path, f"line{'s' if len(bad) > 1 else ''} {lines} {'are' if len(bad) > 1 else 'is'} not NAME=value "
                        f"text (binary bytes, or no '='); skipped, the rest was read")
    return path


def _warn(path: Path, what: str) -> None:
    print(f"warning: {path} {what}", file=sys.stderr, flush=True)
