import dataclasses
import json
import re
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hypothesis import given, settings
from hypothesis import strategies as st

from chargpt.runtime import compiling
from chargpt.runtime.compiling import (COMPILE_MARGIN, CompileFigures, CompileRun, compile_decision,
                                       compile_unavailable_reason, use_persistent_compile_cache)
from chargpt.runtime.progress import format_duration

from conftest import TINY_GPT, run_cli


def test_compile_needs_a_cpp_compiler_on_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no compiler
    assert "C++ compiler" in compile_unavailable_reason(torch.device("cpu"))
    monkeypatch.undo()
    assert compile_unavailable_reason(torch.device("cuda")) is None


def test_a_compile_cache_that_cannot_be_written_costs_the_compile_not_the_run(dataset_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    (tmp_path / "home").write_text("HOME is a file here")
    env = {"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": "", "CHARGPT_CACHE": ""}
    p = run_cli("train", *TINY_GPT[:-1], "--compile", "--max-steps", "2", "--device", "cpu", "--data", dataset_dir,
                "--runs-dir", tmp_path / "runs", "--name", "r", env=env)
    assert p.returncode == 0, p.stderr
    said = p.stdout + p.stderr
    assert "the compile cache" in said and "cannot be written (Not a directory); training without it" in said
    assert (tmp_path / "runs" / "r" / "summary.json").is_file()


@pytest.mark.slow
@pytest.mark.skipif(compile_unavailable_reason(torch.device("cpu")) is not None, reason="no C++ compiler")
def test_a_compiled_model_on_the_cpu_drops_the_same_units_as_the_eager_one(monkeypatch, tmp_path):
    # dropout's masks come from torch's generator, not inductor's (slower on the CPU): compiled equals eager
    from chargpt.config import ModelConfig
    from chargpt.model.gpt import build_model

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = build_model(ModelConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.5)).train()
    x = torch.randint(0, 20, (4, 8))
    compiled = compiling.compile_model(model, torch.device("cpu"))
    losses = []
    for fwd in (model, compiled, model):
        torch.manual_seed(1)
        losses.append(fwd(x, x)[1].item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    torch.manual_seed(2)
    assert model(x, x)[1].item() != pytest.approx(losses[2], abs=1e-5)  # another seed, other units dropped


def test_compile_caches_live_in_the_users_cache_directory_unless_torch_is_told_otherwise(monkeypatch, tmp_path):
    monkeypatch.setattr(compiling, "_USERS_INDUCTOR_CACHE", "")  # the user set nothing...
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_root")  # ...and torch wrote its default back
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CHARGPT_CACHE", raising=False)
    path = Path(use_persistent_compile_cache())
    assert path.parent == tmp_path / "cache" / "chargpt" and torch.__version__ in path.name
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(path)  # where inductor looks
    monkeypatch.setattr(compiling, "_USERS_INDUCTOR_CACHE", str(tmp_path / "mine"))
    assert use_persistent_compile_cache() == str(tmp_path / "mine")


def test_the_compile_cache_follows_chargpt_cache_as_the_corpus_cache_does(monkeypatch, tmp_path):
    from chargpt.data.corpus import locate

    monkeypatch.setattr(compiling, "_USERS_INDUCTOR_CACHE", "")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor_root")
    monkeypatch.setenv("CHARGPT_CACHE", str(tmp_path / "mine"))
    monkeypatch.delenv("CHARGPT_DATA", raising=False)
    corpus = tmp_path / "mine" / "tinyshakespeare" / "input.txt"
    corpus.parent.mkdir(parents=True)
    corpus.write_text("cached")
    assert locate("shakespeare") == corpus  # found in the cache, not downloaded
    assert Path(use_persistent_compile_cache()).parent == tmp_path / "mine"


def test_torchs_own_default_written_back_is_not_taken_for_the_users_cache(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what inductor writes back on its first look
    assert compiling._users_inductor_cache() is None
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert compiling._users_inductor_cache() == str(tmp_path / "mine")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    assert compiling._users_inductor_cache() is None


def test_on_two_cpus_inductor_compiles_one_kernel_at_a_time_unless_the_user_says_otherwise():
    # each g++ inductor runs at once holds ~200 MB: two at once on 2 cores were 931 MB across the processes
    code = ("import os, sys; os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2]); "
            "from chargpt.runtime.compiling import prepare_compile; from torch._inductor import config; "
            "prepare_compile(); print(config.compile_threads)")
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_COMPILE_THREADS"}
    ours = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    theirs = subprocess.run([sys.executable, "-c", code], env=env | {"TORCHINDUCTOR_COMPILE_THREADS": "3"},
                            capture_output=True, text=True, timeout=120)
    assert (ours.stdout.strip(), theirs.stdout.strip()) == ("1", "3"), ours.stderr + theirs.stderr


@pytest.mark.slow
def test_a_compiled_run_fills_the_persistent_cache_a_second_run_reuses_it_and_the_cold_one_peaks_no_higher(
        dataset_dir, tmp_path, monkeypatch):
    # One cold and one warm compile, checked for the cache and for the training process's peak RSS:
    # each compile costs tens of seconds on 2 cores, so the two checks share them.
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)  # as for a user who never heard of it
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "CHARGPT_CACHE": ""}  # the default place, under XDG
    # one thread given: the compiled graphs are keyed by the thread count, which `--threads 0` takes from the
    # cores idle at the time (under a loaded test run, one run's count would not be the next one's)
    args = [*TINY_GPT[:-1], "--device", "cpu", "--threads", "1", "--eval-interval", "2",
            "--data", dataset_dir, "--runs-dir", tmp_path / "runs"]
    cache = tmp_path / "cache" / "chargpt"

    def train(name: str, *extra: str):
        return run_cli("train", *args, *extra, "--name", name, env=env, check=True)

    def peak(name: str) -> float:
        return json.loads((tmp_path / "runs" / name / "summary.json").read_text())["peak_rss_mb"]

    # A short budget with nothing compiled yet: compiling would eat the budget, so the run trains eagerly.
    short = train("short-cold", "--compile", "--time-budget", "2")
    assert "compile: skipped: what a first compile of this model costs and wins on this machine is not measured" \
        in short.stdout
    def compiled():  # what the compiler left (chargpt also keeps the machine's speeds and compile costs there)
        return {p for p in cache.rglob("*") if p.is_file() and p.name != "speeds.json"}

    assert not compiled()
    train("eager", "--no-compile", "--max-steps", "2")
    cold = train("cold", "--compile", "--max-steps", "2")
    # no silent minutes: the compile says what it is and how long it takes, before the first estimate
    said = cold.stdout.splitlines()
    start = next(i for i, line in enumerate(said) if line.startswith("compile: compiling the model for this machine"))
    done = next(i for i, line in enumerate(said) if re.fullmatch(r"compile: done in \d+\.\ds", line))
    assert "typically 30 s to 2 min on a CPU" in said[start] and start < done < \
        next(i for i, line in enumerate(said) if line.startswith("step 0:"))
    files = compiled()
    assert files, "the compiled run left nothing in the cache"
    warm = train("warm", "--compile", "--max-steps", "2")
    assert "compile: the first step loads the compiled model from the cache" in warm.stdout
    assert "compile: compiling the model for this machine" not in warm.stdout
    kept = json.loads((cache / "speeds.json").read_text())  # what the two compiles cost, for the next decisions
    assert [k for k in kept if k.endswith("|cold compile s")] and [k for k in kept if k.endswith("|warm compile s")]
    assert {p for p in compiled() if not p.name.endswith(".lock")} == \
        {p for p in files if not p.name.endswith(".lock")}  # every compiled graph came from the cache
    # Tiny model, 1 thread, on the 2-core EPYC: eager 266 MB (348 MB while every run imported torch._dynamo),
    # compiled 419-420 MB from a cold cache and from a warm one (dynamo, inductor and the graphs); before, the cold
    # compile stayed loaded in the training process (478 against 450 MB warm, and matplotlib in both: 386 MB eager).
    eager, cold, warm = peak("eager"), peak("cold"), peak("warm")
    assert cold <= warm + 15, f"a cold compile left {cold - warm:.0f} MB more in the training process than a warm one"
    assert warm <= eager + 200, f"compiling costs {warm - eager:.0f} MB over training eagerly"
    # The same shape in a short budget now compiles, from the cache.
    # (On a CPU with native bf16 that run also adds graphs of its own to the cache, as it did before the budget
    # became wall clock; what it must not do is skip compiling.)
    short = train("short-warm", "--compile", "--time-budget", "2")
    assert "compile: skipped" not in short.stdout
    assert files <= compiled()


