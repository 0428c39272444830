import pytest
import torch

from chargpt import get_batch
from chargpt.data.dataset import load_dataset
from chargpt.errors import DataError


def notebook_get_batch(data, batch_size, block_size):
    """The notebook's get_batch, verbatim."""
    ix = torch.randint(len(data) - block_size, (batch_size,))
    x = torch.stack([data[i:i + block_size] for i in ix])
    y = torch.stack([data[i + 1:i + block_size + 1] for i in ix])
    return x, y


def test_same_seed_gives_the_notebooks_batches(dataset_dir):
    data = load_dataset(dataset_dir).train
    data_long = data.long()
    torch.manual_seed(1337)
    expected = [notebook_get_batch(data_long, 4, 8) for _ in range(5)]
    torch.manual_seed(1337)
    got = [get_batch(data, 4, 8) for _ in range(5)]
    for (ex, ey), (gx, gy) in zip(expected, got):
        assert torch.equal(ex, gx) and torch.equal(ey, gy)


def test_shapes_dtype_and_shift(dataset_dir):
    data = load_dataset(dataset_dir).train
    x, y = get_batch(data, 16, 32, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (16, 32) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_generator_makes_batches_reproducible_and_independent_of_global_rng(dataset_dir):
    data = load_dataset(dataset_dir).train
    a = get_batch(data, 8, 16, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(123)
    b = get_batch(data, 8, 16, generator=torch.Generator().manual_seed(7))
    c = get_batch(data, 8, 16, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and not torch.equal(a[0], c[0])


def test_split_shorter_than_a_block_is_a_clear_error():
    with pytest.raises(DataError, match="shorter than one block"):
        get_batch(torch.arange(8), 2, 8)
    get_batch(torch.arange(9), 2, 8)  # exactly block_size + 1 is enough
