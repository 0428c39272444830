"""`chargpt serve` under load, the curve of continuous batching: for 1, 2, 4, 8, 16, 32 and 64 concurrent
streaming completions against one server process, the aggregate tokens/s (and its multiple of one stream's), the
median tokens/s of a stream, the first chunk's median and 95th percentile, and the server's peak RSS against its
RSS idle; next to `chargpt sample` alone generating the same number of characters; and how long GET /api/runs
(the page's runs table) takes while 64 long completions stream.

    python benchmarks/bench_serve.py [--tokens 2000] [--clients 1 2 4 8 16 32 64] [--listing-streams 64]
                                     [--device cpu] [--max-streams 0]

The model is the `cpu` preset (the budget's default model), randomly initialized (the work per token does not
depend on the weights), saved as a checkpoint in a temporary run directory. Each stream asks for `--tokens`
characters with its own seed; the aggregate is all the characters received divided by the wall time from the
first request to the last `data: [DONE]`. `chargpt sample` is timed in this process (`chargpt.cli.main`), model
load included. Figures mean something only on an otherwise idle machine: on a shared one they measure the
neighbours.
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import math
import os
import select
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table  # noqa: E402

from chargpt.runs import checkpoint  # noqa: E402
from chargpt.cli import main as cli  # noqa: E402
from chargpt.config import get_preset  # noqa: E402
from chargpt.fsutil import write_json  # noqa: E402
from chargpt.model.gpt import build_model  # noqa: E402
from chargpt.data.tokenizer import CharTokenizer  # noqa: E402
from chargpt.training.loop import rng_state  # noqa: E402

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tiny Shakespeare's vocabulary


def make_run(root: Path) -> Path:
    """A run directory holding a `cpu` preset checkpoint (random weights, as benchmarks/bench_sampling.py)."""
    cfg = get_preset("cpu")
    cfg.model.vocab_size = len(CHARS)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):  # zero-initialized projections would make attention irrelevant
            torch.nn.init.normal_(p, std=0.02)
    run = root / "bench-cpu"
    run.mkdir(parents=True)
    write_json(run / "config.json", cfg.to_dict())
    checkpoint.save(run / "ckpt.pt", model=model, optimizers=[], step=0, config=cfg, tokenizer=CharTokenizer(CHARS),
                    dataset_hash="random-weights", rng=rng_state(torch.Generator()))
    return run


def sample_alone(run: Path, tokens: int, device: str) -> float:
    """tokens/s of `chargpt sample` for one stream, best of 3."""
    best = float("inf")
    for seed in range(3):
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            cli(["sample", "--ckpt", str(run), "--prompt", "ROMEO:", "--max-new-tokens", str(tokens),
                 "--seed", str(seed), "--device", device])
        best = min(best, time.perf_counter() - t0)
    return tokens / best


class Server:
    def __init__(self, runs_dir: Path, device: str, max_streams: int = 0):
        self.proc = subprocess.Popen([sys.executable, "-m", "chargpt", "serve", "--runs-dir", str(runs_dir),
                                      "--port", "0", "--device", device, "--max-streams", str(max_streams)],
                                     stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"))
        ready, _, _ = select.select([self.proc.stdout], [], [], 300)
        line = self.proc.stdout.readline() if ready else ""
        if "http://" not in line:
            self.proc.kill()
            raise SystemExit(f"chargpt serve did not start: {line!r}")
        self.port = int(line.split("open http://")[1].split("/")[0].rsplit(":", 1)[1])

    def stream(self, tokens: int, seed: int) -> tuple[int, float, float]:
        """Characters received, seconds to the first one, seconds to [DONE]."""
        t0 = time.perf_counter()
        conn, res = self.completion(tokens, seed)
        received, first = 0, None
        for line in res:
            if line.startswith(b"data: {"):
                text = json.loads(line[6:])["choices"][0]["text"]
                if text and first is None:
                    first = time.perf_counter() - t0
                received += len(text)
        conn.close()
        return received, first or 0.0, time.perf_counter() - t0

    def completion(self, tokens: int, seed: int) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A streaming completion, started: its connection and the response to read."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        conn.request("POST", "/v1/completions", body=json.dumps({"prompt": "ROMEO:", "max_tokens": tokens,
                                                                 "seed": seed, "stream": True}),
                     headers={"Content-Type": "application/json"})
        return conn, conn.getresponse()

    def get(self, path: str) -> tuple[float, dict]:
        """Seconds to answer GET `path`, and the JSON answer."""
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        conn.request("GET", path)
        res = conn.getresponse()
        body = json.loads(res.read())
        conn.close()
        return time.perf_counter() - t0, body

    def rss(self) -> int:
        """The server process's resident memory, in bytes (0 where /proc cannot say)."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def concurrent(server: Server, clients: int, tokens: int) -> dict:
    """`clients` streams of `tokens` characters at once: aggregate and median per-stream tokens/s, the first
    chunk's median and 95th percentile, and the server's peak RSS meanwhile."""
    results = [None] * clients
    peak, done = [server.rss()], threading.Event()

    def one(i: int) -> None:
        results[i] = server.stream(tokens, seed=i)

    def watch() -> None:
        while not done.wait(0.05):
            peak.append(server.rss())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    watcher = threading.Thread(target=watch)
    watcher.start()
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    done.set()
    watcher.join()
    received = sum(r[0] for r in results)
    assert received == clients * tokens, f"{received} characters for {clients} x {tokens}"
    firsts = sorted(r[1] for r in results)
    return {"aggregate": received / wall, "per_stream": statistics.median(r[0] / r[2] for r in results),
            "first": statistics.median(firsts), "first_p95": firsts[math.ceil(0.95 * len(firsts)) - 1],
            "rss": max(peak)}


