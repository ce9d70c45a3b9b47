"""Benchmark the HTTP service against in-process inference and against a bare ASGI app, in one run.

    .venv/bin/python bench/serve.py [--model TAG] [--clients 32] [--duration 10] [--backend auto]

On 127.0.0.1, one after the other, it serves the same model with
  ours       `bentoml serve stancewatch.service.service:StanceService` (the hand-written micro-batcher);
  bare       uvicorn + the same predictor and MicroBatcher, no BentoML (`bare_app` below): the anchor
             for what Python HTTP itself costs on this machine;
  batchable  BentoML with `@bentoml.api(batchable=True)` instead of our batcher (`BatchableService`
             below; /predict only: it cannot split or summarise a document);
  ours_traced (only when named in --servers) ours with STANCEWATCH_TRACING=1: BentoML's
             OpenTelemetry middleware opening its spans, as before tracing was off by default;
  ours_nolog (only when named) ours with STANCEWATCH_ACCESS_LOG=0: the bare app writes no access
             log, so this is ours against it like for like;
  ours_lean  (only when named) ours with the access log and the Prometheus metrics off, the two
             per-request costs the bare app does not have;
  ours_routed (only when named) ours with STANCEWATCH_DIRECT_ROUTES=0: every request through
             BentoML's router and endpoint, as before service/direct.py;
(a kind named more than once runs again at its place in the order: a row per run, and the ratios
use the median of its runs), and measures on each: single-sentence requests one at a time (p50/p95/p99), then N concurrent
clients for a bounded time with 1 and with 8 sentences per request, and (ours and bare) documents
of ~16 sentences: requests/s, sentences/s, p95, errors, server CPU per request. In-process
throughput on the same sentences (batch, and documents: split + predict with contexts) is measured
before and after the servers; the faster counts. It prints a table and the ratios against the goals:
ours >= 0.9 of bare for single sentences, ours >= 0.85 of in-process for 8-sentence requests and for
documents, and ours against batchable. Sentences are the bundled corpus's closest to 30 tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_sentences(model, n: int, tokens: int = 30) -> list[str]:
    """Corpus sentences closest to `tokens` tokens (special tokens included)."""
    from stancewatch.training.data import DEFAULT_CORPUS

    texts: set[str] = set()
    for path in DEFAULT_CORPUS:
        with open(path, newline="", encoding="utf-8") as fh:
            texts |= {row["text"] for row in csv.DictReader(fh) if row["text"].strip()}
    texts = sorted(texts)
    lengths = [len(e) for e in model.encoder.encode(texts)]
    ranked = sorted(zip(texts, lengths), key=lambda p: (abs(p[1] - tokens), p[0]))[:n]
    return [t for t, _ in ranked]


# The service under other settings: tracing on (as before it was off by default), and without the
# access log (the bare app writes none, so this is the like-for-like row against it).
OURS_VARIANTS = {
    "ours": {},
    "ours_traced": {"STANCEWATCH_TRACING": "1"},
    "ours_nolog": {"STANCEWATCH_ACCESS_LOG": "0"},
    "ours_lean": {"STANCEWATCH_ACCESS_LOG": "0", "STANCEWATCH_METRICS": "0"},
    "ours_routed": {"STANCEWATCH_DIRECT_ROUTES": "0"},
}


def start_server(kind: str, tag: str, port: int, threads: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "STANCEWATCH_MODEL": tag,
        "STANCEWATCH_THREADS": str(threads),
        "STANCEWATCH_RELOAD_SECONDS": "0",
    }
    env.setdefault("STANCEWATCH_WORKERS", "1")
    env.update(OURS_VARIANTS.get(kind, {}))
    where = ["--host", "127.0.0.1", "--port", str(port)]
    if kind in OURS_VARIANTS:
        cmd = [sys.executable, "-m", "bentoml", "serve", "stancewatch.service.service:StanceService", *where]
    elif kind == "batchable":
        cmd = [
            sys.executable,
            "-m",
            "bentoml",
            "serve",
            "serve:BatchableService",
            "--working-dir",
            str(REPO / "bench"),
            *where,
        ]
    elif kind == "bare":
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "serve:bare_app",
            "--app-dir",
            str(REPO / "bench"),
            "--no-access-log",
            "--log-level",
            "warning",
            *where,
        ]
    else:
        raise ValueError(kind)
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    import requests

    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{kind} server exited with {proc.returncode}:\n{proc.stderr.read().decode()[-3000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise SystemExit(f"{kind} server not ready after 180 s")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of process `root` and every live descendant (the server's workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # after the command name: state, ppid, ..., utime (index 11), stime (index 12)
            stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        todo += [child for child, (parent, _) in stats.items() if parent == pid]
    return total


def sequential(url: str, sentences: list[str], n: int, warmup: int = 20) -> dict:
    import requests

    session = requests.Session()
    latencies, errors = [], 0
    for i in range(warmup + n):
        body = {"sentences": [sentences[i % len(sentences)]]}
        t0 = time.perf_counter()
        r = session.post(url, json=body, timeout=30)
        dt = (time.perf_counter() - t0) * 1000
        if r.status_code != 200:
            errors += 1
        elif i >= warmup:
            latencies.append(dt)
    return {
        "n": len(latencies),
        "errors": errors,
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "p99_ms": percentile(latencies, 99),
    }


async def _post_loop(
    host: str,
    port: int,
    path: str,
    bodies: list[tuple[bytes, int]],
    stop: float,
    latencies: list[float],
    errors: dict[str, int],
    counts: list[int],
) -> None:
    """One client: HTTP/1.1 keep-alive POSTs over a raw asyncio connection until `stop`.

    A hand-rolled client because the load generator shares the two cores with the server: aiohttp
    spent about as much CPU per request as the server's own HTTP handling, which the server's figures
    would then pay for. Every response is still checked: status 200 and a JSON body with one result.
    """
    reader, writer = await asyncio.open_connection(host, port)
    head = f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n".encode()
    i = 0
    try:
        while time.perf_counter() < stop:
            body, expected = bodies[i % len(bodies)]
            i += 1
            t0 = time.perf_counter()
            try:
                writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                status_line = await reader.readuntil(b"\r\n")
                headers = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in headers.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                payload = await reader.readexactly(length)
                status = int(status_line.split()[1])
                if status == 200:
                    answer = json.loads(payload)
                    if len(answer["sentences"] if isinstance(answer, dict) else answer) != expected:
                        status = "bad body"
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, KeyError) as exc:
                status = type(exc).__name__
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
            if status == 200:
                latencies.append((time.perf_counter() - t0) * 1000)
                counts.append(expected)
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1
    finally:
        writer.close()


async def _concurrent(url: str, bodies: list[tuple[bytes, int]], clients: int, duration: float) -> dict:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    latencies: list[float] = []
    counts: list[int] = []
    errors: dict[str, int] = {}
    stop = time.perf_counter() + duration
    started = time.perf_counter()
    await asyncio.gather(
        *(
            _post_loop(
                parts.hostname, parts.port, parts.path, bodies[k::clients] or bodies, stop, latencies, errors, counts
            )
            for k in range(clients)
        )
    )
    elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": len(latencies),
        "errors": errors,
        "req_per_s": len(latencies) / elapsed,
        "sent_per_s": sum(counts) / elapsed,
        "p50_ms": percentile(latencies, 50) if latencies else None,
        "p95_ms": percentile(latencies, 95) if latencies else None,
    }


def sentence_bodies(sentences: list[str], per_request: int) -> list[tuple[bytes, int]]:
    return [
        (
            json.dumps({"sentences": [sentences[(j + m) % len(sentences)] for m in range(per_request)]}).encode(),
            per_request,
        )
        for j in range(len(sentences))
    ]


def documents(sentences: list[str], size: int = 16) -> list[str]:
    return [" ".join(sentences[(j + m) % len(sentences)] for m in range(size)) for j in range(0, len(sentences), 4)]


def document_bodies(docs: list[str]) -> list[tuple[bytes, int]]:
    from stancewatch.model.splitter import split_sentences

    return [(json.dumps({"text": d}).encode(), len(split_sentences(d))) for d in docs]


def in_process(model, sentences: list[str], docs: list[str], seconds: float = 8.0) -> dict:
    """Batch throughput on the sentences, and on the documents (split, then predict with contexts)."""
    from stancewatch.model.splitter import split_sentences, with_context

    model.predict(sentences[:32])  # warm-up
    single = []
    for text in sentences[:100]:
        t0 = time.perf_counter()
        model.predict([text])
        single.append((time.perf_counter() - t0) * 1000)
    done, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        model.predict(sentences)
        done += len(sentences)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    doc_done, doc_started = 0, time.perf_counter()
    while time.perf_counter() - doc_started < seconds:
        parts = [split_sentences(d) for d in docs]
        model.predict([s.text for p in parts for s in p], [c for p in parts for c in with_context(p)])
        doc_done += sum(len(p) for p in parts)
    doc_elapsed = time.perf_counter() - doc_started
    return {
        "sentences": done,
        "seconds": round(elapsed, 2),
        "sent_per_s": done / elapsed,
        "doc_sent_per_s": doc_done / doc_elapsed,
        "cpu_ms_per_sentence": 1000 * cpu / done,
        "single_p50_ms": percentile(single, 50),
    }


def median_run(runs: list[dict]) -> dict:
    """One server kind's runs merged: every figure the ratios use is the median over the runs."""
    if len(runs) == 1:
        return runs[0]
    merged = json.loads(json.dumps(runs[0]))
    for workload, figures in merged.items():
        for key, value in figures.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values = [r[workload][key] for r in runs if isinstance(r[workload].get(key), (int, float))]
                figures[key] = statistics.median(values)
    return merged


