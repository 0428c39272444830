"""The checks every request to `chargpt serve` passes: how many connections may wait and how long a request's head
may take (`Connection`), who may ask (its Host and Origin), what its body may be (JSON, within a size and a time),
and the values it carries; a refused request gets one error in OpenAI's format.

Web pages the user visits must not drive the server: a request whose Host is not one of the server's names is
refused (a DNS-rebinding page sends its own name), so is one sent from a page of another origin, and the JSON
endpoints take only `application/json` bodies, which a page of another origin cannot send without asking first.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
from http import HTTPStatus
from urllib.parse import urlsplit

import h11
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..schema import MAX_DIGITS, problem

MAX_PROMPT_CHARS = 10_000  # longer prompts are refused (the model only sees its last block_size anyway)
MAX_BODY_BYTES = 1 << 20
REQUEST_SECONDS = 10.0  # a request's head (its line and headers), then its body, must each arrive within this
MAX_CONNECTIONS = 256  # open at once; more are refused (a process gets 1,024 file descriptors by default)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


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


# ------------------------------------------------------------------------------------ connections
class Connection(H11Protocol):
    """uvicorn's HTTP/1.1 connection, which waits for a request's head as long as the client likes: here the head
    must arrive within REQUEST_SECONDS of the connection (or of its first byte after a response), or it is answered
    408 and closed, and a connection past MAX_CONNECTIONS is answered 503 and closed. So a client that stalls holds
    a bounded number of connections for a bounded time. Once the head is in, the limit is off: a long stream runs
    as long as it needs."""

    head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport) -> None:
        crowded = len(self.connections) >= MAX_CONNECTIONS
        super().connection_made(transport)
        if crowded:
            self._answer(503, f"the server holds {MAX_CONNECTIONS} connections already; retry when some close",
                         "server_busy")
        else:
            self.head_timer = self.loop.call_later(REQUEST_SECONDS, self._head_too_late)

    def data_received(self, data: bytes) -> None:
        if self.head_timer is None and self.conn.their_state is h11.IDLE:  # the next request on a kept connection
            self.head_timer = self.loop.call_later(REQUEST_SECONDS, self._head_too_late)
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._stop_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_too_late(self) -> None:
        self.head_timer = None
        if self.conn.trailing_data[0]:  # part of a head came: say why it ends (an idle connection just closes)
            self._answer(408, f"the request's line and headers did not arrive within {REQUEST_SECONDS:g} s")
        else:
            self.transport.close()

    def _answer(self, status: int, message: str, code: str | None = None) -> None:
        """Answer `status` and close, before any request was read (so outside h11's bookkeeping)."""
        if self.transport.is_closing():
            return
        body = json.dumps({"error": error_body(status, message, code=code)}).encode()
        head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
        self.transport.write(head.encode() + body)
        self.transport.close()


# ------------------------------------------------------------------------------------ Host and Origin
class Hosts:
    """The names a request's Host may carry: the address the server listens on, the loopback names, and the
    names given with --allowed-host. Listening on every address (0.0.0.0, ::) also admits any IP address: a
    DNS-rebinding page can only send a name it owns, never a bare address."""

    def __init__(self, listen: str = "127.0.0.1", allowed: tuple[str, ...] = ()):
        self.names = {_canonical(h) for h in (listen, *LOOPBACK_NAMES, *allowed)} - {""}
        self.any_address = _is_address(listen) and ipaddress.ip_address(listen.strip("[]")).is_unspecified

    def admit(self, hostname: str) -> bool:
        """An empty name (a Host of only `:port`) is no name of this server."""
        return bool(hostname) and (hostname in self.names or (self.any_address and _is_address(hostname)))


def _canonical(name: str) -> str:
    """A name or address as the server compares it: lower case, an IP address in its one short form
    (`::1`, `[::1]` and `0:0::1` are one address)."""
    name = name.strip().lower()
    try:
        return str(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return name


def _hostname(host: str) -> str:
    """`host` (a Host header value: name, address, [v6 address], with or without :port) as a bare name in
    `_canonical` form, "" when it names nothing."""
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:
        return ""
    return _canonical(name) if name else ""


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
            refused = refusal(Headers(scope=scope), self.hosts)
            if refused:
                await error_response(403, refused, code="forbidden")(scope, receive, send)
                return
        try:
            await self.app(scope, receive, send)
        except asyncio.CancelledError:
            # Only a shutdown cancels a request, once its connection is closed (`Server`): nobody is left to
            # answer, and nothing went wrong that uvicorn should log as a traceback.
            return


# ------------------------------------------------------------------------------------ body and values
async def read_body(request: Request) -> dict:
    """The request's JSON object, sent as application/json within MAX_BODY_BYTES and REQUEST_SECONDS."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise RequestError(415, f"the request body must be sent as Content-Type: application/json, "
                                f"not {kind or 'nothing'}")
    body = _json_object(await _body_bytes(request))
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return body


async def _body_bytes(request: Request) -> bytes:
    size = 0
    chunks = []
    try:
        async with asyncio.timeout(REQUEST_SECONDS):
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    raise RequestError(413, f"request body over {MAX_BODY_BYTES:,} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise RequestError(408, f"the request body did not arrive within {REQUEST_SECONDS:g} s") from None
    except ClientDisconnect:
        raise RequestError(400, "the client went away before sending the whole body") from None
    return b"".join(chunks)


def _json_object(data: bytes):
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RequestError(400, f"the request body is not valid JSON ({e}); send a JSON object") from None
    except ValueError:  # Python's limit on reading a long integer (4,300 digits)
        raise RequestError(400, f"the request body holds an integer of thousands of digits; an integer here has at "
                                f"most {MAX_DIGITS} digits") from None
    except RecursionError:
        raise RequestError(400, "the request body is nested too deeply; send a flat JSON object") from None


def integer_field(body: dict, name: str, lo: int, hi: int) -> int | None:
    """`body[name]`, an integer in [lo, hi] by the schema's check (None when absent)."""
    value = body.get(name)
    wrong = None if value is None else problem(value, int, {"min": lo, "max": hi})
    if wrong:
        raise RequestError(400, f"'{name}' {wrong}", name)
    return value


def text_field(body: dict, name: str, default: str = "") -> str:
    """`body[name]`, a string of at most MAX_PROMPT_CHARS (OpenAI's list of one prompt is taken too)."""
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
