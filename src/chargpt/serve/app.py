"""`chargpt serve`: the playground page (`chargpt/static/`) and an OpenAI-compatible API over the runs'
checkpoints, one Starlette app on uvicorn. Completions stream as server-sent events in OpenAI's format.

Every request samples with its own seeded generator and key/value cache through the Engine of its checkpoint
(one per checkpoint, rebuilt when the file changes), so a completion is exactly what `chargpt sample` prints
for the same seed. Run names are looked up in the served runs directory's listing, never joined into a path,
so no request can reach another file.

Web pages the user visits must not drive the server: a request whose Host is not one of the server's names is
refused (a DNS-rebinding page sends its own name), so is one sent from a page of another origin, and the JSON
endpoints take only `application/json` bodies, which a page of another origin cannot send without asking first.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import os
import secrets
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

import torch
import uvicorn
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..runs.checkpoint import load_model
from ..model.engine import Engine
from ..errors import ChargptError, CheckpointError, ConfigError, VocabularyError
from ..fsutil import read_json
from ..model.gpt import GPT, window_start
from ..runs.rundir import CKPT, CONFIG, SUMMARY, clear_stale_temporaries, locate_run, read_metrics
from ..runs.listing import read_run
from ..model.sampling import SAMPLING_FIELDS, SamplingParams, prompt_ids
from ..runtime.signals import StopSignals

SHUTTING_DOWN = "the server is shutting down; send the request again once it is back"
MAX_PROMPT_CHARS = 10_000  # longer prompts are refused (the model only sees its last block_size anyway)
MAX_NEW_TOKENS = 20_000  # the most characters one completion may ask for
MAX_BODY_BYTES = 1 << 20
BODY_SECONDS = 10.0  # a request body that takes longer to arrive is refused: a slow client holds nothing for long
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
GRACE_SECONDS = 2.0  # after a stop signal, how long clients have to take their ended streams before they are closed
BURST_SECONDS = 0.03  # a streamed chunk holds what was sampled in this long: smooth text, few events
# Concurrent streams take turns, a burst each, instead of decoding at once: a one-token step is hundreds of tiny
# operations, and threads running them side by side on 2 cores fought for them (4 streams: 897 tokens/s in all
# against 1,789 for one stream alone; benchmarks/bench_serve.py). Taking turns keeps the sum at one stream's rate.
DECODING = threading.Lock()
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
COMPLETION_FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stream", "stop",
                     "echo", "n", "best_of", "logprobs", "suffix", "user", "stream_options", "presence_penalty",
                     "frequency_penalty", "logit_bias"}


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a message saying what to change."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    """An error in OpenAI's format."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"message": message, "type": kind, "param": param, "code": code}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": error_body(status, message, param, code)}, status_code=status)


# ---------------------------------------------------------------------------------------------- runs
@dataclass
class Loaded:
    """A checkpoint in memory with the Engine that samples it (its numpy decoder copied and probed once)."""
    model: torch.nn.Module
    tokenizer: object
    step: int
    version: tuple
    engine: Engine


