import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from chargpt.runs import checkpoint
from chargpt.config import get_preset
from chargpt.data.dataset import load_dataset, prepare
from chargpt.training.budget import EVAL_SHARE
from chargpt.training.evaluate import evaluate_split
from conftest import train_config


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
    _, summary = train_config(cfg, data, tmp_path, "b", preset="bigram")
    assert summary["val_loss_full"] < 2.6
    assert summary["val_loss_full_exact"] and summary["val_loss_full_stderr"] == 0.0  # a small val: every char
    assert summary["val_eval_tokens"] == summary["val_tokens"] == 111_539
    assert summary["steps"] == 600 and summary["tokens_seen"] == 600 * 32 * 8
    assert 50 < summary["peak_rss_mb"] < 4000  # this process's own high-water mark, in MB
    assert summary["dtype"] in ("float32", "bfloat16")


@pytest.mark.slow
def test_bigram_converges_to_the_count_based_optimum(dataset_dir, tmp_path):
    data = load_dataset(dataset_dir)
    run, summary = train_config(bigram_config(3000), data, tmp_path, "b", preset="bigram")
    assert 2.40 < summary["bigram_optimum_val_loss"] < 2.55
    assert abs(summary["val_loss_full"] - summary["bigram_optimum_val_loss"]) < 0.03
    on_disk = json.loads((run.path / "summary.json").read_text())
    for key in ("model", "params", "steps", "tokens_seen", "train_seconds", "train_loss", "val_loss",
                "val_loss_full", "val_bpc_full", "bigram_optimum_val_loss"):
        assert key in on_disk, key
    assert on_disk["params"] == 65 * 65


def test_a_val_split_larger_than_eval_tokens_is_estimated_from_an_evenly_spread_subset(dataset_dir, tmp_path):
    data = load_dataset(dataset_dir)
    cfg = bigram_config(40)
    cfg.train.eval_tokens = 20_000
    lines = []
    run, summary = train_config(cfg, data, tmp_path, "b", preset="bigram", echo=lines.append)
    assert not summary["val_loss_full_exact"] and summary["val_eval_tokens"] == 20_000
    assert summary["val_tokens"] == 111_539 and summary["val_loss_full_stderr"] > 0
    assert "on 20,000 of 111,539 characters, evenly spread" in lines[-2]
    model, _, _ = checkpoint.load_model(run.ckpt, "cpu")
    exact = evaluate_split(model, data.val, 8, "cpu")
    assert abs(summary["val_loss_full"] - exact.loss) < 4 * summary["val_loss_full_stderr"]
    assert summary["bigram_optimum_val_loss"] == pytest.approx(2.47, abs=0.05)  # from 500k of train, 20k of val


def _wait_for_line(stream, prefix: str) -> list[str]:
    seen = []
    for line in stream:
        seen.append(line)
        if line.startswith(prefix):
            return seen
    raise AssertionError(f"no line starting with {prefix!r} in:\n{''.join(seen)[-3000:]}")


