"""The time budget: the size it chooses on a machine of a given speed, the speed cache, and the clock it counts."""
from __future__ import annotations

import json
import time
from contextlib import nullcontext

import pytest
import torch

from chargpt.training import budget
from chargpt.training.budget import SIZES, SpeedCache, choose, final_pass_seconds, sized_config
from chargpt.config import get_preset
from chargpt.model.gpt import build_model

CPU = torch.device("cpu")


def machine_of_speed(tmp_path, tokens_per_sec: float) -> SpeedCache:
    """A speed cache saying that every size trains at `tokens_per_sec` scaled by its FLOPs (a real cache file)."""
    cache = SpeedCache(tmp_path / "speeds.json")
    ref = budget.flops_per_token(sized_config(SIZES[0]))
    for size in SIZES:
        config = sized_config(size)
        key = f"{budget._machine_key(CPU, 'float32')}|{budget._shape_key(config)}"
        cache.put(key, tokens_per_sec * ref / budget.flops_per_token(config))
    return cache


def plan(tmp_path, seconds: float, speed: float):
    return choose(seconds, get_preset("cpu"), CPU, "float32", nullcontext,
                  elapsed=0.0, cache=machine_of_speed(tmp_path, speed))


def test_a_longer_budget_never_buys_a_smaller_model(tmp_path):
    chosen = [SIZES.index(plan(tmp_path, s, 40_000).size) for s in (10, 60, 150, 300, 900, 3600, 86_400)]
    assert chosen == sorted(chosen)
    assert chosen[0] == 0 and chosen[-1] == len(SIZES) - 1


def test_a_faster_machine_buys_a_larger_model_for_the_same_budget(tmp_path):
    slow = plan(tmp_path / "slow", 300, 5_000)
    fast = plan(tmp_path / "fast", 300, 500_000)
    assert SIZES.index(fast.size) > SIZES.index(slow.size)
    assert "measured here" in fast.reason and fast.size.name in fast.reason


def test_the_chosen_size_gets_its_min_tokens_in_the_training_time(tmp_path):
    p = plan(tmp_path, 300, 40_000)
    assert p.tokens_per_sec * p.train_seconds >= p.size.min_tokens
    bigger = SIZES.index(p.size) + 1
    if bigger < len(SIZES):
        assert f"{SIZES[bigger].name} would need" in p.reason


def test_start_up_and_the_final_pass_are_not_training_time(tmp_path):
    cache = machine_of_speed(tmp_path, 10_000)
    whole = choose(200, get_preset("cpu"), CPU, "float32", nullcontext, elapsed=0, cache=cache)
    less = choose(200, get_preset("cpu"), CPU, "float32", nullcontext, elapsed=20, val_tokens=400_000, cache=cache)
    assert less.size == whole.size
    final = budget.FINAL_MARGIN * 400_000 / (whole.tokens_per_sec / 2)
    assert less.train_seconds == pytest.approx(whole.train_seconds * (200 - 20 - final) / 200)


def test_an_unmeasured_machine_is_probed_once_and_remembered(tmp_path):
    cache = SpeedCache(tmp_path / "speeds.json")
    choose(1, get_preset("cpu"), CPU, "float32", nullcontext, elapsed=0, cache=cache)
    stored = json.loads((tmp_path / "speeds.json").read_text())
    assert len(stored) >= 1 and all(v > 0 for v in stored.values())
    again = SpeedCache(tmp_path / "speeds.json")
    assert again.values == stored


def test_the_speed_cache_only_rises_and_survives_damage(tmp_path):
    path = tmp_path / "speeds.json"
    cache = SpeedCache(path)
    cache.put("k", 100.0)
    cache.put("k", 50.0)  # a busy machine does not teach it that this machine is slow
    assert SpeedCache(path).get("k") == 100.0
    path.write_text("{not json")
    assert SpeedCache(path).values == {}


def test_the_final_pass_estimate_grows_with_the_split():
    torch.manual_seed(0)
    model = build_model(sized_config(SIZES[0]).model)
    short = final_pass_seconds(model, 4_096, 128, CPU, 0)
    long = final_pass_seconds(model, 409_600, 128, CPU, 0)
    assert 0 < short < long
    capped = final_pass_seconds(model, 409_600, 128, CPU, 4_096)  # an evenly spread subset
    assert capped < long


def test_the_clock_starts_when_the_process_started():
    start = budget.process_start()
    assert start <= time.perf_counter()
    assert time.perf_counter() - start < 3600  # this test process started less than an hour ago


# ------------------------------------------------------------------------------ the budget in a real run
def test_a_budget_is_the_commands_wall_clock_evaluations_and_final_pass_included(dataset_dir, tmp_path):
    from conftest import TINY_GPT, run_cli

    at = TINY_GPT.index("--max-steps")
    flags = TINY_GPT[:at] + TINY_GPT[at + 2:]
    t0 = time.perf_counter()
    p = run_cli("train", *flags, "--data", dataset_dir, "--runs-dir", tmp_path, "--name", "b", "--time-budget", "12",
                "--budget-evals", "5", check=True)
    wall = time.perf_counter() - t0
    assert "budget: 12.0s of wall clock from the command's start" in p.stdout
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    # the budget counts what training time does not: start-up, the estimates, checkpoints and the final pass
    assert summary["budget_seconds"] > summary["train_seconds"] + summary["eval_seconds"]
    assert summary["budget_seconds"] <= wall
    assert wall < 12 * 2  # not 12 s of training followed by the rest (a loaded CI machine gets slack)
    assert "of the 12.0s budget" in p.stdout


