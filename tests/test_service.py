"""The service class called in-process, its request validation, the micro-batcher and the guard middleware."""

from __future__ import annotations

import ast
import asyncio
import importlib
import json
import os
import threading
import time

import pytest
from pydantic import ValidationError


@pytest.fixture(scope="module")
def svc_module(tiny_model):
    """service.service imported with the tiny model as the serving model (the tag is read at import)."""
    old = os.environ.get("STANCEWATCH_MODEL")
    os.environ["STANCEWATCH_MODEL"] = tiny_model.tag
    try:
        import stancewatch.service.service as module

        if str(module.StanceService.models[0].tag) != tiny_model.tag:
            module = importlib.reload(module)
    finally:
        if old is None:
            os.environ.pop("STANCEWATCH_MODEL", None)
        else:
            os.environ["STANCEWATCH_MODEL"] = old
    return module


@pytest.fixture(scope="module")
def svc(svc_module):
    instance = svc_module.StanceService()
    yield instance
    instance.batcher.close()


def _errors(model_cls, body: bytes | str) -> list[dict]:
    with pytest.raises(ValidationError) as info:
        model_cls.model_validate_json(body.encode() if isinstance(body, str) else body)
    return info.value.errors()


# ---- the service class ----------------------------------------------------------------------


def test_predict_returns_every_target_in_input_order(svc, svc_module, tiny_model):
    sentences = svc_module.EXAMPLE_INPUT["sentences"]
    out = asyncio.run(svc.predict(sentences=sentences)).model_dump()
    assert out["model"] == tiny_model.tag
    assert [s["text"] for s in out["sentences"]] == sentences
    targets = svc.model.schema.targets
    for s in out["sentences"]:
        assert s["truncated"] is False
        assert list(s["stances"]) == [t.name for t in targets]
        for t in targets:
            stance = s["stances"][t.name]
            assert list(stance["probs"]) == list(t.labels)
            assert stance["label"] == max(stance["probs"], key=stance["probs"].get)
            assert sum(stance["probs"].values()) == pytest.approx(1.0, abs=1e-4)


def test_predict_matches_the_model_and_uses_contexts(svc):
    sentences, contexts = ["There is no truth to that report.", "Tokyo stood firm."], ["Reports said so.", None]
    out = asyncio.run(svc.predict(sentences=sentences, contexts=contexts)).model_dump()
    direct = [p.to_dict() for p in svc.model.predict(sentences, contexts)]
    assert out["sentences"] == direct


def test_concurrent_requests_share_batches_and_keep_their_own_results(svc):
    sentences = [f"Sentence number {i} about Taiwan." for i in range(40)]
    expected = [p.to_dict() for p in svc.model.predict(sentences)]

    async def many():
        return await asyncio.gather(*(svc.predict(sentences=[s]) for s in sentences))

    before = svc.batcher.batches
    results = asyncio.run(many())
    assert [r.model_dump()["sentences"][0] for r in results] == expected
    assert svc.batcher.batches - before < len(sentences)  # merged, not one batch per request


def test_request_larger_than_a_batch_is_split_not_rejected(svc):
    n = svc.batcher.max_items * 2 + 3
    sentences = [f"Item {i}." for i in range(n)]
    before = svc.batcher.batches
    out = asyncio.run(svc.predict(sentences=sentences)).model_dump()
    assert [s["text"] for s in out["sentences"]] == sentences
    assert svc.batcher.batches - before >= 3


def test_predict_document_offsets_contexts_and_summary(svc):
    text = "Beijing demanded a retraction. Tokyo said the remarks stand.\n\nThe yen edged lower on Monday."
    out = asyncio.run(svc.predict_document(text=text, id="doc-7")).model_dump()
    assert out["id"] == "doc-7"
    parts = out["sentences"]
    assert len(parts) == 3
    for i, s in enumerate(parts):
        assert s["index"] == i and text[s["start"] : s["end"]] == s["text"]
    texts = [s["text"] for s in parts]
    direct = svc.model.predict(texts, [None] + texts[:-1])
    assert [{k: s[k] for k in ("text", "truncated", "language", "supported", "stances")} for s in parts] == [
        p.to_dict() for p in direct
    ]
    for target in svc.model.schema.targets:
        summary = out["summary"][target.name]
        assert sum(summary["counts"].values()) == 3
        assert sum(summary["shares"].values()) == pytest.approx(1.0, abs=1e-5)
        assert sum(summary["mean_probs"].values()) == pytest.approx(1.0, abs=1e-4)
        for lab in target.labels:
            assert summary["counts"][lab] == sum(s["stances"][target.name]["label"] == lab for s in parts)


def test_document_without_sentences_is_a_validation_error(svc):
    with pytest.raises(ValidationError) as info:
        asyncio.run(svc.predict_document(text="\u200b"))  # not blank to str.strip, but no sentence
    assert info.value.errors()[0]["loc"] == ("text",)


def test_model_info(svc, tiny_model):
    info = svc.model_info()
    assert info["tag"] == tiny_model.tag
    assert [t["name"] for t in info["schema"]["targets"]] == svc.model.schema.target_names
    assert info["data_fingerprint"] == tiny_model.metadata["data_fingerprint"]
    assert info["base_model"] == tiny_model.metadata["base_model"]
    assert "mean_f_avg" in info["metrics"] and info["created_at"]
    from stancewatch.service.service import ModelInfo

    assert ModelInfo.model_validate(info).model_dump(by_alias=True)["schema"] == info["schema"]