def measure_server(kind: str, tag: str, args, sentences: list[str], docs: list[tuple[bytes, int]]) -> dict:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(kind, tag, port, args.threads)
    out: dict = {}
    try:
        out["single"] = sequential(f"{base}/predict", sentences, args.single)
        runs = [
            ("1 per request", "/predict", sentence_bodies(sentences, 1)),
            ("8 per request", "/predict", sentence_bodies(sentences, 8)),
        ]
        if kind != "batchable":
            runs.append(("documents", "/predict_document", docs))
        for name, path, bodies in runs:
            server_cpu = tree_cpu_seconds(proc.pid)
            load = asyncio.run(_concurrent(base + path, bodies, args.clients, args.duration))
            load["server_cpu_ms_per_request"] = (
                1000 * (tree_cpu_seconds(proc.pid) - server_cpu) / max(1, load["requests"])
            )
            out[name] = load
            print(
                f"  {kind:9s} {name:13s}: {load['req_per_s']:7.1f} req/s = {load['sent_per_s']:7.1f} sentences/s, "
                f"p95 {load['p95_ms'] or 0:.0f} ms, errors {load['errors'] or 0}, "
                f"server CPU {load['server_cpu_ms_per_request']:.2f} ms/request",
                flush=True,
            )
    finally:
        stop_server(proc)
    return out