def listing_under_streams(server: Server, streams: int, requests: int = 40) -> tuple[float, float]:
    """Median and 95th percentile seconds of GET /api/runs while `streams` long completions stream."""
    done = threading.Event()

    def reader(seed: int) -> None:
        conn, res = server.completion(20_000, seed)
        for _ in res:
            if done.is_set():
                break
        conn.close()  # the server stops sampling a stream whose client went away

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    def started() -> int:  # decoding or waiting for a row
        status = server.get("/api/status")[1]
        return status["streams"] + status.get("queued", 0)

    while started() < streams:
        time.sleep(0.1)
    seconds = sorted(server.get("/api/runs")[0] for _ in range(requests))
    done.set()
    for t in threads:
        t.join()
    return statistics.median(seconds), seconds[math.ceil(0.95 * len(seconds)) - 1]


CURVE = (1, 2, 4, 8, 16, 32, 64)


def identical_share(run: Path, completions: int = 64, batch: int = 16, tokens: int = 500) -> dict[str, float]:
    """The share of `completions` seeded completions of `tokens` characters that are identical decoded alone and
    decoded in batches of `batch` (the decode loop `chargpt serve` and `Run.generate([...])` use), sampled
    (temperature 1) and greedy."""
    import chargpt
    from chargpt.model.batchdecode import sample_all
    from chargpt.model.engine import Engine
    from chargpt.model.sampling import SamplingParams

    engine = Engine(chargpt.load(run).model.eval())
    n = len(CHARS)
    prompts = [[(7 * i) % n, (11 * i + 3) % n, (13 * i + 5) % n] for i in range(completions)]
    shares = {}
    for name, params in (("sampled", SamplingParams(max_new_tokens=tokens, seed=1337)),
                         ("greedy", SamplingParams(max_new_tokens=tokens, temperature=0.0))):
        alone = [sample_all(engine, [p], params, max_rows=1)[0] for p in prompts]
        together = [t for i in range(0, completions, batch)
                    for t in sample_all(engine, prompts[i:i + batch], params, max_rows=batch)]
        shares[name] = sum(a == b for a, b in zip(alone, together)) / completions
    return shares


def main(tokens: int = 2000, clients: tuple[int, ...] = CURVE, device: str = "cpu", listing_streams: int = 64,
         max_streams: int = 0) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        run = make_run(Path(tmp))
        alone = sample_alone(run, tokens, device)
        same = identical_share(run)
        server = Server(run.parent, device, max_streams)
        try:
            server.stream(50, seed=0)  # warm-up: load the model, make its decode loop
            idle = server.rss()
            measured = {c: concurrent(server, c, tokens) for c in clients}
            status = server.get("/api/status")[1]
            listing = listing_under_streams(server, listing_streams)
        finally:
            server.stop()
    decoder = ", ".join(f"{d['backend']}, {d['rows']} rows, batched from {d['batched_from']}"
                        for d in status.get("decoders", []))
    rows = [{"figure": f"`chargpt sample` alone, {tokens} chars, cpu preset ({device})",
             "value": f"{alone:,.0f} tokens/s"},
            {"figure": "`chargpt serve` decode loop (GET /api/status)", "value": decoder or "-"},
            {"figure": "`chargpt serve` RSS idle, after a first completion", "value": f"{idle / 2 ** 20:,.0f} MB"},
            {"figure": "64 seeded completions of 500 chars identical alone and in batches of 16: sampled, greedy",
             "value": f"{same['sampled']:.0%}, {same['greedy']:.0%}"}]
    one = measured.get(1, {}).get("aggregate")
    for c, m in measured.items():
        times = f", {m['aggregate'] / one:.1f}x one stream" if one and c > 1 else ""
        rows.append({"figure": f"`chargpt serve`, {c} concurrent stream{'s' if c > 1 else ''}: aggregate (per stream, "
                               f"first chunk median / p95, peak RSS)",
                     "value": f"{m['aggregate']:,.0f} tokens/s{times} ({m['per_stream']:,.0f}/s, "
                              f"{m['first'] * 1000:,.0f} / {m['first_p95'] * 1000:,.0f} ms, "
                              f"{m['rss'] / 2 ** 20:,.0f} MB = {m['rss'] / max(idle, 1):.2f}x idle)"})
    rows.append({"figure": f"GET /api/runs while {listing_streams} completions stream: p50 (p95)",
                 "value": f"{listing[0] * 1000:,.0f} ms ({listing[1] * 1000:,.0f} ms)"})
    return rows


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2000)
    ap.add_argument("--clients", type=int, nargs="+", default=list(CURVE))
    ap.add_argument("--listing-streams", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-streams", type=int, default=0, help="the server's --max-streams (0: its default)")
    a = ap.parse_args()
    print(f"machine: {machine()}")
    print_table(main(a.tokens, tuple(a.clients), a.device, a.listing_streams, a.max_streams), "serving")
