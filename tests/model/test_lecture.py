"""The notebook's reference pieces: the averaging trick three ways, explicit attention, one head."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from chargpt.model.lecture import (Head, LectureGPT, causal_average_loop, causal_average_matmul, causal_average_softmax,
                             explicit_attention)

SHAPES = [(1, 1, 1), (4, 8, 2), (2, 16, 32), (3, 33, 5)]


@pytest.mark.parametrize("B,T,C", SHAPES)
def test_the_averaging_trick_gives_the_same_result_three_ways(B, T, C):
    x = torch.randn(B, T, C, generator=torch.Generator().manual_seed(T))
    loop = causal_average_loop(x)
    assert torch.allclose(loop, causal_average_matmul(x), atol=1e-6)
    assert torch.allclose(loop, causal_average_softmax(x), atol=1e-6)


def test_the_average_at_t_is_the_mean_of_tokens_up_to_t():
    x = torch.arange(1.0, 6.0).view(1, 5, 1)
    assert causal_average_loop(x).flatten().tolist() == [1.0, 1.5, 2.0, 2.5, 3.0]


@pytest.mark.parametrize("shape", [(1, 1, 1, 8), (2, 3, 5, 16), (4, 6, 64, 32), (2, 2, 200, 64), (3, 17, 24)])
def test_explicit_attention_matches_scaled_dot_product_attention(shape):
    g = torch.Generator().manual_seed(sum(shape))
    q, k, v = (torch.randn(*shape, generator=g) for _ in range(3))
    fast = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert (fast - explicit_attention(q, k, v)).abs().max().item() < 1e-5


def test_attention_weights_are_causal_and_rows_sum_to_one():
    q, k, v = (torch.randn(2, 3, 10, 8) for _ in range(3))
    out, wei = explicit_attention(q, k, v, return_weights=True)
    assert wei.shape == (2, 3, 10, 10)
    assert torch.all(wei.triu(diagonal=1) == 0)
    assert torch.allclose(wei.sum(-1), torch.ones(2, 3, 10))
    assert torch.allclose(out, wei @ v)
    assert torch.allclose(wei[..., 0, 0], torch.ones(2, 3))  # the first token can only look at itself


def test_one_head_matches_explicit_attention_on_its_projections():
    torch.manual_seed(0)
    head = Head(n_embd=32, head_size=16, block_size=8)
    x = torch.randn(4, 8, 32)
    expected = explicit_attention(head.query(x), head.key(x), head.value(x))
    assert torch.allclose(head(x), expected, atol=1e-6)


def test_a_head_never_looks_at_the_future():
    torch.manual_seed(0)
    head = Head(n_embd=16, head_size=8, block_size=8)
    x = torch.randn(1, 8, 16)
    changed = x.clone()
    changed[:, 5:] = torch.randn(1, 3, 16)
    assert torch.allclose(head(x)[:, :5], head(changed)[:, :5])


def test_the_lecture_model_has_the_lectures_parameter_count():
    model = LectureGPT(vocab_size=65, n_embd=384, n_head=6, n_layer=6, block_size=256)
    assert sum(p.numel() for p in model.parameters()) == 10_788_929  # "10.788929 M parameters"
