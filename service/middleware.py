"""ASGI middleware for the service: a request-body size limit (413), optional API-key auth (401),
and cancellation of a request whose client has disconnected.

The first two answer before the request reaches BentoML, with a JSON body shaped like BentoML's
validation errors: {"error": "...", "detail": [{"loc": [...], "msg": "...", "type": "..."}]}.

Neither uvicorn nor BentoML cancels a handler when its client goes away: a 25,000-sentence document
kept a core busy for minutes after the client left. So while a POST is being handled, a watcher
waits on the connection (uvicorn's `receive()` returns `http.disconnect` only when the client
disconnects or the response is complete) and cancels the handler's task on a disconnect; the
micro-batcher then drops the request's remaining items (at most the running batch is spent).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Health, metrics and docs stay reachable without a key.
# /ui is a static page: the key is typed into it and sent with each call it makes.
OPEN_PATHS = frozenset({"/", "/ui", "/livez", "/readyz", "/healthz", "/metrics", "/docs.json", "/schema.json"})
OPEN_PREFIXES = ("/static_content/", "/assets/")
# Requests whose handler is cancelled when the client disconnects (the ones that run inference).
WATCHED_METHODS = frozenset({"POST", "PUT", "PATCH"})
logger = logging.getLogger("stancewatch.service")


# What a client that went away is answered with (status 499, nginx's "client closed request").
# Nobody reads it, but a response lets BentoML's timeout middleware finish and the access log say so.
CLIENT_GONE = ("client closed request", (), "the client disconnected", "client_disconnected")


def error_body(error: str, loc: Iterable[str], msg: str, kind: str) -> dict[str, Any]:
    """The JSON body of every error this service answers itself, shaped like BentoML's."""
    return {"error": error, "detail": [{"loc": list(loc), "msg": msg, "type": kind}]}


async def send_error(
    send: Send,
    status: int,
    error: str,
    loc: list[str],
    msg: str,
    kind: str,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    body = json.dumps(error_body(error, loc, msg, kind)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers],
        }
    )
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
                return await send_error(
                    send,
                    401,
                    "unauthorized",
                    ["header", "Authorization"],
                    f"{problem} API key: send 'Authorization: Bearer <key>'",
                    f"{problem}_api_key",
                    [(b"www-authenticate", b"Bearer")],
                )
        limit = self.max_body_bytes
        too_large = f"request body exceeds the limit of {limit} bytes (STANCEWATCH_MAX_BODY_BYTES)"
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await send_error(
                    send,
                    400,
                    "bad request",
                    ["header", "Content-Length"],
                    "Content-Length is not a number",
                    "invalid_header",
                )
            if declared > limit:  # refused before a byte of the body is read
                return await send_error(send, 413, "payload too large", ["body"], too_large, "body_too_large")
            if scope.get("method") in WATCHED_METHODS:
                return await self._run_watched(scope, receive, receive, send)
            return await self.app(scope, receive, send)
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        # No Content-Length (chunked upload): read at most `limit` bytes, then replay them.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client disconnected
                # Answer anyway: BentoML's timeout middleware waits for a first `send` (else until
                # the traffic timeout) and the access log then shows 499, not nothing.
                return await send_error(send, 499, *CLIENT_GONE)
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

        await self._run_watched(scope, replay, receive, send)

    async def _run_watched(self, scope: Scope, app_receive: Receive, receive: Receive, send: Send) -> None:
        """Run the app in this task; cancel it if the client disconnects before the response is complete.

        `app_receive` gives the app its body (the connection's `receive`, or a replay of a body read
        here); `receive` is the connection's own, which the watcher reads once the body is in.
        """
        task = asyncio.current_task()
        body_in, gone = asyncio.Event(), asyncio.Event()
        state = {"started": False, "complete": False, "ours": False}

        async def receive_for_app() -> Message:
            if body_in.is_set():  # as uvicorn does: nothing more until the client goes away
                await gone.wait()
                return {"type": "http.disconnect"}
            message = await app_receive()
            if message["type"] == "http.disconnect":
                gone.set()
                body_in.set()
            elif not message.get("more_body", False):
                body_in.set()
            return message

        async def send_for_app(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                state["complete"] = True
            await send(message)

        async def watch() -> None:
            await body_in.wait()
            if not gone.is_set():
                message = await receive()
                if message["type"] != "http.disconnect":
                    return
                gone.set()
            if not state["complete"]:
                state["ours"] = True
                task.cancel("client disconnected")

        watcher = asyncio.ensure_future(watch())
        try:
            await self.app(scope, receive_for_app, send_for_app)
        except asyncio.CancelledError:
            if not (state["ours"] and task.cancelling() == 1):
                # Cancelled by the server: shutdown ran past its grace period
                # ($STANCEWATCH_SHUTDOWN_GRACE_S). Tell the client if the connection still can.
                if not state["started"]:
                    try:
                        await send_error(
                            send,
                            503,
                            "service unavailable",
                            [],
                            "the server is shutting down and "
                            "this request ran past the grace period (STANCEWATCH_SHUTDOWN_GRACE_S); "
                            "send it again",
                            "shutting_down",
                            [(b"connection", b"close")],
                        )
                    except Exception:  # noqa: BLE001 - the connection may be gone already
                        pass
                raise
            task.uncancel()
            logger.info(
                "client disconnected from %s %s; its remaining work was dropped", scope.get("method"), scope.get("path")
            )
            # Nobody reads this (uvicorn drops writes to a closed connection), but an answer lets
            # BentoML's timeout middleware, which waits for the first `send`, finish now and not at
            # the traffic timeout (see CLIENT_GONE).
            if not state["started"]:
                await send_error(send, 499, *CLIENT_GONE)
        finally:
            watcher.cancel()
