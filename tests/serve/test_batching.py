"""`chargpt serve` decodes every stream of a model in one batched step: real server processes, real HTTP clients in
threads, a real browser for the page."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
import torch

from chargpt.config import get_preset
from chargpt.data.tokenizer import CharTokenizer
from chargpt.fsutil import write_json
from chargpt.model.gpt import build_model
from chargpt.runs import checkpoint
from chargpt.serve.batching import QUEUE_PER_ROW
from chargpt.training.loop import rng_state
from conftest import Server, browser_tools

CHARS = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
LONG = 20_000  # a completion that runs until its client or the server ends it


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run whose tiny GPT has large random weights: greedy text that differs from prompt to prompt (a model
    trained for a few steps repeats one character), made in a moment."""
    cfg = get_preset("cpu")
    cfg.model.vocab_size, cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head = len(CHARS), 2, 32, 2
    cfg.model.block_size = 16  # windows move on every 8 characters: rows are prefilled again mid-batch
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    run = tmp_path_factory.mktemp("batching") / "runs" / "lively"
    run.mkdir(parents=True)
    write_json(run / "config.json", cfg.to_dict())
    checkpoint.save(run / "ckpt.pt", model=model, optimizers=[], step=0, config=cfg, tokenizer=CharTokenizer(CHARS),
                    dataset_hash="random-weights", rng=rng_state(torch.Generator()))
    return run


def start(run_dir: Path, *flags) -> Server:
    return Server("--ckpt", run_dir, "--device", "cpu", *flags, cwd=run_dir.parent)


@pytest.fixture(scope="module")
def server(run_dir):
    """The default rows: as many as memory allows, up to 64."""
    s = start(run_dir)
    yield s
    s.stop()
    assert "Traceback" not in s.log.read_text()


@pytest.fixture(scope="module")
def one_row(run_dir):
    s = start(run_dir, "--max-streams", 1)
    yield s
    s.stop()
    assert "Traceback" not in s.log.read_text()


def complete(server: Server, body: dict) -> tuple[str, str]:
    """The text and finish reason of a completion, streamed or in one body as `body` says."""
    if body.get("stream"):
        events, lines = server.stream(body)
        assert lines[-1] == "data: [DONE]", lines[-3:]
        return "".join(e["choices"][0]["text"] for e in events), events[-1]["choices"][0]["finish_reason"]
    status, answer = server.request("POST", "/v1/completions", body)
    assert status == 200, answer
    return answer["choices"][0]["text"], answer["choices"][0]["finish_reason"]


def status(server: Server) -> dict:
    return server.request("GET", "/api/status")[1]


