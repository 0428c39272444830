"""Sampling: the next-token rule, and one table of sampling parameters run through every door (`chargpt
sample`, `chargpt.load(run).generate`, a real `chargpt serve` over HTTP), which must give the same text or
the same error for each."""
from __future__ import annotations

import contextlib
import io
import math

import pytest
import torch

import chargpt
from chargpt.cli import main
from chargpt.errors import ConfigError
from chargpt.model.sampling import sample_next
from conftest import Server

PROMPT = "ROMEO:"
BASE = {"max_new_tokens": 40, "seed": 7}  # every row samples this many characters from this seed unless it says
SERVER_NAMES = {"max_new_tokens": "max_tokens"}  # OpenAI's key for the parameter, where it has its own

# (id, parameters, expected): a dict of other parameters whose text this row's text must equal, a message
# template ("{}" stands for the parameter as each door spells it: --top-k, top_k, 'top_k'), or None (a text,
# the same at every door). Rows with `typed=False` hold values no command line can carry (argparse refuses
# them first), so they run through the library and the server only.
CASES = [
    ("top-k-0-is-every-character", {"top_k": 0, "temperature": 0.9}, {"top_k": 65, "temperature": 0.9}),
    ("top-k-above-the-vocabulary-is-every-character", {"top_k": 10 ** 6}, {"top_k": 0}),
    ("tiny-temperature-is-greedy", {"temperature": 1e-50}, {"temperature": 0.0}),
    ("tiny-top-p-is-top-1", {"top_p": 1e-50}, {"temperature": 0.0}),
    ("largest-seed", {"seed": 2 ** 64 - 1}, None),
    ("no-new-tokens", {"max_new_tokens": 0}, None),
    ("all-together", {"temperature": 0.8, "top_k": 20, "top_p": 0.9}, None),
    ("negative-temperature", {"temperature": -1.0}, "{} must be in [0, 1000], got -1.0"),
    ("nan-temperature", {"temperature": math.nan}, "{} must be in [0, 1000], got nan"),
    ("infinite-temperature", {"temperature": math.inf}, "{} must be in [0, 1000], got inf"),
    ("top-p-0", {"top_p": 0.0}, "{} must be in (0, 1], got 0.0"),
    ("top-p-above-1", {"top_p": 1.5}, "{} must be in (0, 1], got 1.5"),
    ("negative-top-k", {"top_k": -1}, "{} must be in [0, 1114112], got -1"),
    ("negative-max-new-tokens", {"max_new_tokens": -1}, "{} must be in [0, 10^9], got -1"),
    ("seed-of-2-to-the-64", {"seed": 2 ** 64}, "{} must be in [0, 2^64), got 18446744073709551616"),
    ("negative-seed", {"seed": -1}, "{} must be in [0, 2^64), got -1"),
    ("fractional-top-k", {"top_k": 2.5}, "{} must be an integer, got 2.5", False),
    ("boolean-top-k", {"top_k": False}, "{} must be an integer, got False", False),
    ("boolean-seed", {"seed": True}, "{} must be an integer, got True", False),
    ("text-temperature", {"temperature": "hot"}, "{} must be a number, got 'hot'", False),
]


@pytest.fixture(scope="module")
def run(tiny_run):
    return tiny_run


@pytest.fixture(scope="module")
def server(run, tmp_path_factory):
    s = Server("--ckpt", run, "--device", "cpu", cwd=tmp_path_factory.mktemp("sampling"))
    yield s
    s.stop()
    assert "Traceback" not in s.log.read_text()


def by_cli(run, params: dict) -> tuple[str, str]:
    """('text', the prompt and its continuation) or ('error', the message) from `chargpt sample`, in-process."""
    args = ["sample", "--ckpt", str(run), "--prompt", PROMPT, "--device", "cpu", "--threads", "1"]
    for name, value in params.items():
        args += ["--" + name.replace("_", "-"), str(value)]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    if code == 0:
        assert out.getvalue().endswith("\n")
        return "text", out.getvalue()[:-1]
    assert code == 2 and err.getvalue().startswith("error: ") and err.getvalue().count("\n") == 1, err.getvalue()
    return "error", err.getvalue()[len("error: "):-1]


