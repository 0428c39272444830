"""The models, written the way the lecture builds them: the bigram baseline, then the GPT.

`GPT` is the lecture's transformer (token + position embeddings, Blocks of causal self-attention and a
feed-forward network, final LayerNorm, linear head). Each modern change is one `ModelConfig` field:
RoPE, RMSNorm, ReLU², QK-norm, no biases, zero-init output projections, logit soft-capping, tied head.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .sampling import sample_next


# What the numpy decoder (fastdecode.py) implements, field by field; Engine also compares its logits with
# GPT.forward on a probe, so an edit to the code below that this list cannot see still falls back to torch.
NUMPY_DECODES = {"pos": {"learned", "rope"}, "norm": {"layernorm", "rmsnorm"}, "mlp": {"relu", "relu2", "gelu"}}


def window_start(length: int, block_size: int) -> int:
    """First token of the context used to predict token `length` (shared by naive and cached generation).

    Up to `block_size` tokens the whole sequence is the context; beyond it the window jumps forward by
    half a block at a time, so a KV cache is rebuilt once per half block instead of every token.
    """
    if length <= block_size:
        return 0
    stride = max(1, block_size // 2)
    return -(-(length - block_size) // stride) * stride


class LanguageModel(nn.Module):
    """What every chargpt model shares: naive generation with the context window of `window_start`."""

    config: ModelConfig

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Full recompute each step (the lecture's loop); `chargpt.model.engine` is the fast KV-cache path."""
        for _ in range(max_new_tokens):
            idx_cond = idx[:, window_start(idx.size(1), self.config.block_size):]
            logits, _ = self(idx_cond)
            idx_next = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


class BigramLanguageModel(LanguageModel):
    """Each token reads the logits for the next token straight off a lookup table."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.token_embedding_table = nn.Embedding(config.vocab_size, config.vocab_size)

    def forward(self, idx, targets=None, cache=None):
        logits = self.token_embedding_table(idx)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


# --------------------------------------------------------------------------------------- the GPT
RMS_EPS = torch.finfo(torch.float32).eps


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """x / RMS(x) over the last dimension. Written as a norm rather than `F.rms_norm`, which is a chain of
    ~20 small ops on CPU: decoding one token normalizes 7 tiny vectors, and this is the largest cost."""
    y = x / (torch.linalg.vector_norm(x, dim=-1, keepdim=True) * x.size(-1) ** -0.5).clamp_min(RMS_EPS)
    return y if y.dtype == x.dtype else y.to(x.dtype)  # CUDA autocast computes norms in float32


class ReLUSquared(torch.autograd.Function):
    """relu(x)², the modern MLP's activation. Its gradient, 2 relu(x), is computed from the one tensor it saves:
    two passes over the hidden activations backward instead of autograd's four (square's, then relu's), with the
    same numbers (doubling is exact); ~4% of an eager float32 training step on a 2-core CPU."""

    @staticmethod
    def forward(ctx, x):
        r = F.relu(x)
        ctx.save_for_backward(r)
        return r.square()

    @staticmethod
    def backward(ctx, grad):
        (r,) = ctx.saved_tensors
        return (grad * r).mul_(2)


class RMSNorm(nn.Module):
    """Parameter-free RMS normalization."""

    def forward(self, x):
        return rms_norm(x)


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm()
    return nn.LayerNorm(config.n_embd, bias=config.bias)


def make_dropout(p: float) -> nn.Module:
    """Dropout, or nothing at all when p is 0 (one call less per use when decoding a token)."""
    return nn.Dropout(p) if p > 0 else nn.Identity()


def rope_tables(head_size: int, length: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of each position's rotation angles, laid out for `apply_rope`: (T, hs) each."""
    inv_freq = 1.0 / base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)  # (T, hs/2)
    cos, sin = angles.cos(), angles.sin()
    return torch.cat((cos, cos), dim=1), torch.cat((sin, -sin), dim=1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair of channels (i, i + hs/2) of x (..., T, hs) by position-dependent angles:
    (x1, x2) -> (x1 cos + x2 sin, x2 cos - x1 sin), in few ops because decoding runs it every token."""
    y = x * cos + x.roll(x.size(-1) // 2, dims=-1) * sin  # roll by hs/2 swaps the halves: (x2, x1)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def attention(q, k, v, causal: bool, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs)) v over (B, nh, T, hs), through SDPA's fused kernels, except for bfloat16 on
    the CPU: there SDPA's flash kernel is several times slower than the explicit masked softmax (more so with
    dropout), so the lecture's explicit form runs, which torch.compile fuses."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16 and q.size(-2) == k.size(-2):
        att = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5
        if causal:
            T = q.size(-2)
            att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), float("-inf"))
        return F.dropout(att.softmax(-1), dropout_p) @ v
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)


class CausalSelfAttention(nn.Module):
    """All heads of causal self-attention in one batched computation (flash kernels through SDPA).

    Equal to the lecture's `wei = q @ k.T * head_size**-0.5`, lower-triangular mask, softmax, `wei @ v`
    (kept as `chargpt.model.lecture.explicit_attention`; the tests check both agree).
    """

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = config.n_head
        self.head_size = config.n_embd // config.n_head
        self.qk_norm = config.qk_norm
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # query, key, value
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = make_dropout(config.dropout)

    def qkv(self, x, rope=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries, keys and values of every head, (B, nh, T, hs) each, QK-normed and rotated when configured."""
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, self.head_size).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
        qk, v = qkv[:2], qkv[2]  # queries and keys are normalized and rotated together: half the ops
        if self.qk_norm:
            qk = rms_norm(qk)
        if rope is not None:
            qk = apply_rope(qk, *rope)
        q, k = qk.unbind(0)
        return q, k, v

    def forward(self, x, rope=None, cache=None, last_only=False):
        B, T, C = x.shape
        q, k, v = self.qkv(x, rope)
        causal = True
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
            causal = T > 1  # a single new query may attend to every cached key
            if causal and k.size(2) != T:
                raise ValueError("a multi-token step must start from an empty cache (prefill)")
        if last_only:  # keys and values of every position, the output of the last one only
            q, T, causal = q[:, :, -1:], 1, False
        y = attention(q, k, v, causal, self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))


