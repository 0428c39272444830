"""1-D tensor files as `torch.save` writes them, streamed with torch's public APIs: written chunk by chunk into
the space `torch.serialization.skip_data` reserves, read through `torch.load(..., mmap=True)`."""
from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..fsutil import load_torch
from ..runtime.signals import StopSignals


def load_mapped(path: str | os.PathLike) -> torch.Tensor:
    """The tensor in `path`, memory-mapped (its pages are read when touched), never running code from the file.
    Writes to the tensor stay in this process: only `TensorFileWriter`, which allocates the file first, writes
    through a mapping."""
    with torch.serialization.set_default_mmap_options(mmap.MAP_PRIVATE):
        return load_torch(path, mmap=True)


class TensorFileWriter:
    """`torch.save(torch.empty(n, dtype=dtype), path)`, whose elements are then written in order by `write`.

    The file's blocks are allocated (`reserve`) before any is written through a mapping: a store into a page the
    filesystem has no room for is a SIGBUS that kills the process, where a full disk must be one OSError.
    Each `write` goes through a writable mapping of its own, released before the next: pages written through
    one mapping stay resident in the process until it is released, so one mapping for the whole file would
    hold the whole split. Like files saved under `torch.serialization.set_crc32_options(False)`, the data's
    zip CRC-32 is not filled in: `torch.load` reads the file (mmap or not), `unzip -t` reports a bad CRC.
    """

    def __init__(self, path: str | os.PathLike, n: int, dtype: torch.dtype):
        self.path = Path(path)
        self.n = n
        self.np_dtype = np.dtype(str(dtype).removeprefix("torch."))
        # Saved through a file object, not a path: torch names the archive's top folder after a path's stem (a
        # temporary file's random name here) and a file object's "archive", so the same tensor is the same bytes
        # in any directory. skip_data reserves the data's space; torch.empty only reserves address space.
        # A stop signal waits for the header to be whole (raised inside torch.save, it left torch's zip writer
        # failing on its own state, a traceback instead of the signal's exit).
        with StopSignals(), torch.serialization.skip_data(), open(self.path, "wb") as f:
            torch.save(torch.empty(n, dtype=dtype), f)
            f.flush()
            reserve(f.fileno(), self.path)
        self.written = 0

    def write(self, data) -> None:
        """Append the elements in `data` (a buffer of this file's dtype: bytes, memoryview, numpy array)."""
        ids = np.frombuffer(data, dtype=self.np_dtype)
        if self.written + len(ids) > self.n:
            raise ValueError(f"{self.path}: more than the {self.n * self.np_dtype.itemsize} bytes reserved")
        if len(ids):
            with torch.serialization.set_default_mmap_options(mmap.MAP_SHARED):  # writes go to the file
                t = load_torch(self.path, mmap=True)
            t.numpy()[self.written:self.written + len(ids)] = ids
            del t  # unmapped here: the written pages are the page cache's to write back, not this process's
        self.written += len(ids)

    def close(self) -> None:
        if self.written != self.n:
            size = self.np_dtype.itemsize
            raise ValueError(f"{self.path}: {self.written * size} of {self.n * size} bytes written")

    def __enter__(self) -> "TensorFileWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def reserve(fd: int, path: Path) -> None:
    """Allocate every block of the open file `fd` (`path`) that its size covers (skip_data leaves the data a hole):
    OSError (ENOSPC on a full disk) here rather than a SIGBUS when the mapping is written."""
    size = os.fstat(fd).st_size
    try:
        if hasattr(os, "posix_fallocate"):  # glibc writes the blocks itself where the filesystem cannot allocate
            os.posix_fallocate(fd, 0, size)
        else:  # macOS: rewrite the file in place, which allocates each block it writes
            for at in range(0, size, 1 << 20):
                os.pwrite(fd, os.pread(fd, 1 << 20, at), at)
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


def chunks(path: str | os.PathLike, nbytes: int) -> Iterator[torch.Tensor]:
    """Consecutive pieces of about `nbytes` of the 1-D tensor in `path`, each read through a mapping of its own
    that is released with the piece: a scan of a split larger than memory keeps about one piece resident,
    where one mapping would keep every page it touched."""
    t = load_mapped(path)
    n, size = len(t), max(1, nbytes // t.element_size())
    del t
    for start in range(0, n, size):
        yield load_mapped(path)[start:start + size]
