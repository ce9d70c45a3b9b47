"""Benchmark the HTTP service against in-process inference on the same sentences.

    .venv/bin/python bench/serve.py [--model TAG] [--clients 32] [--duration 15]

Starts `bentoml serve` on 127.0.0.1 (model: --model, else $STANCEWATCH_MODEL, else production,
else latest), then measures
  1. single-sentence requests sent one at a time: p50/p95/p99 latency;
  2. N concurrent clients (bounded duration; one sentence per request unless --per-request):
     requests/s, sentences/s, p95 latency, errors, and the CPU time the server and the load
     generator spent per request;
and the same model's in-process batch throughput on the same sentences (before starting and after
stopping the server; the faster one counts), and prints the served/in-process throughput ratio
(sentences/s). Sentences are taken from the bundled corpus, those closest to 30 tokens.
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


def start_server(tag: str, port: int, threads: int) -> subprocess.Popen:
    env = {**os.environ, "STANCEWATCH_MODEL": tag, "STANCEWATCH_THREADS": str(threads)}
    env.setdefault("STANCEWATCH_WORKERS", "1")
    cmd = [sys.executable, "-m", "bentoml", "serve", "stancewatch.service.service:StanceService",
           "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    import requests

    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{proc.stderr.read().decode()[-3000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise SystemExit("server not ready after 180 s")


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
    return {"n": len(latencies), "errors": errors, "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95), "p99_ms": percentile(latencies, 99)}


async def _post_loop(host: str, port: int, path: str, bodies: list[bytes], per_request: int, stop: float,
                     latencies: list[float], errors: dict[str, int]) -> None:
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
            body = bodies[i % len(bodies)]
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
                if status == 200 and len(json.loads(payload)["sentences"]) != per_request:
                    status = "bad body"
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, KeyError) as exc:
                status = type(exc).__name__
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
            if status == 200:
                latencies.append((time.perf_counter() - t0) * 1000)
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1
    finally:
        writer.close()


async def _concurrent(url: str, sentences: list[str], clients: int, duration: float, per_request: int = 1) -> dict:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop = time.perf_counter() + duration
    started = time.perf_counter()
    await asyncio.gather(*(
        _post_loop(parts.hostname, parts.port, parts.path,
                   [json.dumps({"sentences": [sentences[(j + m) % len(sentences)] for m in range(per_request)]}).encode()
                    for j in range(k, len(sentences), clients)],
                   per_request,
                   stop, latencies, errors)
        for k in range(clients)))
    elapsed = time.perf_counter() - started
    return {"clients": clients, "per_request": per_request, "seconds": round(elapsed, 2), "requests": len(latencies),
            "errors": errors, "req_per_s": len(latencies) / elapsed, "sent_per_s": per_request * len(latencies) / elapsed,
            "p50_ms": percentile(latencies, 50) if latencies else None,
            "p95_ms": percentile(latencies, 95) if latencies else None}


def in_process(model, sentences: list[str], seconds: float = 10.0) -> dict:
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
    return {"sentences": done, "seconds": round(elapsed, 2), "sent_per_s": done / elapsed,
            "cpu_ms_per_sentence": 1000 * cpu / done, "single_p50_ms": percentile(single, 50)}


def main() -> None:
    from stancewatch.model import store
    from stancewatch.model.predictor import StanceModel, default_threads

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="model tag (default: $STANCEWATCH_MODEL, production, else latest)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of concurrent load")
    ap.add_argument("--single", type=int, default=200, help="sequential single-sentence requests")
    ap.add_argument("--sentences", type=int, default=256, help="distinct ~30-token sentences used")
    ap.add_argument("--per-request", type=int, default=1,
                    help="sentences per request under concurrent load (the issue's measure is 1)")
    ap.add_argument("--threads", type=int, default=default_threads(), help="torch threads, server and in-process")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--backend", default="auto", help="auto | torch | openvino, server and in-process")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    tag = str(store.resolve(args.model).tag)
    os.environ["STANCEWATCH_BACKEND"] = args.backend  # the server inherits it
    model = StanceModel.load(tag, threads=args.threads, backend=args.backend)
    sentences = pick_sentences(model, args.sentences)
    tokens = [len(e) for e in model.encoder.encode(sentences)]
    print(f"model {tag}; {len(sentences)} sentences, mean {statistics.mean(tokens):.1f} tokens; "
          f"backend {model.backend.name}; {args.threads} threads; {os.cpu_count()} CPUs", flush=True)

    # In-process runs before and after the server; the ratio uses the faster (conservative on a shared box).
    before = in_process(model, sentences)
    print(f"in-process batch throughput (before serving): {before['sent_per_s']:.1f} sentences/s "
          f"(single sentence p50 {before['single_p50_ms']:.1f} ms; CPU {before['cpu_ms_per_sentence']:.2f} ms/sentence)",
          flush=True)
    port = args.port or free_port()
    url = f"http://127.0.0.1:{port}/predict"
    proc = start_server(tag, port, args.threads)
    try:
        single = sequential(url, sentences, args.single)
        print(f"single requests, one at a time: p50 {single['p50_ms']:.1f} ms, p95 {single['p95_ms']:.1f} ms, "
              f"p99 {single['p99_ms']:.1f} ms ({single['n']} requests, {single['errors']} errors)", flush=True)
        server_cpu, client_cpu = tree_cpu_seconds(proc.pid), time.process_time()
        load = asyncio.run(_concurrent(url, sentences, args.clients, args.duration, args.per_request))
        server_cpu, client_cpu = tree_cpu_seconds(proc.pid) - server_cpu, time.process_time() - client_cpu
        load["cpu_ms_per_request"] = {"server": 1000 * server_cpu / max(1, load["requests"]),
                                      "load_generator": 1000 * client_cpu / max(1, load["requests"])}
        print(f"{args.clients} concurrent clients, {args.per_request} sentence(s) per request, for {load['seconds']} s: "
              f"{load['req_per_s']:.1f} req/s = {load['sent_per_s']:.1f} sentences/s, "
              f"p50 {load['p50_ms']:.1f} ms, p95 {load['p95_ms']:.1f} ms, errors {load['errors'] or 0}; CPU per request: "
              f"server {load['cpu_ms_per_request']['server']:.2f} ms, load generator "
              f"{load['cpu_ms_per_request']['load_generator']:.2f} ms", flush=True)
    finally:
        stop_server(proc)
    after = in_process(model, sentences)
    print(f"in-process batch throughput (after serving): {after['sent_per_s']:.1f} sentences/s "
          f"(single sentence p50 {after['single_p50_ms']:.1f} ms)", flush=True)
    local = max(before, after, key=lambda r: r["sent_per_s"])
    ratio = load["sent_per_s"] / local["sent_per_s"]
    print(f"served/in-process throughput ratio: {ratio:.2f} (goal >= 0.80); "
          f"single p50 {single['p50_ms']:.1f} ms (goal < 25 ms); errors under load: {sum(load['errors'].values())}")
    if args.json:
        args.json.write_text(json.dumps({"model": tag, "single": single, "load": load, "in_process": [before, after],
                                         "ratio": ratio}, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
