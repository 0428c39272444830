import zipfile

import pytest
import torch

from chargpt.tensorfile import TensorFileWriter


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_streamed_file_loads_like_torch_save_and_is_a_valid_zip(tmp_path, dtype):
    ref = torch.randint(0, 100, (100_003,)).to(dtype)
    with TensorFileWriter(tmp_path / "t.pt", len(ref), dtype) as w:
        for i in range(0, len(ref), 7_777):  # uneven chunks
            w.write(ref[i:i + 7_777].numpy())
    for mmap in (False, True):
        t = torch.load(tmp_path / "t.pt", weights_only=True, mmap=mmap)
        assert t.dtype == dtype and torch.equal(t, ref)
    with zipfile.ZipFile(tmp_path / "t.pt") as zf:
        assert zf.testzip() is None  # every CRC-32 matches its data
    torch.save(ref, tmp_path / "ref.pt")
    crc = {p: [i.CRC for i in zipfile.ZipFile(tmp_path / p).infolist() if i.filename.endswith("/data/0")]
           for p in ("t.pt", "ref.pt")}
    assert crc["t.pt"] == crc["ref.pt"]


def test_too_few_bytes_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="3 of 4 bytes"):
        with TensorFileWriter(tmp_path / "t.pt", 4, torch.uint8) as w:
            w.write(b"abc")


def test_too_many_bytes_is_an_error(tmp_path):
    w = TensorFileWriter(tmp_path / "t.pt", 2, torch.int16)
    with pytest.raises(ValueError, match="more than the 4 bytes"):
        w.write(b"abcdef")
    w.f.close()
