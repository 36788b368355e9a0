"""Shared request dependencies: the runtime, and the API-key gate in front of every route.

With ``CHUTE_API_KEYS`` set, every request but ``GET /healthz`` and the web page's shells (``/``,
``/ui/…``: no data in them) needs ``Authorization: Bearer KEY``:
the gate is ASGI middleware, so it also covers ``/docs``, ``/openapi.json``, ``/redoc``, paths that
match no route (401, not a 404 that maps the API) and any route added later. ``/metrics`` also opens
to ``CHUTE_METRICS_KEY``, which opens nothing else. Keys are compared as bytes, on SHA-256 digests,
against every key (constant time in the token and in which key matched); a header that is not
ASCII, has no scheme, no token or is too long is a 401 like a wrong key, never a 400 or a 500."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from fastapi import HTTPException, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from chute.runtime import Runtime

#: reachable without a key: liveness only (it touches nothing but the process)
OPEN_PATHS = frozenset({"/healthz"})
#: the web page's shells and static files (chute.web.pages): markup and script with no data in them; the
#: script asks for the key when a data route answers 401
SHELL_PATHS = frozenset({"/"})
SHELL_PREFIX = "/ui/"
#: reachable with an API key or with the metrics key
METRICS_PATHS = frozenset({"/metrics"})
#: longer Authorization headers are refused unread (a key is far shorter)
MAX_AUTHORIZATION = 4096
DETAIL = "missing or wrong API key: send Authorization: Bearer KEY"
CHALLENGE = 'Bearer realm="chute"'


async def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def bearer_token(header: bytes | None) -> bytes | None:
    """The token of ``Authorization: Bearer TOKEN`` (scheme case-insensitive), or None for anything else."""
    if not header or len(header) > MAX_AUTHORIZATION:
        return None
    scheme, space, token = header.strip(b" \t").partition(b" ")
    token = token.strip(b" \t")
    if not space or scheme.lower() != b"bearer" or not token:
        return None
    return token


class Keys:
    """The configured keys as digests; ``allows`` checks one request's Authorization header."""

    def __init__(self, api_keys: Iterable[str], metrics_key: str | None = None) -> None:
        self.api = [_digest(k.encode()) for k in api_keys]
        self.metrics = [_digest(metrics_key.encode())] if metrics_key else []

    def required(self, path: str) -> bool:
        if path in OPEN_PATHS or path in SHELL_PATHS or path.startswith(SHELL_PREFIX):
            return False
        return bool(self.api or (path in METRICS_PATHS and self.metrics))

    def allows(self, path: str, header: bytes | None) -> bool:
        if not self.required(path):
            return True
        token = bearer_token(header)
        if token is None:
            return False
        candidates = self.api + self.metrics if path in METRICS_PATHS else self.api
        digest = _digest(token)
        matched = False
        for key in candidates:  # no short cut: the time does not tell which key matched
            matched |= hmac.compare_digest(digest, key)
        return matched


def unauthorized() -> JSONResponse:
    return JSONResponse({"detail": DETAIL}, 401, headers={"WWW-Authenticate": CHALLENGE})


def _route_path(scope: Scope) -> str:
    """The path the router matches (without the app's ``root_path``), as Starlette computes it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):]
    return path


def _authorization(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"authorization":
            header: bytes = value
            return header
    return None


class KeyGate:
    """ASGI middleware: the key check before routing, for every HTTP (and WebSocket) request."""

    def __init__(self, app: ASGIApp, keys: Keys) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and not self.keys.allows(_route_path(scope), _authorization(scope)):
            if scope["type"] == "http":
                await unauthorized()(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        await self.app(scope, receive, send)


async def require_key(request: Request) -> None:
    """The same check as a dependency (the gate has already made it; this keeps a router safe on its own)."""
    keys: Keys | None = getattr(request.app.state, "keys", None)
    if keys is None:
        settings = request.app.state.runtime.settings
        keys = Keys(settings.api_keys, settings.metrics_key)
    if not keys.allows(_route_path(request.scope), _authorization(request.scope)):
        raise HTTPException(401, DETAIL, headers={"WWW-Authenticate": CHALLENGE})