class ServedRuns:
    """The runs a server offers: every run directory under `runs_dir` (rescanned on each look-up, so new runs
    appear), or the single checkpoint `ckpt`. Models are loaded on first use and reloaded when their
    checkpoint file changes."""

    def __init__(self, runs_dir: str | os.PathLike | None = None, ckpt: str | os.PathLike | None = None,
                 device: torch.device = torch.device("cpu")):
        self.device = device
        self.runs_dir = None if runs_dir is None else Path(runs_dir)
        self.single: tuple[str, Path] | None = None
        if ckpt is not None:
            found = locate_run(ckpt)
            path = found.ckpt.resolve()
            self.single = (found.run.name if path.name == CKPT else path.stem, path)
        elif self.runs_dir is None or not self.runs_dir.is_dir():
            raise ConfigError(f"no runs directory {runs_dir}; train a model first, or pass --runs-dir DIR or --ckpt RUN")
        self._loaded: dict[str, Loaded] = {}
        self._lock = threading.Lock()
        if self.single:  # a checkpoint named on the command line is checked now, not at the first request
            self.load(self.single[0])

    def table(self) -> dict[str, Path]:
        """Run name -> its directory (or, for a lone checkpoint file, the file)."""
        if self.single:
            name, path = self.single
            return {name: path.parent if path.name == CKPT else path}
        return {p.name: p for p in sorted(self.runs_dir.iterdir())
                if p.is_dir() and not p.is_symlink() and (p / CONFIG).is_file()}

    def path(self, name) -> Path:
        if not isinstance(name, str):
            raise RequestError(400, "'model' must be a string: a run name from GET /v1/models", "model")
        found = self.table().get(name)
        if found is None:
            raise RequestError(404, f"no run named {name!r}; GET /v1/models lists the runs served", "model",
                               "model_not_found")
        return found

    @staticmethod
    def checkpoint(path: Path) -> Path | None:
        """The checkpoint of a run directory (or the lone checkpoint file), if there is one chargpt would read."""
        try:
            return locate_run(path).ckpt
        except CheckpointError:
            return None

    def servable(self) -> list[str]:
        """Names of the runs with a checkpoint, newest first."""
        found = [(c.stat().st_mtime, n) for n, p in self.table().items() if (c := self.checkpoint(p))]
        return [n for _, n in sorted(found, reverse=True)]

    def default(self) -> str:
        names = self.servable()
        if not names:
            raise RequestError(404, "no run here has a checkpoint yet; train one with `chargpt train`", "model",
                               "model_not_found")
        return names[0]

    def load(self, name: str | None) -> tuple[str, Loaded]:
        name = self.default() if name is None else name
        ckpt = self.checkpoint(self.path(name))
        if ckpt is None:
            raise RequestError(404, f"run {name!r} has no checkpoint (yet) to sample from", "model", "model_not_found")
        st = ckpt.stat()
        version = (st.st_mtime_ns, st.st_size, st.st_ino)  # a checkpoint replaced by a rename is a new inode
        with self._lock:  # one load per checkpoint version, however many requests ask at once
            cached = self._loaded.get(name)
            if cached is None or cached.version != version:
                model, tok, state = load_model(ckpt.parent if ckpt.name == CKPT else ckpt, self.device)
                cached = self._loaded[name] = Loaded(model, tok, state["step"], version, Engine(model))
        return name, cached

    def info(self) -> list[dict]:
        """The runs table (`chargpt runs`) as JSON rows, oldest first."""
        rows = []
        for name, path in self.table().items():
            ckpt = self.checkpoint(path)
            if path.is_dir():
                clear_stale_temporaries(path)
                r = asdict(read_run(path))
                r.update(name=name, path=str(path))
            else:
                r = {"name": name, "path": str(path), "updated": path.stat().st_mtime, "finished": True}
            r["servable"] = ckpt is not None
            rows.append(r)
        return sorted(rows, key=lambda r: (r["updated"], r["name"]))

    def details(self, name: str) -> dict:
        path = self.path(name)
        folder = path if path.is_dir() else path.parent
        return {"name": name, "config": _read_json(folder / CONFIG), "summary": _read_json(folder / SUMMARY),
                "metrics": read_metrics(folder)}


def _read_json(path: Path) -> dict:
    try:
        value = read_json(path, within=path.parent)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------------------------------------- guard
class Hosts:
    """The names a request's Host may carry: the address the server listens on, the loopback names, and the
    names given with --allowed-host. Listening on every address (0.0.0.0, ::) also admits any IP address: a
    DNS-rebinding page can only send a name it owns, never a bare address."""

    def __init__(self, listen: str = "127.0.0.1", allowed: tuple[str, ...] = ()):
        self.names = {_hostname(h) for h in (listen, *LOOPBACK_NAMES, *allowed)}
        self.any_address = _is_address(listen) and ipaddress.ip_address(listen.strip("[]")).is_unspecified

    def admit(self, hostname: str) -> bool:
        return hostname in self.names or (self.any_address and _is_address(hostname))


