"""Optimizers and learning-rate schedules.

Muon (orthogonalized momentum) trains the 2-D hidden weight matrices; AdamW trains embeddings, the head
and every scalar/vector parameter. `Muon` below is `torch.optim.Muon`'s update (tests compare them) on every
device, so a checkpoint's optimizer state resumes on any device; its Newton-Schulz iteration runs in the
training's precision: bfloat16 on CUDA and where the CPU computes it natively, float32 otherwise (CPUs without
native bfloat16 run a bfloat16 iteration many times slower).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import CheckpointError

NS_COEFFICIENTS = (3.4445, -4.775, 2.0315)


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Approximately orthogonalize a matrix (U S V^T -> U S' V^T with S' near 1) by a quintic iteration.

    `g` may be a stack of same-shaped matrices (k, m, n): they are iterated together, in one batched matmul
    per product instead of one small matmul per matrix.
    """
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    transposed = g.size(-2) > g.size(-1)
    if transposed:
        x = x.mT
    x = x / torch.linalg.matrix_norm(x, keepdim=True).clamp(min=eps)
    addmm = torch.addmm if x.ndim == 2 else torch.baddbmm
    for _ in range(steps):
        gram = x @ x.mT
        x = addmm(x, addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if transposed else x


class Muon(torch.optim.Optimizer):
    """torch.optim.Muon's update (Nesterov momentum, Newton-Schulz, lr * sqrt(max(1, rows/cols))), with a
    choosable dtype for the iteration, and matrices of the same shape orthogonalized as one batch.

    `ns_dtype` belongs to the machine, not to the run: it is kept out of the state dict, so a run saved where
    bfloat16 is native resumes in float32 elsewhere, and the reverse."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, ns_steps: int = 5, ns_dtype: torch.dtype = torch.float32):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      ns_steps=ns_steps))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_shape: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                by_shape.setdefault((tuple(p.shape), p.dtype), []).append((p, update))
            for (shape, dtype), items in by_shape.items():
                updates = [u for _, u in items]
                stacked = updates[0] if len(updates) == 1 else torch.stack(updates)
                ortho = newton_schulz(stacked, group["ns_steps"], dtype=self.ns_dtype).to(dtype)
                lr = group["lr"] * math.sqrt(max(1.0, shape[0] / shape[1]))
                for i, (p, _) in enumerate(items):
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(ortho if len(items) == 1 else ortho[i], alpha=-lr)
        return loss


def is_hidden_matrix(name: str, p: nn.Parameter) -> bool:
    """2-D weights inside the transformer blocks (not embeddings, not the head)."""
    return p.ndim == 2 and name.startswith("blocks.")


def make_optimizers(model: nn.Module, cfg: TrainConfig, device_type: str,
                    bf16: bool = False) -> list[torch.optim.Optimizer]:
    """AdamW alone, or Muon on hidden matrices plus AdamW on the rest. Each group remembers its peak lr.
    `bf16`: the training computes in bfloat16 (natively), so Muon's Newton-Schulz iteration does too."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    muon_params = [p for n, p in named if cfg.optimizer == "muon" and is_hidden_matrix(n, p)]
    muon_ids = {id(p) for p in muon_params}
    rest = [(n, p) for n, p in named if id(p) not in muon_ids]
    decay = [p for n, p in rest if p.ndim >= 2]
    no_decay = [p for n, p in rest if p.ndim < 2]
    groups = [g for g in ({"params": decay, "weight_decay": cfg.weight_decay},
                          {"params": no_decay, "weight_decay": 0.0}) if g["params"]]
    # one fused kernel for the whole AdamW update (CUDA and CPU)
    extra = {"fused": True} if device_type in ("cuda", "cpu") else {"foreach": True}
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), **extra)]
    if muon_params:
        optimizers.append(Muon(muon_params, lr=cfg.muon_lr, weight_decay=cfg.muon_weight_decay,
                               ns_dtype=torch.bfloat16 if bf16 else torch.float32))
    for opt in optimizers:
        for g in opt.param_groups:
            g["peak_lr"] = g["lr"]
    return optimizers


def lr_multiplier(progress: float, cfg: TrainConfig) -> float:
    """Learning-rate factor at `progress` in [0, 1] (fraction of steps, or of the time budget, done)."""
    progress = min(max(progress, 0.0), 1.0)
    if cfg.warmup > 0 and progress < cfg.warmup:
        return (progress + 1e-3) / (cfg.warmup + 1e-3)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        t = (progress - cfg.warmup) / max(1e-9, 1.0 - cfg.warmup)
        return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t))
    decay_start = 1.0 - cfg.decay  # wsd
    if progress < decay_start:
        return 1.0
    return max(0.0, (1.0 - progress) / max(cfg.decay, 1e-9))


def set_lr(optimizers: list[torch.optim.Optimizer], multiplier: float) -> None:
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["peak_lr"] * multiplier


def load_optimizer_states(optimizers: list[torch.optim.Optimizer], states: list[dict], path) -> None:
    """Load a checkpoint's optimizer `states` (of the checkpoint at `path`, for the message) into `optimizers`."""
    try:
        if len(optimizers) != len(states):
            raise ValueError(f"{len(states)} optimizer states for {len(optimizers)} optimizers")
        for opt, state in zip(optimizers, states):
            opt.load_state_dict(state)
            for param, held in opt.state.items():  # torch checks no shape, and a forged one crashes a fused step
                for name, t in held.items():
                    if isinstance(t, torch.Tensor) and t.dim() and t.shape != param.shape:
                        raise ValueError(f"an optimizer's {name} has shape {tuple(t.shape)} for a parameter of shape "
                                         f"{tuple(param.shape)}")
                    if isinstance(t, torch.Tensor) and not bool(torch.isfinite(t).all()):
                        raise ValueError(f"an optimizer's {name} holds values that are not finite")
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200]
        raise CheckpointError(f"{path} does not match the model it records ({first}); "
                              f"it cannot be resumed, start a new run") from None
