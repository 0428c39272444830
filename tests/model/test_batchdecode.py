"""Continuous batching: a row alone samples exactly what `Engine.sample` samples; rows decoded together, joining
and leaving between steps, each keep their own position, sampling and generator."""
from __future__ import annotations

import pytest
import torch

from conftest import BLOCK, VOCAB, lively_model, run_main

import chargpt
from chargpt.errors import ConfigError
from chargpt.model.batchdecode import BatchDecoder, sample_all, step_rows
from chargpt.model.engine import Engine
from chargpt.model.fastdecode import NumpyDecoder
from chargpt.model.gpt import build_model, ModelConfig
from chargpt.model.sampling import SamplingParams, sample_next, sample_rows

BACKENDS = [pytest.param("auto", id="numpy"), pytest.param("torch", id="torch")]
MODELS = [pytest.param(dict(pos="learned"), id="learned"),
          pytest.param(dict(pos="rope", qk_norm=True, norm="rmsnorm", mlp="relu2", bias=False), id="rope-modern")]
# prompts of every length class: one token, a few, a whole block, longer than a block (prefilled from a window)
PROMPTS = [[3], [1, 4, 1, 5], list(range(BLOCK)), [(7 * i) % VOCAB for i in range(2 * BLOCK + 3)]]
LENGTH = 3 * BLOCK + 3  # crosses several window jumps: each row's cache is prefilled again on its own


def alone(engine: Engine, ids: list[int], params: SamplingParams) -> list[int]:
    return [int(col[0, 0]) for col in engine.sample(ids, params)]


