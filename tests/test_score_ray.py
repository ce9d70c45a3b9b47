"""`--engine ray`: the local engine's job and files, with the model on Ray actors.

In-process tests use a small Ray started by this module (HOME and Ray's temp dir isolated, so no
~/.ray/auth_token or /tmp/ray session is left behind). The cluster tests start a real two-node
cluster on 127.0.0.1 (`ray start --head` plus `ray start --address`, one CPU each, each node its
own temp dir and object store), drive it through `--ray-address auto` and the `ray://` client as
the README says, stop the worker node during a run, and stop both nodes by the PIDs they started.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'stancewatch[ray]' to test --engine ray")

from stancewatch.model.predictor import StanceModel  # noqa: E402
from stancewatch.scoring.pipeline import score  # noqa: E402
from stancewatch.scoring.ray_engine import RayEngineError, score_ray  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).parent / "ray"
SENTENCES = [
    "Tokyo will not retract the prime minister's remarks on Taiwan.",
    "Beijing demanded that Japan correct its erroneous statement.",
    "The yen edged lower against the dollar on Monday.",
    "Mr. Smith said so in Jan. at the U.S. embassy.",
    "Peace in the Taiwan Strait matters to Japan's own security.",
    "The festival drew a record crowd this weekend.",
]


def _archive(folder: Path) -> Path:
    """A .tar.gz of ten articles, one JSONL file (with bad records) and an unsupported member."""
    members = []
    for i in range(10):
        text = " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(1 + i % 4))
        members.append((f"articles/{i:02d}.txt", text.encode()))
    lines = [json.dumps({"id": f"j{i}", "text": " ".join(SENTENCES[i : i + 2])}) for i in range(5)]
    lines.insert(2, '{"id": "broken", "text": ')  # invalid JSON: rejected by the reader
    lines.insert(4, json.dumps({"id": "empty", "text": "  "}))
    lines.append(json.dumps({"id": "punct", "text": "..."}))  # may split into nothing
    members.append(("more/news.jsonl", ("\n".join(lines) + "\n").encode()))
    members.append(("notes.bin", b"\x00\x01"))
    path = folder / "news.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _many(path: Path, n: int) -> Path:
    """`n` JSONL articles of 2-5 sentences (enough chunks to stop a node in the middle of a run)."""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(
                json.dumps({"id": f"m{i}", "text": " ".join(SENTENCES[(i + k) % 6] for k in range(2 + i % 4))}) + "\n"
            )
    return path


def _ray_env(home: Path, tmp: Path) -> dict[str, str]:
    """An environment whose Ray state (auth token, sessions, address file) lives under `home`/`tmp`."""
    env = dict(os.environ)
    env.update(
        {
            "HOME": str(home),
            "RAY_TMPDIR": str(tmp),
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "STANCEWATCH_THREADS": "1",
            "PYTHONPATH": str(REPO),
        }
    )
    env.pop("RAY_ADDRESS", None)
    return env


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One small Ray for the module's in-process tests, its state isolated; shut down at the end."""
    root = Path(tempfile.mkdtemp(prefix="swray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    saved = {k: os.environ.get(k) for k in ("HOME", "RAY_TMPDIR", "RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    (root / "home").mkdir()
    os.environ.update(
        {
            "HOME": str(root / "home"),
            "RAY_TMPDIR": str(root),
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    shutil.rmtree(root, ignore_errors=True)


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return pq.read_table(path).to_pylist()


def _assert_same(got_path: Path, want_path: Path) -> None:
    got, want = _rows(got_path), _rows(want_path)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert list(g) == list(w)
        for key, value in w.items():
            if key.startswith("p_") and value is not None:
                assert g[key] == pytest.approx(value, abs=1.5e-6), key  # rounded to 6 places: one step apart at most
            else:
                assert g[key] == value, key


def _assert_same_files(got: Path, want: Path, docs: bool = True) -> None:
    _assert_same(got, want)
    if docs:
        _assert_same(got.with_name("docs-" + got.name), want.with_name("docs-" + want.name))
    assert (
        got.with_name(got.name + ".rejects.jsonl").read_text()
        == want.with_name(want.name + ".rejects.jsonl").read_text()
    )


def _both_engines(tmp_path: Path, src: Path, model, **options):
    """The same job on the local engine (local.parquet) and on two one-thread Ray actors with slices of
    3 sentences (ray.parquet), each with its document summary; returns (local result, Ray result)."""
    want = score([src], tmp_path / "local.parquet", model, doc_summary=tmp_path / "docs-local.parquet", **options)
    got = score_ray(
        [src],
        tmp_path / "ray.parquet",
        model.folder,
        tag=model.tag,
        num_actors=2,
        threads=1,
        batch_size=3,
        doc_summary=tmp_path / "docs-ray.parquet",
        **options,
    )
    return want, got


# ---- in-process: one small Ray ------------------------------------------------------------------


def test_ray_engine_writes_the_local_engines_files(tmp_path, tiny_model, local_ray):
    src = _archive(tmp_path)
    model = StanceModel.load(tiny_model.tag)
    copies = set(Path(tempfile.gettempdir()).glob("stancewatch-model-*"))  # actors' model folders
    # Chunks of 4 records and slices of 3 sentences: documents cut across slices and actors.
    want, got = _both_engines(tmp_path, src, model, chunk_size=4)
    assert (got.documents, got.sentences, got.rejected) == (want.documents, want.sentences, want.rejected)
    assert want.rejected >= 3
    # The time breakdown covers every slice and both actors.
    t = got.timings
    assert t["actors"] == 2 and len(t["model_load_s"]) == 2 and t["slices"] >= -(-want.sentences // 3)
    assert 0 < t["actor_busy_s"] and 0 < t["actor_utilisation"] <= 1
    _assert_same_files(tmp_path / "ray.parquet", tmp_path / "local.parquet")
    # The same writer: the assembled file's row groups, statistics and metadata are the local engine's.
    g, w = pq.ParquetFile(tmp_path / "ray.parquet").metadata, pq.ParquetFile(tmp_path / "local.parquet").metadata
    assert g.num_row_groups == w.num_row_groups
    text = g.schema.names.index("text")
    assert not g.row_group(0).column(text).is_stats_set  # no min/max of the text columns (memory, see writer)
    assert json.loads(g.metadata[b"stancewatch"])["model"] == model.tag
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") or p.name.endswith(".parts")]
    # ray.kill runs no exit handler in an actor: each actor removes its model copy once loaded.
    assert set(Path(tempfile.gettempdir()).glob("stancewatch-model-*")) <= copies


def test_an_actor_that_cannot_start_is_left_out_when_another_did(tmp_path, tiny_model, local_ray, monkeypatch):
    """One actor whose model does not load is reported and left out, and the run finishes on the
    other with the local engine's output; when no actor starts, the run stops with the reason."""
    from stancewatch.scoring import ray_engine

    src = _archive(tmp_path)
    model = StanceModel.load(tiny_model.tag)
    score([src], tmp_path / "local.parquet", model)
    # threads=-1: torch.set_num_threads raises in that actor's __init__, after its process started
    # (the tiny model runs on torch; an OpenVINO model would fail elsewhere, with another message).
    for case, threads in {"one-bad": [1, -1], "all-bad": [-1, -1]}.items():
        plan = [{"num_cpus": 1, "threads": k} for k in threads]
        monkeypatch.setattr(ray_engine, "plan_actors", lambda ray, n, t, plan=plan: plan)
        warnings: list[str] = []
        out = tmp_path / f"{case}.parquet"
        run = dict(tag=model.tag, batch_size=3, on_warning=warnings.append)
        if case == "one-bad":
            got = score_ray([src], out, model.folder, **run)
            assert got.timings["actors"] == 2 and got.timings["actors_started"] == len(got.timings["model_load_s"]) == 1
            assert 0 < got.timings["actor_utilisation"] <= 1  # of the one actor that scored
            _assert_same(out, tmp_path / "local.parquet")
            assert len(warnings) == 1, warnings
            assert "scoring actor 2 of 2 could not start: RuntimeError: set_num_threads" in warnings[0]
            assert "scoring goes on with the 1 actor left" in warnings[0]
        else:
            with pytest.raises(
                RayEngineError,
                match=r"no scoring actor could start \(2 tried\); the last: RuntimeError: set_num_threads",
            ):
                score_ray([src], out, model.folder, **run)
            assert not warnings and not out.exists() and not out.with_name(out.name + ".parts").exists()


def test_ray_engine_carries_kept_fields_and_rejects_like_the_local_engine(tmp_path, tiny_model, local_ray):
    # --keep-fields through the Ray engine: the same columns, values and rejects as the local engine.
    src = tmp_path / "kept.jsonl"
    records = [
        {
            "id": f"k{i}",
            "text": " ".join(SENTENCES[i % 6 : i % 6 + 2]),
            "date": f"2026-11-{10 + i:02d}",
            "outlet": f"o{i % 3}",
        }
        for i in range(9)
    ]
    records[3]["date"] = "last Tuesday"  # not ISO 8601: a reject naming the field
    del records[5]["outlet"]  # missing: a reject naming the field
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    model = StanceModel.load(tiny_model.tag)
    want, got = _both_engines(tmp_path, src, model, chunk_size=4, keep_fields=("date", "outlet"))
    assert (
        (got.documents, got.sentences, got.rejected)
        == (want.documents, want.sentences, want.rejected)
        == (
            7,
            want.sentences,
            2,
        )
    )
    _assert_same_files(tmp_path / "ray.parquet", tmp_path / "local.parquet")
    rows = _rows(tmp_path / "ray.parquet")
    assert {r["outlet"] for r in rows} == {"o0", "o1", "o2"} and "2026-11-10" in {r["date"] for r in rows}
    rejects = (tmp_path / "ray.parquet.rejects.jsonl").read_text()
    assert "date" in rejects and "outlet" in rejects


def test_ray_run_resumes_after_a_crash(tmp_path, tiny_model, local_ray, monkeypatch):
    import stancewatch.scoring.writer as writer

    src = _archive(tmp_path)
    model = StanceModel.load(tiny_model.tag)
    score([src], tmp_path / "local.parquet", model, chunk_size=3, doc_summary=tmp_path / "docs-local.parquet")
    real, calls = writer._write_json_atomic, {"n": 0}

    def crash_on_fourth_manifest(path, data):
        calls["n"] += 1
        if calls["n"] == 4:  # 1: the empty manifest, 2-3: two chunks, then the driver dies
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(writer, "_write_json_atomic", crash_on_fourth_manifest)
    kwargs = dict(
        tag=model.tag, num_actors=1, threads=1, chunk_size=3, batch_size=4, doc_summary=tmp_path / "docs-ray.parquet"
    )
    with pytest.raises(KeyboardInterrupt):
        score_ray([src], tmp_path / "ray.parquet", model.folder, **kwargs)
    monkeypatch.setattr(writer, "_write_json_atomic", real)
    with pytest.raises(Exception, match="--resume"):  # an unfinished run is never overwritten silently
        score_ray([src], tmp_path / "ray.parquet", model.folder, **kwargs)
    result = score_ray([src], tmp_path / "ray.parquet", model.folder, resume=True, **kwargs)
    assert result.items_resumed == 6
    _assert_same_files(tmp_path / "ray.parquet", tmp_path / "local.parquet")


class ShortScorer:
    """A broken replica that drops the last row of every slice (stands in for lost rows)."""

    def __init__(self, *args, **kwargs):
        from stancewatch.scoring.ray_engine import Scorer

        self.inner = Scorer(*args, **kwargs)

    def ready(self):
        return self.inner.ready()

    def score(self, chunk, schema):
        table, ids, busy = self.inner.score(chunk, schema)
        return table.slice(0, max(table.num_rows - 1, 0)), [i[:-1] for i in ids], busy


def test_a_short_result_stops_the_run_and_writes_nothing(tmp_path, tiny_model, local_ray, monkeypatch):
    from ray import cloudpickle

    import stancewatch.scoring.ray_engine as engine

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    monkeypatch.setattr(engine, "Scorer", ShortScorer)
    src = _archive(tmp_path)
    model = StanceModel.load(tiny_model.tag)
    with pytest.raises(RayEngineError, match=r"returned \d+ rows for \d+ sentences") as err:
        score_ray([src], tmp_path / "ray.parquet", model.folder, tag=model.tag, num_actors=1, threads=1)
    assert "Nothing was written" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["news.tar.gz"]


def test_bad_thread_setting_is_named(tmp_path, tiny_model, monkeypatch):
    from stancewatch.settings import SettingError

    monkeypatch.setenv("STANCEWATCH_THREADS", "0")
    src = _archive(tmp_path)
    with pytest.raises(SettingError, match="STANCEWATCH_THREADS='0' is too small"):
        score_ray([src], tmp_path / "ray.parquet", StanceModel.load(tiny_model.tag).folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["news.tar.gz"]


def test_too_many_actors_for_the_cluster_is_named(tmp_path, tiny_model, local_ray):
    src = _archive(tmp_path)
    with pytest.raises(RayEngineError, match=r"--ray-actors 3 with 1 threads each .* needs 3 CPUs; the cluster has 2"):
        score_ray([src], tmp_path / "ray.parquet", StanceModel.load(tiny_model.tag).folder, num_actors=3, threads=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["news.tar.gz"]


# ---- the command line in fresh processes --------------------------------------------------------


def _cli(args: list[str], env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stancewatch.cli", "score", *args, "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def test_unreachable_ray_is_a_clear_error_and_leaves_nothing(tmp_path, tiny_model):
    src = _archive(tmp_path)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _ray_env(tmp_path / "home", tmp_path)
    r = _cli(
        [
            str(src),
            "--out",
            str(tmp_path / "o.parquet"),
            "--model",
            tiny_model.tag,
            "--engine",
            "ray",
            "--ray-address",
            f"127.0.0.1:{port}",
        ],
        env,
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"cannot reach Ray at 127.0.0.1:{port}: nothing answers" in r.stdout + r.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "home") == ["news.tar.gz"]


def test_a_model_the_actors_could_not_load_fails_in_the_driver_before_ray(tmp_path, tiny_model):
    """The driver no longer builds the model, but still checks its files: a missing version or file is
    named before Ray is touched (the address below answers nothing, so reaching Ray would say that)."""
    src = _archive(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = _ray_env(tmp_path / "home", tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model.folder, broken)
    (broken / "schema.json").unlink()
    cases = [
        (["--model", "stancewatch:nosuchversion"], "nosuchversion"),
        (["--model", str(broken)], "schema.json is missing"),
        (["--model", tiny_model.tag, "--backend", "openvino"], "the version was not exported for OpenVINO"),
    ]
    for extra, message in cases:
        args = [str(src), "--out", str(tmp_path / "o.parquet"), "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"]
        r = _cli(args + extra, env)
        assert r.returncode == 1, (extra, r.stdout + r.stderr)
        assert message in r.stdout + r.stderr and "cannot reach Ray" not in r.stdout + r.stderr, r.stderr[-500:]
        assert not (tmp_path / "o.parquet").exists()


def test_private_local_ray_leaves_no_auth_token(tmp_path, tiny_model):
    """A Ray started for one run must not write ~/.ray/auth_token: later `ray start`s would pick it up."""
    src = _archive(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    ray_tmp = Path(tempfile.mkdtemp(prefix="swray-", dir="/tmp"))
    env = _ray_env(home, ray_tmp)
    env.pop("RAY_AUTH_MODE")  # Ray's default: token authentication for a new local cluster
    try:
        r = _cli([str(src), "--out", str(tmp_path / "ray.jsonl"), "--model", tiny_model.tag, "--engine", "ray"], env)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not (home / ".ray" / "auth_token").exists()
    model = StanceModel.load(tiny_model.tag)
    score([src], tmp_path / "local.jsonl", model)
    _assert_same_files(tmp_path / "ray.jsonl", tmp_path / "local.jsonl", docs=False)


# ---- a real two-node cluster --------------------------------------------------------------------


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    """`ray start --head` and `ray start --address` on 127.0.0.1, one CPU each, each in its own process
    group (`--block`), so that stopping a node is one killpg of the PID we started."""

    def __init__(self, root: Path, token: str | None = None):
        self.root, self.token = root, token
        self.home = root / "home"
        self.home.mkdir()
        self.procs: dict[str, subprocess.Popen] = {}
        self.port, self.client_port = _free_ports(2)
        self.address = f"127.0.0.1:{self.port}"
        # Node death is noticed after failed health checks (default 5 x 3 s); faster here.
        self.health = {
            "RAY_health_check_period_ms": "500",
            "RAY_health_check_failure_threshold": "4",
            "RAY_health_check_timeout_ms": "500",
        }

    def env(self, node: str, token: str | None = None) -> dict[str, str]:
        """`node`'s environment; with token authentication, every node and the driver get `token`
        (the cluster's own by default) in RAY_AUTH_TOKEN, as the README tells a cluster's users."""
        (self.root / node).mkdir(exist_ok=True)
        env = {**_ray_env(self.home, self.root / node), **self.health}
        if self.token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token or self.token)
        return env

    def _node_ports(self) -> list[str]:
        a, b, c, d = _free_ports(4)
        return [
            f"--dashboard-agent-listen-port={a}",
            f"--dashboard-agent-grpc-port={b}",
            f"--runtime-env-agent-port={c}",
            f"--metrics-export-port={d}",
        ]

    def start(self, node: str, args: list[str]) -> None:
        log = open(self.root / f"{node}.log", "wb")
        cmd = [
            str(RAY),
            "start",
            "--block",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            "--object-store-memory=150000000",
            "--disable-usage-stats",
            *self._node_ports(),
            *args,
        ]
        self.procs[node] = subprocess.Popen(
            cmd, env=self.env(node), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root
        )

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        probe = (
            "import ray,sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
            "print(sum(1 for x in ray.nodes() if x['Alive']))"
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            for node, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{node} exited: {(self.root / f'{node}.log').read_text()[-3000:]}")
            r = subprocess.run(
                [sys.executable, "-c", probe, self.address],
                env=self.env("driver"),
                capture_output=True,
                text=True,
                timeout=60,
            )
            if r.returncode == 0 and r.stdout.strip().splitlines()[-1:] == [str(n)]:
                return
            time.sleep(1)
        raise RuntimeError(f"cluster did not reach {n} nodes: {(self.root / 'head.log').read_text()[-3000:]}")

    def stop(self, node: str) -> None:
        p = self.procs.pop(node, None)
        if p is None or p.poll() is not None:
            return
        # The node's raylet, GCS and agents share `ray start`'s process group, but each worker process
        # (the scoring actors) puts itself in a group of its own: a killpg alone left the worker
        # node's actor scoring for seconds after its raylet was gone, and in CI the whole run ended
        # with no actor lost. A machine that dies takes all of them, so this stops them all, by PID.
        kids = psutil.Process(p.pid).children(recursive=True)
        os.killpg(p.pid, signal.SIGKILL)
        for kid in kids:
            with contextlib.suppress(psutil.NoSuchProcess):
                kid.kill()
        p.wait(30)
        psutil.wait_procs(kids, timeout=30)


@contextlib.contextmanager
def _cluster(token: str | None = None):
    root = Path(tempfile.mkdtemp(prefix="swrc-", dir="/tmp"))
    c = Cluster(root, token)
    try:
        c.start(
            "head",
            ["--head", f"--port={c.port}", f"--ray-client-server-port={c.client_port}", "--include-dashboard=false"],
        )
        c.start("worker", [f"--address={c.address}"])
        c.wait_nodes(2)
        yield c
    finally:
        for node in list(c.procs):
            c.stop(node)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cluster(tiny_model):
    with _cluster() as c:
        yield c


def test_token_authenticated_cluster_needs_the_token(tmp_path, tiny_model):
    # Token authentication, set up as the README says: the same token on every node and the driver.
    import secrets

    src = _archive(tmp_path)
    model = StanceModel.load(tiny_model.tag)
    score([src], tmp_path / "local.parquet", model, doc_summary=tmp_path / "docs-local.parquet")
    args = [str(src), "--model", tiny_model.tag, "--engine", "ray", "--ray-actors", "2"]
    with _cluster(token=secrets.token_hex(32)) as c:
        out = tmp_path / "ray.parquet"
        r = _cli(
            [*args, "--out", str(out), "--doc-summary", str(tmp_path / "docs-ray.parquet"), "--ray-address", c.address],
            c.env("driver"),
        )
        assert r.returncode == 0, r.stdout + r.stderr
        _assert_same_files(out, tmp_path / "local.parquet")
        # A driver holding another token is refused, with Ray's message naming the token, and writes nothing.
        bad = tmp_path / "bad.parquet"
        r = _cli([*args, "--out", str(bad), "--ray-address", c.address], c.env("driver", token=secrets.token_hex(32)))
        assert r.returncode != 0
        last = (r.stdout + r.stderr).strip().splitlines()[-1]
        assert last.startswith("error: cannot start or reach Ray") and "RAY_AUTH_TOKEN" in last, last
        assert not bad.exists() and not bad.with_name(bad.name + ".parts").exists()


def test_two_node_cluster_auto_and_client_equal_the_local_engine(tmp_path, tiny_model, cluster):
    src = _archive(tmp_path)
    model = StanceModel.load(tiny_model.tag)
    score([src], tmp_path / "local.parquet", model, doc_summary=tmp_path / "docs-local.parquet")
    env = cluster.env("head")  # the driver on the head node: `auto` finds the cluster in RAY_TMPDIR
    for name, address in (("auto", "auto"), ("client", f"ray://127.0.0.1:{cluster.client_port}")):
        out = tmp_path / f"{name}.parquet"
        r = _cli(
            [
                str(src),
                "--out",
                str(out),
                "--model",
                tiny_model.tag,
                "--engine",
                "ray",
                "--ray-address",
                address,
                "--ray-actors",
                "2",
                "--chunk-size",
                "4",
                "--doc-summary",
                str(tmp_path / f"docs-{name}.parquet"),
            ],
            env,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        _assert_same_files(out, tmp_path / "local.parquet")


def test_worker_node_lost_mid_run(tmp_path, tiny_model, cluster):
    """Stop the worker node while a run is scoring: its batches are retried on the head's actor, the
    user is told, and the output is complete and equal to the local engine's."""
    src = _many(tmp_path / "many.jsonl", 1500)
    out = tmp_path / "ray.parquet"
    cmd = [
        sys.executable,
        "-m",
        "stancewatch.cli",
        "score",
        str(src),
        "--out",
        str(out),
        "--model",
        tiny_model.tag,
        "--engine",
        "ray",
        "--ray-address",
        "auto",
        "--ray-actors",
        "2",
        "--chunk-size",
        "10",
        "--no-progress",
    ]
    log = open(tmp_path / "run.log", "w+")
    run = subprocess.Popen(cmd, env=cluster.env("head"), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        manifest = out.with_name(out.name + ".parts") / "manifest.json"
        deadline = time.time() + 180
        while time.time() < deadline and run.poll() is None:
            try:
                if json.loads(manifest.read_text())["items_done"] >= 100:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        assert run.poll() is None, "the run ended before the node could be stopped: " + Path(log.name).read_text()
        cluster.stop("worker")
        assert run.wait(240) == 0, Path(log.name).read_text()
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    text = Path(log.name).read_text()
    print(text)  # what the user saw (pytest -s shows it)
    assert "Ray scoring actor" in text and "was lost" in text and "retried on the 1 actor left" in text, text
    score([src], tmp_path / "local.parquet", StanceModel.load(tiny_model.tag))
    _assert_same(out, tmp_path / "local.parquet")


def test_actors_get_the_fp32_ir_with_int8(tmp_path):
    from stancewatch.scoring.ray_engine import needed_files

    files = ["model.safetensors", "tokenizer.json", "openvino/model.xml", "openvino/model.bin"]
    files += ["openvino/model_int8.xml", "openvino/model_int8.bin", "eval/report.json", "data/train.jsonl"]
    shipped = {}
    for name, runtime in {
        "int8": {"backend": "openvino", "precision": "int8"},
        "int8+rescue": {"backend": "openvino", "precision": "int8", "rescue_margin": {"t": 0.05}},
        "bf16": {"backend": "openvino", "precision": "bf16"},
    }.items():
        (tmp_path / "stancewatch.json").write_text(json.dumps({"runtime": runtime}))
        keep = needed_files(tmp_path)
        shipped[name] = {f for f in files if keep(f)}
    ov = {f for f in files if f.startswith("openvino/")}
    # int8 ships the fp32 IR too: an actor on a CPU without VNNI/AMX runs that instead (run_precision).
    assert shipped["int8"] & ov == ov
    assert shipped["int8+rescue"] & ov == ov
    assert shipped["bf16"] & ov == {"openvino/model.xml", "openvino/model.bin"}
    assert all(
        "tokenizer.json" in s and "model.safetensors" not in s and "eval/report.json" not in s for s in shipped.values()
    )


def test_actors_use_the_drivers_batch_budget(tmp_path, tiny_model, monkeypatch):
    """A remote node has its own environment: the driver's STANCEWATCH_BATCH_TOKENS travels with the actor."""
    from stancewatch.scoring.ray_engine import Scorer, as_arrays, read_model_folder, write_model_folder

    for name in ("RAYON_NUM_THREADS", "RAYON_RS_NUM_CPUS", "OMP_NUM_THREADS"):  # the actor caps these
        monkeypatch.setenv(name, os.environ.get(name, "1"))
    monkeypatch.delenv("STANCEWATCH_BATCH_TOKENS", raising=False)
    # The driver ships read-only uint8 arrays (what Ray hands an actor); they must write back byte for byte.
    raw = read_model_folder(tiny_model.folder, "torch")
    files = as_arrays(raw)
    assert not any(a.flags.writeable for a in files.values())
    copy = write_model_folder(files, tmp_path / "copy")
    assert {rel: (copy / rel).read_bytes() for rel in raw} == raw
    assert Scorer(files, tiny_model.tag, "torch", 1, 640).model.max_tokens == 640
    assert Scorer(files, tiny_model.tag, "torch", 1).model.max_tokens == 2048
