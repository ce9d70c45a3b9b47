"""Batch scoring on a Ray cluster: the local engine's job (pipeline.run_job), with the model on Ray actors.

Everything but the model call is the local engine's code, run on the driver: the inputs are read
and split into sentences there (`pipeline._chunks`, in a background thread), every chunk is
committed to the same part store (`writer.PartStore`: fsync, rejects, document summary, manifest),
so `--resume` works the same way and the assembled files are the same (row groups, statistics,
metadata). Only `predict_table` moves: each chunk's sentences are cut into slices of
`batch_size` and sent to a pool of long-lived actors, each holding one model copy, at most
`INFLIGHT` slices per actor; an actor that cannot start is reported and left out when another
did. Workers never write a file, so it does not matter whether they share
a disk with the driver; scored rows come back through the object store and every slice and every
chunk is checked against the number of sentences sent before it is committed.

Where the time went in the Ray Data version this replaces (two one-CPU nodes, 400 articles):
a fresh actor pool per round (every actor imported the package and loaded the model again), Ray
Data's executor and its split tasks competing with the actors for the same two CPUs, and each
actor's Rust thread pools (language detection, tokenizer) sized for the whole machine instead of
its CPU share, which is what collapsed under load. Here actors start once per job, the split runs
where the local engine runs it, and each actor's thread pools are capped to the CPUs Ray gave it.

A lost actor (its node died or was stopped) is dropped; its unfinished slices go to the remaining
actors, and a warning says so. When no actor is left, the run stops with an error that says how
much is committed and that `--resume` finishes it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from stancewatch import settings
from stancewatch.scoring.pipeline import Chunk, ChunkDone, JobOptions, ScoreResult, check_job, predict_table, run_job

PREDICT_BATCH = 512  # sentences per actor call: ~1 s of MiniLM int8 on one core, so Ray's ~1 ms per call is noise
INFLIGHT = 2  # slices queued per actor: the next one is waiting while the current one runs
MAX_ATTEMPTS = 3  # actors a slice may lose before the run stops (a slice that kills every actor it meets)
OPEN_CHUNKS = 4  # chunks being scored at once (bounds driver memory like the local engine's prefetch)


class RayEngineError(Exception):
    """Ray is missing, cannot be reached, or lost the actors that score."""


# ---- the model as bytes -------------------------------------------------------------------------


def needed_files(folder: Path, backend: str = "auto") -> Callable[[str], bool]:
    """Which files of a model folder inference with `backend` reads.

    A saved version holds the torch weights, two OpenVINO exports, its training data and its report
    (196 MB for MiniLM); an OpenVINO int8 replica reads 114 MB of it (the int8 IR, 23 MB, and the
    fp32 IR, 90 MB). Shipping only that through the object store keeps actor start-up and
    object-store memory small."""
    import json

    from stancewatch.model.predictor import chosen_backend

    try:
        runtime = json.loads((folder / "stancewatch.json").read_text(encoding="utf-8")).get("runtime", {})
    except (OSError, ValueError):
        runtime = {}
    chosen = chosen_backend(runtime, backend)
    int8 = runtime.get("precision", "int8") == "int8"
    # int8 also needs the fp32 IR: for the near-tie rescue, and on a worker whose CPU lacks VNNI/AMX,
    # where the actor runs the fp32 IR instead (model/runtime.py, run_precision).
    ov_stems = ("model_int8.", "model.") if int8 else ("model.",)

    def keep(rel: str) -> bool:
        if rel.startswith(("eval/", "data/")):
            return False  # the evaluation report and the training examples
        if chosen == "openvino":
            return rel != "model.safetensors" and (
                not rel.startswith("openvino/model") or rel.startswith(tuple("openvino/" + s for s in ov_stems))
            )
        if chosen == "torch":
            return not rel.startswith("openvino/")
        return True

    return keep


def read_model_folder(folder: str | Path, backend: str | None = None) -> dict[str, bytes]:
    """The files of an exported model folder as {posix relative path: bytes}: all of them, or with
    `backend`, those that backend reads (`needed_files`)."""
    folder = Path(folder)
    keep = needed_files(folder, backend) if backend else (lambda rel: True)
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and keep(rel):
            files[rel] = path.read_bytes()
    if "schema.json" not in files:
        raise ValueError(f"{folder} is not a model folder (no schema.json)")
    return files


def as_arrays(files: dict[str, bytes]) -> dict[str, np.ndarray]:
    """The same files as read-only uint8 arrays over the same memory (what the object store ships best)."""
    return {rel: np.frombuffer(data, dtype=np.uint8) for rel, data in files.items()}


def write_model_folder(files: Mapping[str, bytes | np.ndarray], folder: Path) -> Path:
    """Recreate a folder written by `read_model_folder`; paths must stay inside `folder`."""
    root = folder.resolve()
    for rel, data in files.items():
        target = (root / rel).resolve()
        if root not in target.parents:
            raise ValueError(f"model file {rel!r} points outside the model folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


# ---- the actor ----------------------------------------------------------------------------------


def cap_threads(threads: int) -> None:
    """Size this process's thread pools to `threads` before anything creates them.

    Ray sets OMP_NUM_THREADS for an actor, but the language detector (lingua) and the tokenizer are
    Rust libraries with their own rayon pools, one thread per machine CPU by default: two one-CPU
    actors on a two-core machine then ran six busy threads, which under an outside load turned
    into a 16x slowdown (491 s against 31 s locally) instead of sharing the cores.
    """
    for name in ("RAYON_NUM_THREADS", "RAYON_RS_NUM_CPUS", "OMP_NUM_THREADS"):
        os.environ[name] = str(threads)


class Scorer:
    """One model replica on a Ray worker: built once from the shipped model files, then scores slices."""

    def __init__(
        self,
        files: Mapping[str, bytes | np.ndarray],
        tag: str,
        backend: str = "auto",
        threads: int = 1,
        batch_tokens: int | None = None,
    ):
        started = time.perf_counter()
        cap_threads(threads)
        from stancewatch.model.predictor import StanceModel

        folder = Path(tempfile.mkdtemp(prefix="stancewatch-model-"))
        try:
            # batch_tokens: the driver's STANCEWATCH_BATCH_TOKENS (a remote node has its own environment).
            self.model = StanceModel(
                write_model_folder(files, folder), backend=backend, threads=threads, tag=tag, batch_tokens=batch_tokens
            )
            self.model.read(["Warm-up."], [None])  # loads the language models now, not inside the first slice
        finally:
            # The pool ends actors with ray.kill, which runs no exit handler, so nothing later would
            # delete this copy (24-86 MB per actor per run). The model is in memory by now; a file
            # still mapped stays readable after it is unlinked (Linux).
            shutil.rmtree(folder, ignore_errors=True)
        self.load_s = time.perf_counter() - started

    def ready(self) -> dict:
        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "load_s": self.load_s}

    def score(self, chunk: Chunk, schema: pa.Schema) -> tuple[pa.Table, list[np.ndarray], float]:
        """The slice's rows and label ids, and the seconds this actor spent on them (the driver
        compares that with the round trip to see what Ray itself costs per slice)."""
        started = time.perf_counter()
        table, label_ids = predict_table(self.model, chunk, schema)
        return table, label_ids, time.perf_counter() - started


def slice_chunk(chunk: Chunk, a: int, b: int) -> Chunk:
    """Sentences a:b of a chunk, as a chunk of their own (no documents or rejects: the driver keeps those)."""
    return Chunk(
        items=0,
        doc_id=chunk.doc_id[a:b],
        source=chunk.source[a:b],
        index=chunk.index[a:b],
        start=chunk.start[a:b],
        end=chunk.end[a:b],
        text=chunk.text[a:b],
        context=chunk.context[a:b],
        kept=chunk.kept[a:b],
    )


# ---- connecting ---------------------------------------------------------------------------------


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RayEngineError(f"--engine ray needs Ray: pip install 'stancewatch[ray]' ({exc})") from None
    return ray


def _private_token_env() -> dict[str, str]:
    """For a Ray started just for this run: a token that lives only in this process's environment.

    `ray.init()` starting a new cluster turns token authentication on and, without a token, writes
    one to ~/.ray/auth_token; every later `ray start` on this account then uses it, and a worker
    node started before or without it fails with InvalidAuthToken. A token in RAY_AUTH_TOKEN keeps
    the private cluster authenticated and writes nothing. Unchanged when the user chose a mode or
    has a token."""
    if any(os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")):
        return {}
    if (Path.home() / ".ray" / "auth_token").exists():
        return {}
    return {"RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex}


def _probe(address: str, timeout: float = 10.0) -> None:
    """Fail fast when nothing listens at a host:port or ray://host:port address.

    Ray's own connect to a GCS that is not there retries for minutes (measured: still waiting after
    240 s, then killed), so a typo in --ray-address looked like a hang."""
    import socket

    hostport = address[len("ray://") :] if address.startswith("ray://") else address
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto", "local" or a form Ray resolves itself
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=2).close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RayEngineError(
                    f"cannot reach Ray at {address}: nothing answers on {host}:{port} ({exc}); "
                    "is `ray start --head` running there, and is this the port it printed?"
                ) from None
            time.sleep(0.5)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> tuple[bool, dict[str, str | None]]:
    """Connect to `address` (ray://host:10001, auto, host:port) or start a private local Ray.

    Returns (whether we started or connected it, so must shut it down; environment variables we set,
    with their old values, to restore afterwards)."""
    ray = _import_ray()
    if ray.is_initialized():
        return False, {}
    if address:
        _probe(address)
    changed: dict[str, str | None] = {}
    extra = {"RAY_USAGE_STATS_ENABLED": "0"} if "RAY_USAGE_STATS_ENABLED" not in os.environ else {}
    if not address:
        extra.update(_private_token_env())
    for k, v in extra.items():
        changed[k] = os.environ.get(k)
        os.environ[k] = v
    try:
        if address and address.startswith("ray://"):
            _init_client(ray, address)
        elif address:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        else:
            ray.init(
                num_cpus=num_cpus or os.cpu_count() or 1,
                include_dashboard=False,
                logging_level="WARNING",
                log_to_driver=False,
            )
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, grpc errors, ...
        _restore(changed)
        hint = ""
        if "ray[client]" in str(exc):
            hint = " (the ray:// address needs Ray Client: pip install 'stancewatch[ray]')"
        elif "auth" in str(exc).lower() or "token" in str(exc).lower():
            hint = (
                " (the cluster uses token authentication: give this machine the cluster's token in "
                "~/.ray/auth_token or RAY_AUTH_TOKEN, and set RAY_AUTH_MODE=token)"
            )
        elif address and "failed to connect" in str(exc).lower():
            # Measured with a wrong token: Ray logs InvalidAuthToken to stderr, but the exception says
            # only "Failed to connect to Ray cluster at ..."; the port answered (_probe), so say why.
            hint = (
                " (the address answers, so Ray refused this process: if the cluster uses token "
                "authentication, this machine needs the cluster's own token in ~/.ray/auth_token or "
                "RAY_AUTH_TOKEN with RAY_AUTH_MODE=token; see Ray's InvalidAuthToken lines above)"
            )
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RayEngineError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {first}{hint}") from None
    return True, changed


CLIENT_ATTEMPTS = 3


def _init_client(ray, address: str) -> None:
    """Connect through Ray Client, retrying a failed server start.

    The head's client proxy forks one server per connection, and that child sometimes aborts in
    gRPC's poller right after the fork ("Initialization failure from server"; ray-project/ray#63202,
    open for Ray 2.60; here 1 of 2 connections on a loaded machine). A new connection gets a new
    server, so the failure is retried; other errors are not."""
    for attempt in range(1, CLIENT_ATTEMPTS + 1):
        try:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
            return
        except ConnectionAbortedError:
            if attempt == CLIENT_ATTEMPTS:
                raise
            _stderr(
                f"Ray Client server at {address} failed to start (a known Ray bug); trying again "
                f"({attempt + 1} of {CLIENT_ATTEMPTS})"
            )
            try:
                ray.shutdown()
            except Exception:  # noqa: BLE001 - nothing to shut down
                pass
            time.sleep(1)


def _restore(changed: dict[str, str | None]) -> None:
    for k, v in changed.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ---- the actor pool -----------------------------------------------------------------------------


def plan_actors(ray, num_actors: int | None, threads: int | None) -> list[dict]:
    """Ray options for each actor: by default one per node, with all of that node's CPUs.

    One replica per node keeps one model copy (~300 MB with the language models) per node; OpenVINO
    runs one stream per thread inside it. `num_actors` spreads that many over the cluster instead,
    each with `threads` CPUs (STANCEWATCH_THREADS, else the cluster's CPUs / actors)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
    total = int(sum(n["Resources"]["CPU"] for n in nodes))
    if not nodes:
        raise RayEngineError("the Ray cluster has no node with a CPU to run the model on")
    if num_actors:
        per = threads or max(1, total // num_actors)
        if num_actors * per > total:
            setting = "STANCEWATCH_THREADS" if threads else "the cluster's CPUs / --ray-actors"
            raise RayEngineError(
                f"--ray-actors {num_actors} with {per} threads each ({setting}) needs "
                f"{num_actors * per} CPUs; the cluster has {total}"
            )
        return [{"num_cpus": per, "scheduling_strategy": "SPREAD", "threads": per} for _ in range(num_actors)]
    plan = []
    for node in nodes:
        cpus = int(node["Resources"]["CPU"])
        per = min(threads or cpus, cpus)
        for _ in range(max(1, cpus // per)):
            plan.append(
                {
                    "num_cpus": per,
                    "threads": per,
                    "scheduling_strategy": NodeAffinitySchedulingStrategy(node["NodeID"], soft=False),
                }
            )
    return plan


@dataclasses.dataclass
class _Round:
    """One chunk on its way through the actors."""

    chunk: Chunk
    results: list  # per slice: (table, label ids) once back
    missing: int


class ActorPool:
    """Long-lived scoring actors and the driver-side dispatch of chunk slices to them."""

    def __init__(
        self,
        ray,
        model_folder: str | Path,
        tag: str,
        backend: str,
        plan: list[dict],
        batch_size: int,
        n_targets: int,
        warn: Callable[[str], None],
    ):
        self.ray, self.batch_size, self.n_targets, self.warn = ray, batch_size, n_targets, warn
        # Once per job; every actor reads the same object. As uint8 arrays, not bytes: Ray stores arrays
        # out of band and actors map them without a copy (114 MB of MiniLM int8 + fp32 IR, one local Ray
        # on the 2-core EPYC: put 0.04 s against 0.19-0.26 s, an actor's get 0.004 s against 0.06-0.19 s).
        files = ray.put(as_arrays(read_model_folder(model_folder, backend)))
        batch_tokens = settings.get("BATCH_TOKENS")
        remote = ray.remote(Scorer)
        self.actors: dict[int, object] = {}
        for i, opts in enumerate(plan):
            opts = dict(opts)
            threads = opts.pop("threads")
            self.actors[i] = remote.options(max_restarts=0, max_task_retries=0, **opts).remote(
                files, tag, backend, threads, batch_tokens
            )
        self.started = len(self.actors)
        self.created = time.perf_counter()
        # Where the time goes (ScoreResult.timings): actors' start-up, their compute, the driver
        # waiting for actors' results, and the driver waiting on its own reading and sentence splitting.
        self.timings = {
            "actors_ready_s": 0.0,
            "actor_busy_s": 0.0,
            "driver_result_wait_s": 0.0,
            "driver_input_wait_s": 0.0,
            "slices": 0,
        }
        self.load: dict[int, int] = {i: 0 for i in self.actors}
        self.info: dict[int, dict] = {}
        self.failed: dict[int, str] = {}  # actors that could not start: why
        self._ready = {a.ready.remote(): i for i, a in self.actors.items()}

    def wait_ready(self) -> None:
        """Block until every actor has loaded its model or failed to. One that failed is reported and
        left out while another started; when none did, the run stops with the reason (a model that
        no actor can load ends here)."""
        for ref, i in self._ready.items():
            try:
                self.info[i] = self.ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - RayActorError, RuntimeEnvSetupError, ...
                with contextlib.suppress(Exception):  # its process may still be there
                    self.ray.kill(self.actors[i])
                self.actors.pop(i, None)
                self.load.pop(i, None)
                self.failed[i] = f"scoring actor {i + 1} of {self.started} could not start: {_cause_line(exc)}"
        self._ready = {}
        if not self.actors:
            last = self.failed[max(self.failed)].split(": ", 1)[1]
            raise RayEngineError(f"no scoring actor could start ({self.started} tried); the last: {last}")
        for why in self.failed.values():
            left = len(self.actors)
            self.warn(f"Ray {why}; scoring goes on with the {left} actor{'s' if left > 1 else ''} left")
        self.timings["actors_ready_s"] = time.perf_counter() - self.created
        self.timings["model_load_s"] = [round(info["load_s"], 2) for info in self.info.values()]

    def close(self) -> None:
        for a in self.actors.values():
            try:
                self.ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = {}

    def _lose(self, i: int, exc: BaseException) -> None:
        if i not in self.actors:
            return
        del self.actors[i]
        self.load.pop(i, None)
        node = self.info.get(i, {}).get("node", "?")
        left = len(self.actors)
        if left:
            self.warn(
                f"Ray scoring actor {i + 1} of {self.started} was lost (node {node[:12]}: {_first_line(exc)}); "
                f"its unfinished batches are retried on the {left} actor{'s' if left > 1 else ''} left"
            )

    def score_chunks(self, chunks: Iterator[Chunk], schema: pa.Schema) -> Iterator[tuple[Chunk, pa.Table, list]]:
        """`pipeline.ChunkScorer`: each chunk's sentences scored by the actors, chunks back in order."""
        ray = self.ray
        self.wait_ready()
        rounds: deque[_Round] = deque()
        todo: deque[tuple[_Round, int, Chunk, int]] = deque()  # (round, slice no, slice, attempts so far)
        flying: dict = {}  # ref -> (actor, round, slice no, slice, attempts)
        source = iter(chunks)
        exhausted = False
        while True:
            while not exhausted and len(rounds) < OPEN_CHUNKS and len(todo) < INFLIGHT * max(1, len(self.actors)):
                waited = time.perf_counter()
                chunk = next(source, None)
                self.timings["driver_input_wait_s"] += time.perf_counter() - waited
                if chunk is None:
                    exhausted = True
                    break
                n = len(chunk.text)
                bounds = [(a, min(a + self.batch_size, n)) for a in range(0, n, self.batch_size)]
                r = _Round(chunk, [None] * len(bounds), len(bounds))
                rounds.append(r)
                todo.extend((r, k, slice_chunk(chunk, a, b), 0) for k, (a, b) in enumerate(bounds))
            while todo and self.actors:
                i = min(self.load, key=self.load.get)
                if self.load[i] >= INFLIGHT:
                    break
                r, k, part, attempts = todo.popleft()
                flying[self.actors[i].score.remote(part, schema)] = (i, r, k, part, attempts)
                self.load[i] += 1
            while rounds and rounds[0].missing == 0:
                yield _finish(rounds.popleft(), schema, self.n_targets)
            if exhausted and not rounds:
                return
            if not flying:
                if not self.actors:
                    raise RayEngineError(
                        f"all {self.started} Ray scoring actors were lost; no actor is left to score on"
                    )
                continue
            waited = time.perf_counter()
            done, _ = ray.wait(list(flying), num_returns=1)
            self.timings["driver_result_wait_s"] += time.perf_counter() - waited
            for ref in done:
                i, r, k, part, attempts = flying.pop(ref)
                if i in self.load:
                    self.load[i] -= 1
                try:
                    table, label_ids, busy = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
                    if isinstance(exc, ray.exceptions.RayActorError):
                        self._lose(i, exc)
                    if attempts + 1 >= MAX_ATTEMPTS:
                        raise RayEngineError(
                            f"a batch of {len(part.text)} sentences was lost {MAX_ATTEMPTS} times "
                            f"(last: {_first_line(exc)})"
                        ) from None
                    if not self.actors:
                        raise RayEngineError(
                            f"all {self.started} Ray scoring actors were lost (last: {_first_line(exc)})"
                        ) from None
                    todo.appendleft((r, k, part, attempts + 1))
                    continue
                except ray.exceptions.RayTaskError as exc:
                    raise RayEngineError(f"a Ray scoring actor failed: {_first_line(exc.cause or exc)}") from None
                if table.num_rows != len(part.text) or any(len(ids) != len(part.text) for ids in label_ids):
                    raise RayEngineError(
                        f"a Ray scoring actor returned {table.num_rows} rows for "
                        f"{len(part.text)} sentences; nothing of that chunk was written"
                    )
                r.results[k] = (table, label_ids)
                r.missing -= 1
                self.timings["actor_busy_s"] += busy
                self.timings["slices"] += 1


def _finish(r: _Round, schema: pa.Schema, n_targets: int) -> tuple[Chunk, pa.Table, list[np.ndarray]]:
    """A chunk's slices put back together, checked against what the chunk holds."""
    if r.results:
        table = pa.concat_tables([t for t, _ in r.results]).cast(schema)
        label_ids = [np.concatenate([ids[j] for _, ids in r.results]) for j in range(len(r.results[0][1]))]
    else:  # a chunk of rejects only
        table, label_ids = schema.empty_table(), [np.zeros(0, dtype=np.int64) for _ in range(n_targets)]
    expected = sum(n for _, _, n in r.chunk.docs)
    if table.num_rows != len(r.chunk.text) or table.num_rows != expected:
        raise RayEngineError(
            f"a chunk came back with {table.num_rows} rows for {len(r.chunk.text)} sentences "
            f"({expected} by its documents); nothing of it was written"
        )
    return r.chunk, table, label_ids


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _cause_line(exc: BaseException) -> str:
    """The exception line ("FileNotFoundError: ...") of an error Ray reports with the remote traceback,
    where the first line only says that the actor's creation task failed; else the first line."""
    for line in reversed(str(exc).strip().splitlines()):
        name = line.strip().split(":", 1)[0]
        if ":" in line and name.replace(".", "").replace("_", "").isalnum() and name.endswith(("Error", "Exception")):
            return line.strip()[:300]
    return _first_line(exc)


def _stderr(message: str) -> None:
    print(f"stancewatch: {message}", file=sys.stderr, flush=True)


# ---- the job ------------------------------------------------------------------------------------


def score_ray(
    inputs: list[Path],
    out: Path,
    model_folder: str | Path,
    *,
    tag: str | None = None,
    backend: str = "auto",
    ray_address: str | None = None,
    num_actors: int | None = None,
    threads: int | None = None,
    batch_size: int = PREDICT_BATCH,
    on_start: Callable[[int], None] | None = None,
    on_chunk: Callable[[ChunkDone], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    **options,
) -> ScoreResult:
    """Score `inputs` with the model exported in `model_folder` on Ray; the same job, files and `resume`
    as `pipeline.score`, with the model call on Ray actors.

    Uses the running Ray if this process is connected, else connects to `ray_address` or starts a
    private local Ray (and shuts down what it started or connected). `num_actors` and `threads`: see
    `plan_actors`. `options` are `JobOptions` fields. `elapsed_s` includes the actors' start-up and
    model load."""
    opts = JobOptions(**options)
    inputs, out = check_job(inputs, out, opts.unit, opts.doc_summary)  # bad arguments fail before Ray is touched
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if num_actors is not None and num_actors < 1:
        raise ValueError("--ray-actors must be at least 1")
    threads = threads or settings.get("THREADS")  # SettingError (a ValueError) names a bad value
    from stancewatch.model.schema import Schema

    model_schema = Schema.load(Path(model_folder) / "schema.json")
    tag = tag or Path(model_folder).name
    ray = _import_ray()
    owned, env = init_ray(ray_address)
    pool = None
    try:
        started = time.perf_counter()
        pool = ActorPool(
            ray,
            model_folder,
            tag,
            backend,
            plan_actors(ray, num_actors, threads),
            batch_size,
            len(model_schema.targets),
            on_warning or _stderr,
        )
        try:
            result = run_job(inputs, out, tag, model_schema, pool.score_chunks, opts, on_start, on_chunk)
        except RayEngineError as exc:
            raise RayEngineError(f"{exc}. {_committed(out)}") from None
        elapsed = time.perf_counter() - started
        timings = {k: round(v, 3) if isinstance(v, float) else v for k, v in pool.timings.items()}
        timings["actors"] = pool.started
        timings["actors_started"] = len(pool.info)
        # Share of the started actors' time (actors x the scoring part of the run) spent scoring.
        scoring = max(1e-9, elapsed - pool.timings["actors_ready_s"])
        timings["actor_utilisation"] = round(pool.timings["actor_busy_s"] / (max(1, len(pool.info)) * scoring), 3)
        return dataclasses.replace(result, elapsed_s=elapsed, timings=timings)
    finally:
        if pool is not None:
            pool.close()
        if owned:
            ray.shutdown()
        _restore(env)


def _committed(out: Path) -> str:
    """What an interrupted run left for --resume."""
    import json

    manifest = out.with_name(out.name + ".parts") / "manifest.json"
    try:
        m = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "Nothing was written; rerun the command."
    return (
        f"{m['items_done']} input records ({m['sentences']} sentences) are committed in {manifest.parent}; "
        "run the same command with --resume to finish (on any engine, same --chunk-size)"
    )