# ------------------------------------------------------------------- whether compiling pays, on recorded figures
# A 2-core EPYC without AVX-512, float32, 2 layers x 128: a cold compile took ~55 s for steps ~17% faster (eager
# probe 15,200 tokens/s, compiled ~17,800); its 152 s budget left ~144 s to train. The warm figure is illustrative.
EPYC_F32 = CompileFigures(cold_seconds=55.0, warm_seconds=4.0, compiled_speed=17_800.0, eager_speed=15_200.0)


def test_a_cold_compile_that_the_budget_would_not_win_back_is_skipped_and_the_line_says_why():
    compiles, why = compile_decision(144.0, False, EPYC_F32)
    assert 144 * 15_200 > (144 - 55) * 17_800  # eager sees more tokens: the figures' own arithmetic
    assert not compiles
    assert why.startswith("compile: skipped: a first compile of this model costs ~55.0s here for 17% faster steps")
    assert "this budget trains ~2m24s" in why


def test_the_same_figures_compile_from_a_cold_cache_in_a_budget_long_enough():
    compiles, why = compile_decision(3600.0, False, EPYC_F32)
    assert compiles and why.startswith("compile: compiling first: a first compile of this model costs ~55.0s")


def test_the_break_even_the_line_names_is_where_the_decision_turns():
    c, fast, slow = EPYC_F32.cold_seconds, EPYC_F32.compiled_speed, EPYC_F32.eager_speed
    even = c * fast / (fast - COMPILE_MARGIN * slow)  # (T - c) x compiled = margin x T x eager
    assert not compile_decision(even - 1, False, EPYC_F32)[0]
    assert compile_decision(even + 1, False, EPYC_F32)[0]
    assert f"pays only after ~{format_duration(even)} of training" in compile_decision(even - 1, False, EPYC_F32)[1]


