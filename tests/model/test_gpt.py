"""The GPT: equal to the lecture's model, causal, initialized as nanoGPT, each modern option trains."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from chargpt.data.batch import get_batch
from chargpt.config import TrainConfig, get_preset
from chargpt.data.dataset import load_dataset
from chargpt.errors import ConfigError
from chargpt.model.lecture import LectureGPT, explicit_attention
from chargpt.model.gpt import GPT, ModelConfig, apply_rope, attention, build_model, rms_norm, rope_tables
from chargpt.training.optim import lr_multiplier, make_optimizers, set_lr


def small(**kw) -> ModelConfig:
    base = dict(vocab_size=65, block_size=16, n_layer=2, n_head=4, n_embd=32, dropout=0.0)
    return ModelConfig(**(base | kw))


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train faster on one thread


# ------------------------------------------------------------------------------- the lecture's model
def copy_into_lecture_model(model: GPT) -> LectureGPT:
    """The lecture's head-by-head model holding `model`'s weights (its query/key/value have no biases)."""
    c = model.config
    hs = c.n_embd // c.n_head
    ref = LectureGPT(c.vocab_size, c.n_embd, c.n_head, c.n_layer, c.block_size).eval()
    with torch.no_grad():
        ref.token_embedding_table.weight.copy_(model.token_embedding_table.weight)
        ref.position_embedding_table.weight.copy_(model.position_embedding_table.weight)
        for ours, theirs in zip(model.blocks, ref.blocks):
            w = ours.sa.c_attn.weight  # rows: all queries, all keys, all values
            for h, head in enumerate(theirs.sa.heads):
                head.query.weight.copy_(w[h * hs:(h + 1) * hs])
                head.key.weight.copy_(w[c.n_embd + h * hs:c.n_embd + (h + 1) * hs])
                head.value.weight.copy_(w[2 * c.n_embd + h * hs:2 * c.n_embd + (h + 1) * hs])
            theirs.sa.proj.load_state_dict(ours.sa.c_proj.state_dict())
            theirs.ffwd[0].load_state_dict(ours.ffwd.c_fc.state_dict())
            theirs.ffwd[2].load_state_dict(ours.ffwd.c_proj.state_dict())
            theirs.ln1.load_state_dict(ours.ln1.state_dict())
            theirs.ln2.load_state_dict(ours.ln2.state_dict())
        ref.ln_f.load_state_dict(model.ln_f.state_dict())
        ref.lm_head.load_state_dict(model.lm_head.state_dict())
    return ref


def test_gpt_computes_what_the_lectures_model_computes_with_the_same_weights():
    torch.manual_seed(0)
    model = build_model(small()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
        for block in model.blocks:
            block.sa.c_attn.bias.zero_()  # the lecture's heads have no biases
    ref = copy_into_lecture_model(model)
    idx = torch.randint(0, 65, (3, 16))
    ours, theirs = model(idx)[0], ref(idx)[0]
    assert (ours - theirs).abs().max().item() < 1e-5


def test_lecture_preset_has_the_lectures_parameters_plus_the_fused_qkv_biases():
    cfg = get_preset("lecture").model
    cfg.vocab_size = 65
    ours = build_model(cfg).num_params()
    assert ours == 10_788_929 + 3 * cfg.n_embd * cfg.n_layer
    assert ours == 10_795_841


@pytest.mark.parametrize("kw", [{}, dict(bias=False), dict(tie_weights=True), dict(pos="rope", norm="rmsnorm")])
def test_parameter_count_follows_the_architecture(kw):
    c = small(**kw)
    C, V, L = c.n_embd, c.vocab_size, c.n_layer
    b = 1 if c.bias else 0
    norm = (2 * C if c.bias else C) if c.norm == "layernorm" else 0
    block = 12 * C * C + b * (3 * C + C + 4 * C + C) + 2 * norm
    expected = V * C + (c.block_size * C if c.pos == "learned" else 0) + L * block + norm
    expected += (0 if c.tie_weights else V * C) + b * V
    assert build_model(c).num_params() == expected


# ------------------------------------------------------------------------------------- attention
@pytest.mark.parametrize("kw", [{}, dict(pos="rope"), dict(qk_norm=True, pos="rope")])
def test_self_attention_through_sdpa_equals_the_explicit_computation(kw):
    torch.manual_seed(0)
    model = build_model(small(**kw)).eval()
    sa = model.blocks[0].sa
    x = torch.randn(2, 16, 32)
    rope = (model.rope_cos[:16], model.rope_sin[:16]) if kw.get("pos") == "rope" else None
    q, k, v = sa.qkv(x, rope)
    y = explicit_attention(q, k, v).transpose(1, 2).reshape(2, 16, 32)
    assert (sa(x, rope) - sa.c_proj(y)).abs().max().item() < 1e-5


@pytest.mark.parametrize("causal", [True, False])
def test_bfloat16_attention_on_cpu_is_the_explicit_computation_and_its_gradients(causal):
    # bf16 on the CPU takes the explicit path (SDPA's CPU flash kernel is slow in bf16); it must agree with
    # float32 SDPA to bf16 rounding, forward and backward, and stay causal
    g = torch.Generator().manual_seed(0)
    q32, k32, v32 = (torch.randn(2, 3, 16, 8, generator=g).requires_grad_() for _ in range(3))
    q16, k16, v16 = (t.detach().bfloat16().requires_grad_() for t in (q32, k32, v32))
    y32 = F.scaled_dot_product_attention(q32, k32, v32, is_causal=causal)
    y16 = attention(q16, k16, v16, causal)
    assert y16.dtype == torch.bfloat16
    assert (y16.float() - y32).abs().max().item() < 0.05
    if causal:
        assert (y16[:, :, 0].float() - v16[:, :, 0].float()).abs().max().item() < 1e-6  # position 0 sees itself only
    w = torch.randn(y32.shape, generator=g)
    (y32 * w).sum().backward()
    (y16.float() * w).sum().backward()
    for a, b in ((q16, q32), (k16, k32), (v16, v32)):
        assert (a.grad.float() - b.grad).abs().max().item() < 0.05 * b.grad.abs().max().item()



def test_bfloat16_attention_on_cpu_with_dropout_drops_attention_weights_on_the_fast_path():
    # dropout used to send bf16 on the CPU to SDPA's slow kernel (training 2.5x slower); the explicit path drops
    # the softmax's weights as SDPA does: each kept weight scaled by 1 / (1 - p), the rest zero, causal still
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 16, 8, generator=g).bfloat16() for _ in range(3))
    torch.manual_seed(7)
    y = attention(q, k, v, True, dropout_p=0.3)
    att = ((q @ k.transpose(-2, -1)) * 8 ** -0.5).masked_fill(~torch.ones(16, 16, dtype=torch.bool).tril(),
                                                               float("-inf")).softmax(-1)
    torch.manual_seed(7)
    dropped = F.dropout(att, 0.3)
    assert torch.equal(y, dropped @ v)
    assert 0.2 < (dropped == 0).float()[att > 0].mean().item() < 0.4
    assert not torch.equal(y, attention(q, k, v, True))

@pytest.mark.parametrize("kw", [{}, dict(pos="rope", qk_norm=True, norm="rmsnorm", mlp="relu2", bias=False)])
def test_changing_a_later_token_never_changes_earlier_predictions(kw):
    torch.manual_seed(0)
    model = build_model(small(**kw)).eval()
    idx = torch.randint(0, 65, (2, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 1) % 65
    a, b = model(idx)[0], model(changed)[0]
    assert torch.allclose(a[:, :10], b[:, :10], atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_sequences_longer_than_block_size_are_refused():
    model = build_model(small())
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros((1, 17), dtype=torch.long))


def test_rope_makes_attention_scores_depend_only_on_relative_position():
    cos, sin = rope_tables(8, 32)
    q, k = torch.randn(8), torch.randn(8)

    def score(i, j):
        return (apply_rope(q.view(1, 8), cos[i:i + 1], sin[i:i + 1]) @ apply_rope(k.view(1, 8), cos[j:j + 1], sin[j:j + 1]).T).item()

    assert score(5, 2) == pytest.approx(score(25, 22), abs=1e-5)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-3)
    assert apply_rope(q.view(1, 8), cos[:1], sin[:1]).flatten().tolist() == pytest.approx(q.tolist())  # position 0


def test_rope_rotates_channel_pairs_i_and_i_plus_half():
    x = torch.randn(2, 3, 5, 8)
    cos, sin = rope_tables(8, 5)
    x1, x2 = x.chunk(2, dim=-1)
    c, s = cos[:, :4], sin[:, :4]
    expected = torch.cat((x1 * c + x2 * s, x2 * c - x1 * s), dim=-1)
    assert torch.allclose(apply_rope(x, cos, sin), expected, atol=1e-6)


def test_rms_norm_scales_each_vector_to_unit_rms():
    x = torch.randn(4, 7, 32) * 5
    y = rms_norm(x)
    assert torch.allclose(y.pow(2).mean(-1), torch.ones(4, 7), atol=1e-5)
    assert torch.allclose(y, F.rms_norm(x, (32,)), atol=1e-5)
    assert torch.isfinite(rms_norm(torch.zeros(3, 8))).all()


def test_logit_softcap_bounds_the_logits():
    torch.manual_seed(0)
    model = build_model(small(logit_softcap=2.0))
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 5.0)
    logits, _ = model(torch.randint(0, 65, (2, 16)))
    assert logits.abs().max() <= 2.0 and logits.abs().max() > 1.9


# ---------------------------------------------------------------------------------- initialization
def test_initialization_follows_nanogpt():
    torch.manual_seed(0)
    c = small(n_layer=4, n_embd=128, vocab_size=500)
    model = build_model(c)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            assert torch.all(p == 0), name
        elif name.endswith("c_proj.weight"):  # residual projections: 0.02 / sqrt(2 * n_layer)
            assert p.std().item() == pytest.approx(0.02 / math.sqrt(2 * c.n_layer), rel=0.1), name
        elif p.ndim == 2:
            assert p.std().item() == pytest.approx(0.02, rel=0.1), name
            assert abs(p.mean().item()) < 0.002, name
        else:  # LayerNorm weights
            assert torch.all(p == 1), name


def test_zero_init_starts_every_residual_projection_at_zero():
    model = build_model(small(zero_init=True))
    projections = [n for n, p in model.named_parameters() if n.endswith("c_proj.weight")]
    assert len(projections) == 2 * model.config.n_layer
    for name, p in model.named_parameters():
        assert torch.all(p == 0) == name.endswith(("c_proj.weight", "bias")), name


def test_tied_weights_share_one_tensor_between_embedding_and_head():
    model = build_model(small(tie_weights=True))
    assert model.lm_head.weight is model.token_embedding_table.weight
    assert model.num_params() == build_model(small()).num_params() - 65 * 32
    loss = model(torch.randint(0, 65, (2, 8)), torch.randint(0, 65, (2, 8)))[1]
    loss.backward()
    assert model.token_embedding_table.weight.grad is not None


@pytest.mark.parametrize("kw,match", [(dict(n_embd=30, n_head=4), "divisible"), (dict(n_embd=36, n_head=4, pos="rope"), "even"),
                                      (dict(pos="alibi"), "--pos"), (dict(norm="batch"), "--norm"), (dict(mlp="swiglu"), "--mlp"),
                                      (dict(dropout=1.0), "dropout"), (dict(logit_softcap=-1.0), "softcap"), (dict(model="rnn"), "--model must be one of bigram, gpt")])
def test_invalid_model_configs_are_refused_with_a_reason(kw, match):
    with pytest.raises(ConfigError, match=match):
        build_model(small(**kw))


# --------------------------------------------------------------------------- each option trains
@pytest.fixture(scope="module")
def shakespeare(dataset_dir):
    return load_dataset(dataset_dir)


def short_run(data, optimizer: str = "adamw", steps: int = 30, **model_kw) -> tuple[float, float]:
    """Val loss on fixed batches before and after `steps` optimizer steps of a tiny model."""
    torch.manual_seed(0)
    model = build_model(small(block_size=32, **model_kw))
    tc = TrainConfig(optimizer=optimizer, lr=1e-2, muon_lr=0.02, schedule="wsd", decay=0.3, warmup=0.1)
    opts = make_optimizers(model, tc, "cpu")
    gen = torch.Generator().manual_seed(0)
    xv, yv = get_batch(data.val, 32, 32, "cpu", torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(xv, yv)[1].item()
    for step in range(steps):
        set_lr(opts, lr_multiplier(step / steps, tc))
        x, y = get_batch(data.train, 8, 32, "cpu", gen)
        model(x, y)[1].backward()
        for opt in opts:
            opt.step()
            opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        after = model(xv, yv)[1].item()
    return before, after


OPTIONS = {"lecture": {}, "rope": dict(pos="rope"), "rmsnorm": dict(norm="rmsnorm"), "relu2": dict(mlp="relu2"),
           "gelu": dict(mlp="gelu"), "qk_norm": dict(qk_norm=True), "no-bias": dict(bias=False),
           "zero_init": dict(zero_init=True), "logit_softcap": dict(logit_softcap=15.0), "tied": dict(tie_weights=True)}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_a_short_run_with_each_model_option_lowers_the_loss(shakespeare, option):
    before, after = short_run(shakespeare, **OPTIONS[option])
    assert before == pytest.approx(math.log(65), abs=0.15)  # starts near uniform
    assert after < before - 0.6, f"{option}: {before:.3f} -> {after:.3f}"


def test_a_short_run_with_muon_lowers_the_loss(shakespeare):
    before, after = short_run(shakespeare, optimizer="muon")
    assert after < before - 0.6, f"{before:.3f} -> {after:.3f}"


def test_a_short_run_with_every_modern_option_together_lowers_the_loss(shakespeare):
    modern = dict(pos="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, bias=False, zero_init=True,
                  tie_weights=True, logit_softcap=15.0)
    before, after = short_run(shakespeare, optimizer="muon", **modern)
    assert after < before - 0.6, f"{before:.3f} -> {after:.3f}"


