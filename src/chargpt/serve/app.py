"""`chargpt serve`: the playground page (`chargpt/static/`) and an OpenAI-compatible API over the runs'
checkpoints, one Starlette app on uvicorn: its routes, and the server's start and stop. The request checks live
in `checks`, the served runs in `runs`, completions and their streams in `generation`."""
from __future__ import annotations

import asyncio
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from importlib import resources

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..config import ServeOptions
from ..errors import ChargptError, ConfigError
from ..runs.records import json_text
from ..runs.rundir import Located
from ..runtime.signals import StopSignals
from ..schema import check_value
from .checks import Connection, Guard, Hosts, RequestError, error_response, integer_field, read_body, text_field
from .batching import RETRY_SECONDS, Busy, Scheduler
from .generation import Completion, Counters, Generation, answer, attention_json
from .runs import ServedRuns

GRACE_SECONDS = 2.0  # after a stop signal, how long clients have to take their ended streams before they are closed
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}


class Json(JSONResponse):
    """A JSON response as chargpt gives JSON out (`records.json_text`): a NaN or an infinity that a run's files hold
    is null, never a failed response."""

    def render(self, content) -> bytes:
        return json_text(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class Api:
    """The routes' handlers over the served runs. Sampling and reading files run on pools of their own: a burst
    of streams waiting for their turn to decode must not leave the runs listing (or a model's first load)
    queueing behind them."""

    def __init__(self, runs: ServedRuns, counters: Counters, max_streams: int = 0):
        self.runs, self.counters = runs, counters
        self.scheduler = Scheduler(counters, max_streams)
        self.sampling_pool = ThreadPoolExecutor(max_workers=32, thread_name_prefix="chargpt-sample")
        self.files_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="chargpt-files")

    def routes(self) -> list[Route]:
        return [
            Route("/", self.page), Route("/static/{name}", self.static),
            Route("/v1/models", self.models), Route("/v1/models/{name}", self.model),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/api/runs", self.run_list), Route("/api/runs/{name}", self.run_details),
            Route("/api/attention", self.attention, methods=["POST"]), Route("/api/status", self.status),
        ]

    async def sampling(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.sampling_pool, fn, *args)

    async def files(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.files_pool, fn, *args)

    async def page(self, request: Request) -> Response:
        return Response(_static("index.html"), media_type="text/html; charset=utf-8")

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:  # a fixed set of names: nothing else of the package (or disk) is reachable
            raise RequestError(404, f"no static file {name!r}")
        return Response(_static(name), media_type=STATIC[name], headers={"Cache-Control": "no-cache"})

    async def models(self, request: Request) -> Response:
        return Json({"object": "list", "data": [_card(n, c) for n, c in self.runs.with_checkpoints()]})

    async def model(self, request: Request) -> Response:
        name = request.path_params["name"]
        found = self.runs.checkpoint(self.runs.path(name))
        if found is None:
            raise RequestError(404, f"run {name!r} has no checkpoint (yet)", "model", "model_not_found")
        return Json(_card(name, found))

    async def run_list(self, request: Request) -> Response:
        return Json({"runs": await self.files(self.runs.info),
                     "default": (await self.files(self.runs.servable) or [None])[0]})

    async def run_details(self, request: Request) -> Response:
        return Json(await self.files(self.runs.details, request.path_params["name"]))

    async def status(self, request: Request) -> Response:
        c = self.counters
        return Json({"streams": c.active, "queued": c.queued, "rate": round(c.rate(), 1), "tokens": c.tokens,
                     "decoders": self.scheduler.status()})

    async def completions(self, request: Request) -> Response:
        completion = Completion.parse(await read_body(request))
        name, loaded = await self.files(self.runs.load, completion.model)
        gen = Generation(loaded, completion, self.counters)
        try:
            self.scheduler.submit(loaded.engine, gen, name)
        except Busy as e:
            gen.end()
            refused = error_response(503, str(e), code="server_busy")
            refused.headers["Retry-After"] = str(RETRY_SECONDS)
            return refused
        return await answer(request, completion, name, gen)

    async def attention(self, request: Request) -> Response:
        body = await read_body(request)
        prompt = text_field(body, "prompt")
        if not prompt:
            raise RequestError(400, "'prompt' must hold at least one character", "prompt")
        query = integer_field(body, "query", -len(prompt), len(prompt) - 1)
        name, loaded = await self.files(self.runs.load, body.get("model"))
        return Json(await self.sampling(attention_json, name, loaded, prompt, query, self.runs.device))


