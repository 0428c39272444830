"""Sampling: the parameters of a sample, checked once for every door (`chargpt sample`, `Run.generate`, the
server's completions), the prompt an empty one stands for, and the rule that picks each next character.

Nothing here imports torch (the CLI builds its flags from `SamplingParams`): `sample_next` uses tensor methods.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Callable

from ..config import MAX_BATCH, MAX_VOCAB
from ..schema import check_fields, flag, option

if TYPE_CHECKING:
    import torch


MAX_TOGETHER = 10 ** 6  # samples, or prompts, sampled together as one batch: `--num-samples`, a prompts file, a list


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = option(500, "characters to generate", min=0, max=MAX_BATCH)
    temperature: float = option(1.0, "divides the logits: below 1 sharper, above 1 flatter; 0 (or below 1e-6) = greedy",
                                min=0.0, max=1000.0)
    top_k: int = option(0, "sample from the k most likely characters; 0 = every character", min=0, max=MAX_VOCAB)
    top_p: float = option(1.0, "sample from the smallest set of characters whose probability reaches p; 1 = off",
                          min=0.0, min_open=True, max=1.0)
    seed: int = option(1337, "random seed", min=0, max=2 ** 64, max_open=True)

    @classmethod
    def checked(cls, spell: Callable[[str], str] = flag, **values) -> "SamplingParams":
        """The parameters `values` give (None: the default), checked: a wrong type or range is a `ConfigError`
        naming the parameter as `spell` writes it (a flag, a keyword, a JSON key)."""
        params = cls(**{k: v for k, v in values.items() if v is not None})
        check_fields(params, spell)
        return params


SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingParams))
DEFAULTS = SamplingParams()


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The ids of `prompt`; an empty prompt starts from a newline (the vocabulary's first character if it has
    none), as the lecture's `torch.zeros((1, 1))` does on tiny Shakespeare, where id 0 is the newline."""
    if prompt:
        return tokenizer.encode(prompt)
    return tokenizer.encode("\n" if "\n" in tokenizer.stoi else tokenizer.chars[0])


GREEDY_BELOW = 1e-6


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token for each row of `logits` (B, V). Temperature 0 is greedy, and so is any temperature
    below `GREEDY_BELOW` (dividing by it would overflow float32 to inf, and softmax to NaN); top_k 0 or None
    keeps every token, top_p 1 or None turns nucleus sampling off."""
    if temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1, keepdim=True)
    probs = _probabilities(logits, temperature, top_k, top_p)
    # torch.multinomial(probs, 1, generator) draws a single sample as an exponential race, argmax(p / E) with
    # E ~ Exp(1): the same draws from the same generator state (tests/model/test_sampling.py checks it), without its
    # input checks: 6 us instead of 15 per token, a tenth of a decoding step
    race = probs.new_empty(probs.shape).exponential_(1, generator=generator)
    return (probs / race).argmax(dim=-1, keepdim=True)


def _probabilities(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Each row's distribution of the next token, for `sample_next` (temperature at least `GREEDY_BELOW`)."""
    logits = logits.float()
    if temperature != 1.0:  # dividing by 1 changes nothing: one op less per generated token
        logits = logits / temperature
    if top_k and top_k < logits.size(-1):
        v, _ = logits.topk(top_k)
        logits = logits.masked_fill(logits < v[:, [-1]], float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs >= top_p  # keep the smallest set reaching top_p
        drop[:, 0] = False  # and the likeliest token always: a top_p that rounds to 0 in float32 is top-1
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits.softmax(dim=-1)


def sample_rows(logits: torch.Tensor, rows: list[tuple[SamplingParams, torch.Generator]]) -> list[int]:
    """The next token of each row of `logits` (B, V), each with its own parameters and generator: exactly what
    `sample_next` picks row by row (each row's race drawn from its own generator), with the arithmetic of the rows
    that share their temperature, top_k and top_p done at once."""
    groups: dict[tuple, list[int]] = {}
    for i, (p, _) in enumerate(rows):
        groups.setdefault((p.temperature, p.top_k, p.top_p), []).append(i)
    out = [0] * len(rows)
    for (temperature, top_k, top_p), idx in groups.items():
        part = logits if len(idx) == len(rows) else logits[idx]
        if len(idx) == 1:
            picked = sample_next(part, temperature, top_k, top_p, rows[idx[0]][1])
        elif temperature < GREEDY_BELOW:
            picked = part.argmax(dim=-1)
        else:
            probs = _probabilities(part, temperature, top_k, top_p)
            race = probs.new_empty(probs.shape)
            for j, i in enumerate(idx):
                race[j].exponential_(1, generator=rows[i][1])
            picked = (probs / race).argmax(dim=-1)
        for i, token in zip(idx, picked.flatten().tolist()):
            out[i] = token
    return out
