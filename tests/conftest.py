"""Shared by the tests: the real tiny-Shakespeare corpus and a dataset prepared from it once per session, tiny
configurations, a small GPT with peaked distributions, and running the CLI and `chargpt serve` as real processes."""
from __future__ import annotations

import atexit
import contextlib
import http.client
import io
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

from chargpt.config import Config, get_preset
from chargpt.data.dataset import prepare
from chargpt.model.gpt import ModelConfig, build_model

REPO = Path(__file__).resolve().parents[1]

# The tests' measured speeds and compiled kernels go to a cache of their own, removed when the process ends: in the
# user's cache, speeds measured on a machine the tests keep busy were what the next `chargpt train --time-budget`
# believed (a kept speed is only ever raised, so a low one stayed until a run beat it).
if not os.environ.get("CHARGPT_CACHE"):
    os.environ["CHARGPT_CACHE"] = tempfile.mkdtemp(prefix="chargpt-tests-cache-")
    atexit.register(shutil.rmtree, os.environ["CHARGPT_CACHE"], ignore_errors=True)


# The modules that take longest, longest first (--durations of `make test`'s tests on a 2-core machine, 2026-12-07).
# `make test` runs them with pytest-xdist's `--dist loadfile`: a worker takes one whole module at a time, in this
# order, so the long ones start first and the workers run out of work together; and a module's fixtures (a
# server, runs trained for the module) are made once, on the one worker that runs it. The rest keep their order.
LONGEST_FIRST = ("test_reliability", "test_app", "test_sweep", "test_loop", "test_cli", "test_compiling", "test_tracker",
                 "test_library", "test_signals", "test_readme", "test_distributed", "test_properties", "test_budget",
                 "test_entry", "test_listing", "test_tensorboard", "test_cli_errors", "test_fsutil", "test_batching",
                 "test_progress", "test_rundir", "test_plotting", "test_swap", "test_notebook")


def pytest_collection_modifyitems(items) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # a stable sort: each module's order is kept


def _find_shakespeare() -> Path:
    candidates = []
    if os.environ.get("CHARGPT_DATA"):
        candidates.append(Path(os.environ["CHARGPT_DATA"]) / "tinyshakespeare/input.txt")
    candidates.append(REPO.parent / "shared/data/tinyshakespeare/input.txt")
    for c in candidates:
        if c.is_file():
            return c
    pytest.fail("tiny Shakespeare not found: set CHARGPT_DATA to a directory holding tinyshakespeare/input.txt")


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    return _find_shakespeare()


@pytest.fixture(scope="session")
def dataset_dir(shakespeare_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "shakespeare"
    prepare(shakespeare_path, out, name="shakespeare")
    return out


TINY_GPT = ["--preset", "cpu", "--n-layer", "1", "--n-embd", "32", "--n-head", "2", "--block-size", "16",
            "--batch-size", "4", "--max-steps", "20", "--eval-interval", "10", "--eval-iters", "2",
            "--sample-tokens", "20", "--no-compile"]


@pytest.fixture(scope="session")
def tiny_run(dataset_dir, tmp_path_factory) -> Path:
    """One tiny GPT (TINY_GPT on tiny Shakespeare) trained once per session, for the tests that only read a run
    (sample, eval, attention, serve, the bad inputs of every reader). A test that writes into a run copies it."""
    out = tmp_path_factory.mktemp("shared") / "runs"
    run_main("train", "--data", dataset_dir, "--runs-dir", out, "--name", "tiny", *TINY_GPT, "--device", "cpu",
             "--threads", "1", check=True)
    return out / "tiny"


def run_cli(*args, cwd=None, env=None, timeout=300, check=False) -> subprocess.CompletedProcess:
    """Run `python -m chargpt ARGS` as a real process."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    p = subprocess.run([sys.executable, "-m", "chargpt", *map(str, args)], cwd=cwd, env=full_env,
                       capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and p.returncode != 0:
        raise AssertionError(f"chargpt {' '.join(map(str, args))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


class Server:
    """`chargpt serve --port 0` as a real process; the URL is read from its first line."""

    def __init__(self, *args, cwd):
        self.log = Path(cwd) / "serve.stderr"
        self.proc = subprocess.Popen([sys.executable, "-m", "chargpt", "serve", "--port", "0", *map(str, args)],
                                     cwd=cwd, stdout=subprocess.PIPE, stderr=self.log.open("w"), text=True,
                                     stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        ready, _, _ = select.select([self.proc.stdout], [], [], 180)
        line = self.proc.stdout.readline() if ready else ""
        if "http://" not in line:
            self.stop()
            raise AssertionError(f"chargpt serve did not start: {line!r} {self.log.read_text()}")
        self.url = line.split("open ")[1].split()[0].rstrip("/")
        self.host, self.port = urlparse(self.url).hostname, urlparse(self.url).port

    def request(self, method: str, path: str, body=None, raw: bytes | None = None, headers: dict | None = None,
                timeout: float = 120) -> tuple[int, dict | str]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        res = conn.getresponse()
        text = res.read().decode()
        conn.close()
        try:
            return res.status, json.loads(text)
        except ValueError:
            return res.status, text

    def stream(self, body: dict) -> tuple[list[dict], list[str]]:
        """POST a streaming completion; the JSON events and the raw `data:` lines."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        conn.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}),
                     headers={"Content-Type": "application/json"})
        res = conn.getresponse()
        assert res.status == 200 and res.getheader("Content-Type").startswith("text/event-stream")
        lines = [ln for ln in res.read().decode().split("\n") if ln]
        conn.close()
        return [json.loads(ln[6:]) for ln in lines if ln != "data: [DONE]"], lines

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_main(*args, cwd=None, check=False) -> subprocess.CompletedProcess:
    """`chargpt ARGS` in this process (`cli.main`): its exit code and what it prints, as `run_cli` gives them,
    without the seconds a new process spends importing torch. Real processes are kept for what only a process
    shows (signals, the interpreter's own output, a console script)."""
    from chargpt.cli import main

    out, err = io.StringIO(), io.StringIO()
    threads = torch.get_num_threads()  # `--threads` sets them for the process: the next test gets the worker's back
    try:
        with contextlib.chdir(cwd or os.getcwd()), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
    if check and code != 0:
        raise AssertionError(f"chargpt {' '.join(map(str, args))} exited {code}:\n{out.getvalue()}\n{err.getvalue()}")
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def one_error_line(p: subprocess.CompletedProcess) -> str:
    """The single line a failed command printed on stderr (asserting there is exactly one, and no traceback)."""
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    return lines[0]


