"""1-D tensor files as `torch.save` lays them out: written by streaming their data in chunks, and read a
window at a time with plain file reads, so a split larger than memory is never held, nor mapped, whole."""
from __future__ import annotations

import os
import struct
import sys
import weakref
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature ... file name length, extra field length
CENTRAL_HEADER = struct.Struct("<4s12xI8xHHH12x")  # signature ... crc-32 ... name, extra, comment lengths
DATA_DESCRIPTOR = b"PK\x07\x08"


class TensorFileWriter:
    """`torch.save(torch.empty(n, dtype=dtype), path)` whose bytes are then written with `write`.

    torch writes the skeleton (`torch.serialization.skip_data` reserves the space for the data); `write`
    fills that space in order and `close` stores the data's CRC-32, so the file is a valid zip and
    `torch.load(path, weights_only=True, mmap=...)` reads it like any other.
    """

    def __init__(self, path: str | os.PathLike, n: int, dtype: torch.dtype):
        self.path = Path(path)
        self.nbytes = n * torch.empty((), dtype=dtype).element_size()
        with torch.serialization.skip_data():
            torch.save(torch.empty(n, dtype=dtype), self.path)  # torch.empty only reserves address space
        with zipfile.ZipFile(self.path) as zf:
            [self.entry] = [i for i in zf.infolist() if i.filename.endswith("/data/0")]
            self.central_dir = zf.start_dir
        self.f = open(self.path, "r+b")
        self.f.seek(self.entry.header_offset)
        sig, name_len, extra_len = LOCAL_HEADER.unpack(self.f.read(LOCAL_HEADER.size))
        if sig != b"PK\x03\x04" or self.entry.file_size != self.nbytes:
            raise OSError(f"unexpected torch.save layout in {self.path}")
        self.data_offset = self.entry.header_offset + LOCAL_HEADER.size + name_len + extra_len
        self.f.seek(self.data_offset)
        self.written = 0
        self.crc = 0

    def write(self, data) -> None:
        data = memoryview(data).cast("B")
        if self.written + len(data) > self.nbytes:
            raise ValueError(f"{self.path}: more than the {self.nbytes} bytes reserved")
        self.f.write(data)
        self.crc = zlib.crc32(data, self.crc)
        self.written += len(data)

    def close(self) -> None:
        try:
            if self.written != self.nbytes:
                raise ValueError(f"{self.path}: {self.written} of {self.nbytes} bytes written")
            # With bit 3 of the flags set (torch sets it), the CRC lives in the data descriptor after the
            # data and in the central directory, not in the local header.
            self.f.seek(self.data_offset + self.nbytes)
            at = self.data_offset + self.nbytes + (4 if self.f.read(4) == DATA_DESCRIPTOR else 0)
            self.f.seek(at)
            self.f.write(struct.pack("<I", self.crc))
            self._patch_central_directory()
        finally:
            self.f.close()

    def _patch_central_directory(self) -> None:
        pos = self.central_dir
        name = self.entry.orig_filename.encode("utf-8")
        while True:
            self.f.seek(pos)
            sig, _, name_len, extra_len, comment_len = CENTRAL_HEADER.unpack(self.f.read(CENTRAL_HEADER.size))
            if sig != b"PK\x01\x02":
                raise OSError(f"{self.path}: no central directory entry for {self.entry.filename}")
            if self.f.read(name_len) == name:
                self.f.seek(pos + 16)
                self.f.write(struct.pack("<I", self.crc))
                return
            pos += CENTRAL_HEADER.size + name_len + extra_len + comment_len

    def __enter__(self) -> "TensorFileWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.f.close()


class TensorFileReader:
    """Elements of a 1-D tensor stored in a torch zip file, read with `os.pread` from the file's stored
    (uncompressed) data.

    Sampling random windows from the memory-mapped tensor instead would leave every page it touched (and the
    kernel maps whole blocks around each fault) resident in the process, until RSS approaches the split's size.
    Plain reads go through the page cache, which the kernel reclaims at will, and leave the process's RSS flat.
    """

    def __init__(self, path: str | os.PathLike, dtype: torch.dtype, length: int, offset: int):
        self.path = Path(path)
        self.dtype = dtype
        self.np_dtype = np.dtype(str(dtype).removeprefix("torch."))
        self.length = length
        self.offset = offset  # of element 0, in bytes from the start of the file
        self.fd = os.open(self.path, os.O_RDONLY)  # held: a file replaced under a run is not read half old, half new
        weakref.finalize(self, os.close, self.fd)

    @classmethod
    def locate(cls, path: str | os.PathLike, t: torch.Tensor) -> TensorFileReader | None:
        """The reader for `t` as `torch.load` read it from `path`; None when the file is not laid out as
        `torch.save` lays out one contiguous 1-D tensor (and reads must go through `t`)."""
        if t.ndim != 1 or t.stride(0) != 1 or sys.byteorder != "little":
            return None
        try:
            with zipfile.ZipFile(path) as zf:
                entries = [i for i in zf.infolist() if "/data/" in i.filename]
                byteorder = [i for i in zf.infolist() if i.filename.endswith("/byteorder")]
                if byteorder and zf.read(byteorder[0]) != b"little":
                    return None
            if len(entries) != 1:  # one storage: the tensor's
                return None
            [entry] = entries
            if entry.compress_type != zipfile.ZIP_STORED or entry.file_size != t.untyped_storage().nbytes():
                return None
            with open(path, "rb") as f:
                f.seek(entry.header_offset)
                sig, name_len, extra_len = LOCAL_HEADER.unpack(f.read(LOCAL_HEADER.size))
            if sig != b"PK\x03\x04":
                return None
        except (OSError, ValueError, struct.error, zipfile.BadZipFile):
            return None
        start = entry.header_offset + LOCAL_HEADER.size + name_len + extra_len
        return cls(path, t.dtype, len(t), start + t.storage_offset() * t.element_size())

    def __len__(self) -> int:
        return self.length

    def read(self, start: int, n: int) -> np.ndarray:
        """Elements [start, start + n), in the file's dtype."""
        self._check(start, start + n)
        return self._pread([start], n)

    def windows(self, starts: torch.Tensor, length: int) -> torch.Tensor:
        """(len(starts), length) int64: row i holds elements [starts[i], starts[i] + length)."""
        starts = starts.tolist()
        if not starts:
            return torch.empty((0, length), dtype=torch.int64)
        lo, hi = min(starts), max(starts) + length
        self._check(lo, hi)
        if hi - lo <= 2 * length * len(starts):  # windows side by side (a full pass): one read for them all
            out = self._pread([lo], hi - lo)[np.array(starts)[:, None] - lo + np.arange(length)]
        else:  # random windows: one read each
            out = self._pread(starts, length).reshape(len(starts), length)
        return torch.from_numpy(out.astype(np.int64))

    def _check(self, start: int, stop: int) -> None:
        if start < 0 or stop < start or stop > self.length:
            raise IndexError(f"elements [{start}, {stop}) of a tensor of {self.length} in {self.path}")

    def _pread(self, starts: list[int], n: int) -> np.ndarray:
        size = self.np_dtype.itemsize
        raw = b"".join(os.pread(self.fd, n * size, self.offset + s * size) for s in starts)
        if len(raw) != len(starts) * n * size:
            raise OSError(f"{self.path} ended early: it was truncated or replaced while being read")
        return np.frombuffer(raw, dtype=self.np_dtype)