def _card(name: str, found: Located) -> dict:
    return {"id": name, "object": "model", "created": int(found.ckpt.stat().st_mtime), "owned_by": "chargpt"}


def _static(name: str) -> bytes:
    return resources.files("chargpt.serve").joinpath("static", name).read_bytes()


# What an OpenAI client may ask that this server does not offer, and what it offers instead.
OFFERED = {"/v1/chat/completions": "this server offers text completions only: POST /v1/completions with a prompt",
           "/v1/embeddings": "this server offers no embeddings: POST /v1/completions samples text"}


async def _not_found(request: Request, exc: HTTPException) -> Response:
    instead = OFFERED.get(request.url.path.rstrip("/")) if exc.status_code == 404 else None
    return error_response(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}"
                          + (f"; {instead}" if instead else ""))


async def _refused(request: Request, exc: RequestError) -> Response:
    return error_response(exc.status, exc.message, exc.param, exc.code)


async def _failed(request: Request, exc: Exception) -> Response:
    message = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    print(f"chargpt serve: {request.method} {request.url.path} failed: {message}", file=sys.stderr)
    return error_response(500, f"the server failed on this request: {message}")


def create_app(runs: ServedRuns, hosts: Hosts | None = None, counters: Counters | None = None,
               max_streams: int = 0) -> Guard:
    """The app over `runs`, behind the `Guard` that checks every request's Host and Origin; each model decodes
    at most `max_streams` completions at once (0: as many as memory allows)."""
    handlers = {HTTPException: _not_found, RequestError: _refused, ChargptError: _failed, Exception: _failed}
    app = Starlette(routes=Api(runs, counters or Counters(), max_streams).routes(), exception_handlers=handlers)
    return Guard(app, hosts or Hosts())


# ------------------------------------------------------------------------------------------------ run
def bind(host: str, port: int) -> socket.socket:
    """A socket listening on `host`:`port` (0: a free port), or a ConfigError saying what to change."""
    check_value(ServeOptions, "port", port)
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


def serve(runs: ServedRuns, host: str = "127.0.0.1", port: int = 8000, allowed_hosts: tuple[str, ...] = (),
          max_streams: int = 0) -> int:
    """Serve until SIGINT or SIGTERM, and return that signal; prints the URL (with the port actually bound, so
    --port 0 works). Requests must name the server by `host`, a loopback name or one of `allowed_hosts` (see
    `Hosts`); each model decodes at most `max_streams` completions at once (0: as many as memory allows, see
    `chargpt.serve.batching`), more wait in a queue."""
    check_value(ServeOptions, "max_streams", max_streams)
    sock = bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    n = len(runs.servable())
    where = f"checkpoint {runs.single[1]}" if runs.single else f"{n} run(s) with a checkpoint in {runs.runs_dir}"
    counters = Counters()
    app = create_app(runs, Hosts(host, allowed_hosts), counters, max_streams)
    config = uvicorn.Config(app, http=Connection, log_level="warning", access_log=False, lifespan="off")
    server = Server(config, counters)
    with server.stop:  # from the moment the address is out: a client may act on it at once
        print(f"chargpt serve: {where}; open http://{shown}:{bound}/  (API: http://{shown}:{bound}/v1)", flush=True)
        if host not in ("127.0.0.1", "localhost", "::1"):
            print(f"warning: listening on {host}: anyone who reaches this address can use the API (no "
                  f"authentication)", file=sys.stderr, flush=True)
        server.run(sockets=[sock])
        return server.stop.take()
