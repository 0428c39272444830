"""The notebook's explicit pieces, kept as references: the averaging trick, one attention head, and the
lecture's GPT written head by head. chargpt's fast model is tested against these."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


# ---- "the mathematical trick in self-attention": causal averaging of x (B, T, C), three ways ---------
def causal_average_loop(x: torch.Tensor) -> torch.Tensor:
    """xbow[b, t] = mean(x[b, :t+1]), with explicit loops."""
    B, T, C = x.shape
    xbow = torch.zeros_like(x)
    for b in range(B):
        for t in range(T):
            xbow[b, t] = x[b, : t + 1].mean(0)
    return xbow


def causal_average_matmul(x: torch.Tensor) -> torch.Tensor:
    """The same, as one matmul with a row-normalized lower-triangular matrix."""
    T = x.size(1)
    wei = torch.tril(torch.ones(T, T, dtype=x.dtype, device=x.device))
    wei = wei / wei.sum(1, keepdim=True)
    return wei @ x  # (T, T) @ (B, T, C) -> (B, T, C)


def causal_average_softmax(x: torch.Tensor) -> torch.Tensor:
    """The same, as a softmax over zero scores with the future masked to -inf (attention's form)."""
    T = x.size(1)
    tril = torch.tril(torch.ones(T, T, device=x.device))
    wei = torch.zeros(T, T, dtype=x.dtype, device=x.device).masked_fill(tril == 0, float("-inf"))
    return F.softmax(wei, dim=-1) @ x


# ---- attention, computed explicitly --------------------------------------------------------------
def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, return_weights: bool = False):
    """Causal scaled dot-product attention on (..., T, hs) tensors, as the lecture writes it."""
    T, hs = q.size(-2), q.size(-1)
    wei = q @ k.transpose(-2, -1) * hs**-0.5  # (..., T, T)
    tril = torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device))
    wei = wei.masked_fill(~tril, float("-inf"))
    wei = F.softmax(wei, dim=-1)
    out = wei @ v
    return (out, wei) if return_weights else out


class Head(nn.Module):
    """One head of self-attention."""

    def __init__(self, n_embd: int, head_size: int, block_size: int, dropout: float = 0.0):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block_size, block_size)))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        B, T, C = x.shape
        k, q = self.key(x), self.query(x)  # (B, T, hs)
        wei = q @ k.transpose(-2, -1) * k.shape[-1] ** -0.5  # (B, T, T)
        wei = wei.masked_fill(self.tril[:T, :T] == 0, float("-inf"))
        wei = self.dropout(F.softmax(wei, dim=-1))
        return wei @ self.value(x)  # (B, T, hs)


class MultiHeadAttention(nn.Module):
    """Several heads in parallel, concatenated, then projected."""

    def __init__(self, n_embd: int, num_heads: int, block_size: int, dropout: float = 0.0):
        super().__init__()
        head_size = n_embd // num_heads
        self.heads = nn.ModuleList([Head(n_embd, head_size, block_size, dropout) for _ in range(num_heads)])
        self.proj = nn.Linear(n_embd, n_embd)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        out = torch.cat([h(x) for h in self.heads], dim=-1)
        return self.dropout(self.proj(out))


class LectureBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block_size: int, dropout: float = 0.0):
        super().__init__()
        self.sa = MultiHeadAttention(n_embd, n_head, block_size, dropout)
        self.ffwd = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.ReLU(), nn.Linear(4 * n_embd, n_embd),
                                  nn.Dropout(dropout))
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)

    def forward(self, x):
        x = x + self.sa(self.ln1(x))
        return x + self.ffwd(self.ln2(x))


class LectureGPT(nn.Module):
    """The lecture's final model, verbatim in structure: the eager baseline chargpt's throughput is measured against."""

    def __init__(self, vocab_size: int, n_embd: int, n_head: int, n_layer: int, block_size: int, dropout: float = 0.0):
        super().__init__()
        self.token_embedding_table = nn.Embedding(vocab_size, n_embd)
        self.position_embedding_table = nn.Embedding(block_size, n_embd)
        self.blocks = nn.Sequential(*[LectureBlock(n_embd, n_head, block_size, dropout) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        x = self.token_embedding_table(idx) + self.position_embedding_table(torch.arange(T, device=idx.device))
        logits = self.lm_head(self.ln_f(self.blocks(x)))
        loss = None if targets is None else F.cross_entropy(logits.view(B * T, -1), targets.view(B * T))
        return logits, loss
