"""Attention maps: the weights are the model's own, and `chargpt attention` draws them into a real PNG."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from chargpt.model.attention import attention_weights, cell_inches, draw_attention, label
from chargpt.config import get_preset
from chargpt.data.dataset import load_dataset
from chargpt.errors import ConfigError
from chargpt.model.gpt import ModelConfig, build_model

from conftest import lively_model, run_main, train_config

CONFIGS = [pytest.param({}, id="lecture"),
           pytest.param(dict(pos="rope", qk_norm=True, norm="rmsnorm", mlp="relu2", bias=False), id="modern")]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train faster on one thread


def lively(**kw):
    """Peaked attention, not the near-uniform rows of a fresh init."""
    return lively_model(vocab_size=30, block_size=16, n_layer=3, n_embd=16, **kw)


@pytest.mark.parametrize("kw", CONFIGS)
def test_weights_are_causal_and_each_row_sums_to_one(kw):
    w = attention_weights(lively(**kw), torch.randint(0, 30, (2, 12)))
    assert w.shape == (2, 3, 2, 12, 12)
    assert torch.all(w.triu(diagonal=1) == 0)
    assert torch.allclose(w.sum(-1), torch.ones(2, 3, 2, 12), atol=1e-6)
    assert w.max() > 0.5  # some head attends sharply: these are not uniform averages


@pytest.mark.parametrize("kw", CONFIGS)
def test_weights_reproduce_the_attention_output_of_every_layer(kw):
    model = lively(**kw)
    idx = torch.randint(0, 30, (2, 12))
    seen = []
    hooks = [b.sa.register_forward_hook(lambda m, args, out: seen.append((m, args, out))) for b in model.blocks]
    with torch.no_grad():
        model(idx)
    for h in hooks:
        h.remove()
    weights = attention_weights(model, idx)
    for layer, (sa, (x, rope, *_), actual) in enumerate(seen):
        _, _, v = sa.qkv(x, rope)
        y = (weights[:, layer] @ v).transpose(1, 2).reshape(x.shape)  # (B, T, C): heads side by side
        assert (sa.c_proj(y) - actual).abs().max().item() < 1e-5


def test_a_bigram_model_has_no_attention_to_draw():
    bigram = build_model(ModelConfig(model="bigram", vocab_size=30, block_size=8))
    with pytest.raises(ConfigError, match="no attention"):
        attention_weights(bigram, torch.zeros((1, 4), dtype=torch.long))


def test_a_prompt_longer_than_the_context_is_refused():
    with pytest.raises(ConfigError, match="block_size"):
        attention_weights(lively(), torch.zeros((1, 17), dtype=torch.long))


def test_invisible_characters_get_visible_labels():
    assert [label(c) for c in "a \n\t"] == ["a", "␣", "⏎", "⇥"]


def test_the_png_has_a_map_per_layer_and_head(tmp_path):
    import matplotlib.image

    w = attention_weights(lively(), torch.randint(0, 30, (1, 10)))[0]
    out = draw_attention(w, "To be\nor n", tmp_path / "a.png", dpi=50)
    img = matplotlib.image.imread(out)
    cell = cell_inches(10)
    assert img.shape[:2] == (round((3 * cell + 0.6) * 50), round((2 * cell + 1.2) * 50))
    assert img[..., :3].std() > 0.1
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left behind


# ------------------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def trained_run(dataset_dir, tmp_path_factory):
    """A small GPT trained for a moment on tiny Shakespeare, so that its heads have learned something."""
    config = get_preset("cpu")
    config.model.__dict__.update(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=65)
    config.train.__dict__.update(max_steps=60, batch_size=16, eval_interval=60, eval_iters=2, sample_tokens=0,
                                 log_interval=1000, compile=False)
    run, _ = train_config(config, load_dataset(dataset_dir), tmp_path_factory.mktemp("runs"), "attention", preset=None)
    return run.path


def test_chargpt_attention_writes_a_png_of_a_trained_model(trained_run, tmp_path):
    import matplotlib.image

    prompt = "ROMEO:\nBut soft, what light"
    out = tmp_path / "maps" / "attention.png"
    out.parent.mkdir()  # an output's directory must exist
    p = run_main("attention", "--ckpt", trained_run, "--prompt", prompt, "--out", out, "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert f"2 layers x 2 heads over {len(prompt)} characters" in p.stdout
    img = matplotlib.image.imread(out)
    cell = cell_inches(len(prompt))
    assert img.shape[:2] == (round((2 * cell + 0.6) * 100), round((2 * cell + 1.2) * 100))
    rgb = img[..., :3]
    assert rgb.std() > 0.1  # not blank
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50  # heat maps, not a flat fill


def test_chargpt_attention_explains_a_bad_prompt_in_one_line(trained_run, tmp_path):
    p = run_main("attention", "--ckpt", trained_run, "--prompt", "x" * 40, "--out", tmp_path / "a.png", "--device", "cpu")
    assert p.returncode == 2
    assert p.stderr.strip().count("\n") == 0 and "block_size" in p.stderr
    assert not (tmp_path / "a.png").exists()


def test_a_long_prompt_is_drawn_for_its_last_window_characters_at_a_legible_size(tmp_path):
    import matplotlib.image

    model = build_model(ModelConfig(vocab_size=30, block_size=128, n_layer=1, n_head=1, n_embd=16, dropout=0.0))
    w = attention_weights(model.eval(), torch.randint(0, 30, (1, 120)))[0]
    prompt = "".join(chr(ord("a") + i % 26) for i in range(120))
    out = draw_attention(w, prompt, tmp_path / "a.png", dpi=20, window=40)
    img = matplotlib.image.imread(out)
    assert img.shape[:2] == (round((cell_inches(40) + 0.6) * 20), round((cell_inches(40) + 1.2) * 20))
    whole = draw_attention(w, prompt, tmp_path / "b.png", dpi=20, window=0)
    assert matplotlib.image.imread(whole).shape[0] > img.shape[0] or cell_inches(120) == cell_inches(40)


def test_log_and_row_scales_tell_apart_the_small_weights_a_linear_scale_paints_alike(tmp_path):
    import matplotlib.image

    T = 12
    w = torch.zeros(1, 1, T, T)
    for t in range(T):
        w[0, 0, t, : t + 1] = torch.softmax(torch.linspace(0, 0.5, t + 1), 0)  # spread thin, as in later layers
    colours = {}
    for scale in ("linear", "log", "row"):
        out = draw_attention(w, "x" * T, tmp_path / f"{scale}.png", dpi=30, scale=scale, window=0)
        rgb = matplotlib.image.imread(out)[..., :3]
        colours[scale] = len(np.unique((rgb * 255).astype(int).reshape(-1, 3), axis=0))
    assert colours["log"] > colours["linear"] and colours["row"] > colours["linear"]
    with pytest.raises(ConfigError, match="log, row, linear"):
        draw_attention(w, "x" * T, tmp_path / "x.png", scale="sqrt")