def _hostname(host: str) -> str:
    """`host` (a Host header value: name, address, [v6 address], with or without :port) as a bare lower-case name."""
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:
        return ""
    return name or ""


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def refusal(headers: Headers, hosts: Hosts) -> str | None:
    """Why a request is refused before any route sees it (403), or None."""
    host = headers.get("host", "")
    if not hosts.admit(_hostname(host)):
        return (f"Host {host!r} is not a name of this server; open it by the address it printed, or start it "
                f"with --allowed-host {_hostname(host) or 'NAME'} to serve under that name")
    origin = headers.get("origin")
    if origin is not None and origin.lower() != f"http://{host}".lower():
        return (f"requests from pages of another origin ({origin}) are refused: only this server's own page "
                f"and clients that send no Origin (curl, the OpenAI client) may use it")
    return None


class Guard:
    """Every request passes `refusal` before routing: the same protection on every route, present and future."""

    def __init__(self, app, hosts: Hosts):
        self.app, self.hosts = app, hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            problem = refusal(Headers(scope=scope), self.hosts)
            if problem:
                await error_response(403, problem, code="forbidden")(scope, receive, send)
                return
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            # Only a shutdown cancels a request, once its connection is closed (`Server`): nobody is left to
            # answer, and nothing went wrong that uvicorn should log as a traceback.
            return