def test_a_warm_cache_costs_only_the_loading_so_the_same_budget_compiles():
    assert compile_decision(144.0, True, EPYC_F32)[0]
    assert not compile_decision(2.0, True, EPYC_F32)[0]  # 4 s of loading in 2 s of training: never


def test_a_machine_never_measured_trains_eagerly_from_a_cold_cache_and_compiles_from_a_warm_one():
    for figures in (CompileFigures(), CompileFigures(cold_seconds=55.0, compiled_speed=17_800.0)):  # no eager speed
        compiles, why = compile_decision(3600.0, False, figures)
        assert not compiles and "not measured yet" in why
        assert compile_decision(3600.0, True, figures)[0]
    assert compile_decision(3600.0, None, CompileFigures())[0]  # the user's own cache: chargpt cannot tell


def test_a_run_without_a_budget_compiles_whatever_the_figures():
    slower = CompileFigures(cold_seconds=500.0, warm_seconds=50.0, compiled_speed=10_000.0, eager_speed=15_200.0)
    assert compile_decision(None, False, slower) == (True, "")


def test_compiled_steps_no_faster_than_eager_ones_are_never_worth_a_compile():
    slower = dataclasses.replace(EPYC_F32, compiled_speed=14_500.0)
    compiles, why = compile_decision(86_400.0, True, slower)
    assert not compiles and "compiled steps of this model run 5% slower here than eager ones" in why
    barely = dataclasses.replace(EPYC_F32, compiled_speed=15_500.0)  # 2% faster: inside the margin
    assert not compile_decision(86_400.0, True, barely)[0]


figure = st.floats(min_value=1.0, max_value=1e6, allow_nan=False)


@settings(max_examples=300, deadline=None)
@given(training=st.floats(min_value=-100.0, max_value=1e6), cost=st.floats(min_value=0.0, max_value=1e4),
       compiled=figure, eager=figure, cold=st.booleans())
def test_a_budget_run_that_compiles_on_measured_figures_never_sees_fewer_tokens_than_eager(training, cost, compiled,
                                                                                          eager, cold):
    figures = CompileFigures(cost, cost, compiled, eager)
    compiles, why = compile_decision(training, not cold, figures)
    if compiles:
        assert (training - cost) * compiled >= training * eager
        assert compile_decision(training * 2, not cold, figures)[0]  # a longer budget compiles too
    assert why.startswith("compile: compiling first" if compiles else "compile: skipped")


def test_a_compiling_run_measures_its_compile_beyond_a_steps_time_and_its_compiled_speed():
    run = CompileRun(cold=True, helper_seconds=25.0, first_step_seconds=31.0)
    cost, speed = run.figures(101, 131.0, 4096)  # 100 steps after the first in 100 s: 1 s a step
    assert cost == pytest.approx(25.0 + 31.0 - 1.0) and speed == pytest.approx(4096.0)
    assert CompileRun(cold=False, first_step_seconds=3.0).figures(1, 3.0, 4096) == (None, None)  # too few steps
    assert CompileRun(cold=False).figures(100, 50.0, 4096) == (None, None)  # no step trained here


@pytest.mark.parametrize("length, span", [(["--time-budget", "3"], "this budget trains ~"),
                                          (["--max-steps", "20"], "these 20 steps take eagerly ~0.0s")],
                         ids=["budget", "steps"])