def test_without_a_preset_the_budget_chooses_the_size_and_the_users_fields_win(dataset_dir, tmp_path, monkeypatch):
    import chargpt

    monkeypatch.setenv("CHARGPT_CACHE", str(tmp_path / "cache"))
    run = chargpt.train(data=dataset_dir, runs_dir=tmp_path, name="auto", time_budget=6, n_embd=32, n_head=2,
                        eval_iters=2, sample_tokens=0, compile=False, verbose=False)
    summary = run.summary
    assert summary["model_choice"] == SIZES[0].name  # 6 s buy far less than the next size's tokens
    config = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert config["model"]["n_layer"] == SIZES[0].model["n_layer"]  # from the budget's choice
    assert config["model"]["n_embd"] == 32  # given: kept
    assert json.loads((tmp_path / "cache" / "speeds.json").read_text())  # the speed it measured is remembered


def test_the_budget_chooses_with_the_threads_the_run_trains_with(dataset_dir, tmp_path, monkeypatch):
    """The size was chosen at torch's default thread count, and the run then trained on the threads its --threads
    (or, for 0, the idle cores) gave it: on a busy machine a choice made for 2 threads trained on 1, at half the
    speed it counted on. Every speed the run measured and remembered is under the threads it trained with."""
    import torch

    import chargpt

    monkeypatch.setenv("CHARGPT_CACHE", str(tmp_path / "cache"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run = chargpt.train(data=dataset_dir, runs_dir=tmp_path, name="t1", time_budget=4, n_embd=32, n_head=2,
                            eval_iters=2, sample_tokens=0, compile=False, threads=1, verbose=False)
    finally:
        torch.set_num_threads(before)
    keys = json.loads((tmp_path / "cache" / "speeds.json").read_text())
    assert keys and all("|1 threads|" in key for key in keys), list(keys)
    assert run.summary["threads"] == 1  # and the run says which it trained with


# ------------------------------------------------------------------------ what compiling costs, beside the speeds
def test_compile_figures_are_kept_beside_the_speeds_the_best_of_each(tmp_path):
    from chargpt.runtime.compiling import CompileFigures

    config, path = sized_config(SIZES[0]), tmp_path / "speeds.json"
    cache = SpeedCache(path)
    cache.put(f"{budget.speed_key(config, CPU, 'float32')}|{budget.EAGER}", 15_200.0)
    budget.record_compile(config, CPU, "float32", cold=True, seconds=55.0, tokens_per_sec=17_800.0, cache=cache)
    budget.record_compile(config, CPU, "float32", cold=True, seconds=70.0, tokens_per_sec=16_000.0,
                          cache=cache)  # a busier run: neither figure kept
    budget.record_compile(config, CPU, "float32", cold=False, seconds=4.0, tokens_per_sec=None, cache=cache)
    budget.record_compile(config, CPU, "float32", cold=None, seconds=1.0, tokens_per_sec=None, cache=cache)
    figures = budget.compile_figures(config, CPU, "float32", SpeedCache(path))  # read back from the file
    assert figures == CompileFigures(cold_seconds=55.0, warm_seconds=4.0, compiled_speed=17_800.0,
                                     eager_speed=15_200.0)
    other = sized_config(SIZES[1])  # another shape: measured apart
    assert budget.compile_figures(other, CPU, "float32", SpeedCache(path)) == CompileFigures()
    assert SpeedCache(path).get(budget.speed_key(config, CPU, "float32")) is None  # the size choice's speed: apart


def test_an_eager_run_and_the_probe_teach_the_eager_speed_a_compiled_run_does_not(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARGPT_CACHE", str(tmp_path))
    config = sized_config(SIZES[0])
    budget.record_speed(config, CPU, "float32", 20_000.0, compiled=True)
    assert budget.compile_figures(config, CPU, "float32").eager_speed is None
    assert budget.speed_cache().get(budget.speed_key(config, CPU, "float32")) == 20_000.0  # the size choice's
    budget.record_speed(config, CPU, "float32", 15_000.0)
    assert budget.compile_figures(config, CPU, "float32").eager_speed == 15_000.0
    probed = SpeedCache(tmp_path / "probed.json")
    choose(1, get_preset("cpu"), CPU, "float32", nullcontext, elapsed=0, cache=probed)
    eager = budget.compile_figures(sized_config(SIZES[0], get_preset("cpu")), CPU, "float32", probed).eager_speed
    assert eager is not None and eager == probed.get(budget.speed_key(sized_config(SIZES[0]), CPU, "float32"))


def test_a_size_probed_low_is_taken_at_least_at_a_smaller_sizes_trained_speed_scaled_by_its_flops(tmp_path):
    # as measured on a float32 EPYC: 2 layers x 128 trained at 28,900 tokens/s, 3 layers x 128 probed (3 steps) at
    # 11,600 and trained at 19,000: the probe alone chose 2 layers for a 329 s budget
    cache = SpeedCache(tmp_path / "speeds.json")
    small, large = sized_config(SIZES[0]), sized_config(SIZES[1])
    key = lambda config: f"{budget._machine_key(CPU, 'float32')}|{budget._shape_key(config)}"  # noqa: E731
    cache.put(key(small), 28_900.0)
    cache.put(key(large), 11_600.0)
    p = choose(329, get_preset("cpu"), CPU, "float32", nullcontext, elapsed=3.5, val_tokens=111_540, cache=cache)
    assert p.size is SIZES[1]
    assert p.tokens_per_sec == pytest.approx(28_900 * budget.flops_per_token(small) / budget.flops_per_token(large))
    assert 19_000 < p.tokens_per_sec < 20_000
    # a size measured faster than that keeps its own speed
    cache.put(key(large), 21_000.0)
    assert choose(329, get_preset("cpu"), CPU, "float32", nullcontext, elapsed=3.5, val_tokens=111_540,
                  cache=cache).tokens_per_sec == 21_000.0