def test_the_bento_carries_the_serving_model(svc_module, tiny_model):
    assert [str(m.tag) for m in svc_module.StanceService.models] == [tiny_model.tag]
    assert set(svc_module.StanceService.apis) == {"predict", "predict_document"}


def test_access_log_is_on_by_default_and_can_be_turned_off(svc_module, tiny_model):
    import subprocess
    import sys

    assert svc_module.StanceService.config["logging"]["access"]["enabled"] is True
    env = {**os.environ, "STANCEWATCH_MODEL": tiny_model.tag, "STANCEWATCH_ACCESS_LOG": "0"}
    code = "import stancewatch.service.service as s; print(s.StanceService.config['logging']['access']['enabled'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_metrics_and_direct_routes_are_on_by_default_and_can_be_turned_off(svc_module, tiny_model):
    import subprocess
    import sys

    # The middleware list BentoML builds for the served app (outermost first), after it merged the
    # service's config.
    code = (
        "import stancewatch.service.service as s\n"
        "from _bentoml_impl.server.app import ServiceAppFactory\n"
        "s.StanceService.inject_config()\n"
        "print([m.cls.__name__ for m in ServiceAppFactory(s.StanceService, is_main=True).middlewares])"
    )
    seen = {}
    for name, value in (("METRICS", "1"), ("METRICS", "0"), ("DIRECT_ROUTES", "0")):
        env = {**os.environ, "STANCEWATCH_MODEL": tiny_model.tag, f"STANCEWATCH_{name}": value}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        seen[name, value] = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    on = seen["METRICS", "1"]
    assert "RunnerTrafficMetricsMiddleware" in on, seen
    assert "RunnerTrafficMetricsMiddleware" not in seen["METRICS", "0"] and "GuardMiddleware" in seen["METRICS", "0"]
    # The direct routes sit inside the guard (size limit, API key, disconnects) and inside BentoML's
    # metrics and access log, which therefore still count every request.
    assert on.index("RunnerTrafficMetricsMiddleware") < on.index("GuardMiddleware") < on.index("DirectRoutes"), on
    assert on.index("AccessLogMiddleware") < on.index("DirectRoutes"), on
    assert "DirectRoutes" not in seen["DIRECT_ROUTES", "0"] and "GuardMiddleware" in seen["DIRECT_ROUTES", "0"]


def test_tracing_middleware_skips_requests_unless_tracing_is_on(svc_module, tiny_model):
    import subprocess
    import sys

    from opentelemetry.util.http import ExcludeList

    excluded = svc_module.StanceService.config["tracing"]["excluded_urls"]
    # BentoML hands this list to OpenTelemetry's ASGI middleware, which then skips every request URL.
    assert all(ExcludeList(excluded).url_disabled(f"http://127.0.0.1:3000{p}") for p in ("/predict", "/ui"))
    env = {**os.environ, "STANCEWATCH_MODEL": tiny_model.tag, "STANCEWATCH_TRACING": "1"}
    code = "import stancewatch.service.service as s; print(s.StanceService.config.get('tracing'))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] in ("{}", "None")


