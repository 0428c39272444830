"""The KV-cache Engine generates exactly the tokens of naive full-recompute generation."""
from __future__ import annotations

import pytest
import torch

from conftest import BLOCK, VOCAB, lively_model, prompt

from chargpt.model.engine import Engine, KVCache, one_cpu_thread
from chargpt.model.gpt import ModelConfig, build_model, window_start
from chargpt.model.sampling import SamplingParams, prompt_ids
from chargpt.data.tokenizer import CharTokenizer


def both(model, idx, n, backend="auto", **kw):
    naive = model.generate(idx, n, generator=torch.Generator().manual_seed(7), **kw)
    cached = Engine(model, backend).generate(idx, n, generator=torch.Generator().manual_seed(7), **kw)
    return naive, cached


BACKENDS = [pytest.param("torch", id="torch-kv-cache"), pytest.param("numpy", id="numpy-decoding")]


MODELS = [pytest.param(dict(pos="learned"), id="learned"),
          pytest.param(dict(pos="rope", qk_norm=True, norm="rmsnorm", mlp="relu2", bias=False), id="rope-modern")]
PROMPTS = [pytest.param(1, 3, id="short-prompt"), pytest.param(2, BLOCK, id="prompt-of-block-size"),
           pytest.param(3, 2 * BLOCK + 5, id="prompt-longer-than-block")]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model_kw", MODELS)
@pytest.mark.parametrize("batch,length", PROMPTS)
def test_greedy_kv_cache_generation_equals_naive_generation(model_kw, batch, length, backend):
    model = lively_model(**model_kw)
    idx = prompt(batch, length)
    naive, cached = both(model, idx, 3 * BLOCK + 3, backend, temperature=0)  # crosses several window jumps
    assert len(set(naive[:, length:].flatten().tolist())) > 1  # not a constant
    assert torch.equal(naive, cached)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model_kw", MODELS)
@pytest.mark.parametrize("batch,length", PROMPTS)
def test_seeded_sampling_with_kv_cache_equals_naive_sampling(model_kw, batch, length, backend):
    model = lively_model(**model_kw)
    naive, cached = both(model, prompt(batch, length), 3 * BLOCK + 3, backend, temperature=1.0)
    assert torch.equal(naive, cached)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kw", [dict(temperature=0.7, top_k=5), dict(temperature=1.3, top_p=0.8),
                                dict(temperature=1.0, top_k=8, top_p=0.9)])
def test_top_k_and_top_p_sampling_agree_between_paths(kw, backend):
    model = lively_model(pos="rope")
    naive, cached = both(model, prompt(2, 5), 2 * BLOCK, backend, **kw)
    assert torch.equal(naive, cached)


@pytest.mark.parametrize("backend", BACKENDS)
def test_logit_softcap_and_tied_weights_agree_between_paths(backend):
    model = lively_model(logit_softcap=5.0, tie_weights=True)
    naive, cached = both(model, prompt(2, 4), 2 * BLOCK, backend)
    assert torch.equal(naive, cached)


def test_bigram_generation_through_the_engine_equals_naive():
    model = build_model(ModelConfig(model="bigram", vocab_size=VOCAB, block_size=8))
    with torch.no_grad():
        model.token_embedding_table.weight.normal_(0, 2.0)
    naive, cached = both(model, prompt(2, 3), 40)
    assert torch.equal(naive, cached)


def test_stream_yields_the_same_tokens_as_generate_one_column_at_a_time():
    model = lively_model()
    idx = prompt(2, 4)
    cols = list(Engine(model).stream(idx, 20, temperature=0))
    assert all(c.shape == (2, 1) for c in cols)
    assert torch.equal(torch.cat([idx, *cols], dim=1), Engine(model).generate(idx, 20, temperature=0))


def test_zero_new_tokens_returns_the_prompt():
    model = lively_model()
    idx = prompt(1, 4)
    assert torch.equal(Engine(model).generate(idx, 0), idx)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_continues_the_prompt_with_the_tokens_naive_generation_draws_from_the_same_seed(backend):
    tok = CharTokenizer("abcdefghijklmnopqrst")
    model = lively_model()
    ids = prompt_ids(tok, "abc")
    params = SamplingParams(max_new_tokens=2 * BLOCK, temperature=0.8, top_k=5, top_p=0.9, seed=3)
    cols = list(Engine(model, backend).sample(ids, params, num_samples=2))
    assert len(cols) == 2 * BLOCK and all(c.shape == (2, 1) for c in cols)
    naive = model.generate(torch.tensor([ids] * 2), 2 * BLOCK, temperature=0.8, top_k=5, top_p=0.9,
                           generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat(cols, dim=1), naive[:, len(ids):])


def test_window_jumps_by_half_a_block_beyond_block_size():
    assert [window_start(n, 16) for n in (1, 16, 17, 24, 25, 32, 33)] == [0, 0, 8, 8, 16, 16, 24]
    for n in range(1, 100):  # the window always holds between half a block and a block of tokens
        assert 8 <= n - window_start(n, 16) <= 16 or n < 8


def test_kv_cache_stores_keys_and_values_at_the_current_position():
    cache = KVCache(n_layer=2, batch_size=1, n_head=2, max_len=8, head_size=4, dtype=torch.float32,
                    device=torch.device("cpu"))
    k1, v1 = torch.ones(1, 2, 3, 4), torch.full((1, 2, 3, 4), 2.0)
    k, v = cache.update(1, k1, v1)
    assert k.shape == (1, 2, 3, 4) and torch.equal(k, k1) and torch.equal(v, v1)
    cache.advance(3)
    k, v = cache.update(1, torch.full((1, 2, 1, 4), 5.0), torch.full((1, 2, 1, 4), 6.0))
    assert k.shape == (1, 2, 4, 4) and k[0, 0, 3, 0] == 5 and v[0, 0, 3, 0] == 6 and k[0, 0, 0, 0] == 1
    assert cache.k[0].abs().sum() == 0  # other layers untouched


def test_generation_leaves_the_thread_count_as_it_found_it():
    before = torch.get_num_threads()
    with one_cpu_thread(torch.device("cpu")):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    Engine(lively_model()).generate(prompt(1, 3), 5)
    assert torch.get_num_threads() == before


@torch.inference_mode()
@pytest.mark.parametrize("model_kw", MODELS)
def test_a_prefill_gives_the_full_forwards_last_logits(model_kw):
    """A prefill runs the last block's attention and feed-forward for the last position only."""
    model = lively_model(**model_kw)
    idx = prompt(2, 11)
    cache = KVCache(2, 2, 2, BLOCK, 16, torch.float32, torch.device("cpu"))
    logits, _ = model(idx, cache=cache)
    assert logits.shape == (2, 1, VOCAB) and cache.pos == 11
    torch.testing.assert_close(logits[:, 0], model(idx)[0][:, -1], rtol=1e-5, atol=1e-5)