def by_library(run, params: dict) -> tuple[str, str]:
    try:
        return "text", chargpt.load(run).generate(PROMPT, **params)
    except ConfigError as e:
        return "error", str(e)


def by_server(server, params: dict, name: str) -> tuple[str, str]:
    """The same from a completion with `echo` (the prompt and its continuation); an error names `name`."""
    body = {"prompt": PROMPT, "echo": True, **{SERVER_NAMES.get(k, k): v for k, v in params.items()}}
    status, answer = server.request("POST", "/v1/completions", body)
    if status == 200:
        return "text", answer["choices"][0]["text"]
    assert status == 400 and answer["error"]["type"] == "invalid_request_error", answer
    assert answer["error"]["param"] == SERVER_NAMES.get(name, name)
    return "error", answer["error"]["message"]


@pytest.mark.parametrize("row", CASES, ids=[c[0] for c in CASES])
def test_every_door_gives_the_same_text_or_the_same_error_for_the_same_sampling_parameters(row, run, server):
    _, given, expected, *typed = row
    params = {**BASE, **given}
    name = next(iter(given))
    answers = {"library": by_library(run, params), "server": by_server(server, params, name)}
    if typed != [False]:
        answers["cli"] = by_cli(run, params)
    if isinstance(expected, str):
        spelled = {"cli": "--" + name.replace("_", "-"), "library": name,
                   "server": f"'{SERVER_NAMES.get(name, name)}'"}
        assert answers == {door: ("error", expected.format(spelled[door])) for door in answers}
        return
    kinds = {kind for kind, _ in answers.values()}
    assert kinds == {"text"}, answers
    texts = {text for _, text in answers.values()}
    assert len(texts) == 1, answers
    text = texts.pop()
    assert text.startswith(PROMPT) and len(text) == len(PROMPT) + params["max_new_tokens"]
    if expected is not None:
        assert text == by_library(run, {**params, **expected})[1]


def test_the_tiny_limits_differ_from_what_the_seed_samples_at_temperature_1(run):
    """The table's greedy rows would pass trivially if greedy and sampled text were alike: they are not."""
    assert by_library(run, {**BASE, "temperature": 0.0}) != by_library(run, BASE)


# ----------------------------------------------------------------------------------------- sample_next
@pytest.mark.parametrize("batch", [1, 3])
def test_sample_next_draws_what_torch_multinomial_draws_from_the_same_generator(batch):
    # sample_next replaces torch.multinomial(probs, 1) by the exponential race it runs; same seed, same tokens
    source = torch.Generator().manual_seed(1)
    ours, theirs = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    for _ in range(3000):
        logits = torch.randn(batch, 65, generator=source) * 3
        expected = torch.multinomial(torch.softmax(logits, -1), 1, generator=theirs)
        assert torch.equal(sample_next(logits, generator=ours), expected)


def test_sample_next_follows_the_distribution_and_never_picks_a_masked_token():
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0]]))
    draws = torch.cat([sample_next(logits, generator=g) for _ in range(20000)])[:, 0]
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    assert torch.allclose(freq, torch.tensor([0.5, 0.3, 0.2, 0.0], dtype=torch.float64), atol=0.015)
    top1 = torch.cat([sample_next(logits, top_k=1, generator=g) for _ in range(200)])
    assert (top1 == 0).all()


@pytest.mark.parametrize("kw", [dict(top_p=1e-50), dict(top_p=1e-45), dict(temperature=1e-50),
                                dict(temperature=1e-7), dict(top_k=1)], ids=str)
def test_a_value_that_underflows_float32_picks_the_likeliest_token(kw):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 65, generator=g) * 3
    for _ in range(20):
        assert torch.equal(sample_next(logits, generator=g, **kw), logits.argmax(-1, keepdim=True))


def test_top_p_keeps_the_smallest_set_of_tokens_whose_probability_reaches_it():
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    for top_p, allowed in ((0.5, {0}), (0.6, {0, 1}), (0.8, {0, 1}), (0.81, {0, 1, 2}), (1.0, {0, 1, 2, 3})):
        draws = {int(sample_next(logits, top_p=top_p, generator=g)) for _ in range(400)}
        assert draws == allowed, top_p