def test_import_fails_clearly_without_a_model(tiny_model):
    import subprocess
    import sys

    env = {**os.environ, "STANCEWATCH_MODEL": "stancewatch:nosuchversion"}
    done = subprocess.run(
        [sys.executable, "-c", "import stancewatch.service.service"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "nosuchversion" in done.stderr and "stancewatch train" in done.stderr


# ---- request validation: every error names its field ---------------------------------------


@pytest.mark.parametrize(
    "body, loc, kind",
    [
        ("{}", ("sentences",), "missing"),
        ('{"sentences": []}', ("sentences",), "too_short"),
        ('{"sentences": "one"}', ("sentences",), "list_type"),
        ('{"sentences": [1]}', ("sentences", 0), "string_type"),
        ('{"sentences": ["ok", ""]}', ("sentences", 1), "blank"),
        ('{"sentences": ["ok", " \\t\\n"]}', ("sentences", 1), "blank"),
        ('{"sentences": ["a", "b"], "contexts": [null]}', ("contexts",), "length_mismatch"),
        ('{"sentences": ["a"], "contexts": "x"}', ("contexts",), "list_type"),
        ('{"sentences": ["a"], "other": 1}', ("other",), "extra_forbidden"),
        ('{"sentences": ["a"', ("body",), "json_invalid"),
        (b'{"sentences": ["caf\xe9"]}', ("body",), "invalid_utf8"),
    ],
)
def test_predict_request_errors(svc_module, body, loc, kind):
    err = _errors(svc_module.PredictRequest, body)[0]
    assert (err["loc"], err["type"]) == (loc, kind)
    assert err["msg"]


def test_too_many_sentences_names_the_limit(svc_module):
    n = svc_module.MAX_SENTENCES
    assert svc_module.PredictRequest.model_validate({"sentences": ["x"] * n})
    err = _errors(svc_module.PredictRequest, json.dumps({"sentences": ["x"] * (n + 1)}))[0]
    assert err["loc"] == ("sentences",) and err["type"] == "too_long" and str(n) in err["msg"]


@pytest.mark.parametrize(
    "body, loc",
    [
        ("{}", ("text",)),
        ('{"text": "   "}', ("text",)),
        ('{"text": 3}', ("text",)),
        ('{"text": "a", "id": 5}', ("id",)),
    ],
)
def test_document_request_errors(svc_module, body, loc):
    assert _errors(svc_module.DocumentRequest, body)[0]["loc"] == loc


def test_example_input_is_valid_and_in_the_openapi_schema(svc_module):
    assert svc_module.PredictRequest.model_validate(svc_module.EXAMPLE_INPUT)
    assert svc_module.DocumentRequest.model_validate(svc_module.EXAMPLE_DOCUMENT)
    paths = svc_module.StanceService.openapi_spec.asdict()["paths"]
    assert {"/predict", "/predict_document", "/model", "/livez", "/readyz", "/metrics"} <= set(paths)
    for path, example in (("/predict", svc_module.EXAMPLE_INPUT), ("/predict_document", svc_module.EXAMPLE_DOCUMENT)):
        assert paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]["example"] == example


# ---- the micro-batcher -----------------------------------------------------------------------


def _batcher(max_items=4, delay=0.0, fail_on=None):
    from stancewatch.service.batching import MicroBatcher

    seen = []

    def fn(items):
        seen.append(list(items))
        if fail_on is not None and fail_on in items:
            raise ValueError(f"bad item {fail_on}")
        time.sleep(delay)
        return [x * 10 for x in items]

    return MicroBatcher(fn, max_items=max_items), seen


def test_batcher_merges_concurrent_requests_and_keeps_order():
    batcher, seen = _batcher(max_items=8, delay=0.02)

    async def run():
        return await asyncio.gather(*(batcher.submit([i, i + 100]) for i in range(10)))

    try:
        results = asyncio.run(run())
    finally:
        batcher.close()
    assert results == [[i * 10, (i + 100) * 10] for i in range(10)]
    assert len(seen) < 10 and max(len(b) for b in seen) <= 8


def test_batcher_splits_a_large_request_across_batches():
    batcher, seen = _batcher(max_items=4)
    try:
        assert asyncio.run(batcher.submit(list(range(11)))) == [i * 10 for i in range(11)]
        assert asyncio.run(batcher.submit([])) == []
    finally:
        batcher.close()
    assert [len(b) for b in seen] == [4, 4, 3]


def test_batcher_reports_errors_and_keeps_serving():
    batcher, _ = _batcher(max_items=4, fail_on=-1)
    try:
        with pytest.raises(ValueError, match="bad item"):
            asyncio.run(batcher.submit([1, -1]))
        assert asyncio.run(batcher.submit([2])) == [20]
    finally:
        batcher.close()


def test_batcher_skips_cancelled_requests():
    from stancewatch.service.batching import MicroBatcher

    gate = threading.Event()
    calls = []

    def fn(items):
        calls.append(list(items))
        gate.wait(5)
        return items

    batcher = MicroBatcher(fn, max_items=2)

    async def run():
        first = asyncio.ensure_future(batcher.submit(["first"]))
        await asyncio.sleep(0.05)  # "first" is now running
        doomed = asyncio.ensure_future(batcher.submit(["doomed"]))
        await asyncio.sleep(0.01)
        doomed.cancel()
        gate.set()
        return await first, await batcher.submit(["after"])

    try:
        assert asyncio.run(run()) == (["first"], ["after"])
    finally:
        batcher.close()
    assert ["doomed"] not in calls


def test_batcher_shares_batches_between_a_long_and_a_short_request():
    from stancewatch.service.batching import MicroBatcher

    gate, calls = threading.Event(), []

    def fn(items):
        calls.append(list(items))
        gate.wait(5)
        return items

    batcher = MicroBatcher(fn, max_items=4)

    async def run():
        first = asyncio.ensure_future(batcher.submit(["first"]))
        await asyncio.sleep(0.05)  # "first" is running; the next two queue up behind it
        long = asyncio.ensure_future(batcher.submit([f"long{i}" for i in range(20)]))
        await asyncio.sleep(0.01)
        short = asyncio.ensure_future(batcher.submit(["short"]))
        await asyncio.sleep(0.01)
        gate.set()
        return await first, await long, await short

    try:
        first, long, short = asyncio.run(run())
    finally:
        batcher.close()
    assert long == [f"long{i}" for i in range(20)] and short == ["short"]
    assert "short" in calls[1]  # not behind all five batches of the long request
    assert all(len(c) <= 4 for c in calls)


def test_batcher_rejects_a_bad_budget():
    from stancewatch.service.batching import MicroBatcher

    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, max_items=0)


# ---- the guard middleware --------------------------------------------------------------------


def _guarded_app(**options):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from stancewatch.service.middleware import GuardMiddleware

    async def echo(request):
        return JSONResponse({"bytes": len(await request.body())})

    async def live(request):
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/predict", echo, methods=["POST"]), Route("/livez", live)])
    return TestClient(GuardMiddleware(app, **options))


def test_middleware_body_limit_with_and_without_content_length():
    client = _guarded_app(max_body_bytes=100)
    assert client.post("/predict", content=b"x" * 100).json() == {"bytes": 100}
    r = client.post("/predict", content=b"x" * 101)
    assert r.status_code == 413 and r.json()["detail"][0]["loc"] == ["body"]

    def chunks(n):
        for _ in range(n):
            yield b"x" * 30

    assert client.post("/predict", content=chunks(3)).json() == {"bytes": 90}  # chunked, no Content-Length
    r = client.post("/predict", content=chunks(4))
    assert r.status_code == 413 and "100 bytes" in r.json()["detail"][0]["msg"]
    r = client.post("/predict", content=b"x", headers={"content-length": "abc"})
    assert r.status_code == 400