def wait_for(server: Server, what, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while not what(now := status(server)):
        assert time.monotonic() < deadline, now
        time.sleep(0.02)
    return now


class Reader:
    """A streamed completion read on a thread of its own: its events' texts, until the server ends it or
    `close` hangs up."""

    def __init__(self, server: Server, body: dict):
        self.conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
        self.conn.request("POST", "/v1/completions", body=json.dumps({**body, "stream": True}),
                          headers={"Content-Type": "application/json"})
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for line in self.conn.getresponse():
                if line.strip():
                    self.lines.append(line.decode().strip())
        except (OSError, http.client.HTTPException, ValueError):
            pass

    def close(self) -> None:
        """Hang up: the reading thread sees the connection end, then the connection is closed."""
        self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.thread.join(30)
        self.conn.close()


def test_many_clients_at_once_each_get_what_the_same_request_gets_alone(server):
    """Greedy completions of other prompts, lengths and stop sequences, streamed and not, all at once."""
    requests = [{"prompt": prompt, "max_tokens": 20 + 13 * i, "temperature": 0, "stream": i % 2 == 0}
                for i, prompt in enumerate(["ROMEO:", "", "a", "KING HENRY", "O, ", "What say you", "x" * 30, "Is"]
                                           * 2)]
    alone = [complete(server, body) for body in requests]
    assert len({text for text, _ in alone}) > 8  # the prompts lead to other texts
    for body, (text, _) in zip(requests[::3], alone[::3]):
        body["stop"] = [text[len(text) // 2:len(text) // 2 + 2]]  # cut mid-way: finish_reason "stop"
    alone = [complete(server, body) for body in requests]
    assert {reason for _, reason in alone} == {"stop", "length"}
    together: dict[int, tuple[str, str]] = {}

    def client(i: int) -> None:
        together[i] = complete(server, requests[i])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [together.get(i) for i in range(len(requests))] == alone
    assert wait_for(server, lambda s: s["streams"] == 0)["queued"] == 0


def test_a_client_that_disconnects_mid_stream_frees_its_row_at_once(one_row):
    body = {"prompt": "To be", "max_tokens": 60, "temperature": 0}
    expected = complete(one_row, body)
    hung = Reader(one_row, {"prompt": "A", "max_tokens": LONG})
    wait_for(one_row, lambda s: s["streams"] == 1 and s["rate"] > 0)
    waiting: dict = {}
    thread = threading.Thread(target=lambda: waiting.update(answer=complete(one_row, body)))
    thread.start()
    now = wait_for(one_row, lambda s: s["queued"] == 1)
    assert now["streams"] == 1 and now["decoders"][0]["rows"] == 1 and now["decoders"][0]["backend"] == "numpy"
    time.sleep(0.3)
    assert "answer" not in waiting  # the queued request has not started
    t0 = time.monotonic()
    hung.close()
    thread.join(60)
    assert waiting["answer"] == expected and time.monotonic() - t0 < 10
    assert wait_for(one_row, lambda s: s["streams"] == 0 and s["queued"] == 0)


def test_a_stream_queued_past_max_streams_says_nothing_until_a_row_frees(one_row):
    first = Reader(one_row, {"prompt": "A", "max_tokens": LONG, "temperature": 0})  # until it hangs up: however
    wait_for(one_row, lambda s: s["streams"] == 1)                                 # fast the machine decodes
    queued = Reader(one_row, {"prompt": "B", "max_tokens": 30, "temperature": 0})
    wait_for(one_row, lambda s: s["queued"] == 1)
    time.sleep(0.2)
    assert first.thread.is_alive() and first.lines and queued.lines == []
    first.close()  # its row frees: the queued request starts
    queued.thread.join(60)
    assert queued.lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in queued.lines if line.startswith("data: {")]
    assert len("".join(e["choices"][0]["text"] for e in events)) == 30


def test_a_full_queue_answers_503_with_retry_after(one_row):
    streams = [Reader(one_row, {"prompt": "A", "max_tokens": LONG})]
    wait_for(one_row, lambda s: s["streams"] == 1)
    streams += [Reader(one_row, {"prompt": "A", "max_tokens": LONG}) for _ in range(QUEUE_PER_ROW)]
    try:
        wait_for(one_row, lambda s: s["queued"] == QUEUE_PER_ROW)
        conn = http.client.HTTPConnection(one_row.host, one_row.port, timeout=60)
        conn.request("POST", "/v1/completions", body=json.dumps({"prompt": "A", "max_tokens": 5}),
                     headers={"Content-Type": "application/json"})
        res = conn.getresponse()
        body = json.loads(res.read())
        conn.close()
        assert res.status == 503 and int(res.getheader("Retry-After")) > 0
        assert "busy" in body["error"]["message"] and body["error"]["type"] == "server_error"
    finally:
        for s in streams:
            s.close()
    assert wait_for(one_row, lambda s: s["streams"] == 0 and s["queued"] == 0)


def test_a_shutdown_during_a_batch_ends_every_stream_and_queued_request_cleanly(run_dir):
    srv = start(run_dir, "--max-streams", 3)
    streams = []
    try:
        streams = [Reader(srv, {"prompt": p, "max_tokens": LONG}) for p in "ABCDE"]
        wait_for(srv, lambda s: s["streams"] == 3 and s["queued"] == 2)
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(timeout=30)
    finally:
        srv.stop()
        for s in streams:
            s.thread.join(30)
    err = srv.log.read_text()
    assert srv.proc.returncode == 143 and err == "chargpt serve: stopped by SIGTERM\n", err
    for s in streams:
        assert s.lines[-1].startswith('data: {"error"') and "shutting down" in s.lines[-1], s.lines[-2:]


def rss(server: Server) -> int:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the server's RSS from /proc")
def test_64_streams_started_and_abandoned_leave_the_rss_where_it_was(server):
    def round_of_64() -> int:
        streams = [Reader(server, {"prompt": "A" * (i % 20), "max_tokens": LONG, "seed": i}) for i in range(64)]
        wait_for(server, lambda s: s["streams"] + s["queued"] == 64)
        for s in streams:
            s.close()
        wait_for(server, lambda s: s["streams"] == 0 and s["queued"] == 0)
        return rss(server)

    warm = round_of_64()  # the first round makes the rows' cache and what the 64 connections need
    after = [round_of_64() for _ in range(2)]
    assert max(after) <= warm * 1.05 + (8 << 20), (warm, after)




@pytest.mark.slow
def test_the_page_shows_the_streams_the_queue_and_the_rate_in_a_real_browser(one_row):
    browser_path, sync_api = browser_tools()
    streams = [Reader(one_row, {"prompt": "A", "max_tokens": LONG}) for _ in range(3)]
    try:
        wait_for(one_row, lambda s: s["streams"] == 1 and s["queued"] == 2)
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, headless=True)
            page = browser.new_page()
            page.goto(one_row.url + "/")
            page.wait_for_function("/server: 1 stream, 2 queued, [1-9][0-9,]* chars\\/s/"
                                   ".test(document.querySelector('#server').textContent)", timeout=30_000)
            browser.close()
    finally:
        for s in streams:
            s.close()