def main() -> None:
    from stancewatch.model import store
    from stancewatch.model.predictor import StanceModel, default_threads

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model tag (default: $STANCEWATCH_MODEL, production, else latest)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of concurrent load per workload")
    ap.add_argument("--single", type=int, default=200, help="sequential single-sentence requests")
    ap.add_argument("--sentences", type=int, default=256, help="distinct ~30-token sentences used")
    ap.add_argument("--threads", type=int, default=default_threads(), help="inference threads, servers and in-process")
    ap.add_argument(
        "--servers",
        default="ours,bare,batchable",
        help="which servers to run, in order (also: ours_traced, ours_nolog, ours_lean, ours_routed)",
    )
    ap.add_argument("--backend", default="auto", help="auto | torch | openvino, servers and in-process")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    tag = str(store.resolve(args.model).tag)
    os.environ["STANCEWATCH_BACKEND"] = args.backend  # the servers inherit it
    model = StanceModel.load(tag, threads=args.threads, backend=args.backend)
    sentences = pick_sentences(model, args.sentences)
    tokens = [len(e) for e in model.encoder.encode(sentences)]
    docs = documents(sentences)
    doc_bodies = document_bodies(docs)
    print(
        f"model {tag}; {len(sentences)} sentences, mean {statistics.mean(tokens):.1f} tokens; {len(docs)} documents of "
        f"{statistics.mean(n for _, n in doc_bodies):.0f} sentences; backend {model.backend.name}; {args.threads} threads; "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    # In-process before and after the servers; the ratios use the faster (conservative on a shared box).
    before = in_process(model, sentences, docs)
    print(
        f"in-process (before): {before['sent_per_s']:.1f} sentences/s batch, {before['doc_sent_per_s']:.1f} sentences/s "
        f"documents, single p50 {before['single_p50_ms']:.1f} ms",
        flush=True,
    )
    # A kind named more than once (--servers ours,bare,ours,bare: the host's speed drifts) gets a row
    # per run; the ratios use the median of its runs.
    runs: list[tuple[str, dict]] = []
    for kind in args.servers.split(","):
        runs.append((kind, measure_server(kind, tag, args, sentences, doc_bodies)))
    results = {kind: median_run([r for k, r in runs if k == kind]) for kind in dict.fromkeys(k for k, _ in runs)}
    after = in_process(model, sentences, docs)
    print(
        f"in-process (after): {after['sent_per_s']:.1f} sentences/s batch, {after['doc_sent_per_s']:.1f} sentences/s "
        f"documents; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    local = {
        "sent_per_s": max(before["sent_per_s"], after["sent_per_s"]),
        "doc_sent_per_s": max(before["doc_sent_per_s"], after["doc_sent_per_s"]),
    }

    print(
        "\n| server | single p50 / p95 ms | 1 per request: req/s (p95 ms) | 8 per request: sent/s (p95 ms) | "
        "documents: sent/s (p95 ms) | server CPU ms/request (1 per request) |"
    )
    print("|---|---|---|---|---|---|")

    def cell(r: dict, name: str, key: str) -> str:
        run = r.get(name)
        return "-" if run is None else f"{run[key]:.0f} ({run['p95_ms'] or 0:.0f})"

    for kind, r in runs:
        print(
            f"| {kind} | {r['single']['p50_ms']:.1f} / {r['single']['p95_ms']:.1f} | {cell(r, '1 per request', 'req_per_s')} | "
            f"{cell(r, '8 per request', 'sent_per_s')} | {cell(r, 'documents', 'sent_per_s')} | "
            f"{r['1 per request']['server_cpu_ms_per_request']:.2f} |"
        )
    print(
        f"| in-process | {min(before['single_p50_ms'], after['single_p50_ms']):.1f} | {local['sent_per_s']:.0f} sent/s | "
        f"{local['sent_per_s']:.0f} | {local['doc_sent_per_s']:.0f} | - |\n"
    )

    ratios = {}
    if "ours" in results:
        ours = results["ours"]
        if "bare" in results:
            ratios["single: ours / bare (goal >= 0.90)"] = (
                ours["1 per request"]["req_per_s"] / results["bare"]["1 per request"]["req_per_s"]
            )
        ratios["8 per request: ours / in-process (goal >= 0.85)"] = (
            ours["8 per request"]["sent_per_s"] / local["sent_per_s"]
        )
        ratios["documents: ours / in-process (goal >= 0.85)"] = (
            ours["documents"]["sent_per_s"] / local["doc_sent_per_s"]
        )
        if "ours_nolog" in results and "bare" in results:
            ratios["single: ours without access log / bare (like for like)"] = (
                results["ours_nolog"]["1 per request"]["req_per_s"] / results["bare"]["1 per request"]["req_per_s"]
            )
            ratios["1 per request: ours / ours without access log"] = (
                ours["1 per request"]["req_per_s"] / results["ours_nolog"]["1 per request"]["req_per_s"]
            )
        if "ours_lean" in results and "bare" in results:
            ratios["single: ours without access log and metrics / bare"] = (
                results["ours_lean"]["1 per request"]["req_per_s"] / results["bare"]["1 per request"]["req_per_s"]
            )
        if "ours_traced" in results:
            for name in ("1 per request", "8 per request"):
                ratios[f"{name}: ours / ours with tracing on"] = (
                    ours[name]["sent_per_s"] / results["ours_traced"][name]["sent_per_s"]
                )
        if "ours_routed" in results:
            for name in ("1 per request", "8 per request", "documents"):
                ratios[f"{name}: ours / ours_routed (direct routes against BentoML's router)"] = (
                    ours[name]["sent_per_s"] / results["ours_routed"][name]["sent_per_s"]
                )
            ratios["server CPU per request, 1 per request: ours / ours_routed"] = (
                ours["1 per request"]["server_cpu_ms_per_request"]
                / results["ours_routed"]["1 per request"]["server_cpu_ms_per_request"]
            )
        if "batchable" in results:
            for name in ("1 per request", "8 per request"):
                ratios[f"{name}: ours / batchable=True"] = (
                    ours[name]["sent_per_s"] / results["batchable"][name]["sent_per_s"]
                )
        if "bare" in results:
            ratios["8 per request: bare / in-process"] = (
                results["bare"]["8 per request"]["sent_per_s"] / local["sent_per_s"]
            )
            ratios["documents: bare / in-process"] = (
                results["bare"]["documents"]["sent_per_s"] / local["doc_sent_per_s"]
            )
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    errors = {k: sum(sum(r[n]["errors"].values()) for n in r if n != "single") for k, r in results.items()}
    print(f"errors under load: {errors}")
    if args.json:
        args.json.write_text(
            json.dumps({"model": tag, "servers": results, "in_process": [before, after], "ratios": ratios}, indent=2),
            encoding="utf-8",
        )


# ---- the comparison servers (imported by uvicorn / bentoml serve from this file) -----------------


def _threads() -> int:
    from stancewatch import settings
    from stancewatch.model.predictor import default_threads

    return settings.get("THREADS") or default_threads()


def bare_app():
    """uvicorn --factory serve:bare_app: /predict and /predict_document with the same predictor and
    MicroBatcher as the service, JSON in and out with the standard library, no BentoML, no validation
    beyond what the JSON needs. What is left is uvicorn's HTTP and asyncio: the floor for Python here."""
    from stancewatch import settings
    from stancewatch.model.predictor import StanceModel
    from stancewatch.model.splitter import split_sentences, with_context
    from stancewatch.service.batching import MicroBatcher

    model = StanceModel.load(settings.get("MODEL"), threads=_threads(), backend=settings.get("BACKEND"))

    def run(items):
        return [p.to_dict() for p in model.predict([s for s, _ in items], [c for _, c in items])]

    batcher = MicroBatcher(
        run,
        max_items=settings.get("BATCH_ITEMS"),
        gather_ms=settings.get("GATHER_MS"),
        thread_init=getattr(model.backend, "thread_init", None),
    )

    def summary(results):
        read = [r for r in results if r["supported"]]
        n = max(1, len(read))
        return {
            t.name: {
                "counts": {lab: sum(r["stances"][t.name]["label"] == lab for r in read) for lab in t.labels},
                "mean_probs": {lab: sum(r["stances"][t.name]["probs"][lab] for r in read) / n for lab in t.labels},
            }
            for t in model.schema.targets
        }

    async def reply(send, status, data):
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    batcher.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path = scope["path"]
        if path == "/readyz":
            return await reply(send, 200, {"ok": True})
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        data = json.loads(b"".join(chunks))
        if path == "/predict":
            sentences = data["sentences"]
            contexts = data.get("contexts") or [None] * len(sentences)
            results = await batcher.submit(list(zip(sentences, contexts)))
            return await reply(send, 200, {"model": model.tag, "sentences": results})
        if path == "/predict_document":
            parts = await asyncio.to_thread(split_sentences, data["text"])
            results = await batcher.submit(list(zip([s.text for s in parts], with_context(parts))))
            sentences = [{"index": s.index, "start": s.start, "end": s.end, **r} for s, r in zip(parts, results)]
            return await reply(
                send,
                200,
                {"model": model.tag, "id": data.get("id"), "sentences": sentences, "summary": summary(results)},
            )
        return await reply(send, 404, {"error": "not found"})

    return app


def _batchable_service():
    """BentoML's own adaptive batching on the same predictor: each request's sentences are items of
    one batch dimension; BentoML merges concurrent requests and slices the answers."""
    import bentoml

    @bentoml.service(name="stancewatch-batchable", workers=1, traffic={"timeout": 600})
    class BatchableService:
        def __init__(self) -> None:
            from stancewatch import settings
            from stancewatch.model.predictor import StanceModel

            self.model = StanceModel.load(settings.get("MODEL"), threads=_threads(), backend=settings.get("BACKEND"))

        @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=10_000)
        def predict(self, sentences: list[str]) -> list[dict]:
            return [p.to_dict() for p in self.model.predict(sentences)]

    return BatchableService


_made: dict = {}


def __getattr__(name: str):
    """`bentoml serve serve:BatchableService` gets the service from here; built on first use, so the
    bare app (same file) and the bench itself never define a BentoML service."""
    if name == "BatchableService":
        if name not in _made:
            _made[name] = _batchable_service()
        return _made[name]
    raise AttributeError(name)


if __name__ == "__main__":
    main()