def test_middleware_api_key():
    client = _guarded_app(api_key="s3cret")
    r = client.post("/predict", content=b"{}")
    assert r.status_code == 401 and r.json()["detail"][0]["type"] == "missing_api_key"
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.post("/predict", content=b"{}", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["detail"][0]["type"] == "invalid_api_key"
    assert client.post("/predict", content=b"{}", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/livez").status_code == 200  # health stays open


# Bodies for both prediction routes: valid ones and every kind of error the validation names.
DIRECT_CASES = [
    ("/predict", b'{"sentences": ["Tokyo will not revise its position."]}'),
    ("/predict", b'{"sentences": ["Beijing protested.", "Tokyo said the remarks stand."], "contexts": [null, "x"]}'),
    ("/predict", b"{}"),
    ("/predict", b""),
    ("/predict", b'{"sentences": []}'),
    ("/predict", b'{"sentences": ["ok", " \\t"]}'),
    ("/predict", b'{"sentences": ["a", "b"], "contexts": [null]}'),
    ("/predict", b'{"sentences": ["a"], "other": 1}'),
    ("/predict", b'{"sentences": ["a"'),
    ("/predict", b'{"sentences": ["caf\xe9"]}'),
    ("/predict", b"[1, 2]"),
    ("/predict", b'"just a string"'),
    ("/predict", b'{"sentences": ["a"], "sentences": ["b", "c"]}'),
    ("/predict_document", b'{"id": "d1", "text": "Beijing demanded a retraction. Tokyo said the remarks stand."}'),
    ("/predict_document", b'{"text": "One. Two. Three. Four. Five."}'),  # over the limit of 3 set below: 413
    ("/predict_document", b'{"text": "   "}'),
    ("/predict_document", b'{"text": "...!?"}'),
    ("/predict_document", b'{"text": "a", "id": 5}'),
]
# Media types that are JSON to both paths (BentoML's serde treats unknown and missing types as JSON).
JSON_HEADERS = [
    {"content-type": "application/json"},
    {"content-type": "Application/JSON; charset=utf-8"},
    {},
]
REQUEST_ID = 0x5EED1234ABCD


def _same_answer(ours, theirs) -> tuple:
    """Status, bytes and every header but the date, for comparing two answers."""
    return ours.status_code, ours.content, {k: v for k, v in ours.headers.items() if k != "date"}


@pytest.fixture(scope="module")
def served_app(svc_module):
    """The ASGI app `bentoml serve` builds for the service, built once (it registers Prometheus
    metrics in the process's registry); each `with TestClient(app)` starts a fresh service instance."""
    return svc_module.StanceService.to_asgi(is_main=True)


def test_direct_routes_answer_exactly_as_bentoml_would(svc_module, served_app, monkeypatch):
    """service/direct.py answers JSON POSTs itself; BentoML's endpoint answers the same body sent as
    text/plain (its serde falls back to JSON). Status, bytes and headers must be equal (the request
    id that tracing sets included), and a counter shows which path each request took."""
    from bentoml._internal.context import trace_context
    from starlette.testclient import TestClient

    from stancewatch.service import direct

    served = []
    real_call = direct._call

    async def counted(spec, func, *args):
        served.append(func.__name__)
        return await real_call(spec, func, *args)

    monkeypatch.setattr(direct, "_call", counted)
    monkeypatch.setenv("STANCEWATCH_MAX_DOC_SENTENCES", "3")  # read when the service starts, below
    app = served_app

    async def traced(scope, receive, send):  # what BentoML's tracing hook does when tracing is on
        if scope["type"] == "http" and scope["path"].endswith("traced"):
            scope = {**scope, "path": scope["path"].removesuffix("-traced")}
            trace_context.request_id = REQUEST_ID
        await app(scope, receive, send)

    def both(client, path, body, headers, content=None):
        ours = client.post(path, content=content or body, headers=headers)
        theirs = client.post(path, content=body, headers={"content-type": "text/plain"})
        return ours, theirs

    with TestClient(traced) as client:
        statuses, expected = set(), 0
        for path, body in DIRECT_CASES:
            for headers in JSON_HEADERS:
                ours, theirs = both(client, path, body, headers)
                expected += 1
                statuses.add(ours.status_code)
                assert _same_answer(ours, theirs) == _same_answer(theirs, ours), (path, body, headers)
        assert statuses == {200, 400, 413}
        assert len(served) == expected  # every JSON request, and no text/plain one

        # A chunked body (no Content-Length), which the guard reads and replays.
        body = DIRECT_CASES[0][1]
        ours, theirs = both(client, "/predict", body, {"content-type": "application/json"}, content=iter([body]))
        assert ours.status_code == 200 and _same_answer(ours, theirs) == _same_answer(theirs, ours)
        # With tracing on, BentoML adds X-BentoML-Request-ID; so must the direct path, on 200 and 400.
        for body in (DIRECT_CASES[0][1], b"{}"):
            ours = client.post("/predict-traced", content=body, headers={"content-type": "application/json"})
            theirs = client.post("/predict-traced", content=body, headers={"content-type": "text/plain"})
            assert ours.headers.get("x-bentoml-request-id") == format(REQUEST_ID, "016x")
            assert _same_answer(ours, theirs) == _same_answer(theirs, ours)
        # BentoML refuses pickled bodies on the main server; that stays its answer.
        r = client.post("/predict", content=b"x", headers={"content-type": "application/vnd.bentoml+pickle"})
        assert r.status_code == 415
        assert len(served) == expected + 3

        # An unexpected failure inside the handler: the same 500 body, no details leaked.
        def broken(*args, **kwargs):
            raise RuntimeError("secret detail")

        instance = svc_module.bentoml.get_current_service()
        monkeypatch.setattr(instance.model, "predict", broken)
        ours, theirs = both(client, "/predict", DIRECT_CASES[0][1], {"content-type": "application/json"})
        assert ours.status_code == 500 and "secret" not in ours.text
        assert _same_answer(ours, theirs) == _same_answer(theirs, ours)
        # Other methods and paths are BentoML's: a GET on a POST route is still its 405.
        assert client.get("/predict").status_code == 405
    assert len(served) == expected + 4


def test_a_client_that_leaves_mid_body_is_answered_499_at_once(served_app):
    """A declared body that never arrives (direct path), and a chunked one (the guard reads it): the
    request ends now with 499, not at BentoML's traffic timeout (its middleware waits for a send)."""
    from starlette.testclient import TestClient

    app = served_app
    with TestClient(app):  # runs the lifespan: the service instance exists

        async def leave_mid_body(headers):
            sent, calls = [], 0

            async def receive():
                nonlocal calls
                calls += 1
                if calls == 1:
                    return {"type": "http.request", "body": b'{"sentences": ["a', "more_body": True}
                return {"type": "http.disconnect"}

            async def send(message):
                sent.append(message)

            scope = {
                "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
                "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000),
                "server": ("127.0.0.1", 3000), "state": {},
            }  # fmt: skip
            await asyncio.wait_for(app(scope, receive, send), timeout=10)
            return sent[0]["status"]

        declared = [(b"content-type", b"application/json"), (b"content-length", b"100")]
        chunked = [(b"content-type", b"application/json")]
        for headers in (declared, chunked):
            assert asyncio.run(leave_mid_body(headers)) == 499, headers


def test_direct_routes_leave_everything_to_bentoml_when_its_cors_is_on(svc_module, svc):
    """With BentoML's CORS configured, its middleware must add the headers: nothing is answered here."""
    from _bentoml_sdk.service import set_current_service
    from bentoml._internal.configuration.containers import BentoMLContainer
    from starlette.testclient import TestClient

    from stancewatch.service.direct import DirectRoutes

    reached = []

    async def bentoml_app(scope, receive, send):
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    from stancewatch.service.direct import _running_instance

    before = _running_instance()
    set_current_service(svc)
    try:
        for cors, status, expected in ((False, 400, []), (True, 204, ["/predict"])):
            reached.clear()
            configured = BentoMLContainer.http.cors.enabled.get()
            BentoMLContainer.http.cors.enabled.set(cors)
            try:
                app = DirectRoutes(bentoml_app, service=svc_module.StanceService, paths=("/predict",))
                r = TestClient(app).post("/predict", content=b"{}", headers={"content-type": "application/json"})
            finally:
                BentoMLContainer.http.cors.enabled.set(configured)
            assert (r.status_code, reached) == (status, expected), cors
        # Before the service has started (or after it stopped), BentoML answers too.
        set_current_service(None)
        reached.clear()
        app = DirectRoutes(bentoml_app, service=svc_module.StanceService, paths=("/predict",))
        r = TestClient(app).post("/predict", content=b"{}", headers={"content-type": "application/json"})
        assert app.enabled is True  # CORS off: the instance check is what sent it on
        assert (r.status_code, reached) == (204, ["/predict"])
    finally:
        set_current_service(before)


# ---- following production --------------------------------------------------------------------


def test_production_change_is_served_without_dropping_requests(svc, tiny_base, tiny_csv, tiny_model):
    from stancewatch.model import store
    from stancewatch.service.reload import ProductionWatcher
    from stancewatch.training.config import TrainConfig
    from stancewatch.training.data import load_labelled
    from stancewatch.training.train import train

    cfg = TrainConfig(base_model=str(tiny_base), epochs=1, max_steps=1, batch_size=4, max_length=64, optimise=False)
    new = train(load_labelled([tiny_csv]), cfg, progress=False, promote="never")
    watcher = ProductionWatcher(svc, interval=3600)
    old_model, old_prod = svc.model, store.production_tag()
    try:
        expected = old_prod is not None and old_prod != svc.tag  # computed first: check_once swaps svc.tag
        assert watcher.check_once() is expected  # nothing new yet

        async def scenario():
            in_flight = asyncio.create_task(svc.predict(sentences=[f"Sentence {i} about Tokyo." for i in range(300)]))
            await asyncio.sleep(0)
            store.promote(new.tag)
            swapped = await asyncio.to_thread(watcher.check_once)
            return swapped, await in_flight

        swapped, result = asyncio.run(scenario())
        assert swapped and svc.tag == new.tag
        assert len(result.model_dump()["sentences"]) == 300  # the request that was running when production changed
        assert asyncio.run(svc.predict(sentences=["One more."])).model_dump()["model"] == new.tag
        assert svc.model_info()["tag"] == new.tag
    finally:
        watcher.stop()
        store.promote(old_prod)
        svc.swap_model(old_model)


def test_batcher_waits_briefly_to_fill_batches_only_under_load():
    from stancewatch.service.batching import MicroBatcher

    seen = []

    def fn(items):
        seen.append(list(items))
        return items

    batcher = MicroBatcher(fn, max_items=8, gather_ms=200)

    async def staggered():
        async def late(i):
            await asyncio.sleep(0.02 * i)
            return await batcher.submit([i])

        return await asyncio.gather(*(late(i) for i in range(4)))

    try:
        t0 = time.perf_counter()
        assert asyncio.run(batcher.submit(["alone"])) == ["alone"]
        assert time.perf_counter() - t0 < 0.15  # idle: a lone request never waits for company
        assert asyncio.run(batcher.submit([1, 2])) == [1, 2]
        batcher._busy = True  # as after a batch that merged several requests
        assert asyncio.run(staggered()) == [[0], [1], [2], [3]]
    finally:
        batcher.close()
    assert seen[-1] == [0, 1, 2, 3]  # requests 20-60 ms apart joined one batch


# ---- one version per request, work bounds, cancellation (issue 13) ----------------------------


@pytest.fixture(scope="module")
def other_version(tiny_model, tmp_path_factory):
    """A second tiny version with other targets (and other labels and temperatures, so its outputs
    differ): the tiny model's artefact with its schema renamed. Deleted from the store afterwards, so
    no later test resolves `latest` to it."""
    import dataclasses
    import shutil
    from pathlib import Path

    import bentoml

    from stancewatch.model import store
    from stancewatch.model.schema import Schema

    folder = tmp_path_factory.mktemp("other-targets") / "artefact"
    shutil.copytree(store.get(tiny_model.tag).path, folder)
    schema = Schema.load(folder / "schema.json")
    targets = tuple(
        dataclasses.replace(t, name=f"other_{i}", labels=tuple(f"{lab}_x" for lab in t.labels), label_descriptions={})
        for i, t in enumerate(schema.targets)
    )
    dataclasses.replace(schema, targets=targets, name="other").save(folder / "schema.json")
    cfg = json.loads((folder / "stancewatch.json").read_text(encoding="utf-8"))
    cfg["temperatures"] = {t.name: 0.25 for t in targets}
    (folder / "stancewatch.json").write_text(json.dumps(cfg), encoding="utf-8")
    metadata = {k: v for k, v in tiny_model.metadata.items() if k not in ("created_at",)}
    tag = store.save_version(Path(folder), metadata)
    yield tag
    bentoml.models.delete(tag)


def _load_version(tag):
    from pathlib import Path

    from stancewatch.model import store
    from stancewatch.model.predictor import StanceModel

    return StanceModel(Path(store.get(tag).path), threads=1, tag=tag)


def _swap_after_first_batch(svc, old, new):
    """Make `old` swap the service to `new` right after the first batch it scores (so mid-request)."""
    original, calls = old.predict, []

    def predict_then_swap(sentences, contexts=None, encoded=None):
        out = original(sentences, contexts, encoded)
        calls.append(len(sentences))
        if len(calls) == 1:
            svc.swap_model(new)
        return out

    old.predict = predict_then_swap
    return calls


def test_a_reload_mid_request_never_mixes_versions(svc, other_version):
    from stancewatch.model.splitter import split_sentences, with_context

    old, new = svc.model, _load_version(other_version)
    assert set(new.schema.target_names).isdisjoint(old.schema.target_names)
    sentences = [f"Sentence {i} about Tokyo and Taiwan." for i in range(300)]
    text = " ".join(sentences)
    parts = split_sentences(text)
    assert len(parts) == 300
    old_preds = [p.to_dict() for p in old.predict(sentences)]
    old_doc = [p.to_dict() for p in old.predict([p.text for p in parts], with_context(parts))]
    try:
        for run in ("predict", "predict_document"):
            svc.swap_model(old)
            calls = _swap_after_first_batch(svc, old, new)
            if run == "predict":
                out = asyncio.run(svc.predict(sentences=sentences)).model_dump()
                got, want = out["sentences"], old_preds
            else:
                out = asyncio.run(svc.predict_document(text=text)).model_dump()
                got = [
                    {k: s[k] for k in ("text", "truncated", "language", "supported", "stances")}
                    for s in out["sentences"]
                ]
                want = old_doc
                assert list(out["summary"]) == old.schema.target_names
            del old.predict
            assert svc.model is new  # the swap came while the request was being scored
            assert out["model"] == old.tag, run
            assert all(list(s["stances"]) == old.schema.target_names for s in out["sentences"]), run
            assert got == want, run  # the old version's own predictions, every batch of them
            assert len(calls) >= 2  # and they were several batches, all run on the old version
        # A request after the swap is the new version's throughout: tag, targets and outputs.
        after = asyncio.run(svc.predict(sentences=sentences[:5])).model_dump()
        assert after["model"] == new.tag
        assert after["sentences"] == [p.to_dict() for p in new.predict(sentences[:5])]
        assert svc.model_info()["tag"] == new.tag
        assert [t["name"] for t in svc.model_info()["schema"]["targets"]] == new.schema.target_names
    finally:
        if "predict" in vars(old):
            del old.predict
        svc.swap_model(old)


@pytest.fixture
def limits(svc):
    """Set the service's limits for one test (restored afterwards)."""
    import dataclasses

    saved = svc.settings

    def set_limits(**values):
        svc.settings = dataclasses.replace(saved, **values)

    yield set_limits
    svc.settings = saved


def _counting(svc):
    before = svc.batcher.batches
    return lambda: svc.batcher.batches - before


def test_a_document_over_the_sentence_limit_is_413_before_any_inference(svc, limits):
    limits(max_doc_sentences=20)
    ran = _counting(svc)
    out = asyncio.run(svc.predict_document(text="Tokyo stands firm. " * 21))
    body = out.model_dump()
    assert ran() == 0 and getattr(out, "status_code", 200) == 413
    detail = body["detail"][0]
    assert detail["loc"] == ["text"] and detail["type"] == "too_many_sentences"
    assert (detail["got"], detail["limit"], detail["setting"]) == (21, 20, "STANCEWATCH_MAX_DOC_SENTENCES")
    assert "20" in detail["msg"] and "STANCEWATCH_MAX_DOC_SENTENCES" in detail["msg"]
    assert asyncio.run(svc.predict_document(text="Tokyo stands firm. " * 20)).status_code == 200


def test_a_request_over_the_token_limit_is_413_before_any_inference(svc, limits):
    long = " ".join(["Taiwan"] * 200)  # truncated to the model's max_length
    limit = 3 * svc.model.max_length - 1
    limits(max_tokens=limit)
    ran = _counting(svc)
    out = asyncio.run(svc.predict(sentences=[long] * 3))
    assert ran() == 0 and getattr(out, "status_code", 200) == 413
    detail = out.model_dump()["detail"][0]
    assert detail["type"] == "too_many_tokens" and detail["setting"] == "STANCEWATCH_MAX_TOKENS"
    assert detail["got"] == 3 * svc.model.max_length and detail["limit"] == limit
    assert "STANCEWATCH_MAX_TOKENS" in detail["msg"] and f"{limit:,}" in detail["msg"]
    doc = asyncio.run(svc.predict_document(text=". ".join([long] * 3) + "."))
    assert doc.status_code == 413 and doc.model_dump()["detail"][0]["loc"] == ["text"]
    assert asyncio.run(svc.predict(sentences=[long] * 2)).status_code == 200  # under the limit


def test_a_large_request_is_tokenised_once_and_answered_as_usual(svc, limits, monkeypatch):
    # Over n * max_length the token check encodes the inputs; the model must reuse those encodings.
    sentences = ["Tokyo stands firm.", "Beijing objects.", "Markets rose."]
    expected = asyncio.run(svc.predict(sentences=sentences)).model_dump()["sentences"]
    limits(max_tokens=2 * svc.model.max_length)  # 3 sentences * max_length is over: the check encodes
    calls = []
    real = svc.model.encoder.encode
    monkeypatch.setattr(svc.model.encoder, "encode", lambda *a, **k: calls.append(len(a[0])) or real(*a, **k))
    out = asyncio.run(svc.predict(sentences=sentences))
    assert getattr(out, "status_code", 200) == 200 and calls == [3]
    assert out.model_dump()["sentences"] == expected


def _gated_batcher(max_items=2, **kw):
    from stancewatch.service.batching import MicroBatcher

    gate, running, calls = threading.Event(), threading.Event(), []

    def fn(items, *key):
        calls.append((list(items), *key))
        running.set()
        gate.wait(10)
        return list(items)

    return MicroBatcher(fn, max_items=max_items, **kw), gate, running, calls


def test_batcher_drops_the_rest_of_a_cancelled_job_within_one_batch():
    batcher, gate, running, calls = _gated_batcher(max_items=2)

    async def run():
        job = asyncio.ensure_future(batcher.submit(list(range(10))))
        await asyncio.to_thread(running.wait, 10)  # its first batch is running
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        gate.set()
        return await batcher.submit(["after"])

    try:
        assert asyncio.run(run()) == ["after"]
    finally:
        gate.set()
        batcher.close()
    assert [c[0] for c in calls] == [[0, 1], ["after"]]  # nothing after the batch that was running
    assert batcher.dropped_items == 8


def test_batcher_never_puts_two_keys_in_one_batch():
    from stancewatch.service.batching import MicroBatcher

    calls = []

    def fn(items, key):
        calls.append((key, list(items)))
        time.sleep(0.005)
        return [(key, item) for item in items]

    batcher = MicroBatcher(fn, max_items=8, keyed=True)

    async def run():
        jobs = [batcher.submit([(k, i, j) for j in range(5)], key=k) for i in range(6) for k in ("old", "new")]
        return await asyncio.gather(*jobs)

    try:
        results = asyncio.run(run())
    finally:
        batcher.close()
    for key, items in calls:
        assert {item[0] for item in items} == {key}
    for res in results:
        assert all(key == item[0] for key, item in res)
    assert {key for key, _ in calls} == {"old", "new"}


def test_a_client_disconnect_cancels_the_request_and_its_remaining_batches():
    """Through the real middleware: the client goes away while the first of five batches runs."""
    from stancewatch.service.middleware import GuardMiddleware

    batcher, gate, running, calls = _gated_batcher(max_items=2)
    finished = []

    async def app(scope, receive, send):
        assert (await receive())["type"] == "http.request"
        results = await batcher.submit(list(range(10)))
        finished.append(results)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def scenario():
        disconnect, sent = asyncio.Event(), []
        messages = [{"type": "http.request", "body": b"{}", "more_body": False}]

        async def receive():  # like uvicorn's: after the body, returns only when the client goes away
            if messages:
                return messages.pop(0)
            await disconnect.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/predict", "headers": [(b"content-length", b"2")]}
        request = asyncio.ensure_future(GuardMiddleware(app, max_body_bytes=100)(scope, receive, send))
        await asyncio.to_thread(running.wait, 10)
        disconnect.set()
        await asyncio.wait_for(request, 10)  # returns without waiting for the batch in flight
        gate.set()
        return sent

    try:
        sent = asyncio.run(scenario())
    finally:
        gate.set()
        batcher.close()
    assert not finished  # the handler was cancelled, not run to the end
    assert [c[0] for c in calls] == [[0, 1]] and batcher.dropped_items == 8
    assert sent[0]["status"] == 499


def test_a_request_that_finishes_is_not_cancelled_by_the_watcher():
    from starlette.testclient import TestClient

    from stancewatch.service.middleware import GuardMiddleware

    async def app(scope, receive, send):
        body = (await receive())["body"]
        await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})

    client = TestClient(GuardMiddleware(app, max_body_bytes=100))
    for _ in range(3):
        r = client.post("/predict", content=b"hello")
        assert r.status_code == 200 and r.content == b"hello"
    r = client.post("/predict", content=iter([b"he", b"llo"]))  # chunked: the replayed body
    assert r.status_code == 200 and r.content == b"hello"