def test_a_run_decides_on_the_figures_recorded_for_its_model_here(dataset_dir, tmp_path, monkeypatch, length, span):
    # the figures of this machine say a first compile of the tiny model costs far more than its 3 s budget, or
    # than its 20 steps take eagerly: the run trains eagerly, compiles nothing and says why, with those figures (a
    # run of steps compiled whatever it cost: a 36 s fine-tune paid a 43 s compile)
    from chargpt.config import get_preset
    from chargpt.runtime.device import resolve_dtype
    from chargpt.training.budget import COLD_COMPILE, COMPILED, EAGER, SpeedCache, speed_key

    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    config = get_preset("cpu")
    config.model.n_layer, config.model.n_embd, config.model.n_head, config.model.block_size = 1, 32, 2, 16
    config.train.batch_size = 4
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the run's --threads 1: speeds are kept per thread count
    try:
        key = speed_key(config, torch.device("cpu"), resolve_dtype(torch.device("cpu"), config.train.dtype))
    finally:
        torch.set_num_threads(threads)
    cache = SpeedCache(tmp_path / "cache" / "speeds.json")
    for name, value in ((COLD_COMPILE, 300.0), (COMPILED, 60_000.0), (EAGER, 50_000.0)):
        cache.put(f"{key}|{name}", value)
    at = TINY_GPT.index("--max-steps")
    p = run_cli("train", *TINY_GPT[:at], *TINY_GPT[at + 2:-1], "--compile", *length, "--threads", "1",
                "--device", "cpu", "--data", dataset_dir, "--runs-dir", tmp_path / "runs", "--name", "r",
                env={"CHARGPT_CACHE": str(tmp_path / "cache")}, check=True)
    assert "compile: skipped: a first compile of this model costs ~5m00s here for 20% faster steps" in p.stdout
    assert span in p.stdout
    assert not [f for f in (tmp_path / "cache").rglob("*") if f.is_file() and f.name != "speeds.json"]


# ---------------------------------------------------------------------------- a run that never compiles
def test_a_train_command_that_trains_eagerly_never_imports_dynamo(dataset_dir, tmp_path):
    """torch.optim imports torch._dynamo (1.3-1.8 s of a 2-core start-up) at an optimizer's first call, and
    inductor's config did before a compile was decided; a `chargpt train` that compiles nothing imports neither."""
    p = run_cli("train", *TINY_GPT, "--data", dataset_dir, "--runs-dir", tmp_path / "runs", "--name", "r",
                env={"PYTHONPROFILEIMPORTTIME": "1", "TORCHINDUCTOR_CACHE_DIR": ""}, check=True)  # inductor, once
    # imported in this process, wrote its default there: a cache directory the user set is looked up with inductor
    imported = {line.split("|")[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and "torch.optim" in imported  # the import log is there
    assert not {m for m in imported if m.startswith(("torch._dynamo", "torch._inductor"))}
    assert json.loads((tmp_path / "runs/r/summary.json").read_text())["steps"] == 20


OPTIMIZER_STEPS = """
import sys, torch
from chargpt.config import get_preset
from chargpt.model.gpt import build_model
from chargpt.training.optim import make_optimizers
if sys.argv[1] == "skip":
    from chargpt.runtime.compiling import skip_dynamo_import
    skip_dynamo_import()
cfg = get_preset("cpu"); cfg.model.vocab_size = 20; cfg.model.n_layer = 1; cfg.model.n_embd = 32; cfg.model.n_head = 2
cfg.model.block_size = 16
torch.manual_seed(0)
model = build_model(cfg.model)
optimizers = make_optimizers(model, cfg.train, "cpu")
x = torch.randint(0, 20, (4, 16))
for _ in range(3):
    _, loss = model(x, x)
    loss.backward()
    for opt in optimizers:
        opt.step()
        opt.zero_grad(set_to_none=True)
state = [opt.state_dict() for opt in optimizers]
print("torch._dynamo" in sys.modules, [p.detach().double().sum().item() for p in model.parameters()],
      sorted(state[-1]["state"][0]))
"""


def test_optimizers_stepped_without_dynamo_compute_what_torchs_own_steps_compute():
    out = {}
    for how in ("skip", "plain"):
        env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
        p = subprocess.run([sys.executable, "-c", OPTIMIZER_STEPS, how], capture_output=True, text=True, check=True,
                           env=env)
        out[how] = p.stdout
    assert out["skip"].startswith("False") and out["plain"].startswith("True")
    assert out["skip"].split(" ", 1)[1] == out["plain"].split(" ", 1)[1]  # the same weights, the same state
