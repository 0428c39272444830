"""Write a 1-D tensor file, exactly as `torch.save` lays it out, by streaming its data in chunks, so a
split larger than memory never has to be held as one tensor."""
from __future__ import annotations

import os
import struct
import zipfile
import zlib
from pathlib import Path

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