# ---- production pointer: back-off, lock, rollback ---------------------------------------------


class _FakeService:
    """What ProductionWatcher needs of the service."""

    def __init__(self, tag):
        from types import SimpleNamespace

        self.tag, self.backend_choice, self.model = tag, "auto", SimpleNamespace(threads=1)
        self.swapped = []

    def swap_model(self, model):
        self.swapped.append(model.tag)
        self.tag = model.tag


@pytest.fixture
def dummy_versions(tmp_path):
    """Make store versions whose artefact is not a loadable model; deleted afterwards."""
    import bentoml

    from stancewatch.model import store

    made = []

    def make(n=1, broken=True):
        for i in range(n):
            folder = tmp_path / f"v{len(made)}"
            folder.mkdir()
            (folder / "stancewatch.json").write_text("{not json" if broken else "{}", encoding="utf-8")
            made.append(store.save_version(folder, {"base_model": "none", "note": f"dummy {i}"}))
        return made[-n:]

    yield make
    for tag in made:
        try:
            bentoml.models.delete(tag)
        except bentoml.exceptions.NotFound:  # a test deleted it itself
            pass


def test_watcher_backs_off_from_a_version_that_fails_to_load(tiny_model, restore_production, dummy_versions):
    from stancewatch.model import store
    from stancewatch.service.reload import BACKOFF_CAP_S, ProductionWatcher

    now = [1000.0]
    service = _FakeService(tiny_model.tag)
    watcher = ProductionWatcher(service, interval=10, clock=lambda: now[0], start=False)
    loads = []
    real_load = watcher._load
    watcher._load = lambda tag: (loads.append(tag), real_load(tag))[1]

    (broken,) = dummy_versions(1)
    store.promote(broken)
    assert watcher.check_once() is False and loads == [broken]  # tried at once, failed
    for _ in range(5):
        assert watcher.check_once() is False
    assert loads == [broken]  # not reloaded at every check
    now[0] += 19
    watcher.check_once()
    assert len(loads) == 1
    now[0] += 2  # 21 s after the failure: the first back-off (20 s) is over
    watcher.check_once()
    assert len(loads) == 2
    now[0] += 39
    watcher.check_once()
    assert len(loads) == 2  # the back-off doubled to 40 s
    now[0] += 2
    watcher.check_once()
    assert len(loads) == 3
    for _ in range(10):  # many failures later the wait is capped
        now[0] += 10 * BACKOFF_CAP_S
        watcher.check_once()
    assert watcher.failed[2] - now[0] == BACKOFF_CAP_S
    # A different, good version promoted now is loaded at the next check, whatever the back-off.
    n = len(loads)
    store.promote(tiny_model.tag)
    service.tag = "stancewatch:something-else"
    assert watcher.check_once() is True and loads[n:] == [tiny_model.tag]
    assert service.swapped == [tiny_model.tag] and watcher.failed is None


