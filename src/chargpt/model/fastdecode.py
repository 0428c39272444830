"""Generation on the CPU without torch's per-op overhead: a GPT's forward pass over a key/value cache in numpy.

Decoding a token with a small GPT is ~60 tiny ops whose arithmetic is negligible: torch spends microseconds
dispatching each, numpy a fraction of that. `NumpyDecoder` copies a float32 GPT's weights into numpy arrays
and runs `chargpt.model.gpt.GPT.forward` for a window's prefill and for each new token, for every `ModelConfig`
option. Its logits agree with torch's to float32 rounding (~1e-7), so generation picks the same tokens.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .gpt import NUMPY_DECODES, GPT, RMS_EPS


def supports(model: torch.nn.Module) -> bool:
    """Whether `NumpyDecoder` can run `model`: a GPT whose parameters are float32 CPU tensors and whose options
    are those it implements (`chargpt.model.gpt.NUMPY_DECODES`)."""
    return (isinstance(model, GPT) and all(getattr(model.config, k) in v for k, v in NUMPY_DECODES.items())
            and all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters()))


PROBE = 8  # tokens of the probe: a prefill of all but the last, then one cached step


def disagreement(model: GPT, decoder: "NumpyDecoder | None" = None) -> str | None:
    """How the numpy decoder's logits (`decoder`'s, or a new one's) differ from `model`'s own forward on a short
    probe, beyond float32 rounding; None when they agree. Run on every `Engine`, so that an edit to model.py
    (an activation, a norm, a forward hook) that this copy does not have is never sampled silently with the
    old forward."""
    T = min(PROBE, model.config.block_size)
    tokens = (torch.arange(T) * 7 + 3) % model.config.vocab_size
    idx = tokens[None]
    with torch.inference_mode():
        expected = model(idx)[0][0].float().numpy()  # (T, V)
        decoder = decoder or NumpyDecoder(model)
        keys, values = decoder.new_cache(1)
        got = [decoder.prefill(idx[:, :T - 1].numpy(), keys, values)[0]] if T > 1 else []
        if T > 1:
            got.append(decoder.step(idx[:, T - 1].numpy(), T - 1, keys, values)[0])
        else:
            got.append(decoder.prefill(idx.numpy(), keys, values)[0])
    rows = expected[-len(got):]
    got = np.stack(got)
    tolerance = 1e-4 * max(1.0, float(np.abs(rows).max()))
    diff = float(np.abs(got - rows).max()) if np.isfinite(got).all() else float("inf")
    if diff <= tolerance:
        return None
    return f"largest logit difference {diff:.3g} on a {T}-token probe"


def _array(t: torch.Tensor | None, transpose: bool = False) -> np.ndarray | None:
    """A contiguous float32 copy (a Linear's weight transposed to (in, out), so that `x @ w` is `F.linear`)."""
    if t is None:
        return None
    t = t.detach()
    return np.ascontiguousarray((t.T if transpose else t).numpy(), dtype=np.float32)


_sum_of_squares = getattr(np, "vecdot", None) or (lambda x, y: np.einsum("...i,...i->...", x, y))  # numpy < 2
_EPS = np.float32(RMS_EPS)


def _rms_norm(x: np.ndarray, scale, eps=_EPS) -> np.ndarray:
    """`chargpt.model.gpt.rms_norm`: x / (||x|| * d**-0.5).clamp_min(eps) over the last dimension (scale d**-0.5)."""
    n = np.sqrt(_sum_of_squares(x, x))
    n *= scale
    return x / np.maximum(n, eps, out=n)[..., None]


class _RMSNorm:
    def __init__(self, dim: int):
        self.scale = np.float32(dim ** -0.5)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if len(x) > 1:
            return _rms_norm(x, self.scale)
        # one row (batch 1): its norm in scalars, a third of the calls. A float32 square root and product
        # computed in float64 and rounded once are exactly the float32 operations.
        n = np.float32(math.sqrt(_sum_of_squares(x[0], x[0]))) * self.scale
        return x / (n if n > _EPS else _EPS)


class _LayerNorm:
    """`nn.LayerNorm` over the last dimension, in the order of torch's CPU kernel: x * rstd - mean * rstd."""

    def __init__(self, module: torch.nn.LayerNorm):
        self.weight, self.bias = _array(module.weight), _array(module.bias)
        self.eps = np.float32(module.eps)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        d = x.shape[-1]
        mean = np.add.reduce(x, axis=-1, keepdims=True) / np.float32(d)
        c = x - mean
        rstd = 1 / np.sqrt(_sum_of_squares(c, c)[..., None] / np.float32(d) + self.eps)
        y = (x * rstd - mean * rstd) * self.weight
        return y if self.bias is None else y + self.bias


def _norm(module: torch.nn.Module, dim: int):
    return _LayerNorm(module) if isinstance(module, torch.nn.LayerNorm) else _RMSNorm(dim)


def _linear(module: torch.nn.Linear) -> tuple[np.ndarray, np.ndarray | None]:
    """A Linear's weight transposed to (in, out), so that `x @ w (+ b)` is `F.linear`, and its bias."""
    return _array(module.weight, transpose=True), _array(module.bias)


def _affine(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """`F.linear` with the weight transposed. numpy's OpenBLAS splits a product of many rows (a prefill's positions,
    rows decoded together) over the cores: 1.6-1.8x faster than torch's single thread for 16-65 rows of a 128-wide
    model."""
    y = np.dot(x, w)
    if b is not None:
        y += b
    return y


if hasattr(np, "matvec"):  # numpy >= 2.2: one call for every head
    _matvec, _vecmat = np.matvec, np.vecmat
else:
    def _matvec(a, v):
        return np.matmul(a, v[..., None])[..., 0]

    def _vecmat(v, a):
        return np.matmul(v[..., None, :], a)[..., 0, :]


def _rotations(cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """`apply_rope` at each position as a matrix, (T, hs, hs): x @ R[t] = x * cos[t] + roll(x, hs/2) * sin[t].
    One small matmul instead of four calls per layer; each output is the same two products summed."""
    T, hs = cos.shape
    i = np.arange(hs)
    rolled = (i + hs // 2) % hs  # roll by hs/2: output channel j reads input channel rolled[j]
    rot = np.zeros((T, hs, hs), dtype=np.float32)
    rot[:, i, i] = cos
    rot[:, rolled, i] = sin
    return rot


class NumpyDecoder:
    """A GPT's forward pass for generation: `prefill` a window, then `step` one token at a time.

    Both follow `GPT.forward` with a cache (a prefill, likewise, runs the last block's attention and
    feed-forward for the last position only), in fewer calls, with results that differ by float32 rounding:
    - RoPE: the first layer's queries, keys and values (before rotation) depend on the token alone, so they
      are a table, computed by the model itself; the rotation of a position is one small matrix.
    - QK-norm: the attention scale is folded into the queries' normalization (q * hs**-0.5 / (||q|| * hs**-0.5)
      is q / ||q||, so their clamp is eps / hs**-0.5), and normalized queries and keys bound every score by
      hs**0.5, so the softmax needs no max subtracted.
    - Attention weights are normalized after their product with the values, as SDPA does; a column of ones
      beside the values gives their sum in the same product.
    """

    def __init__(self, model: GPT):
        if not supports(model):
            raise ValueError("NumpyDecoder runs a GPT with float32 parameters on the CPU")
        c = model.config
        self.n_layer, self.n_head, self.block_size = c.n_layer, c.n_head, c.block_size
        self.head_size = c.n_embd // c.n_head
        self.scale = np.float32(self.head_size ** -0.5)  # attention's, and rms_norm's over a head
        self.qk_norm, self.mlp, self.softcap = c.qk_norm, c.mlp, c.logit_softcap
        self.qk_scale = np.array([[1], [self.scale]], dtype=np.float32)  # per (query, key), over heads
        self.qk_eps = np.array([[_EPS / self.scale], [_EPS]], dtype=np.float32)
        self.causal = np.triu(np.full((c.block_size, c.block_size), -np.inf, dtype=np.float32), 1)
        self.wte = _array(model.token_embedding_table.weight)
        self.wpe = self.rot = self.first_qkv = None
        if c.pos == "learned":
            self.wpe = _array(model.position_embedding_table.weight)
        else:
            self.rot = _rotations(_array(model.rope_cos), _array(model.rope_sin))
            block = model.blocks[0]
            with torch.inference_mode():
                qkv = block.sa.qkv(block.ln1(model.token_embedding_table.weight[None]))  # 3 x (1, nh, V, hs)
                self.first_qkv = torch.stack(qkv)[:, 0].permute(2, 0, 1, 3).contiguous().numpy()  # (V, 3, nh, hs)
            if self.qk_norm:
                self.first_qkv[:, 0] *= self.scale
        self.layers = [(_norm(b.ln1, c.n_embd), *_linear(b.sa.c_attn), *_linear(b.sa.c_proj),
                        _norm(b.ln2, c.n_embd), *_linear(b.ffwd.c_fc), *_linear(b.ffwd.c_proj))
                       for b in model.blocks]
        self.ln_f = _norm(model.ln_f, c.n_embd)
        self.head_w, self.head_b = _linear(model.lm_head)

    def new_cache(self, batch_size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Each layer's keys (B, nh, block_size, hs) and values (B, nh, block_size, hs + 1). The values' last
        column is all ones, so that the product of the attention weights with the values carries their sum."""
        shape = (self.n_layer, batch_size, self.n_head, self.block_size, self.head_size)
        values = np.zeros(shape[:-1] + (self.head_size + 1,), dtype=np.float32)
        values[..., -1] = 1
        return list(np.zeros(shape, dtype=np.float32)), list(values)

    def _queries_keys(self, qkv: np.ndarray) -> np.ndarray:
        """The queries and keys (..., 2, nh, hs) of c_attn's output (..., 3, nh, hs), QK-normed if configured."""
        qk = qkv[..., :2, :, :]
        return _rms_norm(qk, self.qk_scale, self.qk_eps) if self.qk_norm else qk

    def _feed_forward(self, x: np.ndarray, ln2, w_fc, b_fc, w_proj, b_proj) -> np.ndarray:
        h = _affine(ln2(x), w_fc, b_fc)
        if self.mlp == "gelu":
            h = F.gelu(torch.from_numpy(h)).numpy()  # the exact erf form, as torch computes it
        else:
            np.maximum(h, 0, out=h)
            if self.mlp == "relu2":
                h *= h
        return _affine(h, w_proj, b_proj)

    def _logits(self, x: np.ndarray) -> np.ndarray:
        logits = _affine(self.ln_f(x), self.head_w, self.head_b)
        if self.softcap > 0:
            cap = self.softcap
            logits = (cap * torch.tanh(torch.from_numpy(logits) / cap)).numpy()
        return logits

    def prefill(self, tokens: np.ndarray, keys: list[np.ndarray], values: list[np.ndarray]) -> np.ndarray:
        """Logits (B, V) after the window `tokens` (B, T), whose keys and values are written at [0, T)."""
        B, T = tokens.shape
        nh, hs = self.n_head, self.head_size
        C = nh * hs
        x = self.wte[tokens]  # (B, T, C)
        if self.wpe is not None:
            x += self.wpe[:T]
        x = x.reshape(B * T, C)
        for layer, (ln1, w_attn, b_attn, w_aproj, b_aproj, ln2, w_fc, b_fc, w_mproj, b_mproj) in enumerate(
                self.layers):
            if layer == 0 and self.first_qkv is not None:
                qkv = self.first_qkv[tokens]  # (B, T, 3, nh, hs)
                qk = qkv[:, :, :2]
            else:
                qkv = _affine(ln1(x), w_attn, b_attn).reshape(B, T, 3, nh, hs)
                qk = self._queries_keys(qkv)
            if self.rot is not None:  # position t of every row, query and key, head: (T, B * 2 * nh, hs) @ R[t]
                qk = np.matmul(qk.transpose(1, 0, 2, 3, 4).reshape(T, -1, hs), self.rot[:T])
                qk = qk.reshape(T, B, 2, nh, hs).transpose(1, 0, 2, 3, 4)
            k, v = keys[layer][:, :, :T], values[layer][:, :, :T]
            k[...] = qk[:, :, 1].transpose(0, 2, 1, 3)
            v[..., :hs] = qkv[:, :, 2].transpose(0, 2, 1, 3)
            last = layer == self.n_layer - 1  # the last block: the last position's output only
            q = (qk[:, -1:, 0] if last else qk[:, :, 0]).transpose(0, 2, 1, 3)  # (B, nh, Tq, hs)
            att = np.matmul(q, k.swapaxes(-1, -2))  # (B, nh, Tq, T)
            if not last:
                att += self.causal[:T, :T]
            if not self.qk_norm:
                att *= self.scale
                att -= np.maximum.reduce(att, axis=-1, keepdims=True)
            np.exp(att, out=att)
            y = np.matmul(att, v)  # (B, nh, Tq, hs + 1): the values' weighted sum, and the weights' sum
            y = y[..., :hs] / y[..., hs:]
            y = _affine(y.transpose(0, 2, 1, 3).reshape(-1, C), w_aproj, b_aproj)
            x = (x.reshape(B, T, C)[:, -1] if last else x) + y
            x = x + self._feed_forward(x, ln2, w_fc, b_fc, w_mproj, b_mproj)
        return self._logits(x)

    def step(self, tokens: np.ndarray, pos: int, keys: list[np.ndarray], values: list[np.ndarray]) -> np.ndarray:
        """Logits (B, V) after `tokens` (B,) at window position `pos`, whose keys and values are written at `pos`;
        positions [0, pos) of the cache hold the window's earlier tokens."""
        B, nh, hs = tokens.shape[0], self.n_head, self.head_size
        end = pos + 1
        x = self.wte.take(tokens, axis=0)  # (B, C)
        if self.wpe is not None:
            x += self.wpe[pos]
        for layer, (ln1, w_attn, b_attn, w_aproj, b_aproj, ln2, w_fc, b_fc, w_mproj, b_mproj) in enumerate(
                self.layers):
            if layer == 0 and self.first_qkv is not None:
                qkv = self.first_qkv.take(tokens, axis=0)  # (B, 3, nh, hs)
                qk = qkv[:, :2]
            else:
                qkv = _affine(ln1(x), w_attn, b_attn).reshape(B, 3, nh, hs)
                qk = self._queries_keys(qkv)
            if self.rot is not None:
                qk = np.dot(qk.reshape(-1, hs), self.rot[pos]).reshape(B, 2, nh, hs)
            k, v = keys[layer], values[layer]
            k[:, :, pos] = qk[:, 1]
            v[:, :, pos, :hs] = qkv[:, 2]
            att = _matvec(k[:, :, :end], qk[:, 0])  # (B, nh, T): a single query attends to every cached key
            if not self.qk_norm:
                att *= self.scale
                att -= np.maximum.reduce(att, axis=-1, keepdims=True)
            np.exp(att, out=att)
            y = _vecmat(att, v[:, :, :end])  # (B, nh, hs + 1): the values' weighted sum, and the weights' sum
            y = y[..., :hs] / y[..., hs:]
            x = x + _affine(y.reshape(B, nh * hs), w_aproj, b_aproj)  # heads side by side, projected
            x = x + self._feed_forward(x, ln2, w_fc, b_fc, w_mproj, b_mproj)
        return self._logits(x)

    def step_rows(self, tokens: np.ndarray, pos: np.ndarray, keys: list[np.ndarray],
                  values: list[np.ndarray]) -> np.ndarray:
        """`step` for rows each at its own window position `pos` (B,), as continuous batching decodes them: each
        row's key and value are written at its position, and its query attends to its positions [0, pos] only.
        The matrix products run on OpenBLAS's threads (`_affine`)."""
        B, nh, hs = tokens.shape[0], self.n_head, self.head_size
        rows, end = np.arange(B), int(pos.max()) + 1
        hidden = np.where(np.arange(end) > pos[:, None], np.float32(-np.inf), np.float32(0))[:, None]  # (B, 1, T)
        x = self.wte.take(tokens, axis=0)  # (B, C)
        if self.wpe is not None:
            x += self.wpe[pos]
        rot = None if self.rot is None else self.rot[pos]  # (B, hs, hs): each row's rotation at its own position
        for layer, (ln1, w_attn, b_attn, w_aproj, b_aproj, ln2, w_fc, b_fc, w_mproj, b_mproj) in enumerate(
                self.layers):
            if layer == 0 and self.first_qkv is not None:
                qkv = self.first_qkv.take(tokens, axis=0)  # (B, 3, nh, hs)
                qk = qkv[:, :2]
            else:
                qkv = _affine(ln1(x), w_attn, b_attn).reshape(B, 3, nh, hs)
                qk = self._queries_keys(qkv)
            if rot is not None:  # each row's queries and keys (B, 2 * nh, hs) @ its rotation, as `step` rotates
                qk = np.matmul(qk.reshape(B, 2 * nh, hs), rot).reshape(B, 2, nh, hs)
            k, v = keys[layer], values[layer]
            k[rows, :, pos] = qk[:, 1]
            v[rows, :, pos, :hs] = qkv[:, 2]
            att = _matvec(k[:, :, :end], qk[:, 0])  # (B, nh, T)
            att += hidden  # a shorter row's later positions hold another completion's keys: weight 0
            if not self.qk_norm:
                att *= self.scale
                att -= np.maximum.reduce(att, axis=-1, keepdims=True)
            np.exp(att, out=att)
            y = _vecmat(att, v[:, :, :end])
            y = y[..., :hs] / y[..., hs:]
            x = x + _affine(y.reshape(B, nh * hs), w_aproj, b_aproj)
            x = x + self._feed_forward(x, ln2, w_fc, b_fc, w_mproj, b_mproj)
        return self._logits(x)
