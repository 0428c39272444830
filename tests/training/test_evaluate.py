"""Loss measurement: the exact full pass, the bounded pass over a large split (an evenly spread subset with its
standard error, interruptible), the notebook's random-batch estimate, the bigram optimum."""
from __future__ import annotations

import math
import signal
import time

import pytest
import torch
import torch.nn.functional as F

from chargpt.errors import DataError
from chargpt.training.evaluate import (EvaluationInterrupted, bigram_optimum, bits_per_char, estimate_loss, evaluate_split,
                              full_pass_loss, pass_windows)
from chargpt.model.gpt import ModelConfig, build_model

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


def test_an_estimate_given_seconds_stops_within_them_after_its_fewest_batches():
    model = tiny_model()
    splits = {"train": data(4000, seed=2), "val": data(4000, seed=3)}
    gen = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    drawn = []

    def counting(*a, **k):
        drawn.append(1)
        return model(*a, **k)

    counting.eval, counting.train, counting.training = model.eval, model.train, False
    # no time at all: the fewest batches per split, the same ones a 2-batch estimate draws
    assert estimate_loss(counting, splits, 1000, 4, BLOCK, "cpu", gen(), seconds=0.0, min_batches=2) == \
        estimate_loss(model, splits, 2, 4, BLOCK, "cpu", gen())
    assert len(drawn) == 4
    # ample time: every batch asked for, as without a limit
    assert estimate_loss(model, splits, 20, 4, BLOCK, "cpu", gen(), seconds=60.0) == \
        estimate_loss(model, splits, 20, 4, BLOCK, "cpu", gen())
    # a limit between: stops once the next batch would not fit, well before the 100,000 asked for
    drawn.clear()
    t0 = time.perf_counter()
    estimate_loss(counting, splits, 100_000, 4, BLOCK, "cpu", gen(), seconds=0.2, min_batches=2)
    assert time.perf_counter() - t0 < 0.6 and 4 < len(drawn) < 100_000


def test_bigram_optimum_equals_smoothed_counts_computed_directly():
    train, val = data(3000, seed=4), data(500, seed=5)
    counts = torch.ones(VOCAB, VOCAB, dtype=torch.float64)
    for a, b in zip(train[:-1].tolist(), train[1:].tolist()):
        counts[a, b] += 1
    p = counts / counts.sum(1, keepdim=True)
    expected = -sum(math.log(p[a, b]) for a, b in zip(val[:-1].tolist(), val[1:].tolist())) / (len(val) - 1)
    assert bigram_optimum(train, val, VOCAB) == pytest.approx(expected, rel=1e-12)
    assert bigram_optimum(train, val, VOCAB, chunk=7) == pytest.approx(expected, rel=1e-12)  # chunk edges


def test_bigram_optimum_of_large_splits_counts_and_scores_evenly_spread_pieces():
    train, val = data(200_000, seed=4), data(50_000, seed=5)
    exact = bigram_optimum(train, val, VOCAB, chunk=1000)
    assert bigram_optimum(train, val, VOCAB, chunk=1000, eval_tokens=10**6) == exact  # small enough: exact
    bounded = bigram_optimum(train, val, VOCAB, chunk=1000, eval_tokens=5_000)  # 125k of train, 5k of val
    assert bounded != exact and bounded == pytest.approx(exact, abs=0.05)
    with pytest.raises(EvaluationInterrupted):
        bigram_optimum(train, val, VOCAB, chunk=1000, should_stop=lambda: signal.SIGINT)


def test_bits_per_char_is_nats_over_ln2():
    assert bits_per_char(math.log(2)) == pytest.approx(1.0)


# ------------------------------------------------------------------------------ bounded evaluation
def test_a_split_within_eval_tokens_is_scored_exactly_as_the_full_pass():
    model, split = tiny_model(), data(1000)
    for eval_tokens in (0, 999, 10**9):  # 0 is `--eval-tokens all`
        r = evaluate_split(model, split, BLOCK, "cpu", eval_tokens=eval_tokens)
        assert r.exact and r.tokens == r.split_tokens == 999 and r.stderr == 0.0
        assert r.loss == full_pass_loss(model, split, BLOCK, "cpu")


def test_a_larger_split_scores_full_windows_spread_evenly_over_it():
    starts, rest = pass_windows(100_000, 8, eval_tokens=800)
    assert rest == 0 and len(starts) == 100 and torch.equal(starts, pass_windows(100_000, 8, 800)[0])
    gaps = starts.diff()
    assert (starts % 8 == 0).all() and gaps.min() >= 992 and gaps.max() <= 1008  # every ~12,500 windows / 100
    assert starts[0] < 1000 and starts[-1] + 8 > 99_000  # from one end of the split to the other


def test_the_subset_estimate_is_its_windows_mean_and_brackets_the_exact_loss():
    model, split = tiny_model(), data(20_000)
    r = evaluate_split(model, split, BLOCK, "cpu", eval_tokens=2_000)
    assert not r.exact and r.tokens == 2_000 and r.split_tokens == 19_999 and r.stderr > 0
    starts, _ = pass_windows(19_999, BLOCK, 2_000)
    ids = split.long()
    model.eval()  # no dropout
    with torch.no_grad():
        x = torch.stack([ids[s:s + BLOCK] for s in starts])
        y = torch.stack([ids[s + 1:s + 1 + BLOCK] for s in starts])
        logits, _ = model(x)
        by_hand_mean = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1)).item()
    assert r.loss == pytest.approx(by_hand_mean, rel=1e-5)
    exact = full_pass_loss(model, split, BLOCK, "cpu")
    assert abs(r.loss - exact) < 4 * r.stderr


def test_a_stop_request_between_batches_cuts_the_pass_short_with_what_was_done():
    asked = []

    def stop():
        asked.append(1)
        return signal.SIGTERM if len(asked) == 3 else None

    with pytest.raises(EvaluationInterrupted) as e:
        evaluate_split(tiny_model(), data(1000), BLOCK, "cpu", batch_size=4, should_stop=stop)
    assert (e.value.signum, e.value.done, e.value.total) == (signal.SIGTERM, 2 * 4 * BLOCK, 999)
    assert "cut short after 64 of 999 characters" in str(e.value)


def test_progress_hears_about_every_batch_up_to_the_total():
    seen = []
    evaluate_split(tiny_model(), data(1000), BLOCK, "cpu", batch_size=32, progress=lambda d, t: seen.append((d, t)))
    assert len(seen) == 4 and seen[0] == (256, 999) and seen[-1] == (999, 999)  # 124 windows: 4 batches of 32
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
