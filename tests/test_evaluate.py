"""Loss measurement: the exact full pass, the notebook's random-batch estimate, the bigram optimum."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from chargpt.errors import DataError
from chargpt.evaluate import bigram_optimum, bits_per_char, estimate_loss, full_pass_loss
from chargpt.model import ModelConfig, build_model

VOCAB, BLOCK = 11, 8


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16))


def data(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).to(torch.uint8)


def by_hand(model, split: torch.Tensor) -> float:
    """Every target scored once: consecutive windows of BLOCK targets, one at a time, in float64."""
    ids = split.long()
    total, n = 0.0, len(ids) - 1
    model.eval()  # no dropout
    with torch.no_grad():
        for s in range(0, n, BLOCK):
            x = ids[s:min(s + BLOCK, n)]
            y = ids[s + 1:s + 1 + len(x)]
            logits, _ = model(x[None])
            total += F.cross_entropy(logits[0].double(), y, reduction="sum").item()
    return total / n


@pytest.mark.parametrize("n", [2, BLOCK + 1, 5 * BLOCK + 1, 5 * BLOCK + 4, 1000])
@pytest.mark.parametrize("batch_size", [None, 1, 3])
def test_full_pass_scores_every_token_once_whatever_the_batching(n, batch_size):
    model = tiny_model()
    split = data(n)
    got = full_pass_loss(model, split, BLOCK, "cpu", batch_size=batch_size)
    assert got == pytest.approx(by_hand(model, split), rel=1e-5)


def test_full_pass_is_deterministic_and_leaves_the_model_in_its_mode():
    model = tiny_model().train()
    split = data(500)
    a = full_pass_loss(model, split, BLOCK, "cpu")
    assert full_pass_loss(model, split, BLOCK, "cpu") == a
    assert model.training


def test_full_pass_of_a_split_without_a_target_is_a_data_error():
    with pytest.raises(DataError, match="at least 2 tokens"):
        full_pass_loss(tiny_model(), data(1), BLOCK, "cpu")


def test_untrained_model_scores_about_log_vocab():
    # a freshly initialized GPT predicts nearly uniformly: its loss is close to ln(V)
    assert full_pass_loss(tiny_model(), data(2000), BLOCK, "cpu") == pytest.approx(math.log(VOCAB), abs=0.05)


def test_estimate_loss_is_reproducible_with_a_generator_and_reports_each_split():
    model = tiny_model()
    splits = {"train": data(400, seed=2), "val": data(400, seed=3)}
    a = estimate_loss(model, splits, 5, 4, BLOCK, "cpu", torch.Generator().manual_seed(7))
    b = estimate_loss(model, splits, 5, 4, BLOCK, "cpu", torch.Generator().manual_seed(7))
    c = estimate_loss(model, splits, 5, 4, BLOCK, "cpu", torch.Generator().manual_seed(8))
    assert a == b and set(a) == {"train", "val"} and a != c


def test_bigram_optimum_equals_smoothed_counts_computed_directly():
    train, val = data(3000, seed=4), data(500, seed=5)
    counts = torch.ones(VOCAB, VOCAB, dtype=torch.float64)
    for a, b in zip(train[:-1].tolist(), train[1:].tolist()):
        counts[a, b] += 1
    p = counts / counts.sum(1, keepdim=True)
    expected = -sum(math.log(p[a, b]) for a, b in zip(val[:-1].tolist(), val[1:].tolist())) / (len(val) - 1)
    assert bigram_optimum(train, val, VOCAB) == pytest.approx(expected, rel=1e-12)
    assert bigram_optimum(train, val, VOCAB, chunk=7) == pytest.approx(expected, rel=1e-12)  # chunk edges


def test_bits_per_char_is_nats_over_ln2():
    assert bits_per_char(math.log(2)) == pytest.approx(1.0)
