"""A real `bentoml serve` on 127.0.0.1 with the tiny model, exercised over HTTP; `bentoml build` + serving the Bento."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
API_KEY = "test-key-123"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_SENTENCES = 40  # set small on the test server to exercise the configurable limit
MAX_BODY = 200_000
MAX_DOC_SENTENCES = 60
MAX_TOKENS = 2_000  # the tiny model truncates at 64 tokens: 40 long sentences are 2,560


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(
    args: list[str], env: dict[str, str], timeout: float = 120, cwd: Path = REPO
) -> tuple[subprocess.Popen, str]:
    """Start `ARGS --host 127.0.0.1 --port P` on a free port and wait until /readyz answers 200."""
    port = _free_port()
    cmd = [*args, "--host", "127.0.0.1", "--port", str(port)]
    log = open(Path(env["BENTOML_HOME"]) / f"serve-{port}.log", "wb")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}): {Path(log.name).read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        time.sleep(0.3)
    _stop(proc)
    raise RuntimeError(f"server not ready in {timeout} s: {Path(log.name).read_text()[-3000:]}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server we started: its own process group, found by its PID."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _env(tiny_model, **extra) -> dict[str, str]:
    env = dict(os.environ)  # carries BENTOML_HOME of the session store
    env.update(
        {
            "STANCEWATCH_MODEL": tiny_model.tag,
            "BENTOML_DO_NOT_TRACK": "True",
            "HF_HUB_OFFLINE": "1",
            "STANCEWATCH_THREADS": "1",
            **extra,
        }
    )
    return env


@pytest.fixture(scope="module")
def server(tiny_model):
    env = _env(
        tiny_model,
        STANCEWATCH_API_KEY=API_KEY,
        STANCEWATCH_MAX_SENTENCES=str(MAX_SENTENCES),
        STANCEWATCH_MAX_BODY_BYTES=str(MAX_BODY),
        STANCEWATCH_BATCH_ITEMS="8",
        STANCEWATCH_MAX_DOC_SENTENCES=str(MAX_DOC_SENTENCES),
        STANCEWATCH_MAX_TOKENS=str(MAX_TOKENS),
    )
    proc, url = _start([sys.executable, "-m", "stancewatch.cli", "serve"], env)  # `stancewatch serve`
    yield url
    _stop(proc)


def _post(url: str, path: str, body, headers=None, **kwargs) -> requests.Response:
    headers = {"Content-Type": "application/json", **AUTH, **(headers or {})}
    data = json.dumps(body) if isinstance(body, (dict, list)) else body  # bytes, str or an iterator (chunked)
    return requests.post(f"{url}{path}", data=data, headers=headers, timeout=30, **kwargs)


def _assert_error(r: requests.Response, status: int, loc: list | None = None, kind: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"] and body["detail"]
    if loc is not None:
        assert body["detail"][0]["loc"] == loc, body
    if kind is not None:
        assert body["detail"][0]["type"] == kind, body


# ---- happy paths --------------------------------------------------------------------------


def test_sync_client_predict_and_document(server, tiny_model):
    import bentoml

    from stancewatch.service.service import EXAMPLE_DOCUMENT, EXAMPLE_INPUT

    with bentoml.SyncHTTPClient(server, token=API_KEY) as client:
        out = client.predict(**EXAMPLE_INPUT)
        doc = client.predict_document(**EXAMPLE_DOCUMENT)
    out = out if isinstance(out, dict) else out.model_dump()
    doc = doc if isinstance(doc, dict) else doc.model_dump()
    assert out["model"] == tiny_model.tag
    assert [s["text"] for s in out["sentences"]] == EXAMPLE_INPUT["sentences"]
    assert set(out["sentences"][0]["stances"]) == {"taiwan_policy", "external_pressure"}
    assert doc["id"] == EXAMPLE_DOCUMENT["id"]
    for s in doc["sentences"]:
        assert EXAMPLE_DOCUMENT["text"][s["start"] : s["end"]] == s["text"]
    assert sum(doc["summary"]["taiwan_policy"]["counts"].values()) == len(doc["sentences"])


def test_contexts_and_a_request_larger_than_one_batch(server):
    sentences = [f"Sentence {i} on the Taiwan Strait." for i in range(MAX_SENTENCES)]  # 5 batches of 8
    r = _post(server, "/predict", {"sentences": sentences, "contexts": [None] + sentences[:-1]})
    assert r.status_code == 200, r.text
    assert [s["text"] for s in r.json()["sentences"]] == sentences


def test_concurrent_clients_get_their_own_answers(server):
    sentences = [f"Client {i} says Tokyo must not back down." for i in range(24)]
    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda s: _post(server, "/predict", {"sentences": [s]}), sentences))
    assert all(r.status_code == 200 for r in responses)
    assert [r.json()["sentences"][0]["text"] for r in responses] == sentences


def test_model_endpoint(server, tiny_model):
    r = requests.get(f"{server}/model", headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    info = r.json()
    assert info["tag"] == tiny_model.tag
    assert [t["name"] for t in info["schema"]["targets"]] == ["taiwan_policy", "external_pressure"]
    assert info["data_fingerprint"] == tiny_model.metadata["data_fingerprint"]
    assert {"base_model", "metrics", "created_at"} <= set(info)


def test_health_metrics_and_docs_stay_open(server):
    for path in ("/livez", "/readyz", "/metrics", "/docs.json"):
        assert requests.get(f"{server}{path}", timeout=10).status_code == 200, path
    spec = requests.get(f"{server}/docs.json", timeout=10).json()
    assert {"/predict", "/predict_document", "/model", "/livez", "/readyz", "/metrics"} <= set(spec["paths"])
    predict = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert predict["example"]["sentences"]
    assert "bentoml_service_request_total" in requests.get(f"{server}/metrics", timeout=10).text


# ---- every bad request is a 4xx with a JSON body naming the field ----------------------------


@pytest.mark.parametrize(
    "path, body, loc, kind",
    [
        ("/predict", b'{"sentences": [', ["body"], "json_invalid"),
        ("/predict", b"", ["sentences"], "missing"),
        ("/predict", {"sentences": "a sentence"}, ["sentences"], "list_type"),
        ("/predict", {"sentences": [1, 2]}, ["sentences", 0], "string_type"),
        ("/predict", {"text": "wrong field"}, None, None),
        ("/predict", {"sentences": []}, ["sentences"], "too_short"),
        ("/predict", {"sentences": ["fine", ""]}, ["sentences", 1], "blank"),
        ("/predict", {"sentences": ["fine", " \n\t "]}, ["sentences", 1], "blank"),
        ("/predict", {"sentences": ["x"] * (MAX_SENTENCES + 1)}, ["sentences"], "too_long"),
        ("/predict", {"sentences": ["a", "b"], "contexts": ["only one"]}, ["contexts"], "length_mismatch"),
        ("/predict", b'{"sentences": ["caf\xe9"]}', ["body"], "invalid_utf8"),
        ("/predict", b"\xff\xfe\x00{", ["body"], "invalid_utf8"),
        ("/predict_document", {}, ["text"], "missing"),
        ("/predict_document", {"text": "   "}, ["text"], "blank"),
        ("/predict_document", {"text": ["not", "a", "string"]}, ["text"], "string_type"),
        ("/predict_document", {"text": "\u200b"}, ["text"], "no_sentences"),
    ],
)
def test_bad_requests(server, path, body, loc, kind):
    _assert_error(_post(server, path, body), 400, loc, kind)


def test_too_many_sentences_message_names_the_limit(server):
    r = _post(server, "/predict", {"sentences": ["x"] * (MAX_SENTENCES + 1)})
    assert str(MAX_SENTENCES) in r.json()["detail"][0]["msg"]


def test_oversized_document_is_413_with_and_without_content_length(server):
    body = json.dumps({"text": "Tokyo stands firm. " * (MAX_BODY // 19 + 10)}).encode()
    _assert_error(_post(server, "/predict_document", body), 413, ["body"], "body_too_large")

    def chunks():
        for i in range(0, len(body), 16_384):
            yield body[i : i + 16_384]

    _assert_error(_post(server, "/predict_document", chunks()), 413, ["body"], "body_too_large")
    ok = json.dumps({"text": "Tokyo stands firm. " * 50}).encode()
    assert _post(server, "/predict_document", iter([ok[:100], ok[100:]])).status_code == 200


def _assert_limit(r: requests.Response, loc: list, kind: str, limit: int, setting: str) -> None:
    _assert_error(r, 413, loc, kind)
    detail = r.json()["detail"][0]
    assert detail["setting"] == setting and detail["limit"] == limit and detail["got"] > limit
    assert setting in detail["msg"] and f"{limit:,}" in detail["msg"]  # the message names both


def test_a_document_over_the_sentence_limit_is_413_naming_the_limit(server):
    r = _post(server, "/predict_document", {"text": "Tokyo stands firm. " * (MAX_DOC_SENTENCES + 1)})
    _assert_limit(r, ["text"], "too_many_sentences", MAX_DOC_SENTENCES, "STANCEWATCH_MAX_DOC_SENTENCES")
    assert r.json()["detail"][0]["got"] == MAX_DOC_SENTENCES + 1
    assert _post(server, "/predict_document", {"text": "Tokyo stands firm. " * MAX_DOC_SENTENCES}).status_code == 200


def test_requests_over_the_token_limit_are_413_naming_the_limit(server):
    long = " ".join(["Taiwan"] * 100)  # 100 tokens, truncated to the tiny model's 64
    r = _post(server, "/predict", {"sentences": [long] * MAX_SENTENCES})
    _assert_limit(r, ["sentences"], "too_many_tokens", MAX_TOKENS, "STANCEWATCH_MAX_TOKENS")
    r = _post(server, "/predict_document", {"text": " ".join([long + "."] * MAX_SENTENCES)})
    _assert_limit(r, ["text"], "too_many_tokens", MAX_TOKENS, "STANCEWATCH_MAX_TOKENS")
    assert _post(server, "/predict", {"sentences": [long] * 20}).status_code == 200  # 1,280 tokens


def test_declared_oversize_is_refused_before_the_body_is_sent(server):
    """Only headers go out; the 413 must come back without the server waiting for the body."""
    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            f"POST /predict_document HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {API_KEY}\r\nContent-Length: {50 * MAX_BODY}\r\n\r\n".encode()
        )
        reply = s.recv(4096).decode("latin-1")
    assert reply.startswith("HTTP/1.1 413"), reply


def test_api_key_required_for_prediction(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": API_KEY}):
        r = requests.post(f"{server}/predict", json={"sentences": ["a"]}, headers=headers, timeout=10)
        _assert_error(r, 401, ["header", "Authorization"])
    r = requests.post(f"{server}/predict_document", json={"text": "a."}, timeout=10)
    _assert_error(r, 401)
    assert requests.get(f"{server}/model", timeout=10).status_code == 401


def test_server_stays_healthy_after_bad_input(server):
    for body in (b"\x00\xff", b"[" * 10_000, b'{"sentences": null}', b"{}" * 1000):
        assert 400 <= _post(server, "/predict", body).status_code < 500
    assert requests.get(f"{server}/readyz", timeout=10).status_code == 200
    assert _post(server, "/predict", {"sentences": ["Still alive."]}).status_code == 200


# ---- property test of the OpenAPI spec: no input gives a 5xx ---------------------------------


def test_openapi_fuzz_finds_no_server_error(server):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_url(f"{server}/docs.json")
    session = requests.Session()
    failures, statuses = [], {}
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

        @settings(
            max_examples=150, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
        )
        @given(case=schema.as_strategy(generation_mode=mode))
        def check(case):
            response = case.call(base_url=server, session=session, headers=AUTH, timeout=30)
            key = (case.path, response.status_code)
            statuses[key] = statuses.get(key, 0) + 1
            if response.status_code >= 500:
                failures.append((case.method, case.path, case.body, response.status_code, response.text[:300]))

        check()
    assert not failures, failures[:5]
    print(statuses)
    assert statuses.get(("/predict", 200)) and statuses.get(("/predict", 400))  # both valid and invalid input ran
    assert requests.get(f"{server}/readyz", timeout=10).status_code == 200


# ---- bentoml build, then serve the Bento -----------------------------------------------------


def test_bentoml_build_offline_and_serve_the_bento(tiny_model, tmp_path):
    env = _env(tiny_model, PIP_NO_INDEX="1", UV_OFFLINE="1")
    home = Path(env["BENTOML_HOME"]).resolve()
    assert REPO not in home.parents  # the store must live outside the build folder
    done = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-o", "tag", "."],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    tag = done.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    info = subprocess.run(
        [sys.executable, "-m", "bentoml", "get", tag, "-o", "json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert info.returncode == 0, info.stderr[-2000:]
    assert tiny_model.tag in info.stdout  # the serving model travels with the Bento
    proc, url = _start(
        [sys.executable, "-m", "bentoml", "serve", tag], {**env, "STANCEWATCH_API_KEY": ""}, cwd=tmp_path
    )
    try:
        r = requests.post(f"{url}/predict", json={"sentences": ["Built and served."]}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["model"] == tiny_model.tag
    finally:
        _stop(proc)


def _descendants(pid: int) -> set[int]:
    """PIDs of every process below `pid` (from /proc), whatever process group they moved to."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_sigterm_to_the_cli_stops_the_server_and_its_workers(tiny_model):
    proc, url = _start([sys.executable, "-m", "stancewatch.cli", "serve"], _env(tiny_model))
    workers = _descendants(proc.pid)
    assert workers, "bentoml serve should have started a worker"
    try:
        os.kill(proc.pid, signal.SIGTERM)  # only the CLI's own PID, as systemd or a container runtime would
        proc.wait(10)
        deadline = time.time() + 10
        while time.time() < deadline and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not [p for p in workers if _alive(p)], "worker processes outlived SIGTERM to the CLI"
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/readyz", timeout=2)
    finally:
        for p in workers | {proc.pid}:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