def many(n: int) -> list[list[int]]:
    return [PROMPTS[i % len(PROMPTS)][: 1 + (5 * i) % (2 * BLOCK)] for i in range(n)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model_kw", MODELS)
def test_a_row_alone_samples_exactly_what_engine_sample_samples(model_kw, backend):
    engine = Engine(lively_model(**model_kw), backend)
    for ids in PROMPTS:
        for params in (SamplingParams(LENGTH, temperature=0), SamplingParams(LENGTH, seed=5),
                       SamplingParams(LENGTH, temperature=0.7, top_k=5, top_p=0.9, seed=6)):
            assert sample_all(engine, [ids], params) == [alone(engine, ids, params)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("model_kw", MODELS)
def test_greedy_rows_decoded_together_equal_each_decoded_alone(model_kw, backend):
    engine = Engine(lively_model(**model_kw), backend)
    prompts = many(16)
    params = SamplingParams(LENGTH, temperature=0)
    together = sample_all(engine, prompts, params)
    assert together == [alone(engine, ids, params) for ids in prompts]
    assert len({tuple(t) for t in together}) > 4  # not one sequence sixteen times


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_row_keeps_its_own_sampling_and_generator(backend):
    engine = Engine(lively_model(pos="rope"), backend)
    prompts = many(12)
    settings = [SamplingParams(2 * BLOCK, temperature=t, top_k=k, top_p=p, seed=s)
                for s, (t, k, p) in enumerate([(0, 0, 1.0), (1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.8),
                                               (1.0, 8, 0.9), (0.5, 3, 0.5)] * 2)]
    batch = BatchDecoder(engine, len(prompts))
    rows = [batch.add(ids, params) for ids, params in zip(prompts, settings)]
    got = {id(r): [] for r in rows}
    while batch.rows:
        for row, token in batch.step():
            got[id(row)].append(token)
    assert batch.backend == ("numpy" if backend == "auto" else "torch")
    for row, ids, params in zip(rows, prompts, settings):
        assert got[id(row)] == alone(engine, ids, params)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_join_and_leave_between_steps_and_the_others_go_on_unchanged(backend):
    engine = Engine(lively_model(pos="rope", qk_norm=True), backend)
    params = SamplingParams(LENGTH, temperature=0)
    batch = BatchDecoder(engine, 4)
    got: dict[int, list[int]] = {}
    joined, left = [], []
    prompts = many(10)
    for step in range(4 * LENGTH):
        if step % 7 == 0 and batch.free and len(joined) < len(prompts):
            joined.append(batch.add(prompts[len(joined)], params, tag=len(joined)))
        if step == 20:  # one leaves mid-way: its row is taken by the last, which goes on where it was
            left.append(batch.rows[0])
            batch.remove(batch.rows[0])
        for row, token in batch.step():
            got.setdefault(row.tag, []).append(token)
        if not batch.rows and len(joined) == len(prompts):
            break
    assert len(joined) == len(prompts) and not batch.rows and left
    for tag, tokens in got.items():
        expected = alone(engine, prompts[tag], params)
        assert tokens == (expected[:len(tokens)] if joined[tag] in left else expected), tag


@torch.inference_mode()
@pytest.mark.parametrize("model_kw", MODELS + [pytest.param(dict(pos="learned", norm="layernorm", mlp="gelu",
                                                                 logit_softcap=5.0), id="gelu-softcap")])
def test_the_batched_step_gives_each_row_the_models_logits_at_its_own_position(model_kw):
    """Rows at positions 0, 3 and BLOCK - 1 in one step; the shorter rows' caches hold stale keys past their end."""
    model = lively_model(**model_kw)
    seqs = [torch.tensor(s) for s in ([2], [5, 1, 4, 9], [(3 * i + 1) % VOCAB for i in range(BLOCK)])]
    expected = torch.stack([model(s[None])[0][0, -1] for s in seqs])
    c = model.config
    shape = (c.n_layer, len(seqs), c.n_head, c.block_size, c.n_embd // c.n_head)
    k, v = torch.randn(shape), torch.randn(shape)  # stale: what other completions left
    decoder = NumpyDecoder(model)
    keys, values = decoder.new_cache(len(seqs))
    for layer in range(c.n_layer):
        keys[layer][...] = k[layer].numpy()
        values[layer][..., :-1] = v[layer].numpy()
    for row, s in enumerate(seqs):
        if len(s) > 1:
            model(s[None, :-1], cache=_Row(k, v, row))
            decoder.prefill(s[None, :-1].numpy(), [x[row:row + 1] for x in keys], [x[row:row + 1] for x in values])
    tokens = torch.tensor([int(s[-1]) for s in seqs])
    pos = torch.tensor([len(s) - 1 for s in seqs])
    torch_logits = step_rows(model, tokens, pos, k, v)
    numpy_logits = torch.from_numpy(decoder.step_rows(tokens.numpy(), pos.numpy(), keys, values))
    assert torch.allclose(torch_logits, expected, atol=1e-5, rtol=1e-4)
    assert torch.allclose(numpy_logits, expected, atol=1e-5, rtol=1e-4)


class _Row:
    """Row `row` of (L, B, nh, T, hs) caches as the KVCache that `GPT.forward` fills."""

    def __init__(self, k, v, row):
        self.k, self.v, self.row, self.pos = k, v, row, 0

    def update(self, layer, k, v):
        end = self.pos + k.size(2)
        self.k[layer, self.row:self.row + 1, :, self.pos:end] = k
        self.v[layer, self.row:self.row + 1, :, self.pos:end] = v
        return self.k[layer, self.row:self.row + 1, :, :end], self.v[layer, self.row:self.row + 1, :, :end]

    def advance(self, n):
        self.pos += n


def test_a_model_the_batched_step_does_not_compute_decodes_each_row_alone_with_its_own_forward(capfd):
    """An edit of Block.forward (here a hook) that the batched step, which calls the block's parts, would miss."""
    model = lively_model(pos="rope")
    model.blocks[0].register_forward_hook(lambda module, args, out: out * 0.5)
    engine = Engine(model)
    prompts = many(6)
    params = SamplingParams(2 * BLOCK, temperature=0)
    got = sample_all(engine, prompts, params)
    err = capfd.readouterr().err
    assert "batched decoding step does not compute what this model's forward computes" in err
    for ids, tokens in zip(prompts, got):
        naive = model.generate(torch.tensor([ids]), 2 * BLOCK, temperature=0)
        assert tokens == naive[0, len(ids):].tolist()


def test_a_bigram_batch_samples_what_each_prompt_samples_alone():
    model = build_model(ModelConfig(model="bigram", vocab_size=VOCAB, block_size=8))
    with torch.no_grad():
        model.token_embedding_table.weight.normal_(0, 2.0)
    engine = Engine(model)
    params = SamplingParams(40, seed=3)
    prompts = many(5)
    assert sample_all(engine, prompts, params) == [alone(engine, ids, params) for ids in prompts]


def test_sample_all_decodes_more_prompts_than_rows_in_turn():
    engine = Engine(lively_model())
    params = SamplingParams(BLOCK + 3, seed=11, temperature=0.9)
    prompts = many(7)
    assert sample_all(engine, prompts, params, max_rows=3) == [alone(engine, ids, params) for ids in prompts]
    assert sample_all(engine, prompts, SamplingParams(0)) == [[]] * 7


def test_sample_rows_picks_what_sample_next_picks_row_by_row():
    logits = torch.randn(9, VOCAB, generator=torch.Generator().manual_seed(0)) * 3
    settings = [SamplingParams(temperature=t, top_k=k, top_p=p, seed=s)
                for s, (t, k, p) in enumerate([(0, 0, 1.0), (1.0, 0, 1.0), (1.0, 0, 1.0), (0.7, 5, 1.0),
                                               (1.3, 0, 0.8), (1.0, 8, 0.9), (1e-7, 0, 1.0), (0.7, 5, 1.0),
                                               (2.0, 0, 1.0)])]

    def gens():
        return [torch.Generator().manual_seed(p.seed) for p in settings]

    mine, theirs = gens(), gens()
    for _ in range(5):  # the generators move on as they would alone
        got = sample_rows(logits, list(zip(settings, mine)))
        want = [int(sample_next(logits[i:i + 1], p.temperature, p.top_k, p.top_p, g))
                for i, (p, g) in enumerate(zip(settings, theirs))]
        assert got == want


def test_rows_are_refused_past_the_limit_and_the_cache_is_made_at_the_first_step():
    batch = BatchDecoder(Engine(lively_model()), 2)
    assert batch.backend is None
    batch.add([1], SamplingParams(3))
    batch.add([2], SamplingParams(3))
    with pytest.raises(ValueError, match="all 2 rows"):
        batch.add([3], SamplingParams(3))
    with pytest.raises(ValueError, match="at least one token"):
        BatchDecoder(Engine(lively_model()), 2).add([1], SamplingParams(0))
    batch.step()
    assert batch.backend == "numpy" and len(batch.rows) == 2
    for _ in range(2):
        batch.step()
    assert batch.rows == [] and batch.free == 2


@pytest.mark.parametrize("n", [1, 3])
def test_a_batch_leaves_torch_threads_and_the_model_as_they_were(n):
    model = lively_model()
    threads = torch.get_num_threads()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sample_all(Engine(model), many(n), SamplingParams(BLOCK, seed=1))
    assert torch.get_num_threads() == threads and not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------ the library and the CLI
LINES = ["ROMEO:", "", "First Citizen:", "O, ", "KING HENRY VI:"]


def test_run_generate_with_a_list_samples_every_prompt_together_as_each_alone(tiny_run):
    run = chargpt.load(tiny_run)
    kw = dict(max_new_tokens=3 * BLOCK, temperature=0.9, top_k=20, seed=4)
    together = run.generate(LINES, **kw)
    assert together == [run.generate(prompt, **kw) for prompt in LINES]
    assert len(set(together)) == len(LINES) and all(t.startswith(p) for t, p in zip(together, LINES))
    with pytest.raises(ConfigError, match="prompt\\[1\\]"):
        run.generate(["a", 3])


def test_sample_prompts_file_prints_what_each_line_prints_alone(tiny_run, tmp_path):
    (tmp_path / "prompts.txt").write_text("\n".join(LINES) + "\n", encoding="utf-8")
    flags = ["--ckpt", tiny_run, "--max-new-tokens", 40, "--seed", 9, "--temperature", 0.8, "--threads", 1]
    together = run_main("sample", "--prompts-file", "prompts.txt", *flags, cwd=tmp_path, check=True).stdout
    alone = [run_main("sample", "--prompt", line, *flags, cwd=tmp_path, check=True).stdout for line in LINES]
    assert together == "".join(f"--- prompt {i + 1} ---\n{text}" for i, text in enumerate(alone))
    both = run_main("sample", "--prompts-file", "prompts.txt", "--prompt", "x", *flags, cwd=tmp_path)
    assert both.returncode == 2 and "--prompts-file gives every prompt" in both.stderr
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    empty = run_main("sample", "--prompts-file", "empty.txt", *flags, cwd=tmp_path)
    assert empty.returncode == 2 and "holds no line" in empty.stderr
