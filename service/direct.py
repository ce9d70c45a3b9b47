"""POST /predict and /predict_document answered without BentoML's per-request routing.

BentoML 1.4 runs every API call through Starlette's router, a `Request` object, its context
middleware, its serde lookup, and `APIMethod.__get__`, which calls `inspect.signature` on the
handler for every request; `bench/serve.py` measured that stack as most of the gap between the
served model and a bare uvicorn app for single-sentence requests (py-spy on the worker under 32
clients: 44% of the worker's samples were under BentoML's ContextMiddleware, our handler code a
small part of them). This middleware sits inside BentoML's own ones (metrics, access log, timeout,
tracing: they still see every request) and inside GuardMiddleware (size limit, API key,
disconnects), and does for JSON bodies what BentoML's endpoint does: validate the body with the
same pydantic model BentoML would use (`input_spec`), call the same method, and answer its
Response, or the same 400 body on a ValidationError and the same 500 body on anything else.
Anything it does not handle (another path, method or media type; CORS configured; the service
not started yet) goes on to BentoML unchanged. The OpenAPI document still comes from the
`@bentoml.api` declarations. tests/test_service.py sends the same bodies, valid and invalid,
down both paths and requires equal status and body.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

logger = logging.getLogger("stancewatch.service")
JSON_TYPES = frozenset({b"", b"application/json"})
UNEXPECTED = "An unexpected error has occurred, please check the server log."


def _media_type(headers: list[tuple[bytes, bytes]]) -> bytes:
    for key, value in headers:
        if key.lower() == b"content-type":
            return value.split(b";", 1)[0].strip().lower()
    return b""


class DirectRoutes:
    """Answers POST to the service's API routes in `paths` itself; passes everything else on.

    `service` is the BentoML Service object (its `apis` give each route's input model and function).
    With BentoML's CORS on (its config), every request goes to BentoML, which adds the headers.
    """

    def __init__(self, app, service, paths: tuple[str, ...]):
        self.app = app
        self.service = service
        self.enabled: bool | None = None  # decided on the first request, once BentoML's config is read
        prefix = (getattr(service, "path_prefix", "") or "").rstrip("/")
        self.routes: dict[str, tuple[type, Callable, tuple[str, ...]]] = {}
        for api in service.apis.values():
            if api.route in paths:
                spec = api.input_spec
                self.routes[prefix + api.route] = (spec, api.func, tuple(spec.model_fields))
        self.server_header = f"BentoML Service/{service.name}"  # what BentoML's endpoint adds

    async def __call__(self, scope, receive, send) -> None:
        if self.enabled is None:
            from bentoml._internal.configuration.containers import BentoMLContainer

            self.enabled = not BentoMLContainer.http.cors.enabled.get()
        route = self.routes.get(scope.get("path", "")) if self.enabled and scope["type"] == "http" else None
        if route is None or scope.get("method") != "POST" or _media_type(scope.get("headers", [])) not in JSON_TYPES:
            return await self.app(scope, receive, send)
        instance = _running_instance()
        if instance is None:  # not started (or shutting down): BentoML answers as it would
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        if body is None:  # the client left while sending
            return
        spec, func, fields = route
        response = await _call(spec, func, fields, instance, body, scope)
        response.headers["server"] = self.server_header
        await response(scope, receive, send)


def _running_instance() -> Any:
    """The service instance BentoML created at start-up, or None before it (or after shutdown)."""
    import bentoml
    from bentoml.exceptions import BentoMLException

    try:
        return bentoml.get_current_service()
    except BentoMLException:  # "service isn't instantiated yet"
        return None


async def _read_body(receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _call(spec, func, fields: tuple[str, ...], instance: Any, body: bytes, scope) -> Response:
    """What BentoML's api_endpoint_wrapper answers for a JSON body, for these handlers."""
    from bentoml.exceptions import BentoMLException

    try:
        data = spec.model_validate_json(body or b"{}")
        output = await func(instance, **{name: getattr(data, name) for name in fields})
        if not isinstance(output, Response):  # the handlers return JSONResult, already JSON
            raise TypeError(f"{func.__name__} returned {type(output).__name__}, not a Response")
        return output
    except ValidationError as exc:
        _log_exception(scope)
        return JSONResponse(
            {
                "error": f"{exc.error_count()} validation error for {exc.title}",
                "detail": exc.errors(include_context=False, include_input=False),
            },
            status_code=400,
        )
    except BentoMLException as exc:  # BentoML's mapping, its odd list-wrapped 4xx body included
        _log_exception(scope)
        status = exc.error_code.value
        if status in (401, 403):
            detail: Any = {"error": "Authorization error"}
        elif status >= 500:
            detail = {"error": UNEXPECTED}
        else:
            detail = [{"error": str(exc)}]
        return JSONResponse(detail, status_code=status)
    except Exception:  # noqa: BLE001 - as BentoML: log it, answer 500 without the details
        _log_exception(scope)
        return JSONResponse({"error": UNEXPECTED}, status_code=500)


def _log_exception(scope) -> None:
    logger.error("Exception on %s [%s]", scope.get("path"), scope.get("method"), exc_info=True)
