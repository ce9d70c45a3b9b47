"""Batch scoring end to end vs the bare model, and peak memory for a small vs a 10x larger archive.

Generates archives of news-length articles (sentences of the bundled corpus, shuffled), runs
`stancewatch score` on each in a fresh process (its peak RSS read from `wait4`), then times bare
`StanceModel.predict_arrays` in this process on exactly the sentences (and contexts) the run wrote,
in the same chunks. Prints end-to-end sentences/s, bare sentences/s and their ratio (goal: >= 0.9:
reading, splitting and writing hidden behind inference), and the two peak RSS values (goal: flat).
Run one benchmark at a time: both sides share the machine's cores.

    python bench/score.py [--model TAG] [--articles 20000] [--big 200000] [--format jsonl.zst|tar.gz|zip]
    python bench/score.py --quick          # 1,000 vs 10,000 articles of 8-12 sentences
    python bench/score.py --ray --articles 400 --sentences 3-5 --big 0   # + the Ray row
    python bench/score.py --ray --articles 4000 --sentences 8-12 --big 0 --pairs 2   # + 2 alternating pairs

`--ray` adds the Ray engine on the same archive in the same run: a two-node cluster started here on
127.0.0.1 (`ray start --head` and `ray start --address`, `--ray-cpus` CPUs each, each node its own
temp dir; stopped by PID at the end), `stancewatch score --engine ray --ray-actors <nodes>`, and a
table of local vs Ray sentences/s, their ratio (goal >= 0.8), the nodes and whether the rows agree.
The same table has the anchor without Ray: the articles cut into one archive per node, each scored
at the same time by its own `--ray-cpus`-thread process (what splitting the CPUs costs by itself).
`--ray-address ADDR` uses a running cluster instead. The host's speed can drift within one run
(local first, Ray last measured 0.75 and 0.91 in two runs minutes apart on 40,036 sentences), so
`--pairs K` also runs K more local/Ray pairs on the same cluster, in alternating order (Ray first
in every other pair), and prints each pair's ratio and their median.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def corpus_sentences() -> list[str]:
    with open(REPO / "training" / "data" / "default_corpus.csv", newline="", encoding="utf-8") as fh:
        return [r["text"] for r in csv.DictReader(fh)]


def articles(n: int, lo: int, hi: int, seed: int = 0, part: tuple[int, int] = (0, 1)):
    """(id, text) of `n` articles of lo..hi corpus sentences, two paragraphs each; with
    `part=(k, parts)` only the k-th of `parts` equal runs of them (the same articles)."""
    base = corpus_sentences()
    rng = random.Random(seed)
    k, parts = part
    first, last = k * n // parts, (k + 1) * n // parts
    for i in range(n):
        sents = rng.choices(base, k=rng.randint(lo, hi))
        half = len(sents) // 2
        if first <= i < last:
            yield f"art{i:07d}", " ".join(sents[:half]) + "\n\n" + " ".join(sents[half:])


def generate(path: Path, n: int, lo: int, hi: int, part: tuple[int, int] = (0, 1)) -> Path:
    """Write `n` articles (or one `part` of them) as .jsonl.zst, .tar.gz (one .txt per article) or
    .zip (likewise)."""
    name = path.name
    docs = articles(n, lo, hi, part=part)
    if name.endswith(".jsonl.zst"):
        import zstandard

        with open(path, "wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as zw:
            for doc_id, text in docs:
                zw.write((json.dumps({"id": doc_id, "text": text}) + "\n").encode())
    elif name.endswith(".tar.gz"):
        with tarfile.open(path, "w:gz") as tf:
            for doc_id, text in docs:
                data = text.encode()
                info = tarfile.TarInfo(f"{doc_id}.txt")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    elif name.endswith(".zip"):
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            for doc_id, text in docs:
                zf.writestr(f"{doc_id}.txt", text)
    else:
        raise ValueError(f"unknown archive format: {name}")
    return path


def run_score(
    archive: Path, out: Path, model: str | None, chunk: int, extra: list[str] = (), env: dict | None = None
) -> dict:
    """`stancewatch score` in a fresh process: its summary numbers and peak RSS (MiB)."""
    exe = Path(sys.executable).parent / "stancewatch"
    cmd = [
        str(exe) if exe.exists() else sys.executable,
        *([] if exe.exists() else ["-m", "stancewatch.cli"]),
        "score",
        str(archive),
        "--out",
        str(out),
        "--chunk-size",
        str(chunk),
        "--no-progress",
        *extra,
    ]
    if model:
        cmd += ["--model", model]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"stancewatch score failed ({proc.returncode}):\n{output}")
    m = re.search(r"(\d+) documents, (\d+) sentences, (\d+) rejected records in ([\d.]+) s", output)
    if not m:
        raise SystemExit(f"no summary in the output:\n{output}")
    docs, sents, rejected, secs = int(m[1]), int(m[2]), int(m[3]), float(m[4])
    return {
        "documents": docs,
        "sentences": sents,
        "rejected": rejected,
        "score_s": secs,
        "process_s": wall,
        "sentences_per_s": sents / secs,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        # The Ray engine's time breakdown line (actors' start-up, utilisation, driver waits), if any.
        "breakdown": next((line for line in output.splitlines() if line.startswith("ray: ")), None),
    }  # ru_maxrss is KiB on Linux


def bare_throughput(out: Path, model: str | None, chunk_docs: int) -> dict:
    """Bare `predict_arrays` on the run's own sentences and contexts, in the run's chunks."""
    import pyarrow.parquet as pq

    from stancewatch.model.predictor import StanceModel

    m = StanceModel.load(model)
    table = pq.read_table(out, columns=["doc_id", "sentence_index", "text"])
    doc_ids, index, texts = (table.column(c).to_pylist() for c in ("doc_id", "sentence_index", "text"))
    del table
    contexts = [None if index[i] == 0 else texts[i - 1] for i in range(len(texts))]
    bounds, docs_seen, start = [], 0, 0
    for i in range(1, len(texts) + 1):  # chunk boundaries every `chunk_docs` documents
        if i == len(texts) or index[i] == 0:
            docs_seen += 1
            if docs_seen % chunk_docs == 0 or i == len(texts):
                bounds.append((start, i))
                start = i
    m.predict_arrays(texts[:64], contexts[:64])  # warm-up
    started = time.perf_counter()
    for a, b in bounds:
        m.predict_arrays(texts[a:b], contexts[a:b])
    secs = time.perf_counter() - started
    return {"sentences": len(texts), "seconds": secs, "sentences_per_s": len(texts) / secs, "threads": m.threads}


def free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class LocalCluster:
    """`nodes` Ray nodes on 127.0.0.1 (`ray start --block`, one process group each, stopped by PID)."""

    def __init__(self, nodes: int, cpus: int):
        self.root = Path(tempfile.mkdtemp(prefix="swbr-", dir="/tmp"))  # short: Ray's socket paths
        (self.root / "home").mkdir()
        self.port = free_ports(1)[0]
        self.address = f"127.0.0.1:{self.port}"
        self.procs = []
        ray = Path(sys.executable).parent / "ray"
        for i in range(nodes):
            a, b, c, d = free_ports(4)
            role = (
                ["--head", f"--port={self.port}", "--include-dashboard=false"]
                if i == 0
                else [f"--address={self.address}"]
            )
            cmd = [
                str(ray),
                "start",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={cpus}",
                "--disable-usage-stats",
                f"--dashboard-agent-listen-port={a}",
                f"--dashboard-agent-grpc-port={b}",
                f"--runtime-env-agent-port={c}",
                f"--metrics-export-port={d}",
                *role,
            ]
            log = open(self.root / f"node{i}.log", "wb")
            self.procs.append(
                subprocess.Popen(
                    cmd, env=self.env(f"node{i}"), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
            if i == 0:
                self.wait(1)
        self.wait(nodes)

    def env(self, node: str = "node0") -> dict:
        (self.root / node).mkdir(exist_ok=True)
        env = dict(
            os.environ,
            HOME=str(self.root / "home"),
            RAY_TMPDIR=str(self.root / node),
            RAY_AUTH_MODE="disabled",
            RAY_USAGE_STATS_ENABLED="0",
        )
        env.pop("RAY_ADDRESS", None)
        env.pop("STANCEWATCH_THREADS", None)
        return env

    def wait(self, n: int, timeout: float = 180) -> None:
        probe = (
            "import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(sum(1 for x in ray.nodes() if x['Alive']))"
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            r = subprocess.run(
                [sys.executable, "-c", probe, self.address], env=self.env(), capture_output=True, text=True
            )
            if r.returncode == 0 and r.stdout.strip().endswith(str(n)):
                return
            time.sleep(1)
        self.stop()
        raise SystemExit(f"the Ray cluster did not reach {n} nodes")

    def stop(self) -> None:
        import shutil
        import signal

        import psutil

        for p in reversed(self.procs):
            if p.poll() is None:
                # Ray's worker processes (the actors) each set a process group of their own, so the
                # node's group does not hold them: they are found as its descendants and ended by PID.
                kids = psutil.Process(p.pid).children(recursive=True)
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                _, alive = psutil.wait_procs(kids, timeout=10)
                for kid in alive:
                    try:
                        kid.kill()
                    except psutil.NoSuchProcess:
                        pass
        shutil.rmtree(self.root, ignore_errors=True)


def same_rows(a: Path, b: Path) -> bool:
    """Same sentences, in the same order, with the same labels (probabilities may differ in the 6th place)."""
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    if ta.num_rows != tb.num_rows or ta.schema != tb.schema:
        return False
    keep = [n for n in ta.schema.names if not n.startswith("p_")]
    return ta.select(keep).equals(tb.select(keep))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="Tag or artefact folder (default: production).")
    ap.add_argument("--articles", type=int, default=20_000, help="Articles in the archive timed end to end.")
    ap.add_argument(
        "--big", type=int, default=200_000, help="Articles in the archive for the memory comparison (0: skip)."
    )
    ap.add_argument("--sentences", default="20-30", help="Sentences per article, lo-hi.")
    ap.add_argument("--format", default="jsonl.zst", choices=["jsonl.zst", "tar.gz", "zip"])
    ap.add_argument("--chunk", type=int, default=256, help="Documents per chunk.")
    ap.add_argument("--workdir", type=Path, default=None, help="Where archives and outputs go (default: a temp dir).")
    ap.add_argument("--quick", action="store_true", help="1,000 vs 10,000 articles of 8-12 sentences.")
    ap.add_argument(
        "--ray", action="store_true", help="Add the Ray row (a local two-node cluster unless --ray-address)."
    )
    ap.add_argument("--ray-address", default=None, help="A running Ray cluster to use for the Ray row.")
    ap.add_argument("--ray-nodes", type=int, default=2, help="Nodes of the cluster started for the Ray row.")
    ap.add_argument("--ray-cpus", type=int, default=1, help="CPUs per node of that cluster.")
    ap.add_argument(
        "--pairs", type=int, default=0, help="With --ray: this many more local/Ray pairs, alternating which runs first."
    )
    args = ap.parse_args()
    if args.pairs and not (args.ray or args.ray_address):
        ap.error("--pairs needs --ray or --ray-address")
    if args.quick:
        args.articles, args.big, args.sentences = 1_000, 10_000, "8-12"
    lo, hi = (int(x) for x in args.sentences.split("-"))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-score-"))
    work.mkdir(parents=True, exist_ok=True)

    results = {}
    for label, n in (("small", args.articles), ("big", args.big)):
        if n <= 0:
            continue
        archive = work / f"articles-{n}.{args.format}"
        if not archive.exists():
            t = time.perf_counter()
            generate(archive, n, lo, hi)
            print(
                f"generated {archive} ({archive.stat().st_size / 2**20:.1f} MiB) in {time.perf_counter() - t:.0f} s",
                flush=True,
            )
        out = work / f"scored-{n}.parquet"
        results[label] = run_score(archive, out, args.model, args.chunk)
        r = results[label]
        print(
            f"{label}: {n} articles, {r['sentences']} sentences, score {r['score_s']:.1f} s "
            f"({r['sentences_per_s']:.0f} sentences/s end to end), peak RSS {r['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
        if label == "small":
            bare = bare_throughput(out, args.model, args.chunk)
            results["bare"] = bare
            print(
                f"bare predict_arrays on the same {bare['sentences']} sentences: {bare['seconds']:.1f} s "
                f"({bare['sentences_per_s']:.0f} sentences/s, {bare['threads']} threads)",
                flush=True,
            )
    ratio = results["small"]["sentences_per_s"] / results["bare"]["sentences_per_s"]
    results["ratio"] = ratio
    print(f"end-to-end / bare throughput: {ratio:.2f} (goal >= 0.90)")
    if "big" in results:
        growth = results["big"]["peak_rss_mib"] / results["small"]["peak_rss_mib"]
        results["rss_growth"] = growth
        print(
            f"peak RSS {results['small']['peak_rss_mib']:.0f} MiB for {args.articles} articles vs "
            f"{results['big']['peak_rss_mib']:.0f} MiB for {args.big}: x{growth:.2f} (goal: flat)"
        )
    if args.ray or args.ray_address:
        if not args.ray_address:
            results["split"] = split_row(args, work, args.ray_nodes)
        results["ray"] = ray = ray_row(args, work)
        lo_, ra = results["small"], ray["run"]
        print(
            "\n| engine | nodes x CPUs | sentences | rows agree | score s | sentences/s | process s | ratio to local |"
        )
        print("|---|---|---|---|---|---|---|---|")
        print(
            f"| local | 1 x {os.cpu_count()} threads | {lo_['sentences']} | - | {lo_['score_s']:.1f} | "
            f"{lo_['sentences_per_s']:.0f} | {lo_['process_s']:.1f} | 1.00 |"
        )
        if "split" in results:
            sp = results["split"]
            print(
                f"| {args.ray_nodes} processes, no Ray | {args.ray_nodes} x {args.ray_cpus} thread | {sp['sentences']} | - | "
                f"{sp['score_s']:.1f} | {sp['sentences_per_s']:.0f} | {sp['process_s']:.1f} | "
                f"{sp['sentences_per_s'] / lo_['sentences_per_s']:.2f} (process: {lo_['process_s'] / sp['process_s']:.2f}) |"
            )
        print(
            f"| ray | {ray['nodes'] or '?'} x {args.ray_cpus} | {ra['sentences']} | {ray['same_rows']} | "
            f"{ra['score_s']:.1f} | {ra['sentences_per_s']:.0f} | {ra['process_s']:.1f} | "
            f"{ra['sentences_per_s'] / lo_['sentences_per_s']:.2f} (process: {lo_['process_s'] / ra['process_s']:.2f}) |"
        )
        if ra.get("breakdown"):
            print(ra["breakdown"])
        if ray.get("pairs"):
            ratios = [p["ratio"] for p in ray["pairs"]]
            for k, p in enumerate(ray["pairs"]):
                print(
                    f"pair {k + 1} ({p['first']} first): local {p['local']['sentences_per_s']:.0f}, "
                    f"ray {p['ray']['sentences_per_s']:.0f} sentences/s, ratio {p['ratio']:.2f} "
                    f"(process: {p['process_ratio']:.2f}), rows agree {p['same_rows']}; {p['ray'].get('breakdown') or ''}"
                )
            print(
                f"Ray / local over {len(ratios)} alternating pairs: median {statistics.median(ratios):.2f} "
                f"(range {min(ratios):.2f}-{max(ratios):.2f}; process median "
                f"{statistics.median(p['process_ratio'] for p in ray['pairs']):.2f}) (goal >= 0.8)"
            )
    (work / "results.json").write_text(json.dumps(results, indent=1))


def split_row(args, work: Path, parts: int) -> dict:
    """The anchor for the Ray row without Ray: the same articles cut into `parts` archives, each
    scored at the same time by its own `--ray-cpus`-thread `stancewatch score` process (what the
    CPUs of a `parts`-node cluster can do when nothing but the work is split)."""
    import threading

    lo, hi = (int(x) for x in args.sentences.split("-"))
    archives = [work / f"articles-{args.articles}-part{k}of{parts}.{args.format}" for k in range(parts)]
    for k, archive in enumerate(archives):  # all written before any scoring starts, so the runs overlap fully
        if not archive.exists():
            generate(archive, args.articles, lo, hi, part=(k, parts))
    env = dict(os.environ, STANCEWATCH_THREADS=str(args.ray_cpus))
    runs: list = [None] * parts
    errors: list = []

    def one(k: int) -> None:
        try:
            runs[k] = run_score(archives[k], work / f"scored-part{k}of{parts}.parquet", args.model, args.chunk, env=env)
        except BaseException as exc:  # noqa: BLE001 - reported below, after the other part ends
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(parts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    sentences = sum(r["sentences"] for r in runs)
    score_s = max(r["score_s"] for r in runs)
    return {
        "sentences": sentences,
        "score_s": score_s,
        "process_s": max(r["process_s"] for r in runs),
        "sentences_per_s": sentences / score_s,
        "parts": runs,
    }


def ray_row(args, work: Path) -> dict:
    """The Ray engine on the archive the local row used, and the comparison table."""
    archive = work / f"articles-{args.articles}.{args.format}"
    local = work / f"scored-{args.articles}.parquet"
    cluster = None if args.ray_address else LocalCluster(args.ray_nodes, args.ray_cpus)
    try:
        address = args.ray_address or cluster.address
        env = cluster.env() if cluster else None
        nodes = args.ray_nodes if cluster else None
        extra = ["--engine", "ray", "--ray-address", address] + (["--ray-actors", str(nodes)] if nodes else [])
        out = work / f"scored-{args.articles}-ray.parquet"
        r = run_score(archive, out, args.model, args.chunk, extra, env)
        first_same = same_rows(out, local)
        pairs = []
        for k in range(args.pairs):
            order = ("ray", "local") if k % 2 == 0 else ("local", "ray")
            runs = {}
            ray_out = work / f"scored-{args.articles}-ray-pair{k + 1}.parquet"
            local_out = work / f"scored-{args.articles}-pair{k + 1}.parquet"
            for which in order:
                if which == "ray":
                    runs[which] = run_score(archive, ray_out, args.model, args.chunk, extra, env)
                else:
                    runs[which] = run_score(archive, local_out, args.model, args.chunk)
            same = same_rows(ray_out, local) and same_rows(local_out, local)
            lo_, ra = runs["local"], runs["ray"]
            pairs.append(
                {
                    "first": order[0],
                    "local": lo_,
                    "ray": ra,
                    "ratio": ra["sentences_per_s"] / lo_["sentences_per_s"],
                    "process_ratio": lo_["process_s"] / ra["process_s"],
                    "same_rows": same,
                }
            )
    finally:
        if cluster:
            cluster.stop()
    return {"run": r, "same_rows": first_same, "nodes": nodes, "address": address, "pairs": pairs}


if __name__ == "__main__":
    main()
