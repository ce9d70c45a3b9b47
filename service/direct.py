"""POST /predict and /predict_document answered without BentoML's per-request routing.

BentoML 1.4 sends every API call through Starlette's router, a `Request` object, its context
middleware and its serde lookup, and through `APIMethod.__get__`, which calls `inspect.signature`
on the handler for every request. Under 32 clients sending single sentences, py-spy found 44% of
the worker's samples under BentoML's ContextMiddleware, with our handler code a small part of
them. A loop over the whole ASGI stack with the model stubbed took 0.36 ms of CPU per request with
that path and 0.15 ms with this one (a bare uvicorn app: 0.04).

This middleware sits inside BentoML's own middlewares (metrics, access log, timeout, tracing), so
they still see every request. It also sits inside GuardMiddleware (size limit, API key,
disconnects). For JSON bodies it does what BentoML's endpoint does:
- validate the body with the same pydantic model (`input_spec`);
- call the same method and answer its Response;
- on a ValidationError, answer the same 400 body; on a BentoMLException, the same status mapping;
  on anything else, the same 500 body;
- add the same response headers (`Server`, and the request and trace ids when tracing sets them).

Anything it does not handle goes on to BentoML unchanged: another path, method or media type;
BentoML's CORS configured; a handler that needs what only BentoML's endpoint gives (a `ctx`
parameter, batching, a sync function, a root input); the service not started yet or stopped.

One difference is deliberate. A client that disconnects before its body has arrived gets 499 (as
the guard answers any disconnect), where BentoML answers 500 to nobody and logs an exception.

The OpenAPI document still comes from the `@bentoml.api` declarations. tests/test_service.py sends
the same requests down both paths and requires the same status, bytes and headers.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import bentoml
from bentoml._internal.context import trace_context
from bentoml.exceptions import BentoMLException
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response

from stancewatch.service.middleware import CLIENT_GONE, error_body

# BentoML's endpoint logs its exceptions here; the same name keeps operators' log filters working.
logger = logging.getLogger("bentoml._internal.server.http_app")
JSON_TYPES = frozenset({b"", b"application/json"})
UNEXPECTED = "An unexpected error has occurred, please check the server log."


def _media_type(headers: list[tuple[bytes, bytes]]) -> bytes:
    for key, value in headers:
        if key.lower() == b"content-type":
            return value.split(b";", 1)[0].strip().lower()
    return b""


def _fits(api) -> bool:
    """A handler whose call here is exactly BentoML's: an async function of the body's fields only."""
    return (
        inspect.iscoroutinefunction(api.func)
        and api.ctx_param is None
        and not api.batchable
        and not getattr(api.input_spec, "__root_input__", False)
    )


class DirectRoutes:
    """Answers POST to the service's API routes in `paths` itself; passes everything else on.

    `service` is the BentoML Service object (its `apis` give each route's input model and function).
    With BentoML's CORS on (its config), every request goes to BentoML, which adds the headers.
    """

    def __init__(self, app, service, paths: tuple[str, ...]):
        from bentoml._internal.utils.uri import join_paths

        self.app = app
        self.enabled: bool | None = None  # decided on the first request, once BentoML's config is read
        self.routes: dict[str, tuple[type, Callable, tuple[str, ...]]] = {}
        for api in service.apis.values():
            if api.route in paths and _fits(api):
                spec = api.input_spec
                self.routes[join_paths(service.path_prefix, api.route)] = (spec, api.func, tuple(spec.model_fields))
        self.server_header = f"BentoML Service/{service.name}"  # what BentoML's endpoint adds
        self.id_formats: dict[str, str] = {}
        self.trace_header = False

    def _configure(self) -> None:
        from bentoml._internal.configuration.containers import BentoMLContainer

        self.enabled = not BentoMLContainer.http.cors.enabled.get()
        self.id_formats = BentoMLContainer.logging_formatting.get()
        self.trace_header = bool(BentoMLContainer.http.response.trace_id.get())

    async def __call__(self, scope, receive, send) -> None:
        if self.enabled is None:
            self._configure()
        route = self.routes.get(scope.get("path", "")) if self.enabled and scope["type"] == "http" else None
        if route is None or scope.get("method") != "POST" or _media_type(scope.get("headers", [])) not in JSON_TYPES:
            return await self.app(scope, receive, send)
        instance = _running_instance()
        if instance is None:  # not started (or shutting down): BentoML answers as it would
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        if body is None:  # the client left while sending; answering lets the outer middlewares finish
            response = JSONResponse(error_body(*CLIENT_GONE), status_code=499)
        else:
            spec, func, fields = route
            response = await _call(spec, func, fields, instance, body, scope)
        self._add_headers(response)
        await response(scope, receive, send)

    def _add_headers(self, response: Response) -> None:
        """The headers BentoML's endpoint adds to every answer (its `_add_response_headers`)."""
        response.headers["server"] = self.server_header
        if trace_context.request_id is not None:
            response.headers["X-BentoML-Request-ID"] = format(trace_context.request_id, self.id_formats["span_id"])
        if self.trace_header and trace_context.trace_id is not None:
            response.headers["X-BentoML-Trace-ID"] = format(trace_context.trace_id, self.id_formats["trace_id"])


def _running_instance() -> Any:
    """The service instance BentoML created at start-up, or None before it (or after shutdown)."""
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
