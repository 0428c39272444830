"""Attention maps: how much each head of each layer attends to every earlier character of a prompt, and a
grid of them (layers x heads) drawn into a PNG (`chargpt attention`)."""
from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from ..errors import ConfigError
from ..fsutil import Output, claim_output, save_figure

# torch is imported by the functions that compute: `chargpt attention --help` reads this module's choices.
if TYPE_CHECKING:
    import torch

    from .gpt import LanguageModel

# characters that would be invisible (or break a line) as tick labels
VISIBLE = {"\n": "⏎", " ": "␣", "\t": "⇥", "\r": "␍"}


def attention_weights(model: LanguageModel, idx: torch.Tensor) -> torch.Tensor:
    """Attention weights (B, n_layer, n_head, T, T) for the prompts `idx` (B, T); row t holds how much the
    query at t attends to each key (columns after t are 0).

    Each attention layer's input is caught on its way through the model's own forward pass; the layer
    then recomputes its queries and keys (`CausalSelfAttention.qkv`: QK-norm and RoPE exactly as in
    the model) and the weights come from the lecture's explicit softmax(q k^T / sqrt(head_size)).
    """
    import torch

    from .lecture import explicit_attention
    from .gpt import GPT

    if not isinstance(model, GPT):
        raise ConfigError(f"a {model.config.model} model has no attention to draw; use a GPT checkpoint")
    T = idx.size(1)
    if not 0 < T <= model.config.block_size:
        raise ConfigError(f"the prompt has {T} characters; it needs 1 to {model.config.block_size} "
                          f"(the model's block_size)")
    caught = []

    def catch(module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        rope = args[1] if len(args) > 1 else kwargs.get("rope")
        caught.append((module, x, rope))

    hooks = [block.sa.register_forward_pre_hook(catch, with_kwargs=True) for block in model.blocks]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(idx)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    weights = []
    with torch.no_grad():
        for sa, x, rope in caught:
            q, k, v = sa.qkv(x, rope)
            _, wei = explicit_attention(q.float(), k.float(), v.float(), return_weights=True)  # (B, nh, T, T)
            weights.append(wei)
    return torch.stack(weights, dim=1)


def label(ch: str) -> str:
    return VISIBLE.get(ch, ch)


Scale = Literal["log", "row", "linear"]
SCALES: tuple[str, ...] = get_args(Scale)
SCALE_HELP = ("log: weights on a log scale from 0.001 to 1; row: each query's weights over its largest; "
              "linear: 0 to 1")
WINDOW = 48  # characters drawn by default: the last ones of a longer prompt, so that the labels stay legible


def cell_inches(T: int) -> float:
    """Side of one head's map: room for T tick labels, within reason."""
    return min(max(1.8, 0.14 * T + 0.8), 8.0)


def draw_attention(weights: torch.Tensor, prompt: str, out: str | os.PathLike | Output, title: str | None = None,
                   dpi: int = 100, scale: Scale = "log", window: int = WINDOW) -> Path:
    """`attention_figure` written to `out` as a PNG, atomically; `out` is refused before anything is drawn when
    it is a file of a run or a dataset (`chargpt attention` claims it with its inputs before it loads a model)."""
    out = claim_output(out)
    return save_figure(attention_figure(weights, prompt, title, dpi, scale, window), out)


def attention_figure(weights: torch.Tensor, prompt: str, title: str | None = None, dpi: int = 100,
                     scale: Scale = "log", window: int = WINDOW):
    """Draw `weights` (n_layer, n_head, T, T) as a grid of heat maps (a row per layer, a column per head),
    the prompt's characters along both axes (queries down, keys across).

    Later layers spread their attention thin, so by default the colours follow a log scale (`scale="row"`:
    each row over its own maximum). A prompt longer than `window` characters is drawn for its last `window`
    queries and keys (0: all of them); the model still read the whole prompt."""
    import numpy
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure

    n_layer, n_head, T, _ = weights.shape
    if len(prompt) != T:
        raise ValueError(f"{T} attention rows but a prompt of {len(prompt)} characters")
    if scale not in SCALES:
        raise ConfigError(f"the colour scale must be one of {', '.join(SCALES)}, got {scale!r}")
    if window and T > window:
        weights, prompt, T = weights[..., -window:, -window:], prompt[-window:], window
    maps = weights.float().cpu()
    if scale == "row":
        maps = maps / maps.amax(dim=-1, keepdim=True).clamp_min(1e-12)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)  # keys after the query: never attended, drawn blank
    norm = LogNorm(vmin=1e-3, vmax=1.0, clip=True) if scale == "log" else Normalize(vmin=0.0, vmax=1.0)
    cell = cell_inches(T)
    fig = Figure(figsize=(n_head * cell + 1.2, n_layer * cell + 0.6), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_layer, n_head, squeeze=False)
    ticks = [label(c) for c in prompt]
    fontsize = min(9.0, max(3.0, 0.6 * cell * 72 / (T + 2)))
    image = None
    for layer in range(n_layer):
        for head in range(n_head):
            ax = axes[layer][head]
            shown = numpy.ma.masked_array(maps[layer, head].clamp_min(1e-3 if scale == "log" else 0.0).numpy(),
                                          mask=future.numpy())
            image = ax.imshow(shown, cmap="viridis", norm=norm, interpolation="nearest")
            ax.set_xticks(range(T), ticks, fontsize=fontsize)
            ax.set_yticks(range(T), ticks, fontsize=fontsize)
            ax.tick_params(length=0, pad=1)
            ax.set_title(f"layer {layer} head {head}", fontsize=8)
    bar_label = {"log": "attention weight (log scale)", "row": "attention weight / the row's largest",
                 "linear": "attention weight"}[scale]
    fig.colorbar(image, ax=axes, shrink=0.5, label=bar_label)
    title = title or f"attention: {layers_by_heads(n_layer, n_head)}, query (row) -> key (column)"
    width_chars = max(24, int(fig.get_figwidth() * 72 / (0.6 * 10)))  # 10 pt characters across the figure
    fig.suptitle(textwrap.fill(title, width_chars), fontsize=10)  # a small grid's title wraps instead of clipping
    return fig


def layers_by_heads(n_layer: int, n_head: int) -> str:
    return f"{n_layer} layer{'s' * (n_layer != 1)} x {n_head} head{'s' * (n_head != 1)}"


def attention_title(name: str, step: int, n_layer: int, n_head: int) -> str:
    """The heading of a run's attention map: the same in `chargpt attention` and in a tracker's image."""
    return f"{name} (step {step}): attention, {layers_by_heads(n_layer, n_head)}, query (row) -> key (column)"