class FeedForward(nn.Module):
    """A simple MLP, 4x wider inside, applied to each position on its own."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = make_dropout(config.dropout)
        self.mlp = config.mlp

    def forward(self, x):
        h = self.c_fc(x)
        if self.mlp == "relu2":
            h = ReLUSquared.apply(h)
        elif self.mlp == "gelu":
            h = F.gelu(h)
        else:
            h = F.relu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Transformer block: communication (attention) followed by computation (feed-forward)."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.ln1 = make_norm(config)
        self.sa = CausalSelfAttention(config, layer_idx)
        self.ln2 = make_norm(config)
        self.ffwd = FeedForward(config)

    def forward(self, x, rope=None, cache=None, last_only=False):
        a = self.sa(self.ln1(x), rope, cache, last_only)
        x = (x[:, -1:] if last_only else x) + a
        x = x + self.ffwd(self.ln2(x))
        return x


class GPT(LanguageModel):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.token_embedding_table = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos == "learned":
            self.position_embedding_table = nn.Embedding(config.block_size, config.n_embd)
        else:
            cos, sin = rope_tables(config.n_embd // config.n_head, config.block_size)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.drop = make_dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)
        if config.tie_weights:
            self.lm_head.weight = self.token_embedding_table.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections (nanoGPT / GPT-2 scaling)
                if config.zero_init:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # fastdecode.py holds a numpy copy of this forward pass for fast CPU sampling. It is guarded: every Engine
    # compares its logits with this method's on a short probe and samples with torch when they differ, so an
    # edit here is never silently ignored (options it implements: NUMPY_DECODES, next to ModelConfig).
    def forward(self, idx, targets=None, cache=None):
        B, T = idx.shape
        pos0 = cache.pos if cache is not None else 0
        if pos0 + T > self.config.block_size:
            raise ValueError(f"sequence of {pos0 + T} tokens exceeds block_size {self.config.block_size}")
        x = self.token_embedding_table(idx)  # (B, T, C)
        rope = None
        if self.config.pos == "learned":
            x = x + self.position_embedding_table(torch.arange(pos0, pos0 + T, device=idx.device))
        else:
            rope = (self.rope_cos[pos0:pos0 + T], self.rope_sin[pos0:pos0 + T])
        x = self.drop(x)
        # a prefill only needs the last position's logits: the last block computes the keys and values of
        # every position but attention and feed-forward for the last one only
        prefill = targets is None and cache is not None and T > 1
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, last_only=prefill and i == len(self.blocks) - 1)
        if cache is not None:
            cache.advance(T)
        x = self.ln_f(x)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        if self.config.logit_softcap > 0:
            cap = self.config.logit_softcap
            logits = cap * torch.tanh(logits / cap)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


MODELS = {"bigram": BigramLanguageModel, "gpt": GPT}


def build_model(config: ModelConfig) -> LanguageModel:
    """The one registry of models, chosen by name (`--model`)."""
    config.validate()
    return MODELS[config.model](config)
