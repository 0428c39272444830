"""Where a named corpus comes from: --input, $CHARGPT_DATA, the local cache, then a checked download."""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from ..errors import DataError
from ..fsutil import cache_dir, open_regular, write_bytes

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

# name -> (relative path under a data root, url, sha256)
DATASETS = {"shakespeare": ("tinyshakespeare/input.txt", SHAKESPEARE_URL, SHAKESPEARE_SHA256)}


def sha256_file(path: str | os.PathLike) -> str:
    """The sha256 hex digest of the regular file `path`, read in blocks (a corpus may be larger than memory)."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def locate(name: str, input_path: str | None = None, timeout: float = 30.0) -> Path:
    """Return a local path to corpus `name`, downloading it into the cache as a last resort."""
    if input_path:
        return Path(input_path)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} (or pass --input FILE)")
    rel, url, sha = DATASETS[name]
    env = os.environ.get("CHARGPT_DATA")
    if env:
        candidate = Path(env) / rel
        if candidate.is_file():
            return candidate
    cached = cache_dir() / rel
    if cached.is_file():
        return cached
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            data = r.read()
    except Exception as e:  # any network failure means the same thing to the user
        data_dir = (f"CHARGPT_DATA is {env}, which holds no {rel}: point it at a directory that does" if env
                    else f"set CHARGPT_DATA to a directory holding {rel}")
        raise DataError(f"could not download {name} from {url} ({e.__class__.__name__}: {e}); "
                        f"save it by hand as {cached} or {data_dir}") from None
    got = hashlib.sha256(data).hexdigest()
    if got != sha:
        raise DataError(f"downloaded {url} has sha256 {got}, expected {sha}; not saved. Retry, or save the file by hand as {cached}")
    write_bytes(cached, data)
    return cached
