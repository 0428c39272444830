"""Loss measurement: the notebook's quick random-batch estimate, the end-of-run pass over a split (exact, or an
evenly spread subset of a large split, sharded over DDP ranks, interruptible), the bigram optimum."""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..runtime import distributed
from ..data.batch import get_batch, windows
from ..config import EVAL_TOKENS
from ..errors import ChargptError, DataError
from ..runs.records import bits_per_char  # noqa: F401  (the name readers of a pass use)

BIGRAM_COUNT_FACTOR = 25  # the bigram optimum counts up to this many times the evaluated tokens of train


class EvaluationInterrupted(ChargptError):
    """A pass stopped by SIGINT/SIGTERM (`signum`) after scoring `done` of `total` targets."""

    def __init__(self, signum: int, done: int, total: int):
        super().__init__(f"evaluation cut short after {done:,} of {total:,} characters")
        self.signum, self.done, self.total = signum, done, total


@dataclass
class PassResult:
    """The loss of a pass over a split: exact when every target was scored, else an estimate."""

    loss: float  # mean nats/char over the targets scored
    tokens: int  # targets scored
    split_tokens: int  # targets in the split
    stderr: float  # standard error of `loss` as an estimate of the whole split's loss; 0.0 when exact

    @property
    def exact(self) -> bool:
        return self.tokens == self.split_tokens


@torch.no_grad()
def estimate_loss(model, splits: dict[str, torch.Tensor], eval_iters: int, batch_size: int, block_size: int,
                  device, generator: torch.Generator | None = None, autocast=nullcontext,
                  seconds: float | None = None, min_batches: int = 1) -> dict[str, float]:
    """Mean loss over `eval_iters` random batches per split (the notebook's `estimate_loss`). Given `seconds`, each
    split stops early, after `min_batches`, when its share of them would not fit one more batch."""
    was_training = model.training
    model.eval()
    out = {}
    for name, data in splits.items():
        losses, n, t0 = torch.zeros(eval_iters), 0, time.perf_counter()
        while n < eval_iters and (seconds is None or n < min_batches
                                  or (time.perf_counter() - t0) * (n + 1) / n <= seconds / len(splits)):
            x, y = get_batch(data, batch_size, block_size, device, generator)
            with autocast():
                _, loss = model(x, y)
            losses[n] = loss.item()
            n += 1
        out[name] = losses[:n].mean().item()
    model.train(was_training)
    return out


def describe_pass(result: PassResult, split: str) -> str:
    """One line for a pass over `split`: the exact loss, or the estimate with its standard error and size."""
    bpc = bits_per_char(result.loss)
    if result.exact:
        return f"full-pass {split} loss {result.loss:.4f} nats/char ({bpc:.4f} bits/char)"
    return (f"{split} loss {result.loss:.4f} ± {result.stderr:.4f} nats/char ({bpc:.4f} bits/char) on "
            f"{result.tokens:,} of {result.split_tokens:,} characters, evenly spread (--eval-tokens all: exact)")


