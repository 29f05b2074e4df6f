"""What every request to the retriever passes before FastAPI reads its body (an ASGI middleware; no Ray here).

In this order: the bearer token (401, when the app has one), the Content-Type of a body (415 unless JSON), and the
body's size (413 over ``MAX_BODY_BYTES``, from Content-Length before a byte is read, else counted as it streams).
So a request without the token learns nothing about its body, and a 100 MB body is refused before the app
reads it (Serve's HTTP proxy in front of the replica still receives it: a limit at the edge stops it earlier). A
body sent without a Content-Length (chunked) is read here up to the limit and handed on, or refused at it.
``/healthz`` and the API's own documents pass freely.

The Ingress replica calls ``configure`` with its token: this module is imported by name in the replica (Serve
pickles the ingress class by value, this module by reference), so the middleware and the replica share its state.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 24 * 1024 * 1024  # two base64 images at their 8 MiB limit, and the JSON around them
JSON_ROUTES = ("/search", "/localize")  # the routes that take a body (any other answers 404/405 by itself)
JSON_ROUTE_PREFIXES = ("/predict/",)  # and those under these prefixes
OPEN_PATHS = ("/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
_STATE: dict[str, Any] = {"token": None, "unserved": ()}


def configure(token: str | None, unserved: tuple[str, ...] = ()) -> None:
    """This replica's token, and the routes it does not serve (no localizer: ``/localize``), which its schema
    leaves out."""
    _STATE.update(token=token, unserved=unserved)


def token() -> str | None:
    return _STATE["token"]  # type: ignore[no-any-return]


def unserved() -> tuple[str, ...]:
    return tuple(_STATE["unserved"])


class RequestGate:
    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _path(scope) in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        path = _path(scope)
        takes_body = scope["method"] == "POST" and (path in JSON_ROUTES or path.startswith(JSON_ROUTE_PREFIXES))
        refusal = _refusal(takes_body, headers)
        if refusal is not None:
            await _answer(send, *refusal)
            return
        if takes_body and "content-length" not in headers:
            body = await _read_capped(receive)
            if body is None:
                await _answer(send, 413, f"the request body is over {MAX_BODY_BYTES} bytes")
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)


def _path(scope: Scope) -> str:
    """The path inside the application (Serve mounts it under its route prefix)."""
    path, root = str(scope.get("path", "")), str(scope.get("root_path", "")).rstrip("/")
    inside = root and (path == root or path.startswith(f"{root}/"))
    return (path[len(root) :] or "/") if inside else path


def _refusal(takes_body: bool, headers: dict[str, str]) -> tuple[int, str, dict[str, str]] | None:
    expected = token()
    if expected is not None:
        given = headers.get("authorization", "")
        scheme, _, credentials = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credentials.strip().encode(), expected.encode()):
            return 401, "missing or wrong bearer token", {"www-authenticate": "Bearer"}
    if takes_body:
        kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if kind != "application/json":
            return 415, f"the body must be application/json, not {kind or 'unnamed'}", {}
        length = headers.get("content-length")
        if length is not None and (not (length.isascii() and length.isdigit()) or int(length) > MAX_BODY_BYTES):
            return 413, f"the request body is over {MAX_BODY_BYTES} bytes", {}
    return None


async def _read_capped(receive: Receive) -> bytes | None:
    """The whole streamed body, or None as soon as it passes ``MAX_BODY_BYTES`` (the rest is never read)."""
    parts: list[bytes] = []
    seen = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return b"".join(parts)
        chunk = message.get("body", b"")
        seen += len(chunk)
        if seen > MAX_BODY_BYTES:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The app's receive: the body already read, then the connection's own messages (a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _answer(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    """The app's one error shape, ``schemas.ErrorBody``."""
    from geomoe.on_ray.serving.schemas import ErrorBody

    body = ErrorBody(status=status, detail=detail).model_dump_json().encode()
    fields = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    fields += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": body})
