"""Fast generation: a preallocated per-layer key/value cache, prefill once, then one token per step.

The context window follows `chargpt.model.gpt.window_start`, as naive generation does, so both produce
exactly the same tokens; the cache is rebuilt only when the window jumps (every half block). On the CPU a
float32 GPT runs its forward passes in numpy (`chargpt.model.fastdecode`), free of torch's per-op overhead, once a
probe shows that they give the model's own logits (an edited model falls back to torch, with a note).
`Engine.sample` is what every door (`chargpt sample`, `Run.generate`, the server) calls to sample.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from . import fastdecode
from .gpt import GPT, LanguageModel, window_start
from ..runtime.resources import check_sample_fits
from .sampling import SamplingParams, sample_next

BACKENDS = ("auto", "torch", "numpy")


class KVCache:
    """Keys and values of every layer for positions [0, pos) of the current window: (L, B, nh, T, hs)."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_size: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (n_layer, batch_size, n_head, max_len, head_size)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._k, self._v = self.k.unbind(0), self.v.unbind(0)  # per-layer views, made once
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.pos + k.size(2)
        kc, vc = self._k[layer], self._v[layer]
        kc[:, :, self.pos:end] = k
        vc[:, :, self.pos:end] = v
        return kc[:, :, :end], vc[:, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run a generation step on a single CPU thread.

    A one-token step is a few hundred tiny ops (and a prefill a few small ones, once per half block);
    splitting them across threads costs more in fork/join than it saves, and collapses when other
    processes share the cores. GPUs are left alone.
    """
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


_said: set[str] = set()


def _say_once(text: str) -> None:
    if text not in _said:
        _said.add(text)
        print(text, file=sys.stderr)


class Engine:
    """Generates from a model with a KV cache (GPT) or directly (context-free models such as the bigram).

    `backend` chooses how a GPT decodes: "numpy" (`chargpt.model.fastdecode`, float32 on the CPU), "torch" (the
    model's own forward, any device and dtype), or "auto": numpy where it applies, torch elsewhere. The numpy
    decoder's copy of the weights is made and probed once, and made again only when the weights changed
    (an optimizer step, a `load_state_dict`): one Engine serves every request to a checkpoint.
    """

    def __init__(self, model: LanguageModel, backend: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        if backend == "numpy" and not fastdecode.supports(model):
            raise ValueError("the numpy backend runs a GPT with float32 parameters on the CPU")
        self.model = model.eval()
        self.config = model.config
        self.backend = backend
        self._decoder, self._copied = None, None
        if backend == "auto" and fastdecode.supports(model):
            mismatch = fastdecode.disagreement(model, self._numpy_decoder())
            if mismatch:  # the model's code is not the one the numpy decoder copies: sample what it computes
                self.backend = "torch"
                _say_once(f"note: the numpy decoder does not compute what this model's forward computes ({mismatch}); "
                          f"sampling with the model's own forward in torch")

    def _numpy_decoder(self) -> fastdecode.NumpyDecoder:
        """The numpy copy of the weights as they are now: copied again only when a parameter was replaced or
        changed in place since (each in-place change, an optimizer step or a load, bumps torch's version counter
        of the tensor, the one autograd checks; an edit through `.data` is not seen)."""
        weights = [(p.data_ptr(), p._version) for p in self.model.parameters()]
        if weights != self._copied:
            with one_cpu_thread(torch.device("cpu")):
                self._decoder = fastdecode.NumpyDecoder(self.model)
            self._copied = weights
        return self._decoder

    def _new_cache(self, batch_size: int, like: torch.Tensor) -> KVCache | None:
        if not isinstance(self.model, GPT):
            return None
        c = self.config
        dtype = next(self.model.parameters()).dtype
        return KVCache(c.n_layer, batch_size, c.n_head, c.block_size, c.n_embd // c.n_head, dtype, like.device)

    def stream(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
        """Yield each new token column (B, 1) as soon as it is sampled."""
        numpy_decodes = (self.backend != "torch" and fastdecode.supports(self.model) and idx.device.type == "cpu"
                         and not self.model.training)
        if self.backend == "numpy" and not numpy_decodes:
            raise ValueError("the numpy backend decodes prompts on the CPU, with the model in eval mode")
        run = self._stream_numpy if numpy_decodes else self._stream_torch
        return run(idx, max_new_tokens, temperature, top_k, top_p, generator)

    @torch.inference_mode()
    def _stream_torch(self, idx, max_new_tokens, temperature, top_k, top_p, generator) -> Iterator[torch.Tensor]:
        block = self.config.block_size
        B, P = idx.shape
        cache = self._new_cache(B, idx)
        tokens = torch.empty((B, P + max_new_tokens), dtype=idx.dtype, device=idx.device)  # no growing torch.cat
        tokens[:, :P] = idx
        start = None
        for length in range(P, P + max_new_tokens):
            with one_cpu_thread(idx.device):
                if cache is None:
                    logits, _ = self.model(tokens[:, length - 1:length])
                else:
                    s = window_start(length, block)
                    if s != start:  # new window: prefill it from an empty cache
                        cache.reset()
                        logits, _ = self.model(tokens[:, s:length], cache=cache)
                        start = s
                    else:  # same window: feed only the newest token
                        logits, _ = self.model(tokens[:, length - 1:length], cache=cache)
                nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
                tokens[:, length:length + 1] = nxt
            yield nxt

    def _stream_numpy(self, idx, max_new_tokens, temperature, top_k, top_p, generator) -> Iterator[torch.Tensor]:
        """`stream` with the forward passes in numpy (`chargpt.model.fastdecode`); the logits go back to torch for
        `sample_next`, so the generator is consumed exactly as in naive generation."""
        block = self.config.block_size
        B, P = idx.shape
        decoder = self._numpy_decoder()
        keys, values = decoder.new_cache(B)
        tokens = np.empty((B, P + max_new_tokens), dtype=np.int64)
        tokens[:, :P] = idx.numpy()
        start = pos = None
        for length in range(P, P + max_new_tokens):
            s = window_start(length, block)
            if s != start:  # new window: prefill it
                with one_cpu_thread(idx.device):
                    logits = decoder.prefill(tokens[:, s:length], keys, values)
                start, pos = s, length - s
            else:  # same window: feed only the newest token
                logits = decoder.step(tokens[:, length - 1], pos, keys, values)
                pos += 1
            nxt = sample_next(torch.from_numpy(logits), temperature, top_k, top_p, generator)
            tokens[:, length] = nxt.numpy()[:, 0]
            yield nxt

    def sample(self, ids: list[int], params: SamplingParams, num_samples: int = 1) -> Iterator[torch.Tensor]:
        """Yield each new token column (num_samples, 1) of the samples `params` asks for, continuing the prompt
        `ids` (`chargpt.model.sampling.prompt_ids`); refused before any work when the buffers cannot fit."""
        device = next(self.model.parameters()).device
        check_sample_fits(self.config, num_samples, len(ids) + params.max_new_tokens, device)
        idx = torch.tensor([ids] * num_samples, dtype=torch.long, device=device)
        generator = torch.Generator(device=device).manual_seed(params.seed)
        return self.stream(idx, params.max_new_tokens, temperature=params.temperature, top_k=params.top_k,
                           top_p=params.top_p, generator=generator)

    def generate(self, idx: torch.Tensor, max_new_tokens: int, **kw) -> torch.Tensor:
        new = list(self.stream(idx, max_new_tokens, **kw))
        return torch.cat([idx, *new], dim=1) if new else idx