def pass_windows(n_targets: int, block_size: int, eval_tokens: int = 0) -> tuple[torch.Tensor, int]:
    """Starts of the full windows (of `block_size` targets) a pass scores, and the length of a last, shorter
    window at `n_targets - rest` (0 when none).

    Every target once (the exact pass) when `eval_tokens` is 0 or covers the split; otherwise
    `eval_tokens // block_size` full windows spread evenly over the split, the same ones on every call."""
    full = n_targets // block_size
    if not eval_tokens or n_targets <= eval_tokens:
        return torch.arange(full) * block_size, n_targets - full * block_size
    k = max(1, min(full, eval_tokens // block_size))
    return (torch.arange(k) * 2 + 1) * full // (2 * k) * block_size, 0  # window i at the middle of its k-th


@torch.no_grad()
def evaluate_split(model, data: torch.Tensor, block_size: int, device, *, eval_tokens: int = 0,
                   batch_size: int | None = None, autocast=nullcontext, dist_info: distributed.DistInfo | None = None,
                   should_stop: Callable[[], int | None] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> PassResult:
    """Mean cross-entropy (nats/char) over the windows `pass_windows` picks, each window seeing its own tokens
    as context. Deterministic: no sampling.

    Under DDP (`dist_info`) every rank calls this; each scores every world_size-th window and the sums are
    all-reduced, so all ranks return the same result. `should_stop` (a signal number, or None) is asked between
    batches (and agreed on by all ranks): a stop raises `EvaluationInterrupted`. `progress(done, total)`
    hears about the targets scored (by all ranks, estimated from this one's share).
    """
    n = len(data) - 1
    if n < 1:
        raise DataError("a split needs at least 2 tokens to be scored")
    info = dist_info or distributed.DistInfo()
    rank, world = (info.rank, info.world_size) if info.enabled else (0, 1)
    starts, rest = pass_windows(n, block_size, eval_tokens)
    total = len(starts) * block_size + rest
    mine = starts[rank::world]
    # ~2k tokens per forward whatever the context: as fast as larger batches on a CPU, at a fraction of the memory
    batch_size = batch_size or max(1, 2048 // block_size)
    batches = -(-(-(-len(starts) // world)) // batch_size)  # the same count on every rank (they agree on stops)
    was_training = model.training
    model.eval()
    sums = torch.zeros(5, dtype=torch.float64)  # nll, targets, full windows, sum and sum of squares of their means
    try:
        for b in range(batches):
            signum = int(should_stop() or 0) if should_stop else 0
            if info.enabled and should_stop:
                signum = int(distributed.all_max([float(signum)], info)[0])
            if signum:
                done = int(distributed.all_sum(sums[1:2].tolist(), info)[0]) if info.enabled else int(sums[1])
                raise EvaluationInterrupted(signum, done, total)
            batch = mine[b * batch_size:(b + 1) * batch_size]
            if len(batch):
                per_window = _window_nll(model, data, batch, block_size, device, autocast)
                means = per_window / block_size
                sums += torch.stack([per_window.sum(), torch.tensor(float(per_window.numel() * block_size)),
                                     torch.tensor(float(len(means))), means.sum(), (means ** 2).sum()])
            if progress:
                progress(min(total, (b + 1) * batch_size * world * block_size), total)
        if rest and rank == 0:  # the exact pass's last, shorter window
            sums[0] += _window_nll(model, data, torch.tensor([n - rest]), rest, device, autocast).sum()
            sums[1] += rest
    finally:
        model.train(was_training)
    if info.enabled:
        sums = torch.tensor(distributed.all_sum(sums.tolist(), info), dtype=torch.float64)
    nll, tokens, k, s1, s2 = sums.tolist()
    stderr = 0.0
    if tokens < n and k > 1:  # windows as a sample of the split's n // block_size windows (finite population)
        var = max(0.0, (s2 - s1 * s1 / k) / (k - 1))
        stderr = math.sqrt(var / k * max(0.0, 1 - k / (n // block_size)))
    return PassResult(nll / tokens, int(tokens), n, stderr)


def _window_nll(model, data: torch.Tensor, starts: torch.Tensor, length: int, device, autocast) -> torch.Tensor:
    """(len(starts),) float64: the summed cross-entropy of each window of `length` targets."""
    window = windows(data, starts, length + 1).to(device)
    with autocast():
        logits, _ = model(window[:, :-1])
    nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), window[:, 1:].reshape(-1), reduction="none")
    return nll.view(len(starts), length).double().sum(1).cpu()


def full_pass_loss(model, data: torch.Tensor, block_size: int, device, batch_size: int | None = None,
                   autocast=nullcontext) -> float:
    """Mean cross-entropy (nats/char) over every token of `data` after the first, each scored exactly once:
    consecutive windows of `block_size` targets (the last one shorter)."""
    return evaluate_split(model, data, block_size, device, batch_size=batch_size, autocast=autocast).loss


def bigram_optimum(train: torch.Tensor, val: torch.Tensor, vocab_size: int, chunk: int = 1 << 20,
                   eval_tokens: int = 0, should_stop: Callable[[], int | None] | None = None) -> float:
    """Val loss (nats/char) of add-one-smoothed bigram counts from train: the best a bigram can do.

    Exact when `eval_tokens` is 0 or the splits are small; otherwise counted from about
    `BIGRAM_COUNT_FACTOR * eval_tokens` characters of train and scored on about `eval_tokens` of val, both
    in pieces spread evenly over the split."""
    counts = torch.zeros(vocab_size * vocab_size, dtype=torch.long)
    for ids in _pieces(train, chunk, BIGRAM_COUNT_FACTOR * eval_tokens, should_stop):
        counts += torch.bincount(ids[:-1] * vocab_size + ids[1:], minlength=vocab_size * vocab_size)
    counts = counts.view(vocab_size, vocab_size).double() + 1.0
    logp = (counts / counts.sum(1, keepdim=True)).log()
    nll, pairs = torch.zeros((), dtype=torch.float64), 0
    for ids in _pieces(val, chunk, eval_tokens, should_stop):
        nll += -logp[ids[:-1], ids[1:]].sum()
        pairs += len(ids) - 1
    return (nll / pairs).item()


def _pieces(data: torch.Tensor, chunk: int, budget: int = 0, should_stop=None):
    """int64 pieces of `data` that overlap by one token, so every adjacent pair is in exactly one piece; with a
    `budget` smaller than the split, about `budget` pairs in pieces spread evenly over it. A large split is
    never turned into int64 (8 bytes a token) whole."""
    n = len(data) - 1  # pairs
    if budget and n > budget:
        chunk = min(chunk, budget)
        k = max(1, budget // chunk)
        starts = [(2 * i + 1) * (n // chunk) // (2 * k) * chunk for i in range(k)]
    else:
        starts = list(range(0, n, chunk))
    for start in starts:
        signum = should_stop() if should_stop else None
        if signum:
            raise EvaluationInterrupted(signum, 0, n)
        yield windows(data, torch.tensor([start]), min(chunk, n - start) + 1)[0]
