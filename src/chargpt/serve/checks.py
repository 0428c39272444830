"""The checks every request to `chargpt serve` passes: who may ask (its Host and Origin), what its body may be
(JSON, within a size and a time), and the values it carries; a refused request gets one error in OpenAI's format.

Web pages the user visits must not drive the server: a request whose Host is not one of the server's names is
refused (a DNS-rebinding page sends its own name), so is one sent from a page of another origin, and the JSON
endpoints take only `application/json` bodies, which a page of another origin cannot send without asking first.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from ..schema import MAX_DIGITS, problem

MAX_PROMPT_CHARS = 10_000  # longer prompts are refused (the model only sees its last block_size anyway)
MAX_BODY_BYTES = 1 << 20
BODY_SECONDS = 10.0  # a request body that takes longer to arrive is refused: a slow client holds nothing for long
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
    """The request's JSON object, sent as application/json within MAX_BODY_BYTES and BODY_SECONDS."""
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
