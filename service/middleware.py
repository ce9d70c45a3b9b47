"""ASGI middleware for the service: a request-body size limit (413) and optional API-key auth (401).

Both answer before the request reaches BentoML, with a JSON body shaped like BentoML's validation
errors: {"error": "...", "detail": [{"loc": [...], "msg": "...", "type": "..."}]}.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable, Iterable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Health, metrics and docs stay reachable without a key.
OPEN_PATHS = frozenset({"/", "/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/schema.json"})
OPEN_PREFIXES = ("/static_content/", "/assets/")


async def send_error(send: Send, status: int, error: str, loc: list[str], msg: str, kind: str,
                     headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": error, "detail": [{"loc": loc, "msg": msg, "type": kind}]}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})


class GuardMiddleware:
    """Rejects bodies over `max_body_bytes` (413) and, if `api_key` is set, unauthenticated calls (401)."""

    def __init__(self, app, max_body_bytes: int = 1_000_000, api_key: str | None = None):
        self.app = app
        self.max_body_bytes = int(max_body_bytes)
        self.api_key = api_key or None

    def _is_open(self, path: str) -> bool:
        return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.api_key and not self._is_open(scope.get("path", "")):
            auth = headers.get(b"authorization", b"").decode("latin-1")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                problem = "missing" if not auth else "invalid"
                return await send_error(send, 401, "unauthorized", ["header", "Authorization"],
                                        f"{problem} API key: send 'Authorization: Bearer <key>'",
                                        f"{problem}_api_key", [(b"www-authenticate", b"Bearer")])
        limit = self.max_body_bytes
        too_large = f"request body exceeds the limit of {limit} bytes (STANCEWATCH_MAX_BODY_BYTES)"
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await send_error(send, 400, "bad request", ["header", "Content-Length"],
                                        "Content-Length is not a number", "invalid_header")
            if declared > limit:  # refused before a byte of the body is read
                return await send_error(send, 413, "payload too large", ["body"], too_large, "body_too_large")
            return await self.app(scope, receive, send)
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        # No Content-Length (chunked upload): read at most `limit` bytes, then replay them.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client disconnected
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await send_error(send, 413, "payload too large", ["body"], too_large, "body_too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
