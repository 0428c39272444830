import pytest
import torch

from chargpt.data.tensorfile import TensorFileWriter, chunks, load_mapped


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int32, torch.int64])
def test_streamed_file_loads_like_torch_save_with_and_without_mmap(tmp_path, dtype):
    ref = torch.randint(0, 100, (100_003,)).to(dtype)
    with TensorFileWriter(tmp_path / "t.pt", len(ref), dtype) as w:
        for i in range(0, len(ref), 7_777):  # uneven chunks
            w.write(ref[i:i + 7_777].numpy())
    for mmap in (False, True):  # the notebook's torch.load(path, weights_only=True), and training's mmap
        t = torch.load(tmp_path / "t.pt", weights_only=True, mmap=mmap)
        assert t.dtype == dtype and torch.equal(t, ref)


def test_chunks_cover_the_tensor_in_order(tmp_path):
    ref = torch.arange(10_001, dtype=torch.int16)
    torch.save(ref, tmp_path / "t.pt")
    pieces = list(chunks(tmp_path / "t.pt", 2 * 1000))  # 2,000 bytes: 1,000 int16 elements
    assert [len(p) for p in pieces] == [1000] * 10 + [1]
    assert torch.equal(torch.cat(pieces), ref)
    assert torch.equal(load_mapped(tmp_path / "t.pt"), ref)


def test_too_few_bytes_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="3 of 4 bytes"):
        with TensorFileWriter(tmp_path / "t.pt", 4, torch.uint8) as w:
            w.write(b"abc")


def test_too_many_bytes_is_an_error_and_writes_nothing(tmp_path):
    w = TensorFileWriter(tmp_path / "t.pt", 2, torch.int16)
    w.write(b"ab")
    with pytest.raises(ValueError, match="more than the 4 bytes"):
        w.write(b"cdef")
    assert w.written == 1


def test_the_file_is_allocated_on_disk_before_any_element_is_written_through_a_mapping(tmp_path):
    """torch's skip_data leaves the data a hole; a store through a mapping into a page the filesystem then has no
    room for is a SIGBUS that kills the process (`chargpt prepare` on a full disk: rc 135, no line). With every
    block allocated first, a full disk is an OSError before the first write."""
    w = TensorFileWriter(tmp_path / "t.pt", 1_000_000, torch.int64)
    st = (tmp_path / "t.pt").stat()
    assert st.st_size > 8_000_000 and st.st_blocks * 512 >= st.st_size
    assert w.written == 0
