"""Muon against torch.optim.Muon, the split of parameters between Muon and AdamW, and the lr schedules."""
from __future__ import annotations

import math

import pytest
import torch

from chargpt.config import TrainConfig
from chargpt.model.gpt import ModelConfig, build_model
from chargpt.training.optim import Muon, lr_multiplier, make_optimizers, newton_schulz, set_lr

SHAPES = [(32, 64), (64, 32), (48, 48)]


def updates_after_steps(make_opt, shape, steps: int = 3, seed: int = 0) -> torch.Tensor:
    """Total change of a parameter after `steps` optimizer steps on fixed random gradients."""
    g = torch.Generator().manual_seed(seed)
    p0 = torch.randn(shape, generator=g) * 0.1
    grads = [torch.randn(shape, generator=g) for _ in range(steps)]
    p = torch.nn.Parameter(p0.clone())
    opt = make_opt([p])
    for grad in grads:
        p.grad = grad.clone()
        opt.step()
    return p.detach() - p0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_muon_with_bfloat16_iteration_matches_torch_muon_exactly(shape, weight_decay):
    ref = updates_after_steps(lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=weight_decay), shape)
    ours = updates_after_steps(lambda ps: Muon(ps, lr=0.02, weight_decay=weight_decay, ns_dtype=torch.bfloat16), shape)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("shape", SHAPES)
def test_muon_in_float32_is_close_to_torch_muon(shape):
    ref = updates_after_steps(lambda ps: torch.optim.Muon(ps, lr=0.02, weight_decay=0.0), shape)
    ours = updates_after_steps(lambda ps: Muon(ps, lr=0.02), shape)
    assert ((ours - ref).norm() / ref.norm()).item() < 0.05  # bfloat16 keeps ~3 significant digits


def test_muon_scales_the_step_of_tall_matrices_by_sqrt_rows_over_cols():
    tall = updates_after_steps(lambda ps: Muon(ps, lr=0.02), (64, 16), steps=1)
    wide = updates_after_steps(lambda ps: Muon(ps, lr=0.02), (16, 64), steps=1)
    # an orthogonalized 16-rank update has RMS ~ 1/sqrt(64) either way; tall ones move 2x further
    ratio = tall.pow(2).mean().sqrt() / wide.pow(2).mean().sqrt()
    assert ratio.item() == pytest.approx(2.0, rel=0.15)


@pytest.mark.parametrize("shape", [(16, 64), (64, 16), (32, 32)])
def test_newton_schulz_roughly_orthogonalizes(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    s = torch.linalg.svdvals(newton_schulz(g))
    assert s.min() > 0.3 and s.max() < 1.3  # U S' V^T with S' near 1, not exactly 1 (by design)
    assert newton_schulz(g).shape == shape


def test_muon_trains_hidden_matrices_and_adamw_the_rest():
    model = build_model(ModelConfig(vocab_size=30, block_size=8, n_layer=2, n_head=2, n_embd=16))
    adamw, muon = make_optimizers(model, TrainConfig(optimizer="muon"), "cpu")
    assert isinstance(adamw, torch.optim.AdamW) and isinstance(muon, Muon)
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    adamw_ids = {id(p) for g in adamw.param_groups for p in g["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert not muon_ids & adamw_ids and muon_ids | adamw_ids == set(names)
    assert {names[i] for i in muon_ids} == {n for n, p in model.named_parameters()
                                            if n.startswith("blocks.") and p.ndim == 2}
    assert all(names[i].startswith(("token_embedding", "position_embedding", "lm_head", "ln_f", "blocks."))
               for i in adamw_ids)
    assert muon.ns_dtype == torch.float32
    assert adamw.defaults["fused"]  # one kernel for the whole update on CPU and CUDA


def test_muon_iterates_in_bfloat16_when_the_training_does():
    model = build_model(ModelConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=16))
    _, muon = make_optimizers(model, TrainConfig(optimizer="muon"), "cpu", bf16=True)
    assert muon.ns_dtype == torch.bfloat16


def test_optimizer_state_saved_for_one_device_resumes_on_another():
    """The first GPU run found resume across CUDA and CPU refused: CUDA used torch.optim.Muon, the CPU our Muon."""
    model = build_model(ModelConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=16))
    cfg = TrainConfig(optimizer="muon")
    model(torch.randint(0, 30, (2, 8)), torch.randint(0, 30, (2, 8)))[1].backward()
    saved = []
    for opt in make_optimizers(model, cfg, "cuda", bf16=True):
        opt.step()
        saved.append(opt.state_dict())
    resumed = make_optimizers(model, cfg, "cpu", bf16=False)
    assert [type(o) for o in resumed] == [type(o) for o in make_optimizers(model, cfg, "cuda", bf16=True)]
    for opt, st in zip(resumed, saved):
        opt.load_state_dict(st)
    assert resumed[1].ns_dtype == torch.float32  # the machine's precision, not the saved one
    assert torch.equal(resumed[1].state_dict()["state"][0]["momentum_buffer"], saved[1]["state"][0]["momentum_buffer"])


def test_adamw_alone_gets_every_parameter_and_weight_decay_only_on_matrices():
    model = build_model(ModelConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=16))
    (opt,) = make_optimizers(model, TrainConfig(optimizer="adamw", weight_decay=0.1), "cpu")
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.ndim >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))



