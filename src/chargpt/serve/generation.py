"""Completions of `chargpt serve`: a request's parameters checked, its sampling, and its answer as one JSON body
or as server-sent events in OpenAI's format; also the attention map the page draws.

Every request samples with its own seeded generator, as a row of its model's decode loop (`batching`): alone, a
completion is exactly what `chargpt sample` prints for the same seed; decoded beside others it agrees with it to
float32 rounding (`chargpt.model.batchdecode`).
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import torch
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..errors import ConfigError, VocabularyError
from ..model.gpt import GPT, window_start
from ..model.sampling import SAMPLING_FIELDS, SamplingParams, prompt_ids
from ..schema import did_you_mean
from .checks import RequestError, error_body, text_field
from .runs import Loaded

SHUTTING_DOWN = "the server is shutting down; send the request again once it is back"
MAX_NEW_TOKENS = 20_000  # the most characters one completion may ask for
BURST_SECONDS = 0.03  # a streamed chunk holds what was sampled in this long: smooth text, few events
DISCONNECT_SECONDS = 0.25  # how often a completion answered in one body checks that its client is still there
RATE_SECONDS, RATE_STEP = 3.0, 0.1  # GET /api/status's rate: characters over the last 3 s, marked every 0.1 s
COMPLETION_FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stream", "stop",
                     "echo", "n", "best_of", "logprobs", "suffix", "user", "stream_options", "presence_penalty",
                     "frequency_penalty", "logit_bias"}
API_NAMES = {"max_new_tokens": "max_tokens"}  # OpenAI's name for a `SamplingParams` field, where it has its own


def api_name(name: str) -> str:
    return API_NAMES.get(name, name)


def encode(tokenizer, text: str, name: str = "prompt") -> list[int]:
    """The ids of `text`, an empty prompt's as `chargpt sample` takes it (`chargpt.model.sampling.prompt_ids`)."""
    try:
        return prompt_ids(tokenizer, text)
    except VocabularyError as e:
        raise RequestError(400, f"'{name}': {e}", name, "invalid_characters") from None


# ------------------------------------------------------------------------------------------ request
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
        _refuse_unsupported(body)
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


def _refuse_unsupported(body: dict) -> None:
    """Unknown parameters, and OpenAI's that this server takes only at their neutral value, are refused."""
    unknown = sorted(set(body) - COMPLETION_FIELDS)
    if unknown:
        raise RequestError(400, f"unknown parameter {unknown[0]!r}{did_you_mean(unknown[0], COMPLETION_FIELDS)}; "
                                f"this server takes {', '.join(sorted(COMPLETION_FIELDS))}", unknown[0])
    for name, allowed in (("n", 1), ("best_of", 1), ("logprobs", None), ("suffix", None),
                          ("presence_penalty", 0), ("frequency_penalty", 0)):
        value = body.get(name)
        if value is not None and not (type(value) is type(allowed) and value == allowed):  # true is not 1
            raise RequestError(400, f"'{name}' is not supported here (only {json.dumps(allowed)})", name)
    if body.get("logit_bias") not in (None, {}):
        raise RequestError(400, "'logit_bias' is not supported here", "logit_bias")


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


# ---------------------------------------------------------------------------------------- sampling
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
    """One request's completion: its prompt's ids and sampling for its model's decode loop (`batching`), which
    feeds it each token as it is sampled with its own seeded generator (`chargpt sample`'s sampling), and the
    text so far, stop sequences cut, for the request to take as it comes."""

    def __init__(self, loaded: Loaded, completion: Completion, counters: "Counters"):
        self.ids = encode(loaded.tokenizer, completion.prompt)
        self.prompt_tokens = len(self.ids)
        self.sampling = completion.sampling
        self.itos = loaded.tokenizer.itos  # id -> character: one token at a time, without decode's array work
        self.count = 0
        self.sampled = 0  # tokens the decode loop fed, stop sequences or not: what `timings` rates
        self.first_at = self.last_at = 0.0  # when the first and the latest of them were fed (time.monotonic)
        self.done = completion.sampling.max_new_tokens == 0
        self.cancelled = False
        self.interrupted = False  # ended by the server's shutdown, not by its length, a stop sequence or its client
        self.error: str | None = None  # ended because decoding failed
        self.filter = StopFilter(completion.stop)
        self._text: list[str] = []  # sampled, not yet taken
        self._waiting: str | None = None  # what the request waits for: "text" (any) or "end"
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self.counters = counters
        counters.open(self)

    def feed(self, token: int, last: bool) -> bool:
        """The decode loop's next token (`last`: the completion's length is reached); whether the completion
        wants no more (a stop sequence, or ended by its request)."""
        now = time.monotonic()
        text = self.filter.feed(self.itos[token])
        if last and not self.filter.stopped:
            text += self.filter.flush()
        with self._lock:
            if self.cancelled:
                return True
            self.sampled += 1
            if self.sampled == 1:
                self.first_at = now
            self.last_at = now
            self._text.append(text)
            self.count += len(text)  # the completion's characters: what was sampled past a stop sequence is not in it
            self.done = last or self.filter.stopped
            wake = self.done or (self._waiting == "text" and bool(text))
            if wake:
                self._waiting = None
        if wake:
            self._notify()
        return self.filter.stopped

    async def take(self, timeout: float | None = None, whole: bool = False) -> str:
        """The text sampled since the last `take`; when there is none yet (`whole`: until the end), waits for some,
        for the end, or for `timeout` seconds."""
        with self._lock:
            wait = not self.done and (whole or not any(self._text))
            if wait:
                self._wake.clear()
                self._waiting = "end" if whole else "text"
        if wait:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        with self._lock:
            text = "".join(self._text)
            self._text.clear()
        return text

    @property
    def finish_reason(self) -> str:
        return "stop" if self.filter.stopped else "length"

    def timings(self) -> dict:
        """How fast this completion was decoded: the tokens after its first over the time since the first. Loading
        the model, the queue and the prompt's prefill all come before the first token, so none of them is in it;
        the rate is null below two tokens."""
        seconds = self.last_at - self.first_at if self.sampled > 1 else 0.0
        rate = (self.sampled - 1) / seconds if seconds > 0 else None
        return {"decode_seconds": round(seconds, 6), "chars_per_second": None if rate is None else round(rate, 1)}

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.count,
                "total_tokens": self.prompt_tokens + self.count}

    def end(self) -> None:
        """Finished, or the client went away: the decode loop drops it before its next step."""
        with self._lock:
            self.cancelled = self.done = True
        self.counters.close(self)

    def interrupt(self) -> None:
        """The server is shutting down: end now, and say so (`interrupted`) unless the completion was whole."""
        with self._lock:
            self.interrupted = not self.done
        self._ended()

    def fail(self, message: str) -> None:
        """Decoding failed: end now, saying why."""
        self.error = message
        self._ended()

    def _ended(self) -> None:
        self.end()
        self._notify()

    def _notify(self) -> None:
        with contextlib.suppress(RuntimeError):  # the server's event loop has ended: nobody waits any more
            self._loop.call_soon_threadsafe(self._wake.set)


