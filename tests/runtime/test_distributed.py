"""Data-parallel training with real processes on CPU (gloo): DDP gradients equal one big batch, the sharded
end-of-run evaluation equals one process's, a 2-rank torchrun run writes one set of run files and resumes, and
`chargpt train --nproc 2` launches the same."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest
import torch

from chargpt.runtime import distributed
from chargpt.training.evaluate import EvaluationInterrupted, evaluate_split
from chargpt.errors import ConfigError
from chargpt.runtime.launch import strip_nproc, torchrun_command
from chargpt.model.gpt import ModelConfig, build_model

from conftest import TINY_GPT, run_cli, run_main

# Rank-to-rank traffic stays on the loopback interface.
LOOPBACK = {"GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1"}


def spawn_two_ranks(worker, tmp_path: Path, monkeypatch, *args) -> None:
    """Run `worker(rank, 2, rendezvous_file, *args)` in two processes on the loopback interface."""
    for k, v in LOOPBACK.items():
        monkeypatch.setenv(k, v)
    torch.multiprocessing.spawn(worker, args=(2, str(tmp_path / "rendezvous"), *args), nprocs=2, join=True)


@contextmanager
def gloo_group(rank: int, world: int, init_file: str):
    """A spawned worker's process group (gloo, one thread each), torn down once every rank is done with it."""
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        yield
        torch.distributed.barrier()  # neither rank tears gloo down while the other still talks to it
    finally:
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------- unit
def test_rank_0_is_the_main_process_and_a_process_on_its_own_is_rank_0(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert distributed.is_main_process() and distributed.DistInfo().is_main
    monkeypatch.setenv("RANK", "0")
    assert distributed.is_main_process()
    monkeypatch.setenv("RANK", "1")
    assert not distributed.is_main_process() and not distributed.DistInfo(rank=1).is_main


def test_split_batch_keeps_the_global_batch_for_any_world_size():
    for batch, accum in [(16, 1), (16, 4), (6, 2), (4, 8)]:
        for world in (1, 2, 4):
            try:
                micro, steps = distributed.split_batch(batch, accum, world)
            except ConfigError:
                assert batch % world and accum % world
                continue
            assert micro * steps * world == batch * accum


def test_split_batch_refuses_a_batch_that_does_not_divide():
    with pytest.raises(ConfigError, match="multiple of 2"):
        distributed.split_batch(3, 1, 2)


def test_thread_share_replaces_torchruns_single_thread_with_an_equal_share(monkeypatch):
    monkeypatch.setattr(distributed, "cpu_count", lambda: 16)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what torchrun sets
    assert distributed.thread_share(4) == 4
    assert distributed.thread_share(32) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert distributed.thread_share(2) == 8
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # a user's choice is kept
    assert distributed.thread_share(2) == 3


def test_nproc_is_removed_from_the_relaunched_command():
    argv = ["train", "--nproc", "2", "--max-steps", "5", "--nproc=3", "--name", "x"]
    assert strip_nproc(argv) == ["train", "--max-steps", "5", "--name", "x"]
    cmd = torchrun_command(2, argv)
    assert cmd[1:6] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    assert cmd[6:] == ["chargpt", "train", "--max-steps", "5", "--name", "x"]


# ------------------------------------------------------------- gradients: 2 x B equals 1 x 2B
CONFIGS = [  # the lecture's GPT (no dropout: ranks would drop different units) and the modern one, tied head
    ModelConfig(model="gpt", vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0),
    ModelConfig(model="gpt", vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                pos="rope", norm="rmsnorm", mlp="relu2", qk_norm=True, bias=False, tie_weights=True),
]
MICRO_BATCH = 3


def _gradient_worker(rank: int, world: int, init_file: str) -> None:
    """Rank r sees rows r*B:(r+1)*B of each micro-step; its DDP-averaged gradients must equal the
    gradients of one process that sees all rows at once."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    with gloo_group(rank, world, init_file):
        for cfg in CONFIGS:
            for accum in (1, 2):
                torch.manual_seed(0)
                model = build_model(cfg)
                with torch.no_grad():  # move zero-initialised weights off zero so every gradient is non-trivial
                    for p in model.parameters():
                        p.add_(0.02 * torch.randn_like(p))
                reference = copy.deepcopy(model)
                rows = world * accum * MICRO_BATCH
                data = torch.randint(cfg.vocab_size, (rows, cfg.block_size + 1),
                                     generator=torch.Generator().manual_seed(1))
                x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()

                _, loss = reference(x, y)  # one process, all rows
                loss.backward()

                ddp = DDP(model)
                for micro in range(accum):
                    lo = (micro * world + rank) * MICRO_BATCH
                    ctx = ddp.no_sync() if micro < accum - 1 else nullcontext()
                    with ctx:
                        _, loss = ddp(x[lo:lo + MICRO_BATCH], y[lo:lo + MICRO_BATCH])
                        (loss / accum).backward()

                for (name, p), q in zip(model.named_parameters(), reference.parameters()):
                    assert p.grad is not None, name
                    assert p.grad.abs().max() > 0, f"{name}: zero gradient makes the comparison empty"
                    diff = (p.grad - q.grad).abs().max().item()
                    assert diff <= 1e-6, f"{cfg.pos} model, accum {accum}: {name} differs by {diff:.2e}"


@pytest.mark.slow
def test_two_ranks_with_micro_batch_b_give_the_gradients_of_one_rank_with_batch_2b(tmp_path, monkeypatch):
    spawn_two_ranks(_gradient_worker, tmp_path, monkeypatch)


# ------------------------------------------------- evaluation: 2 ranks' shares sum to one pass
EVAL_DATA = dict(n=6_000, block=16, batch=5)


def _eval_model_and_data():
    torch.manual_seed(0)
    model = build_model(CONFIGS[1])
    data = torch.randint(65, (EVAL_DATA["n"],), generator=torch.Generator().manual_seed(2)).to(torch.uint8)
    return model, data


def _eval_worker(rank: int, world: int, init_file: str, out: str) -> None:
    with gloo_group(rank, world, init_file):
        model, data = _eval_model_and_data()
        info = distributed.DistInfo(rank=rank, local_rank=rank, world_size=world)
        results = {}
        for eval_tokens in (0, 1_600):  # the exact pass (with its shorter last window) and an evenly spread subset
            r = evaluate_split(model, data, EVAL_DATA["block"], "cpu", eval_tokens=eval_tokens,
                               batch_size=EVAL_DATA["batch"], dist_info=info)
            results[eval_tokens] = (r.loss, r.tokens, r.stderr)
        asked = []

        def stop():  # only rank 1 is signalled, at its second batch: both ranks must stop there
            asked.append(1)
            return 15 if rank == 1 and len(asked) == 2 else None

        try:
            evaluate_split(model, data, EVAL_DATA["block"], "cpu", batch_size=EVAL_DATA["batch"], dist_info=info,
                           should_stop=stop)
        except EvaluationInterrupted as e:
            results["stopped"] = (e.signum, e.done)
        torch.save(results, Path(out) / f"{rank}.pt")


@pytest.mark.slow
def test_two_ranks_evaluating_their_shares_give_the_one_process_result(tmp_path, monkeypatch):
    spawn_two_ranks(_eval_worker, tmp_path, monkeypatch, str(tmp_path))
    ranks = [torch.load(tmp_path / f"{r}.pt", weights_only=True) for r in (0, 1)]
    model, data = _eval_model_and_data()
    torch.set_num_threads(1)
    for eval_tokens in (0, 1_600):
        one = evaluate_split(model, data, EVAL_DATA["block"], "cpu", eval_tokens=eval_tokens,
                             batch_size=EVAL_DATA["batch"])
        for got in ranks:
            loss, tokens, stderr = got[eval_tokens]
            assert tokens == one.tokens and loss == pytest.approx(one.loss, rel=1e-6)
            assert stderr == pytest.approx(one.stderr, rel=1e-4)
    assert one.tokens == 1_600 and ranks[0][0][1] == EVAL_DATA["n"] - 1
    # rank 1's signal at its 2nd batch stops both before it: 1 batch of 5 windows each, 2 x 5 x 16 targets
    assert ranks[0]["stopped"] == ranks[1]["stopped"] == (15, 160)


# ----------------------------------------------------------------- torchrun and --nproc runs
STEPS = ["--eval-interval", "5", "--schedule", "constant"]  # constant lr: a resumed run can match a whole one


def _torchrun(*args, cwd, env=None, timeout=240) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "chargpt", *map(str, args)]
    p = subprocess.run(cmd, cwd=cwd, env=dict(os.environ, PYTHONUNBUFFERED="1", **LOOPBACK, **(env or {})),
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"torchrun exited {p.returncode}:\n{p.stdout}\n{p.stderr[-4000:]}"
    return p


@pytest.fixture(scope="module")
def two_rank_runs(dataset_dir, tmp_path_factory) -> dict:
    """Run `split` for 20 steps under torchrun; run `whole` for 10 steps with --nproc 2 and resume it to 20 as the
    README does (`--nproc 2 --resume runs/latest`)."""
    root = tmp_path_factory.mktemp("ddp")
    common = ["train", "--data", dataset_dir, "--runs-dir", root / "runs", *TINY_GPT, *STEPS]
    first = _torchrun(*common, "--name", "split", "--max-steps", "20", cwd=root)
    files_after_first = sorted(os.listdir(root / "runs"))

    def nproc_2(*args):
        p = run_cli(*args, "--nproc", "2", cwd=root, env=LOOPBACK, timeout=240)
        assert p.returncode == 0, f"--nproc 2 exited {p.returncode}:\n{p.stdout}\n{p.stderr[-4000:]}"
        return p

    whole = nproc_2(*common, "--name", "whole", "--max-steps", "10")
    resumed = nproc_2("train", "--resume", "runs/latest", "--max-steps", "20")
    return {"root": root, "runs": root / "runs", "first": first, "resumed": resumed, "whole": whole,
            "files_after_first": files_after_first}


def _steps(run: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]


@pytest.mark.slow
def test_torchrun_two_ranks_train_and_only_rank_0_writes_one_set_of_run_files(two_rank_runs):
    runs = two_rank_runs["runs"]
    assert two_rank_runs["files_after_first"] == [".latest", "latest", "split"]
    files = {p.name for p in (runs / "split").iterdir()}
    assert {"ckpt.pt", "config.json", "metrics.jsonl", "sample.txt", "summary.json"} <= files
    assert not [f for f in files if f.startswith(".")]  # no temporary files left by a second writer
    assert _steps(runs / "split") == [0, 5, 10, 15, 20]  # one line per evaluation: rank 1 wrote none
    out = two_rank_runs["first"].stdout
    assert out.count("full-pass val loss") == 1 and "2 processes" in out
    summary = json.loads((runs / "split/summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 20
    assert summary["val_loss_full"] < 4.17  # below the uniform guess, ln 65


@pytest.mark.slow
def test_checkpoint_holds_each_ranks_batch_generator(two_rank_runs):
    state = torch.load(two_rank_runs["runs"] / "split/ckpt.pt", weights_only=True)
    per_rank = state["rng"]["batch_per_rank"]
    assert len(per_rank) == 2 and not torch.equal(per_rank[0], per_rank[1])


@pytest.mark.slow
def test_resume_with_two_ranks_continues_the_same_loss_curve(two_rank_runs):
    runs = two_rank_runs["runs"]
    assert "resuming " in two_rank_runs["resumed"].stdout
    split = (runs / "split/metrics.jsonl").read_text().splitlines()
    whole = (runs / "whole/metrics.jsonl").read_text().splitlines()

    def losses(lines):
        return [(r["step"], r.get("loss"), r.get("train_loss"), r.get("val_loss")) for r in map(json.loads, lines)]

    assert losses(split) == losses(whole)
    s, w = (json.loads((runs / f"{n}/summary.json").read_text()) for n in ("split", "whole"))
    assert s["val_loss_full"] == pytest.approx(w["val_loss_full"], abs=1e-6)


@pytest.mark.slow
def test_nproc_2_launches_torchrun_with_a_share_of_the_cpus_per_process(two_rank_runs):
    out = two_rank_runs["whole"].stdout
    assert f"2 processes of {distributed.thread_share(2)} threads" in out
    assert sorted(os.listdir(two_rank_runs["runs"])) == [".latest", "latest", "split", "whole"]
    assert os.readlink(two_rank_runs["runs"] / "latest") == ".latest/whole"


@pytest.mark.slow
def test_resuming_a_one_process_run_with_two_ranks_gives_each_rank_its_own_batches(dataset_dir, tmp_path):
    common = ["train", "--data", dataset_dir, "--runs-dir", tmp_path / "runs", *TINY_GPT, *STEPS]
    run_main(*common, "--name", "one", "--max-steps", "5", "--threads", "1", cwd=tmp_path, check=True)
    out = _torchrun("train", "--resume", tmp_path / "runs/one", "--max-steps", "10", cwd=tmp_path).stdout
    assert "2 processes" in out
    state = torch.load(tmp_path / "runs/one/ckpt.pt", weights_only=True)
    per_rank = state["rng"]["batch_per_rank"]
    assert state["step"] == 10 and len(per_rank) == 2 and not torch.equal(per_rank[0], per_rank[1])


@pytest.mark.slow
def test_readme_sequence_with_nproc_2_resumes_latest_twice_and_samples_it(two_rank_runs, tmp_path):
    # the README's `train --nproc 2` then `train --nproc 2 --resume runs/latest` are the fixture's `whole`; the
    # second resume and the sample run in a copy, so that the other tests read the runs as the fixture left them
    shutil.copytree(two_rank_runs["runs"], tmp_path / "runs", symlinks=True)
    assert "resuming runs/whole at step 10" in two_rank_runs["resumed"].stdout
    assert os.readlink(tmp_path / "runs/latest") == ".latest/whole"
    metrics = (tmp_path / "runs/whole/metrics.jsonl").read_text()
    again = run_cli("train", "--nproc", "2", "--resume", "runs/latest", cwd=tmp_path, env=LOOPBACK, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("runs/whole is finished: it reached step 20")  # said once, by the launcher's check
    assert os.readlink(tmp_path / "runs/latest") == ".latest/whole"
    assert (tmp_path / "runs/whole/metrics.jsonl").read_text() == metrics
    assert len(run_main("sample", "--ckpt", "runs/latest", "--max-new-tokens", "8", cwd=tmp_path).stdout) == 9