VOCAB = 20
BLOCK = 16


def tiny_config(preset: str, steps: int, **model) -> Config:
    """`preset` shrunk to a few seconds of training in the test process: `steps` steps, two evaluations of 2
    batches, batches of 4, no sample, eager; `model` overrides the model's fields."""
    cfg = get_preset(preset)
    for k, v in model.items():
        setattr(cfg.model, k, v)
    cfg.train.max_steps, cfg.train.eval_interval, cfg.train.eval_iters = steps, steps // 2, 2
    cfg.train.batch_size, cfg.train.sample_tokens, cfg.train.compile = 4, 0, False
    return cfg


def train_config(config: Config, data, out_dir, name: str, *, preset: str | None = "cpu", resume: bool = False,
                 tracker=None, echo=None, clock_start: float | None = None):
    """Train `config` (every field of it) on `data` in this process through the one way into training
    (`TrainRequest`, `plan_training`), as run `out_dir/name` (continued when `resume`); return the `RunDir` and
    the summary. `preset` only names the run's preset: `config` sets every field."""
    from chargpt.training.entry import TrainRequest, plan_training

    fields = {k: v for section in config.to_dict().values() if isinstance(section, dict) for k, v in section.items()}
    request = TrainRequest(preset=None if resume else preset, fields=fields, fields_from="the test's config",
                           data=data, runs_dir=out_dir, name=None if resume else name, tracker=tracker,
                           resume=Path(out_dir) / name if resume else None, clock_start=clock_start)
    t, summary = plan_training(request, echo=echo).run(echo=echo)
    return t.writer.run, summary


@pytest.fixture(scope="module")
def one_thread():
    """Torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): tiny models train
    faster on one thread, and far faster when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def lively_model(seed: int = 0, **kw):
    """A small GPT with weights large enough that its next-token distributions (and attention rows) are far from
    uniform, so that agreement between two computations is not agreement on a constant. `kw` overrides the config."""
    base = dict(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    cfg = ModelConfig(**(base | kw))
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def prompt(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def subcommands() -> dict:
    """The CLI's subcommands' parsers by name."""
    from chargpt.cli import build_parser

    return build_parser().commands()


def ckpt_commands() -> list[str]:
    """Every subcommand that reads a checkpoint with --ckpt."""
    return sorted(name for name, p in subcommands().items() if any("--ckpt" in a.option_strings for a in p._actions))


def on_cpu(cmd: str) -> list[str]:
    """`--device cpu` where `cmd` takes it, and a value for each option it requires or needs to run (attention's
    --prompt, which --prompt-file can replace, so argparse does not mark it required)."""
    actions = subcommands()[cmd]._actions
    extra = [x for a in actions if (a.required or "--prompt" in a.option_strings) and a.option_strings
             and "--ckpt" not in a.option_strings for x in (a.option_strings[-1], "a")]
    return extra + (["--device", "cpu"] if any("--device" in a.option_strings for a in actions) else [])


def browser_tools():
    """(Chromium's path, playwright.sync_api) for the tests that drive the page in a real browser; the test is
    skipped, saying why, where either is missing."""
    path = os.environ.get("CHARGPT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("browser tests skipped: no chromium here (Debian: apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests skipped: playwright is not installed "
                                                                 "(pip install -e .[test])")
    return path, sync_api
