"""The numpy decoding step computes the GPT's logits, and the Engine generates with it exactly the tokens of
naive generation, for every ModelConfig option."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from conftest import BLOCK, VOCAB, lively_model, prompt

from chargpt.model.engine import Engine, KVCache
from chargpt.model.fastdecode import NumpyDecoder, disagreement, supports
from chargpt.model.gpt import NUMPY_DECODES, FeedForward, ModelConfig, RMSNorm, build_model

OPTIONS = dict(pos=("learned", "rope"), norm=("layernorm", "rmsnorm"), mlp=("relu", "relu2", "gelu"),
               qk_norm=(False, True), bias=(False, True), tie_weights=(False, True), logit_softcap=(0.0, 5.0))
EVERY_COMBINATION = [dict(zip(OPTIONS, values)) for values in itertools.product(*OPTIONS.values())]
# generation is slower to test: configurations that between them take every value of every option
SPREAD = [
    dict(pos="learned", norm="layernorm", mlp="relu", bias=True),  # the lecture's GPT
    dict(pos="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, bias=False, tie_weights=True),  # the cpu preset
    dict(pos="learned", norm="layernorm", mlp="gelu", bias=False, logit_softcap=5.0),
    dict(pos="rope", norm="layernorm", mlp="gelu", qk_norm=True, bias=False, logit_softcap=5.0),
    dict(pos="learned", norm="rmsnorm", mlp="relu2", qk_norm=True, bias=True, tie_weights=True),
    dict(pos="rope", norm="rmsnorm", mlp="relu", bias=True, logit_softcap=5.0),
]


def name(kw: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in kw.items())


@torch.inference_mode()
def test_numpy_step_logits_equal_the_models_to_float32_rounding_for_every_option():
    idx = prompt(3, 12)
    for kw in EVERY_COMBINATION:
        model = lively_model(**kw)
        full = model(idx)[0].numpy()  # (B, T, V): every position at once
        decoder = NumpyDecoder(model)
        keys, values = decoder.new_cache(3)
        decoder.prefill(idx[:, :5].numpy(), keys, values)  # positions 0..4 at once, then one at a time
        for t in range(5, 12):
            logits = decoder.step(idx[:, t].numpy(), t, keys, values)
            assert logits.shape == (3, VOCAB) and logits.dtype == np.float32
            np.testing.assert_allclose(logits, full[:, t], rtol=1e-5, atol=1e-5 * np.abs(full).max(),
                                       err_msg=name(kw))


@torch.inference_mode()
@pytest.mark.parametrize("length", [1, 7, BLOCK])
def test_numpy_prefill_writes_the_models_keys_and_values_and_its_last_logits(length):
    idx = prompt(3, length)
    for kw in SPREAD:
        model = lively_model(**kw)
        cache = KVCache(2, 3, 2, BLOCK, 16, torch.float32, torch.device("cpu"))
        expected = model(idx, cache=cache)[0][:, -1].numpy()
        decoder = NumpyDecoder(model)
        keys, values = decoder.new_cache(3)
        logits = decoder.prefill(idx.numpy(), keys, values)
        np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max(), err_msg=name(kw))
        for layer in range(2):
            for ours, theirs in ((keys, cache.k), (values, cache.v)):
                ours = ours[layer][..., :16]  # the values' extra column of ones aside
                np.testing.assert_allclose(ours[:, :, :length], theirs[layer, :, :, :length].numpy(),
                                           rtol=1e-5, atol=1e-5, err_msg=name(kw))
                assert not ours[:, :, length:].any()  # nothing written beyond the window


def both(model, idx, n, **kw):
    naive = model.generate(idx, n, generator=torch.Generator().manual_seed(7), **kw)
    fast = Engine(model, backend="numpy").generate(idx, n, generator=torch.Generator().manual_seed(7), **kw)
    return naive, fast


PROMPTS = [pytest.param(1, 3, id="short-prompt"), pytest.param(3, BLOCK, id="prompt-of-block-size"),
           pytest.param(1, 2 * BLOCK + 5, id="prompt-longer-than-block"),
           pytest.param(3, 2 * BLOCK + 5, id="batch-prompt-longer-than-block")]


@pytest.mark.parametrize("model_kw", [pytest.param(kw, id=name(kw)) for kw in SPREAD])
@pytest.mark.parametrize("batch,length", PROMPTS)
def test_greedy_numpy_generation_equals_naive_generation(model_kw, batch, length):
    model = lively_model(**model_kw)
    naive, fast = both(model, prompt(batch, length), 3 * BLOCK + 3, temperature=0)  # several window jumps
    assert len(set(naive[:, length:].flatten().tolist())) > 1, "a constant"
    assert torch.equal(naive, fast)


@pytest.mark.parametrize("model_kw", [pytest.param(kw, id=name(kw)) for kw in SPREAD])
@pytest.mark.parametrize("batch,length", PROMPTS)
def test_seeded_numpy_sampling_equals_naive_sampling(model_kw, batch, length):
    model = lively_model(**model_kw)
    naive, fast = both(model, prompt(batch, length), 3 * BLOCK + 3, temperature=1.0)
    assert torch.equal(naive, fast)


@pytest.mark.parametrize("kw", [dict(temperature=0.7, top_k=5), dict(temperature=1.3, top_p=0.8),
                                dict(temperature=1.0, top_k=8, top_p=0.9)])
def test_top_k_and_top_p_numpy_sampling_equals_naive(kw):
    naive, fast = both(lively_model(**SPREAD[1]), prompt(2, 5), 2 * BLOCK, **kw)
    assert torch.equal(naive, fast)


def test_engine_decodes_in_numpy_for_a_float32_gpt_on_the_cpu_and_in_torch_otherwise():
    model = lively_model()
    assert supports(model) and not supports(build_model(ModelConfig(model="bigram", vocab_size=VOCAB)))
    assert not supports(lively_model().double())
    idx = prompt(2, 4)
    for backend in ("auto", "torch", "numpy"):  # all three give the naive tokens
        out = Engine(model, backend=backend).generate(idx, 20, temperature=0)
        assert torch.equal(out, model.generate(idx, 20, temperature=0))
    double = lively_model().double()
    assert torch.equal(Engine(double).generate(idx, 20, temperature=0), double.generate(idx, 20, temperature=0))
    with pytest.raises(ValueError, match="float32"):
        Engine(double, backend="numpy")
    with pytest.raises(ValueError, match="unknown backend"):
        Engine(model, backend="jax")


def test_each_generation_decodes_the_weights_as_they_are_then():
    model = lively_model()
    engine = Engine(model)
    idx = prompt(1, 4)
    before = engine.generate(idx, 20, temperature=0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)
    after = engine.generate(idx, 20, temperature=0)
    assert not torch.equal(before, after)
    assert torch.equal(after, model.generate(idx, 20, temperature=0))


def test_numpy_stream_yields_token_columns_and_leaves_the_model_and_threads_as_they_were():
    model = lively_model(**SPREAD[1])
    threads = torch.get_num_threads()
    idx = prompt(2, 4)
    cols = list(Engine(model).stream(idx, 2 * BLOCK, temperature=0))
    assert all(c.shape == (2, 1) and c.dtype == torch.long for c in cols)
    assert torch.equal(torch.cat([idx, *cols], dim=1), model.generate(idx, 2 * BLOCK, temperature=0))
    assert torch.get_num_threads() == threads and not torch.is_inference_mode_enabled()


# ------------------------------------------------------------------- the numpy copy is guarded
class SiluFeedForward(FeedForward):
    """A learner's edit to model.py: another activation."""

    def forward(self, x):
        return self.dropout(self.c_proj(torch.nn.functional.silu(self.c_fc(x))))