class Counters:
    """What the server generates: streams decoding, requests waiting for a row, characters sampled and their rate
    (GET /api/status), and the completions in progress, which its shutdown ends at once (and refuses new ones)."""

    def __init__(self):
        self.active = self.queued = self.tokens = 0
        self.closing = False
        self._live: set[Generation] = set()
        self._lock = threading.Lock()
        self._marks: deque[tuple[float, int]] = deque()  # (time, tokens) every RATE_STEP seconds, over RATE_SECONDS

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
        now = time.monotonic()
        with self._lock:
            self.tokens += n
            if not self._marks or now - self._marks[-1][0] >= RATE_STEP:
                self._marks.append((now, self.tokens))
            while now - self._marks[0][0] > RATE_SECONDS:
                self._marks.popleft()

    def rate(self) -> float:
        """Characters sampled per second over the last RATE_SECONDS, all streams together."""
        now = time.monotonic()
        with self._lock:
            marks = [m for m in self._marks if now - m[0] <= RATE_SECONDS]
            if not marks:
                return 0.0
            then, tokens = marks[0]
            return (self.tokens - tokens) / max(now - then, RATE_STEP)

    def streams(self, delta: int) -> None:
        with self._lock:
            self.active += delta

    def queue(self, delta: int) -> None:
        with self._lock:
            self.queued += delta


# ------------------------------------------------------------------------------------------- answer
async def answer(request: Request, completion: Completion, name: str, gen: Generation) -> Response:
    """The completion `gen` samples, as one JSON body or, with `stream`, as server-sent events. Beside OpenAI's
    fields the body, or the stream's last chunk (the one with its finish_reason), holds `timings`, the decode rate
    as the server measured it (`Generation.timings`; llama.cpp's server adds its own `timings` the same way)."""
    meta = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time()),
            "model": name}
    if completion.stream:
        return StreamingResponse(_events(completion, gen, meta), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    parts = [completion.prompt] if completion.echo else []
    try:
        while True:
            done = gen.done
            parts.append(await gen.take(timeout=DISCONNECT_SECONDS, whole=True))
            if done or await request.is_disconnected():
                break
    finally:
        gen.end()
    if gen.error:
        raise RequestError(500, gen.error)
    if gen.interrupted:
        raise RequestError(503, SHUTTING_DOWN)
    return JSONResponse({**meta, "choices": [{"text": "".join(parts), "index": 0, "logprobs": None,
                                              "finish_reason": gen.finish_reason}], "usage": gen.usage(),
                         "timings": gen.timings()})


async def _events(completion: Completion, gen: Generation, meta: dict):
    def chunk(text: str, finish: str | None, **extra) -> bytes:
        return _event({**meta, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
                       **extra})

    try:
        if completion.echo:
            yield chunk(completion.prompt, None)
        while True:
            done = gen.done
            text = await gen.take()
            if text:
                yield chunk(text, None)
            if done:
                break
            await asyncio.sleep(BURST_SECONDS)  # the next chunk holds what was sampled meanwhile
        if gen.interrupted or gen.error:  # OpenAI's way to end a stream early: an error event (its client raises it)
            status, why = (500, gen.error) if gen.error else (503, SHUTTING_DOWN)
            yield _event({"error": error_body(status, f"{why} (this completion stopped after {gen.count:,} "
                                                      f"characters)")})
            return
        yield chunk("", gen.finish_reason, timings=gen.timings())
        if completion.include_usage:
            yield _event({**meta, "choices": [], "usage": gen.usage()})
        yield b"data: [DONE]\n\n"
    finally:  # also when the client went away: the decode loop drops the completion
        gen.end()


def _event(body: dict) -> bytes:
    return f"data: {json.dumps(body)}\n\n".encode()


# ----------------------------------------------------------------------------------------- attention
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
