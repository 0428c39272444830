import json

import pytest
import torch

from chargpt import checkpoint
from chargpt.config import get_preset
from chargpt.data import load_dataset
from chargpt.rundir import RunDir
from chargpt.train import train


def bigram_config(steps: int):
    cfg = get_preset("bigram")
    cfg.train.max_steps = steps
    cfg.train.eval_interval = max(1, steps // 2)
    cfg.train.eval_iters = 20
    cfg.train.sample_tokens = 50
    return cfg


def test_short_bigram_run_gets_val_loss_below_2_6(dataset_dir, tmp_path):
    data = load_dataset(dataset_dir)
    cfg = bigram_config(600)
    summary = train(cfg, data, RunDir.create(tmp_path, "b"), preset="bigram", echo=lambda *_: None)
    assert summary["val_loss_full"] < 2.6
    assert summary["steps"] == 600 and summary["tokens_seen"] == 600 * 32 * 8
    assert 50 < summary["peak_rss_mb"] < 4000  # this process's own high-water mark, in MB
    assert summary["dtype"] in ("float32", "bfloat16")


@pytest.mark.slow
def test_bigram_converges_to_the_count_based_optimum(dataset_dir, tmp_path):
    data = load_dataset(dataset_dir)
    run = RunDir.create(tmp_path, "b")
    summary = train(bigram_config(3000), data, run, preset="bigram", echo=lambda *_: None)
    assert 2.40 < summary["bigram_optimum_val_loss"] < 2.55
    assert abs(summary["val_loss_full"] - summary["bigram_optimum_val_loss"]) < 0.03
    on_disk = json.loads((run.path / "summary.json").read_text())
    for key in ("model", "params", "steps", "tokens_seen", "train_seconds", "train_loss", "val_loss",
                "val_loss_full", "val_bpc_full", "bigram_optimum_val_loss"):
        assert key in on_disk, key
    assert on_disk["params"] == 65 * 65


def test_run_directory_holds_config_metrics_checkpoint_sample_summary(dataset_dir, tmp_path):
    data = load_dataset(dataset_dir)
    run = RunDir.create(tmp_path, "b")
    train(bigram_config(40), data, run, preset="bigram", echo=lambda *_: None)
    names = {p.name for p in run.path.iterdir()}
    assert {"config.json", "metrics.jsonl", "ckpt.pt", "sample.txt", "summary.json"} <= names
    records = [r for r in run.metrics() if "val_loss" in r]
    assert [r["step"] for r in records] == [0, 20, 40]
    logged = [r for r in run.metrics() if "loss" in r]  # the training loss of every --log-interval (10) steps
    assert [r["step"] for r in logged] == [10, 20, 30, 40] and all(r["loss"] > 0 for r in logged)
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    state = checkpoint.load(run.ckpt)
    assert state["step"] == 40 and state["vocab"]["chars"] == data.tokenizer.chars
    assert set(state["rng"]) >= {"torch", "batch", "python"}
    assert len(open(run.path / "sample.txt").read()) == 51


def test_checkpoint_then_resume_continues_to_the_same_result(dataset_dir, tmp_path):
    data = load_dataset(dataset_dir)
    straight = RunDir.create(tmp_path, "straight")
    s1 = train(bigram_config(40), data, straight, preset="bigram", echo=lambda *_: None)

    half = RunDir.create(tmp_path, "half")
    train(bigram_config(20), data, half, preset="bigram", echo=lambda *_: None)
    state = checkpoint.load(half.ckpt)
    cfg = bigram_config(40)
    s2 = train(cfg, data, half, preset="bigram", resume_state=state, echo=lambda *_: None)
    assert s2["steps"] == 40
    a = checkpoint.load(straight.ckpt)["model"]
    b = checkpoint.load(half.ckpt)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert s1["val_loss_full"] == s2["val_loss_full"]


def test_time_budget_stops_training_and_is_recorded(dataset_dir, tmp_path):
    data = load_dataset(dataset_dir)
    cfg = bigram_config(10**9)
    cfg.train.time_budget = 2.0
    cfg.train.schedule = "wsd"
    run = RunDir.create(tmp_path, "t")
    summary = train(cfg, data, run, preset="bigram", echo=lambda *_: None)
    assert summary["time_budget"] == 2.0
    seconds = [r["train_seconds"] for r in run.metrics() if "val_loss" in r]
    assert len(seconds) >= 8  # at evenly spaced times (budget_evals=10), not only at the start and the end
    assert max(b - a for a, b in zip(seconds, seconds[1:])) < 0.6  # no long stretch without one
    assert 2.0 <= summary["train_seconds"] < 4.0
    assert summary["steps"] > 10
    assert summary["tokens_seen"] == summary["steps"] * 32 * 8


def test_gpt_trains_on_cpu_and_loss_falls(dataset_dir, tmp_path):
    data = load_dataset(dataset_dir)
    cfg = get_preset("cpu")
    cfg.model.n_layer, cfg.model.n_embd, cfg.model.block_size = 1, 32, 32
    cfg.train.batch_size, cfg.train.max_steps, cfg.train.eval_interval, cfg.train.eval_iters = 8, 60, 30, 5
    cfg.train.sample_tokens, cfg.train.compile = 0, False
    run = RunDir.create(tmp_path, "g")
    summary = train(cfg, data, run, preset="cpu", echo=lambda *_: None)
    records = [r for r in run.metrics() if "val_loss" in r]
    assert records[-1]["val_loss"] < records[0]["val_loss"] - 0.8
    assert summary["val_loss_full"] < 3.2