# ------------------------------------------------------------------------------------- parameters
async def read_body(request: Request) -> dict:
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise RequestError(415, f"the request body must be sent as Content-Type: application/json, "
                                f"not {kind or 'nothing'}")
    size = 0
    chunks = []
    try:
        async with asyncio.timeout(BODY_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise RequestError(413, f"request body over {MAX_BODY_BYTES:,} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(408, f"the request body did not arrive within {BODY_SECONDS:g} s") from None
    except ClientDisconnect:
        raise RequestError(400, "the client went away before sending the whole body") from None
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the request body is not valid JSON ({e}); send a JSON object") from None
    except RecursionError:
        raise RequestError(400, "the request body is nested too deeply; send a flat JSON object") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return body


def number(body: dict, name: str, default, lo: float, hi: float, integer: bool = False, open_lo: bool = False):
    """`body[name]` checked to be a number (an integer if `integer`) in [lo, hi] ((lo, hi] if `open_lo`)."""
    value = body.get(name)
    if value is None:
        return default
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (isinstance(value, float) and not math.isfinite(value)):
        raise RequestError(400, f"'{name}' must be {'an integer' if integer else 'a number'}, got {json.dumps(value)}",
                           name)
    if value < lo or value > hi or (open_lo and value == lo):
        span = f"{'(' if open_lo else '['}{lo:g}, {hi:g}]" if isinstance(hi, float) else f"[{lo}, {hi}]"
        raise RequestError(400, f"'{name}' must be in {span}, got {value}", name)
    return value


def text_field(body: dict, name: str, default: str = "") -> str:
    value = body.get(name, default)
    if isinstance(value, list) and len(value) == 1:  # OpenAI also takes a list of prompts: one is served
        value = value[0]
    if value is None:
        value = default
    if not isinstance(value, str):
        raise RequestError(400, f"'{name}' must be a string", name)
    if len(value) > MAX_PROMPT_CHARS:
        raise RequestError(400, f"'{name}' has {len(value):,} characters; this server takes at most "
                                f"{MAX_PROMPT_CHARS:,}", name, "context_length_exceeded")
    return value


def encode(tokenizer, text: str, name: str = "prompt") -> list[int]:
    """The ids of `text`, an empty prompt's as `chargpt sample` takes it (`chargpt.model.sampling.prompt_ids`)."""
    try:
        return prompt_ids(tokenizer, text)
    except VocabularyError as e:
        raise RequestError(400, f"'{name}': {e}", name, "invalid_characters") from None


API_NAMES = {"max_new_tokens": "max_tokens"}  # OpenAI's name for a `SamplingParams` field, where it has its own


def api_name(name: str) -> str:
    return API_NAMES.get(name, name)


@dataclass
class Completion:
    """One completion request, checked: the sampling parameters by `SamplingParams`' rules (those of
    `chargpt sample` and `Run.generate`), the rest by OpenAI's."""
    model: str | None
    prompt: str
    sampling: SamplingParams
    stream: bool = False
    echo: bool = False
    include_usage: bool = False
    stop: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, body: dict) -> "Completion":
        unknown = sorted(set(body) - COMPLETION_FIELDS)
        if unknown:
            raise RequestError(400, f"unknown parameter {unknown[0]!r}; this server takes "
                                    f"{', '.join(sorted(COMPLETION_FIELDS))}", unknown[0])
        for name, allowed in (("n", 1), ("best_of", 1), ("logprobs", None), ("suffix", None),
                              ("presence_penalty", 0), ("frequency_penalty", 0)):
            value = body.get(name)
            if value is not None and not (type(value) is type(allowed) and value == allowed):  # true is not 1
                raise RequestError(400, f"'{name}' is not supported here (only {json.dumps(allowed)})", name)
        if body.get("logit_bias") not in (None, {}):
            raise RequestError(400, "'logit_bias' is not supported here", "logit_bias")
        for name in ("stream", "echo"):
            if not isinstance(body.get(name, False), bool):
                raise RequestError(400, f"'{name}' must be true or false", name)
        options = {} if body.get("stream_options") is None else body["stream_options"]
        if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
            raise RequestError(400, "'stream_options' must be an object like {\"include_usage\": true}",
                               "stream_options")
        stop = body.get("stop")
        stop = [stop] if isinstance(stop, str) else ([] if stop is None else stop)
        if (not isinstance(stop, list) or len(stop) > 4
                or not all(isinstance(s, str) and 0 < len(s) <= 100 for s in stop)):
            raise RequestError(400, "'stop' must be a string or a list of at most 4 non-empty strings", "stop")
        return cls(model=body.get("model"), prompt=text_field(body, "prompt"), sampling=sampling_params(body),
                   stream=body.get("stream", False), echo=body.get("echo", False),
                   include_usage=options.get("include_usage", False), stop=stop)


def sampling_params(body: dict) -> SamplingParams:
    """The request's `SamplingParams`, with OpenAI's defaults: 16 tokens, a random seed."""
    values = {name: body.get(api_name(name)) for name in SAMPLING_FIELDS}
    if values["max_new_tokens"] is None:
        values["max_new_tokens"] = 16
    if values["seed"] is None:
        values["seed"] = secrets.randbits(64)
    try:
        params = SamplingParams.checked(lambda name: f"'{api_name(name)}'", **values)
    except ConfigError as e:
        raise RequestError(400, str(e), api_name(e.field) if e.field else None) from None
    if params.max_new_tokens > MAX_NEW_TOKENS:
        raise RequestError(400, f"'max_tokens' is {params.max_new_tokens:,}; this server generates at most "
                                f"{MAX_NEW_TOKENS:,} characters per completion", "max_tokens")
    return params


# ------------------------------------------------------------------------------------- generation
class StopFilter:
    """Text passes through until a stop sequence appears; what could still become one is held back."""

    def __init__(self, stops: list[str]):
        self.stops, self.pending, self.stopped = stops, "", False

    def feed(self, text: str) -> str:
        if not self.stops:
            return text
        self.pending += text
        cut = min((i for s in self.stops if (i := self.pending.find(s)) >= 0), default=-1)
        if cut >= 0:
            out, self.pending, self.stopped = self.pending[:cut], "", True
            return out
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        out, self.pending = self.pending[:len(self.pending) - keep], self.pending[len(self.pending) - keep:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Generation:
    """One request's sampling, `chargpt sample`'s exactly (`Engine.sample`: its own generator seeded with
    `seed`, its own KV cache). Tokens are produced in short bursts, each on a worker thread, so the event loop
    serves other clients between them."""

    def __init__(self, loaded: Loaded, completion: Completion, counters: "Counters"):
        tok = loaded.tokenizer
        ids = encode(tok, completion.prompt)
        self.prompt_tokens = len(ids)
        self.tokens = loaded.engine.sample(ids, completion.sampling)
        self.decode = tok.decode
        self.count = 0
        self.done = completion.sampling.max_new_tokens == 0
        self.cancelled = self._started = self._running = self._released = False
        self._lock = threading.Lock()
        self.filter = StopFilter(completion.stop)
        self.interrupted = False  # ended by the server's shutdown, not by its length, a stop sequence or its client
        self.counters = counters
        counters.open(self)

    def burst(self, seconds: float = BURST_SECONDS) -> str:
        """Sample for about `seconds` (at least one token); the text that may be shown so far."""
        with self._lock:
            if self.cancelled:  # ended while this burst waited for a worker thread
                return ""
            if not self._started:
                self._started = True
                self.counters.streams(+1)
            self._running = True
        try:
            with DECODING:  # one stream's burst at a time: the streams take turns on the cores
                return "" if self.cancelled else self._burst(seconds)
        finally:
            with self._lock:
                self._running = False
                if self.cancelled:
                    self._release()

    def _burst(self, seconds: float) -> str:
        ids = []
        end = time.perf_counter() + seconds
        for col in self.tokens:
            ids.append(int(col[0, 0]))
            if time.perf_counter() >= end or self.cancelled:
                break
        else:
            self.done = True
        self.counters.add(len(ids))
        text = self.filter.feed(self.decode(ids))
        if self.filter.stopped:
            self.done = True
        elif self.done:
            text += self.filter.flush()
        self.count += len(text)  # the completion's characters: what was sampled past a stop sequence is not in it
        return text

    @property
    def finish_reason(self) -> str:
        return "stop" if self.filter.stopped else "length"

    def end(self) -> None:
        """Finished, or the client went away: a burst still running on its worker thread stops at its next
        token, and only then does the stream stop counting as active."""
        with self._lock:
            self.cancelled = self.done = True
            if not self._running:
                self._release()
        self.counters.close(self)

    def interrupt(self) -> None:
        """The server is shutting down: end now, and say so (`interrupted`) unless the completion was whole."""
        with self._lock:
            self.interrupted = not self.done
        self.end()

    def _release(self) -> None:
        if self._started and not self._released:
            self._released = True
            self.counters.streams(-1)


class Counters:
    """What the server generates: streams sampling and characters sampled (GET /api/status), and the completions
    in progress, which its shutdown ends at once (and refuses new ones)."""

    def __init__(self):
        self.active = self.tokens = 0
        self.closing = False
        self._live: set[Generation] = set()
        self._lock = threading.Lock()

    def open(self, gen: Generation) -> None:
        with self._lock:
            if self.closing:
                raise RequestError(503, SHUTTING_DOWN)
            self._live.add(gen)

    def close(self, gen: Generation) -> None:
        with self._lock:
            self._live.discard(gen)

    def shut_down(self) -> None:
        with self._lock:
            self.closing, live = True, list(self._live)
        for gen in live:
            gen.interrupt()

    def add(self, n: int) -> None:
        with self._lock:
            self.tokens += n

    def streams(self, delta: int) -> None:
        with self._lock:
            self.active += delta


# ------------------------------------------------------------------------------------------- handlers
def create_app(runs: ServedRuns, hosts: Hosts | None = None, counters: Counters | None = None) -> Guard:
    counters = counters or Counters()
    # Sampling and reading files run on pools of their own: a burst of streams waiting for their turn to decode
    # must not leave the runs listing (or a model's first load) queueing behind them.
    sampling_pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="chargpt-sample")
    files_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="chargpt-files")

    async def sampling(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(sampling_pool, fn, *args)

    async def files(fn, *args):
        return await asyncio.get_running_loop().run_in_executor(files_pool, fn, *args)

    async def page(request: Request) -> Response:
        return Response(_static("index.html"), media_type="text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:  # a fixed set of names: nothing else of the package (or disk) is reachable
            raise RequestError(404, f"no static file {name!r}")
        return Response(_static(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    async def models(request: Request) -> Response:
        data = [model_card(n) for n in runs.servable()]
        return JSONResponse({"object": "list", "data": data})

    def model_card(name: str) -> dict:
        ckpt = runs.checkpoint(runs.path(name))
        return {"id": name, "object": "model", "created": int(ckpt.stat().st_mtime), "owned_by": "chargpt"}

    async def model(request: Request) -> Response:
        name = request.path_params["name"]
        if runs.checkpoint(runs.path(name)) is None:
            raise RequestError(404, f"run {name!r} has no checkpoint (yet)", "model", "model_not_found")
        return JSONResponse(model_card(name))

    async def run_list(request: Request) -> Response:
        return JSONResponse({"runs": await files(runs.info), "default": (await files(runs.servable) or [None])[0]})

    async def run_details(request: Request) -> Response:
        return JSONResponse(await files(runs.details, request.path_params["name"]))

    async def status(request: Request) -> Response:
        return JSONResponse({"streams": counters.active, "tokens": counters.tokens})

    async def completions(request: Request) -> Response:
        completion = Completion.parse(await read_body(request))
        name, loaded = await files(runs.load, completion.model)
        gen = Generation(loaded, completion, counters)
        meta = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
                "model": name}

        def usage() -> dict:
            return {"prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.count,
                    "total_tokens": gen.prompt_tokens + gen.count}

        def chunk(text: str, finish: str | None) -> bytes:
            body = {**meta, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
            return f"data: {json.dumps(body)}\n\n".encode()

        if not completion.stream:
            parts = [completion.prompt] if completion.echo else []
            try:
                while not gen.done:
                    if await request.is_disconnected():
                        break
                    parts.append(await sampling(gen.burst))
            finally:
                gen.end()
            if gen.interrupted:
                raise RequestError(503, SHUTTING_DOWN)
            return JSONResponse({**meta, "choices": [{"text": "".join(parts), "index": 0, "logprobs": None,
                                                      "finish_reason": gen.finish_reason}], "usage": usage()})

        async def events():
            try:
                if completion.echo:
                    yield chunk(completion.prompt, None)
                while not gen.done:
                    text = await sampling(gen.burst)
                    if text:
                        yield chunk(text, None)
                if gen.interrupted:  # OpenAI's way to end a stream early: an error event (its client raises it)
                    message = f"{SHUTTING_DOWN} (this completion stopped after {gen.count:,} characters)"
                    yield f"data: {json.dumps({'error': error_body(503, message)})}\n\n".encode()
                    return
                yield chunk("", gen.finish_reason)
                if completion.include_usage:
                    yield f"data: {json.dumps({**meta, 'choices': [], 'usage': usage()})}\n\n".encode()
                yield b"data: [DONE]\n\n"
            finally:  # also when the client went away: the cancelled stream samples nothing more
                gen.end()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def attention(request: Request) -> Response:
        body = await read_body(request)
        prompt = text_field(body, "prompt")
        if not prompt:
            raise RequestError(400, "'prompt' must hold at least one character", "prompt")
        query = number(body, "query", None, -len(prompt), len(prompt) - 1, integer=True)
        name, loaded = await files(runs.load, body.get("model"))
        return JSONResponse(await sampling(attention_json, name, loaded, prompt, query, runs.device))

    async def not_found(request: Request, exc: HTTPException) -> Response:
        return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    async def refused(request: Request, exc: RequestError) -> Response:
        return error_response(exc.status, exc.message, exc.param, exc.code)

    async def failed(request: Request, exc: Exception) -> Response:
        message = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        print(f"chargpt serve: {request.method} {request.url.path} failed: {message}", file=sys.stderr)
        return error_response(500, f"the server failed on this request: {message}")

    routes = [
        Route("/", page), Route("/static/{name}", static),
        Route("/v1/models", models), Route("/v1/models/{name}", model),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/api/runs", run_list), Route("/api/runs/{name}", run_details),
        Route("/api/attention", attention, methods=["POST"]), Route("/api/status", status),
    ]
    handlers = {HTTPException: not_found, RequestError: refused, ChargptError: failed, Exception: failed}
    return Guard(Starlette(routes=routes, exception_handlers=handlers), hosts or Hosts())


def attention_json(name: str, loaded: Loaded, prompt: str, query: int | None, device: torch.device) -> dict:
    """Attention weights of `prompt` as `chargpt attention` computes them. With `query` (an index into the
    prompt): that character's weights over the context the model saw when it came next, (L, H, keys);
    without: the whole (L, H, T, T) map of a prompt of at most block_size characters."""
    from ..model.attention import attention_weights

    model = loaded.model
    if not isinstance(model, GPT):
        raise RequestError(400, f"run {name!r} is a {model.config.model} model: it has no attention to show", "model")
    block = model.config.block_size
    ids = encode(loaded.tokenizer, prompt)
    if query is None:
        if len(ids) > block:
            raise RequestError(400, f"'prompt' has {len(ids)} characters, over the model's block_size {block}; "
                                    f"shorten it or pass 'query' to see one character's context", "prompt")
        start, end = 0, len(ids)
    else:
        end = query % len(ids) + 1
        start = window_start(end, block)
    idx = torch.tensor([ids[start:end]], dtype=torch.long, device=device)
    weights = attention_weights(model, idx)[0]  # (L, H, T, T)
    if query is not None:
        weights = weights[:, :, -1, :]  # (L, H, T): the query's row
    rows = [[[round(w, 5) for w in head] if query is not None else [[round(w, 5) for w in r[:i + 1]]
                                                                     for i, r in enumerate(head)]
             for head in layer] for layer in weights.tolist()]
    return {"model": name, "n_layer": len(rows), "n_head": len(rows[0]), "block_size": block, "start": start,
            "query": None if query is None else end - 1, "chars": list(prompt[start:end]), "weights": rows}


def _static(name: str) -> bytes:
    return resources.files("chargpt.serve").joinpath("static", name).read_bytes()


# ------------------------------------------------------------------------------------------------ run
def bind(host: str, port: int) -> socket.socket:
    if not 0 <= port <= 65535:
        raise ConfigError(f"--port must be 0 to 65535, got {port}")
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)  # from here on connections wait for the server instead of being refused
    except OSError as e:  # in use, not an address of this machine, or a name that does not resolve
        raise ConfigError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port "
                          f"(0 picks a free one) or --host") from None
    return sock


class Server(uvicorn.Server):
    """uvicorn's server, stopped by chargpt's signal handling (`chargpt.runtime.signals`) instead of its own. The first
    SIGINT or SIGTERM ends every completion at once (a stream with an error event saying why) and refuses new
    ones; the server exits when their clients have the last bytes, or after GRACE_SECONDS, or at a second signal,
    closing what is still open. Nothing is cancelled under a request that could still answer, so nothing logs a
    traceback, whatever the signals' timing."""

    def __init__(self, config: uvicorn.Config, counters: Counters):
        super().__init__(config)
        self.counters, self.hurry = counters, False
        self.stop = StopSignals(at_once=self._hurry)  # held by `serve`, around the event loop's whole life

    def _hurry(self, signum: int) -> None:
        self.hurry = True

    @contextmanager
    def capture_signals(self):  # uvicorn's own would raise the signals again after the loop, into its teardown
        yield

    async def on_tick(self, counter: int) -> bool:
        self.should_exit |= self.stop.received is not None
        return await super().on_tick(counter)

    async def shutdown(self, sockets=None) -> None:
        self.counters.shut_down()
        closing = asyncio.create_task(self._close_connections())
        try:
            await super().shutdown(sockets)
        finally:
            closing.cancel()

    async def _close_connections(self) -> None:
        deadline = time.monotonic() + GRACE_SECONDS
        while not self.hurry and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.server_state.connections):
            connection.transport.close()  # its request sees the client gone and ends
        self.force_exit = True  # what is still running is cancelled as the loop ends, without a word (`Guard`)


def serve(runs: ServedRuns, host: str = "127.0.0.1", port: int = 8000, allowed_hosts: tuple[str, ...] = ()) -> int:
    """Serve until SIGINT or SIGTERM, and return that signal; prints the URL (with the port actually bound, so
    --port 0 works). Requests must name the server by `host`, a loopback name or one of `allowed_hosts` (see
    `Hosts`)."""
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    n = len(runs.servable())
    where = f"checkpoint {runs.single[1]}" if runs.single else f"{n} run(s) with a checkpoint in {runs.runs_dir}"
    counters = Counters()
    config = uvicorn.Config(create_app(runs, Hosts(host, allowed_hosts), counters), log_level="warning",
                            access_log=False, lifespan="off")
    server = Server(config, counters)
    with server.stop:  # from the moment the address is out: a client may act on it at once
        print(f"chargpt serve: {where}; open http://{shown}:{bound}/  (API: http://{shown}:{bound}/v1)", flush=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {host}: anyone who reaches this address can use the API (no "
                  f"authentication)", file=sys.stderr, flush=True)
        server.run(sockets=[sock])
        return server.stop.take()
