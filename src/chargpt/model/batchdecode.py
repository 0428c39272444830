"""Continuous batching: many completions of one model decoded together, one batched forward pass per token.

Each completion is a row of a preallocated key/value cache, at its own position, with its own sampling and seeded
generator; rows join between steps (the prompt prefilled on its own) and leave at once, freeing their row. The
server's decode loop, `Run.generate([...])` and `chargpt sample --prompts-file` all decode through `BatchDecoder`.

A row decoded alone computes exactly what `Engine.sample` computes. Rows decoded together agree with it to float32
rounding (a matrix product over many rows rounds differently from one over a row), so a seeded sample may rarely
take another path; the batched forward pass is a second copy of `GPT.forward` and is probed against it, as the
numpy decoder is: a model it does not compute decodes its rows one at a time with its own forward.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import fastdecode
from .engine import Engine, _say_once, one_cpu_thread
from .gpt import GPT, window_start
from .sampling import SamplingParams, sample_next, sample_rows
from ..runtime.resources import available_bytes, check_sample_fits, generation_bytes

MAX_ROWS = 64  # the most rows a decoder gets by default: beyond it a step costs as much per row as a stream alone
MEMORY_SHARE = 4  # by default the rows' buffers take at most a quarter of the free memory
CALIBRATE = (2, 3, 4, 6, 8)  # row counts at which a batched step is timed against the rows one at a time


@dataclass(eq=False)
class Row:
    """One completion in a batch: its tokens so far (the prompt's, then those sampled), the window its cache holds,
    and its own sampling parameters and generator. `tag` is the caller's."""
    params: SamplingParams
    tokens: np.ndarray  # (prompt + max_new_tokens,) int64
    length: int  # tokens so far
    prompt_length: int
    generator: torch.Generator
    tag: object = None
    slot: int = -1  # its row of the cache while it is in the batch
    start: int | None = None  # the first token of the window its cache holds; None: not prefilled yet

    @property
    def produced(self) -> int:
        return self.length - self.prompt_length

    @property
    def done(self) -> bool:
        return self.produced >= self.params.max_new_tokens


def default_rows(engine: Engine, limit: int = MAX_ROWS) -> int:
    """How many rows fit in a share of the free memory (at least 1, at most `limit`)."""
    model = engine.model
    device = next(model.parameters()).device
    free = available_bytes(device)
    per_row = sum(generation_bytes(model.config, 1, model.config.block_size).values())
    if free is None:
        return limit
    return max(1, min(limit, free // MEMORY_SHARE // max(per_row, 1)))


class BatchDecoder:
    """Up to `max_rows` completions of `engine`'s model, each advanced by one token per `step`.

    Decodes where the Engine decodes (`backend`: the numpy decoder for a float32 GPT on the CPU, torch elsewhere);
    the cache is allocated, and the batched step probed and timed, at the first step. Not thread-safe: one thread
    adds, steps and removes."""

    def __init__(self, engine: Engine, max_rows: int):
        if max_rows < 1:
            raise ValueError(f"a batch needs at least one row, got {max_rows}")
        self.engine, self.max_rows = engine, max_rows
        self.model = engine.model
        self.device = next(self.model.parameters()).device
        self.rows: list[Row] = []  # rows[i].slot == i: the active rows are the cache's first len(rows)
        self._backend: _Backend | None = None
        self.batch_from = 2  # fewer rows than this decode one at a time: measured at the first step (`_batch_from`)

    @property
    def backend(self) -> str | None:
        """The forward pass that decodes the rows (numpy or torch; None before the first step)."""
        return self._backend and self._backend.name

    @property
    def free(self) -> int:
        return self.max_rows - len(self.rows)

    def add(self, ids: list[int], params: SamplingParams, tag=None) -> Row:
        """A new row continuing the prompt `ids`; it is prefilled at the next `step`."""
        if not self.free:
            raise ValueError(f"all {self.max_rows} rows are in use")
        if not ids or params.max_new_tokens < 1:
            raise ValueError("a row needs a prompt of at least one token and at least one token to sample")
        tokens = np.empty(len(ids) + params.max_new_tokens, dtype=np.int64)
        tokens[:len(ids)] = ids
        generator = torch.Generator(device=self.device).manual_seed(params.seed)
        row = Row(params, tokens, len(ids), len(ids), generator, tag, slot=len(self.rows))
        self.rows.append(row)
        return row

    def remove(self, row: Row) -> None:
        """Take `row` out of the batch: the last row moves into its slot."""
        if row.slot < 0:
            return
        last = self.rows.pop()
        if last is not row:
            if last.start is not None:
                self._backend.move(last.slot, row.slot, last.length - last.start)
            last.slot = row.slot
            self.rows[row.slot] = last
        row.slot = -1

    def step(self) -> list[tuple[Row, int]]:
        """Advance every row by one token; each (row, token) sampled. A new row, and one whose window has moved
        on (`window_start`), is prefilled on its own; the others decode their newest token together. A row that
        reached its `max_new_tokens` leaves."""
        backend = self._backend or self._make_backend()
        if len(self.rows) == 1 and backend.name == "numpy":
            return self._step_alone(backend, self.rows[0])
        block = self.model.config.block_size
        pieces: dict[int, torch.Tensor] = {}  # logits by first slot: a prefilled row's, a run of stepped rows'
        stepping = []
        starts = [window_start(row.length, block) if backend.cached else None for row in self.rows]
        # torch's work (the torch forward; for the numpy decoder, the sampling of many rows) on one thread: torch's
        # threads spinning beside OpenBLAS's, which the numpy decoder's products of many rows (a prefill, rows
        # decoded together) run on, make a step several times slower. A row stepped alone needs none of that, and
        # switching torch's threads twice a token costs ~5%.
        torch_work = (backend.name != "numpy" or len(self.rows) >= self.batch_from
                      or any(s != row.start for s, row in zip(starts, self.rows)))
        with one_cpu_thread(self.device) if torch_work else nullcontext():
            for row, s in zip(self.rows, starts):
                if s != row.start:
                    pieces[row.slot] = backend.prefill(row.slot, row.tokens[s:row.length])
                    row.start = s
                else:
                    stepping.append(row)
            for lo, hi in _runs([r.slot for r in stepping]):
                rows = self.rows[lo:hi]
                tokens = np.array([r.tokens[r.length - 1] for r in rows], dtype=np.int64)
                pos = np.array([r.length - 1 - (r.start or 0) for r in rows], dtype=np.int64)
                pieces[lo] = backend.step(lo, hi, tokens, pos, together=hi - lo >= self.batch_from)
            logits = pieces[0] if len(pieces) == 1 else torch.cat([pieces[k] for k in sorted(pieces)])
            picked = sample_rows(logits, [(r.params, r.generator) for r in self.rows])
        out = list(zip(self.rows, picked))
        for row, token in out:
            row.tokens[row.length] = token
            row.length += 1
        for row, _ in out:
            if row.done:
                self.remove(row)
        return out

    def _step_alone(self, backend: "_NumpyRows", row: Row) -> list[tuple[Row, int]]:
        """`step` of one row with the numpy decoder, as `Engine` decodes a single stream: the same calls, without
        the batch's bookkeeping (a tenth of a token's time)."""
        s = window_start(row.length, self.model.config.block_size)
        if s != row.start:
            with one_cpu_thread(self.device):
                logits = backend.prefill(row.slot, row.tokens[s:row.length])
            row.start = s
        else:
            logits = backend.step_alone(row.slot, row.tokens[row.length - 1:row.length], row.length - 1 - s)
        p = row.params
        token = int(sample_next(logits, p.temperature, p.top_k, p.top_p, row.generator))
        row.tokens[row.length] = token
        row.length += 1
        if row.done:
            self.remove(row)
        return [(row, token)]

    def _make_backend(self) -> "_Backend":
        model, engine = self.model, self.engine
        if not isinstance(model, GPT):
            self._backend = _Contextless(model)
        elif (engine.backend != "torch" and fastdecode.supports(model) and self.device.type == "cpu"
              and not model.training):
            self._backend = _NumpyRows(engine._numpy_decoder(), self.max_rows)
        else:
            self._backend = _TorchRows(model, self.max_rows)
        if self.max_rows < 2 or not self._backend.cached:
            return self._backend
        with one_cpu_thread(self.device):
            mismatch = _probe(self._backend, model)
            if mismatch:
                self.batch_from = self.max_rows + 1
                _say_once(f"note: the batched decoding step does not compute what this model's forward computes "
                          f"({mismatch}); decoding each completion on its own")
            elif self.device.type == "cpu" and self.max_rows > 2:
                self.batch_from = _batch_from(self._backend, self.max_rows, model.config.block_size)
        return self._backend


def _runs(slots: list[int]) -> Iterator[tuple[int, int]]:
    """Maximal runs [lo, hi) of consecutive slots in the sorted `slots`."""
    lo = prev = None
    for s in slots:
        if lo is None:
            lo = prev = s
        elif s == prev + 1:
            prev = s
        else:
            yield lo, prev + 1
            lo = prev = s
    if lo is not None:
        yield lo, prev + 1


# ------------------------------------------------------------------------------------------ backends
class _Backend:
    """A batch's cache and forward passes: `prefill` one row's window, `step` the rows [lo, hi) by a token each,
    `together` in one batched forward or one row at a time (exactly as `Engine` decodes a single stream)."""
    name = "none"
    cached = True

    def prefill(self, slot: int, window: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def step(self, lo: int, hi: int, tokens: np.ndarray, pos: np.ndarray, together: bool = True) -> torch.Tensor:
        raise NotImplementedError

    def move(self, src: int, dst: int, length: int) -> None:
        raise NotImplementedError


class _NumpyRows(_Backend):
    """The numpy decoder (`chargpt.model.fastdecode`): a row alone is `NumpyDecoder.step`, rows together
    `NumpyDecoder.step_rows`."""
    name = "numpy"

    def __init__(self, decoder: fastdecode.NumpyDecoder, max_rows: int):
        self.decoder = decoder
        self.keys, self.values = decoder.new_cache(max_rows)
        self.row = [self._views(i, i + 1) for i in range(max_rows)]  # each row's cache as a cache of one row

    def _views(self, lo: int, hi: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        return [k[lo:hi] for k in self.keys], [v[lo:hi] for v in self.values]

    def prefill(self, slot, window):
        return torch.from_numpy(self.decoder.prefill(window[None], *self.row[slot]))

    def step(self, lo, hi, tokens, pos, together=True):
        if together and hi - lo > 1:
            return torch.from_numpy(self.decoder.step_rows(tokens, pos, *self._views(lo, hi)))
        out = [self.decoder.step(tokens[i:i + 1], int(pos[i]), *self.row[lo + i]) for i in range(hi - lo)]
        return torch.from_numpy(out[0] if len(out) == 1 else np.concatenate(out))

    def step_alone(self, slot: int, token: np.ndarray, pos: int) -> torch.Tensor:
        """`step` of the one row `slot`: its `token` (1,) at window position `pos`."""
        return torch.from_numpy(self.decoder.step(token, pos, *self.row[slot]))

    def move(self, src, dst, length):
        for k, v in zip(self.keys, self.values):
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]


class _RowCache:
    """One row of a `_TorchRows` cache seen as the `KVCache` that `GPT.forward` fills: a row alone runs the
    model's own forward, exactly as `Engine` does."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, pos: int = 0):
        self.k, self.v, self.pos = k, v, pos  # (L, 1, nh, T, hs) views

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.pos + k.size(2)
        kc, vc = self.k[layer], self.v[layer]
        kc[:, :, self.pos:end] = k
        vc[:, :, self.pos:end] = v
        return kc[:, :, :end], vc[:, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n


class _TorchRows(_Backend):
    """The model's own modules in torch, on any device and dtype: a row alone is `GPT.forward` over its cache,
    rows together `step_rows`."""
    name = "torch"

    def __init__(self, model: GPT, max_rows: int):
        c = model.config
        self.model = model
        p = next(model.parameters())
        shape = (c.n_layer, max_rows, c.n_head, c.block_size, c.n_embd // c.n_head)
        self.k = torch.zeros(shape, dtype=p.dtype, device=p.device)
        self.v = torch.zeros(shape, dtype=p.dtype, device=p.device)

    def _row(self, slot: int, pos: int = 0) -> _RowCache:
        return _RowCache(self.k[:, slot:slot + 1], self.v[:, slot:slot + 1], pos)

    @torch.inference_mode()
    def prefill(self, slot, window):
        idx = torch.from_numpy(window[None]).to(self.k.device)
        return self.model(idx, cache=self._row(slot))[0][:, -1]

    @torch.inference_mode()
    def step(self, lo, hi, tokens, pos, together=True):
        idx = torch.from_numpy(tokens).to(self.k.device)
        if hi - lo == 1 or not together:
            return torch.cat([self.model(idx[i:i + 1, None], cache=self._row(lo + i, int(pos[i])))[0][:, -1]
                              for i in range(hi - lo)])
        at = torch.from_numpy(pos).to(self.k.device)
        return step_rows(self.model, idx, at, self.k[:, lo:hi], self.v[:, lo:hi])

    def move(self, src, dst, length):
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]


class _Contextless(_Backend):
    """A model without a cache (the bigram): its own forward over each row's newest token, all rows at once."""
    name = "torch"
    cached = False

    def __init__(self, model: torch.nn.Module):
        self.model = model

    @torch.inference_mode()
    def step(self, lo, hi, tokens, pos, together=True):
        device = next(self.model.parameters()).device
        return self.model(torch.from_numpy(tokens[:, None]).to(device))[0][:, -1]

    def move(self, src, dst, length):
        pass


def step_rows(model: GPT, tokens: torch.Tensor, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`GPT.forward` of one new token per row (B,), each at its own window position `pos` (B,), over the caches
    `k`, `v` (L, B, nh, T, hs): logits (B, V). Each row's key and value are written at its position and its query
    attends to its positions [0, pos] only (a mask), through the model's own modules."""
    B = tokens.size(0)
    rows, end = torch.arange(B, device=tokens.device), int(pos.max()) + 1
    seen = (torch.arange(end, device=tokens.device) <= pos[:, None])[:, None, None]  # (B, 1, 1, T)
    x = model.token_embedding_table(tokens[:, None])  # (B, 1, C)
    rope = None
    if model.config.pos == "learned":
        x = x + model.position_embedding_table(pos)[:, None]
    else:
        rope = (model.rope_cos[pos][:, None, None], model.rope_sin[pos][:, None, None])  # (B, 1, 1, hs)
    x = model.drop(x)
    for i, block in enumerate(model.blocks):
        sa = block.sa
        q, kn, vn = sa.qkv(block.ln1(x), rope)  # (B, nh, 1, hs)
        k[i, rows, :, pos] = kn[:, :, 0]
        v[i, rows, :, pos] = vn[:, :, 0]
        y = F.scaled_dot_product_attention(q, k[i, :, :, :end], v[i, :, :, :end], attn_mask=seen)
        x = x + sa.resid_dropout(sa.c_proj(y.transpose(1, 2).reshape(B, 1, -1)))
        x = x + block.ffwd(block.ln2(x))
    logits = model.lm_head(model.ln_f(x))[:, 0]
    if model.config.logit_softcap > 0:
        cap = model.config.logit_softcap
        logits = cap * torch.tanh(logits / cap)
    return logits


PROBE = (3, 6)  # window lengths of the probe's two rows: the shorter one must not see the longer one's keys


@torch.inference_mode()
def _probe(backend: _Backend, model: GPT) -> str | None:
    """How the batched step's logits differ from the model's own forward for two rows of different lengths,
    beyond float32 rounding; None when they agree. Writes the first two rows of the cache, before any row holds
    a completion."""
    block = model.config.block_size
    lengths = [min(n, block) for n in PROBE]
    device = next(model.parameters()).device
    seqs = [(torch.arange(n) * 5 + 2 + r) % model.config.vocab_size for r, n in enumerate(lengths)]
    expected = torch.stack([model(s[None].to(device))[0][0, -1].float() for s in seqs])
    for slot, s in enumerate(seqs):
        if len(s) > 1:
            backend.prefill(slot, s[:-1].numpy())
    tokens = np.array([int(s[-1]) for s in seqs], dtype=np.int64)
    pos = np.array([len(s) - 1 for s in seqs], dtype=np.int64)
    got = backend.step(0, 2, tokens, pos).float()
    eps = torch.finfo(next(model.parameters()).dtype).eps  # float32 agrees to 1e-4, bfloat16 to its own rounding
    tolerance = max(1e-4, 16 * eps) * max(1.0, float(expected.abs().max()))
    diff = float((got - expected).abs().max()) if torch.isfinite(got).all() else float("inf")
    return None if diff <= tolerance else f"largest logit difference {diff:.3g} on a two-row probe"


def _batch_from(backend: _Backend, max_rows: int, block: int) -> int:
    """The fewest rows that one batched step decodes faster than the rows one at a time, timed on this machine
    (best of 3): a matrix product over a few rows can cost more than a product over each. Writes the first rows
    of the cache at mid-window, before any row holds a completion."""
    pos_at = block // 2
    for n in CALIBRATE:
        if n > max_rows:
            break
        tokens, pos = np.arange(n, dtype=np.int64), np.full(n, pos_at, dtype=np.int64)
        seconds = {}
        for together in (True, False):
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                backend.step(0, n, tokens, pos, together)
                best = min(best, time.perf_counter() - t0)
            seconds[together] = best
        if seconds[True] < seconds[False]:
            return n
    return CALIBRATE[-1] + 1


# -------------------------------------------------------------------------------------- all at once
def sample_all(engine: Engine, prompts: list[list[int]], params: SamplingParams,
               max_rows: int | None = None) -> list[list[int]]:
    """The tokens sampled after each prompt (ids, `chargpt.model.sampling.prompt_ids`), decoded together, each
    with `params` and its own generator seeded with `params.seed`: each is what `Engine.sample` gives that
    prompt alone, up to float32 rounding. At most `max_rows` (default: as memory allows) at a time; refused
    before any work when the buffers cannot fit."""
    if params.max_new_tokens == 0 or not prompts:
        return [[] for _ in prompts]
    rows = min(len(prompts), max_rows or default_rows(engine))
    check_sample_fits(engine.config, rows, max(map(len, prompts)) + params.max_new_tokens,
                      next(engine.model.parameters()).device)
    batch = BatchDecoder(engine, rows)
    waiting = list(enumerate(prompts))[::-1]
    out: list[list[int]] = [[] for _ in prompts]
    while waiting or batch.rows:
        while waiting and batch.free:
            i, ids = waiting.pop()
            batch.add(ids, params, tag=i)
        for row, token in batch.step():
            out[row.tag].append(token)
    return out