class CenteredRMSNorm(RMSNorm):
    """A learner's edit: a norm that subtracts the mean first."""

    def forward(self, x):
        return super().forward(x - x.mean(dim=-1, keepdim=True))


def changed_activation():
    model = lively_model(**SPREAD[0])
    for block in model.blocks:
        block.ffwd.__class__ = SiluFeedForward
    return model


def changed_norm():
    model = lively_model(**SPREAD[1])
    model.ln_f.__class__ = CenteredRMSNorm
    return model


def extra_hook():
    model = lively_model(**SPREAD[2])
    model.blocks[0].ffwd.register_forward_hook(lambda module, args, out: out * 0.5)
    return model


@pytest.mark.parametrize("edited", [changed_activation, changed_norm, extra_hook])
def test_an_edited_model_falls_back_to_torch_and_samples_what_it_computes(edited, capfd):
    model = edited()
    assert supports(model) and disagreement(model) is not None
    engine = Engine(model)
    assert engine.backend == "torch"
    assert "numpy decoder does not compute what this model's forward computes" in capfd.readouterr().err
    idx = prompt(2, 5)
    kw = dict(temperature=1.0, generator=None)
    ours = engine.generate(idx, 2 * BLOCK, **(kw | {"generator": torch.Generator().manual_seed(7)}))
    torch_path = Engine(model, backend="torch").generate(idx, 2 * BLOCK, **(kw | {"generator": torch.Generator().manual_seed(7)}))
    naive = model.generate(idx, 2 * BLOCK, generator=torch.Generator().manual_seed(7))
    assert torch.equal(ours, torch_path) and torch.equal(ours, naive)
    Engine(model)
    assert "numpy decoder" not in capfd.readouterr().err  # said once


@pytest.mark.parametrize("model_kw", [pytest.param(kw, id=name(kw)) for kw in SPREAD])
def test_the_unedited_model_keeps_the_numpy_decoder(model_kw):
    model = lively_model(**model_kw)
    assert disagreement(model) is None and Engine(model).backend == "auto"


def test_the_options_the_numpy_decoder_implements_are_declared_next_to_model_config():
    from chargpt.model.gpt import ModelConfig as MC
    from chargpt.schema import choices

    for field_name, implemented in NUMPY_DECODES.items():
        assert set(choices(MC, field_name)) == implemented