LONG_DOCUMENT = "Tokyo stands firm on Taiwan. " * 30_000  # 30,000 sentences, 870 KB (under the 1 MB body limit)


def _long_server(tiny_model, **extra):
    """A server where one document keeps the batcher busy for minutes: no sentence or token limit
    that matters, one sentence per batch."""
    env = _env(
        tiny_model,
        STANCEWATCH_MAX_DOC_SENTENCES="100000",
        STANCEWATCH_MAX_TOKENS="100000000",
        STANCEWATCH_BATCH_ITEMS="1",
        **extra,
    )
    return _start([sys.executable, "-m", "stancewatch.cli", "serve"], env)


def _send_and_leave(url: str, body: bytes) -> socket.socket:
    """Send a POST on a raw connection and return it without reading the answer."""
    port = int(url.rsplit(":", 1)[1])
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(
        b"POST /predict_document HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )
    return s


def _in_progress(url: str, endpoint: str = "/predict_document", unanswered: float | None = None) -> float:
    """BentoML's gauge of requests in progress on `endpoint` (from /metrics).

    In a polling loop pass `unanswered`: the value to assume when /metrics does not answer within 3 s,
    so the loop polls again instead of failing. A CI run once had /metrics not answer for 10 s while
    the worker scored a document (8 ms here, one probe every 10 ms through the same document), and
    the test failed on the probe instead of on what it checks. Without it, a slow answer raises.
    """
    try:
        text = requests.get(f"{url}/metrics", timeout=3 if unanswered is not None else 10).text
    except requests.Timeout:
        if unanswered is None:
            raise
        return unanswered
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bentoml_service_request_in_progress{") and f'endpoint="{endpoint}"' in line
    )


def test_sigterm_with_a_long_request_in_flight_stops_within_10_s(tiny_model):
    """The grace period ($STANCEWATCH_SHUTDOWN_GRACE_S) bounds shutdown even while a request runs."""
    proc, url = _long_server(tiny_model, STANCEWATCH_SHUTDOWN_GRACE_S="2")
    workers = _descendants(proc.pid)
    conn = _send_and_leave(url, json.dumps({"text": LONG_DOCUMENT}).encode())
    try:
        deadline = time.time() + 60  # wait until the document is being scored (its first batches ran)
        while time.time() < deadline and _in_progress(url, unanswered=0) < 1:
            time.sleep(0.2)
        assert _in_progress(url, unanswered=1) >= 1, "the document never started: the test would prove nothing"
        time.sleep(1.0)
        os.kill(proc.pid, signal.SIGTERM)
        t0 = time.time()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pytest.fail("`stancewatch serve` still running 10 s after SIGTERM with a request in flight")
        while time.time() - t0 < 10 and any(_alive(p) for p in workers):
            time.sleep(0.2)
        assert not [p for p in workers if _alive(p)], "worker processes outlived SIGTERM by 10 s"
        conn.settimeout(5)
        try:
            reply = conn.recv(4096).decode("latin-1")
        except OSError:
            reply = ""
        assert not reply.startswith("HTTP/1.1 200"), reply[:200]  # cut off, not finished (503 or closed)
    finally:
        conn.close()
        for p in workers | {proc.pid}:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        proc.wait(10)


def test_sigterm_lets_a_request_in_flight_finish_within_the_grace_period(tiny_model):
    """The other half of the bound: a request shorter than the grace period is answered, not cut off."""
    proc, url = _start(
        [sys.executable, "-m", "stancewatch.cli", "serve"],
        _env(tiny_model, STANCEWATCH_BATCH_ITEMS="1", STANCEWATCH_SHUTDOWN_GRACE_S="60"),
    )
    workers = _descendants(proc.pid)
    # The sentence limit, in 2,000 batches of 1: about 15 s of work here, so it is surely still running
    # when the signal comes (a busy machine can be slow to answer /metrics), and well within the grace.
    text = "Tokyo stands firm on Taiwan. " * 2000
    try:
        with ThreadPoolExecutor(1) as pool:
            answer = pool.submit(requests.post, f"{url}/predict_document", json={"text": text}, timeout=120)
            deadline = time.time() + 30
            # A /metrics that does not answer here means the worker is busy with the document: count it in.
            while time.time() < deadline and _in_progress(url, unanswered=1) < 1 and not answer.done():
                time.sleep(0.05)
            in_flight = not answer.done()
            os.kill(proc.pid, signal.SIGTERM)
            r = answer.result()
        assert in_flight, "the document was answered before SIGTERM: the test did not exercise the grace period"
        assert r.status_code == 200, r.text[:300]
        assert len(r.json()["sentences"]) == 2000
        proc.wait(70)
    finally:
        for p in workers | {proc.pid}:
            if _alive(p):
                os.kill(p, signal.SIGKILL)


def test_a_client_that_disconnects_stops_its_work(tiny_model):
    """Over real HTTP: after the client hangs up, the worker drops the document (the middleware cancels
    the handler, the batcher skips its items); the access log records it as 499 (client closed request)."""
    proc, url = _long_server(tiny_model)
    workers = _descendants(proc.pid)  # they run in their own process group: stopped by PID below
    log = Path(_env(tiny_model)["BENTOML_HOME"]) / f"serve-{url.rsplit(':', 1)[1]}.log"
    try:
        conn = _send_and_leave(url, json.dumps({"text": LONG_DOCUMENT}).encode())
        deadline = time.time() + 60
        while time.time() < deadline and _in_progress(url, unanswered=0) < 1:
            time.sleep(0.2)
        assert _in_progress(url, unanswered=1) >= 1, "the document never started: the test would prove nothing"
        conn.close()
        deadline = time.time() + 60
        while time.time() < deadline and "status=499" not in log.read_text(errors="replace"):
            time.sleep(0.2)
        assert "path=/predict_document" in log.read_text(errors="replace")
        assert "status=499" in log.read_text(errors="replace")
        # Nothing of it is left running: the request is no longer in progress.
        deadline = time.time() + 60
        while time.time() < deadline and _in_progress(url, unanswered=1) > 0:
            time.sleep(0.2)
        assert _in_progress(url) == 0
        r = requests.post(f"{url}/predict", json={"sentences": ["Still serving."]}, timeout=30)
        assert r.status_code == 200
    finally:
        _stop(proc)
        for p in workers:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