def test_muon_weight_decay_shrinks_the_hidden_matrices_and_adamw_keeps_its_own():
    model = build_model(ModelConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=16))
    adamw, muon = make_optimizers(model, TrainConfig(optimizer="muon", weight_decay=0.0, muon_weight_decay=0.5), "cpu")
    assert {g["weight_decay"] for g in adamw.param_groups} == {0.0}
    (group,) = muon.param_groups
    assert group["weight_decay"] == 0.5
    before = [p.detach().clone() for p in group["params"]]
    for p in group["params"]:
        p.grad = torch.zeros_like(p)  # no gradient: what changes is the decay alone
    muon.step()
    for b, p in zip(before, group["params"]):
        assert torch.allclose(p, b * (1 - 0.02 * 0.5))

# ------------------------------------------------------------------------------------ schedules
PROGRESS = [i / 200 for i in range(201)]


def curve(**kw) -> list[float]:
    cfg = TrainConfig(**kw)
    cfg.validate()
    return [lr_multiplier(p, cfg) for p in PROGRESS]


def test_constant_schedule_stays_at_the_peak():
    assert curve(schedule="constant") == [1.0] * len(PROGRESS)


@pytest.mark.parametrize("schedule", ["constant", "cosine", "wsd"])
def test_warmup_rises_linearly_to_the_peak(schedule):
    lrs = curve(schedule=schedule, warmup=0.1, decay=0.3)
    ramp = lrs[:21]  # progress 0 .. 0.1
    assert 0 < ramp[0] < 0.05
    assert all(b > a for a, b in zip(ramp, ramp[1:]))
    steps = [b - a for a, b in zip(ramp, ramp[1:-1])]
    assert max(steps) - min(steps) < 1e-9  # linear
    assert lrs[20] == pytest.approx(1.0)


def test_cosine_falls_from_the_peak_to_min_lr_frac():
    lrs = curve(schedule="cosine", min_lr_frac=0.1)
    assert lrs[0] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1)
    assert lrs[100] == pytest.approx(0.55)  # half way: the mean of peak and floor
    assert all(b <= a for a, b in zip(lrs, lrs[1:]))


def test_wsd_holds_the_peak_then_decays_linearly_to_zero():
    lrs = curve(schedule="wsd", decay=0.35)
    stable = [lr for p, lr in zip(PROGRESS, lrs) if p <= 0.65]
    assert stable == [1.0] * len(stable)
    assert lrs[-1] == 0.0
    tail = [(p, lr) for p, lr in zip(PROGRESS, lrs) if p >= 0.65]
    for p, lr in tail:
        assert lr == pytest.approx((1 - p) / 0.35, abs=1e-9)


def test_progress_outside_zero_one_is_clamped():
    cfg = TrainConfig(schedule="cosine", min_lr_frac=0.2)
    assert lr_multiplier(-1.0, cfg) == lr_multiplier(0.0, cfg)
    assert lr_multiplier(2.0, cfg) == pytest.approx(0.2)


def test_set_lr_scales_every_group_from_its_own_peak():
    model = build_model(ModelConfig(vocab_size=30, block_size=8, n_layer=1, n_head=2, n_embd=16))
    opts = make_optimizers(model, TrainConfig(optimizer="muon", lr=3e-3, muon_lr=0.02), "cpu")
    set_lr(opts, 0.5)
    set_lr(opts, 0.25)  # from the peak, not compounding
    assert [g["lr"] for o in opts for g in o.param_groups] == pytest.approx(
        [3e-3 * 0.25] * len(opts[0].param_groups) + [0.02 * 0.25])
    assert math.isclose(opts[1].param_groups[0]["peak_lr"], 0.02)