@pytest.mark.slow
def test_a_signal_during_the_final_evaluation_keeps_the_checkpoint_and_says_the_evaluation_was_cut_short(
        shakespeare_path, tmp_path):
    from conftest import TINY_GPT

    (tmp_path / "corpus.txt").write_bytes(shakespeare_path.read_bytes() * 4)
    prepare(tmp_path / "corpus.txt", tmp_path / "ds", val_fraction=0.9)  # 4 million characters of val
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "chargpt"]
    p = subprocess.Popen([*cmd, "train", "--data", tmp_path / "ds", "--name", "r", *TINY_GPT, "--eval-tokens", "all"],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_line(p.stdout, "final evaluation of val:")  # the progress of a long pass, shown after 3 s
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert err.count("\n") == 1 and "final evaluation was cut short by SIGINT" in err
    assert "checkpoint of step 20 is kept" in err and "chargpt eval --ckpt" in err
    summary = json.loads((tmp_path / "runs/r/summary.json").read_text())
    assert summary["steps"] == 20 and summary["val_loss_full"] is None
    assert summary["eval_cut_short"].startswith("by SIGINT after ")
    assert checkpoint.load(tmp_path / "runs/r/ckpt.pt")["step"] == 20

    e = subprocess.Popen([*cmd, "eval", "--ckpt", "runs/r", "--eval-tokens", "all"], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_line(e.stderr, "evaluating val:")
    e.send_signal(signal.SIGTERM)
    out, err = e.communicate(timeout=120)
    assert e.returncode == 143 and out == ""
    assert err.startswith("evaluation cut short after ") and err.count("\n") == 1


def test_run_directory_holds_config_metrics_checkpoint_sample_summary(dataset_dir, tmp_path):
    data = load_dataset(dataset_dir)
    run, _ = train_config(bigram_config(40), data, tmp_path, "b", preset="bigram")
    names = {p.name for p in run.path.iterdir()}
    assert {"config.json", "metrics.jsonl", "ckpt.pt", "sample.txt", "summary.json"} <= names
    records = [r for r in run.metrics() if "val_loss" in r]
    # every eval_interval (20) and, as 40 steps at that interval leave fewer than 8 estimates, cheap ones at every
    # log_interval (10) between
    assert [r["step"] for r in records] == [0, 10, 20, 30, 40]
    logged = [r for r in run.metrics() if "loss" in r]  # the training loss of every --log-interval (10) steps
    assert [r["step"] for r in logged] == [10, 20, 30, 40] and all(r["loss"] > 0 for r in logged)
    assert records[-1]["val_loss"] < records[0]["val_loss"]
    state = checkpoint.load(run.ckpt)
    assert state["step"] == 40 and state["vocab"]["chars"] == data.tokenizer.chars
    assert set(state["rng"]) >= {"torch", "batch", "python"}
    assert len(open(run.path / "sample.txt").read()) == 51


def test_checkpoint_then_resume_continues_to_the_same_result(dataset_dir, tmp_path):
    data = load_dataset(dataset_dir)
    straight, s1 = train_config(bigram_config(40), data, tmp_path, "straight", preset="bigram")

    half, _ = train_config(bigram_config(20), data, tmp_path, "half", preset="bigram")
    _, s2 = train_config(bigram_config(40), data, tmp_path, "half", resume=True)
    assert s2["steps"] == 40
    a = checkpoint.load(straight.ckpt)["model"]
    b = checkpoint.load(half.ckpt)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert s1["val_loss_full"] == s2["val_loss_full"]


def tiny_gpt_config(steps: int, **train):
    cfg = get_preset("cpu")
    cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head, cfg.model.block_size = 1, 32, 2, 16
    cfg.train.batch_size, cfg.train.max_steps, cfg.train.eval_interval, cfg.train.eval_iters = 4, steps, 10, 2
    cfg.train.sample_tokens, cfg.train.compile, cfg.train.eval_tokens, cfg.train.schedule = 0, False, 3000, "constant"
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


def test_the_average_of_the_weights_is_their_mean_then_an_exponential_moving_average():
    from chargpt.training.state import Average

    model = torch.nn.Linear(3, 2)
    average, seen = None, []
    for i in range(8):
        with torch.no_grad():
            model.weight.fill_(float(i))
        seen.append(float(i))
        if average is None:
            average = Average.of(model, step=5)
        else:
            average.update(model, decay=0.75)
        expected = sum(seen) / len(seen) if len(seen) <= 4 else 0.75 * expected + 0.25 * i  # mean of 4, then decay
        assert average.model.weight.mean().item() == pytest.approx(expected)
    assert average.start == 5 and average.steps == 8
    assert not any(p.requires_grad for p in average.model.parameters())


def test_a_run_with_ema_saves_and_scores_the_average_and_a_resume_carries_it_on_exactly(dataset_dir, tmp_path):
    data = load_dataset(dataset_dir)
    straight, s1 = train_config(tiny_gpt_config(40, ema=0.9, ema_from=0.25), data, tmp_path, "straight")
    half, _ = train_config(tiny_gpt_config(20, ema=0.9, ema_from=0.5), data, tmp_path, "half")  # averaging from step 11
    _, s2 = train_config(tiny_gpt_config(40, ema=0.9, ema_from=0.25), data, tmp_path, "half", resume=True)
    a, b = checkpoint.load(straight.ema), checkpoint.load(half.ema)
    assert a["step"] == b["step"] == 40 and a["extra"]["averaged_from_step"] == b["extra"]["averaged_from_step"] == 11
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert not all(torch.equal(a["model"][k], checkpoint.load(straight.ckpt)["model"][k]) for k in a["model"])
    # scored at the end, like the final model; the run recommends the lower, and reading the run reads it
    from chargpt.runs.rundir import recommended

    ema_model, _, _ = checkpoint.load_model(straight.ema)
    assert s1["val_loss_full_ema"] == s2["val_loss_full_ema"] == pytest.approx(
        evaluate_split(ema_model, data.val, 16, "cpu", eval_tokens=3000).loss)
    assert s1["ema_from_step"] == 11 and {s1["val_loss_full"]} == {min(s1["val_loss_full_ema"], s1["val_loss_full_final"])}
    assert s1["recommended"] == ("ema.pt" if s1["val_loss_full_ema"] < s1["val_loss_full_final"] else "ckpt.pt")
    assert recommended(straight.path).name == s1["recommended"]

def test_time_budget_stops_training_and_is_recorded(dataset_dir, tmp_path):
    data = load_dataset(dataset_dir)
    cfg = bigram_config(10**9)
    cfg.train.time_budget = 10.0
    cfg.train.schedule = "wsd"
    run, summary = train_config(cfg, data, tmp_path, "t", preset="bigram")
    assert summary["time_budget"] == 10.0
    seconds = [r["train_seconds"] for r in run.metrics() if "val_loss" in r]
    # at every one of the evenly spaced times (budget_evals=10), not only at the start and the end: a short budget
    # draws a curve too, from cheaper estimates
    assert len(seconds) >= cfg.train.budget_evals
    # spread over the training, not bunched at its start
    assert seconds[-1] > 0.5 * summary["train_seconds"]
    # the budget is wall clock: training is only part of it, the estimates and the final pass are in it too
    assert summary["train_seconds"] < 10.0
    assert 7.5 < summary["budget_seconds"] < 15.0
    assert summary["steps"] > 10
    assert summary["tokens_seen"] == summary["steps"] * 32 * 8


def test_start_up_before_training_does_not_squeeze_the_schedule_of_a_budget(dataset_dir, tmp_path):
    data = load_dataset(dataset_dir)
    cfg = bigram_config(10**9)
    cfg.train.time_budget, cfg.train.schedule, cfg.train.warmup, cfg.train.decay = 8.0, "wsd", 0.0, 0.5
    # half the budget gone before the first step, as a slow start-up or a first compile takes it
    run, _ = train_config(cfg, data, tmp_path, "t", preset="bigram", clock_start=time.perf_counter() - 4.0)
    lrs = [r["lr"] for r in run.metrics() if "loss" in r]
    assert lrs[0] == pytest.approx(cfg.train.lr)  # training begins at the peak, not part-way down its decay
    # and stays there for about half of the training time (a share of the steps that a loaded machine blurs: the
    # old clock left none of them at the peak)
    assert sum(lr == pytest.approx(cfg.train.lr) for lr in lrs) > 0.2 * len(lrs)


def small_gpt(eval_iters: int, budget: float):
    cfg = get_preset("cpu")
    cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head, cfg.model.block_size = 1, 32, 2, 16
    cfg.train.batch_size, cfg.train.eval_iters, cfg.train.time_budget = 4, eval_iters, budget
    cfg.train.sample_tokens, cfg.train.compile, cfg.train.ema = 0, False, 0.0
    return cfg


@pytest.mark.slow
def test_a_budget_estimates_at_every_mark_within_its_share_of_the_time_however_costly_a_full_one(dataset_dir, tmp_path):
    data = load_dataset(dataset_dir)
    cfg = small_gpt(600, 6.0)  # a full estimate of 1,200 batches would cost far more than 3% of 6 s
    run, summary = train_config(cfg, data, tmp_path, "costly")
    estimated = [r["step"] for r in run.metrics() if "val_loss" in r]
    # the first, one at (nearly) every one of the 10 evenly spaced marks (a slow step may span two), the last
    assert len(estimated) >= cfg.train.budget_evals and estimated[0] == 0
    # each in as many batches as its share of EVAL_SHARE affords (at least 1 per split: on a loaded machine those
    # can cost a little more): the time goes to training
    assert summary["estimates_seconds"] <= 2 * EVAL_SHARE * cfg.train.time_budget


def test_gpt_trains_on_cpu_and_loss_falls(dataset_dir, tmp_path):
    data = load_dataset(dataset_dir)
    cfg = get_preset("cpu")
    cfg.model.n_layer, cfg.model.n_embd, cfg.model.block_size = 1, 32, 32
    cfg.train.batch_size, cfg.train.max_steps, cfg.train.eval_interval, cfg.train.eval_iters = 8, 60, 30, 5
    cfg.train.sample_tokens, cfg.train.compile = 0, False
    run, summary = train_config(cfg, data, tmp_path, "g")
    records = [r for r in run.metrics() if "val_loss" in r]
    assert records[-1]["val_loss"] < records[0]["val_loss"] - 0.8
    assert summary["val_loss_full"] < 3.2


def test_the_headline_is_the_better_of_the_final_model_and_best_pt_and_an_lr_given_on_resume_trains(dataset_dir, tmp_path):
    from conftest import TINY_GPT, run_main

    run_main("train", *TINY_GPT, "--data", dataset_dir, "--runs-dir", tmp_path, "--name", "o", "--sample-tokens", "0",
             "--eval-tokens", "4000", check=True)
    # an absurd learning rate on resume wrecks the model: the lr given must be the one that trains (it was the
    # saved one), and then best.pt (step 20) is better than the final model
    p = run_main("train", "--resume", tmp_path / "o", "--max-steps", "30", "--lr", "3", "--muon-lr", "20",
                 "--schedule", "constant", check=True)
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["val_loss_full_final"] > summary["val_loss_full_best"] + 1.0
    assert summary["recommended"] == "best.pt" and summary["best_step"] == 20
    assert summary["val_loss_full"] == summary["val_loss_full_best"]
    assert "(best.pt of step 20, recommended; the final model:" in p.stdout
    # reading the run (eval, sample, serve) uses the model it recommends; resuming continues its latest checkpoint
    scored = json.loads(run_main("eval", "--ckpt", tmp_path / "o", "--json", "--eval-tokens", "4000", "--device", "cpu",
                                 check=True).stdout)
    assert scored["step"] == 20 and scored["loss"] == pytest.approx(summary["val_loss_full_best"])