def test_concurrent_promotions_lose_no_history_entry(restore_production, dummy_versions, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from stancewatch.model import store

    start, *tags = dummy_versions(7)
    store._write_pointer({"tag": start, "history": []})
    real_read = store._read_pointer

    def slow_read():  # widen the read-change-write window, as a slow disk would
        data = real_read()
        time.sleep(0.05)
        return data

    monkeypatch.setattr(store, "_read_pointer", slow_read)
    barrier = threading.Barrier(len(tags))

    def promote(tag):
        barrier.wait()
        return store.promote(tag)

    with ThreadPoolExecutor(len(tags)) as pool:
        list(pool.map(promote, tags))
    data = real_read()
    # Every promotion changed production, so every earlier production tag is in the history, once.
    assert sorted([*data["history"], data["tag"]]) == sorted([start, *tags])
    assert len(data["history"]) == len(tags)


def test_concurrent_promotions_from_two_processes(restore_production, dummy_versions):
    import subprocess
    import sys

    from stancewatch.model import store

    start, *tags = dummy_versions(9)
    store._write_pointer({"tag": start, "history": []})
    code = (
        "import sys, time; from stancewatch.model import store; "
        "real = store._read_pointer\n"
        "def slow():\n    d = real(); time.sleep(0.05); return d\n"
        "store._read_pointer = slow\n"
        "for tag in sys.argv[1:]: store.promote(tag)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, *tags[i::2]], env=dict(os.environ)) for i in range(2)]
    assert [p.wait(120) for p in procs] == [0, 0]
    data = store._read_pointer()
    assert sorted([*data["history"], data["tag"]]) == sorted([start, *tags])


def test_rollback_to_a_deleted_version_fails_clearly_and_changes_nothing(restore_production, dummy_versions):
    import bentoml
    from typer.testing import CliRunner

    from stancewatch.cli import app
    from stancewatch.model import store

    first, second = dummy_versions(2)
    store.promote(first)
    store.promote(second)
    bentoml.models.delete(first)
    before = store._read_pointer()
    with pytest.raises(store.ModelNotFound) as err:
        store.rollback()
    assert first in str(err.value) and "no longer in the store" in str(err.value)
    assert "stancewatch models promote" in str(err.value)
    assert store._read_pointer() == before  # production and history untouched
    result = CliRunner().invoke(app, ["models", "rollback"])
    assert result.exit_code == 1 and "no longer in the store" in result.output
