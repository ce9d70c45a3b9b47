"""`--engine ray`: local-mode Ray Data gives exactly the local engine's output on a small archive."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'ray[data]' to test --engine ray")
pytest.importorskip("ray.data", reason="ray is installed without Ray Data: pip install 'ray[data]'")

from stancewatch.model.predictor import StanceModel  # noqa: E402
from stancewatch.scoring.pipeline import score  # noqa: E402
from stancewatch.scoring.ray_engine import score_ray  # noqa: E402

pytestmark = pytest.mark.slow

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
    lines = [json.dumps({"id": f"j{i}", "text": " ".join(SENTENCES[i:i + 2])}) for i in range(5)]
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


@pytest.fixture(scope="module")
def local_ray():
    """One small local Ray for the module (score_ray uses it and leaves it running)."""
    import os

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


def _assert_same(got_path: Path, want_path: Path) -> None:
    got, want = pq.read_table(got_path), pq.read_table(want_path)
    assert got.schema == want.schema
    got_rows, want_rows = got.to_pylist(), want.to_pylist()
    assert len(got_rows) == len(want_rows) > 0
    for g, w in zip(got_rows, want_rows):
        assert list(g) == list(w)
        for key, value in w.items():
            if key.startswith("p_"):
                assert g[key] == pytest.approx(value, abs=1e-6), key
            else:
                assert g[key] == value, key


@pytest.mark.parametrize("write", ["ray", "driver"])
def test_ray_engine_equals_local_engine(write, tmp_path, tiny_model, local_ray):
    src = _archive(tmp_path)
    model = StanceModel.load(tiny_model.tag)
    want = score([src], tmp_path / "local.parquet", model, doc_summary=tmp_path / "local-docs.parquet")
    # A tiny window and batch: several rounds, several blocks and a document split across batches.
    got = score_ray([src], tmp_path / "ray.parquet", model.folder, tag=model.tag, num_actors=1, threads=1,
                    window=7, batch_size=3, write=write, doc_summary=tmp_path / "ray-docs.parquet")
    assert (got.documents, got.sentences, got.rejected) == (want.documents, want.sentences, want.rejected)
    assert want.rejected >= 3
    _assert_same(tmp_path / "ray.parquet", tmp_path / "local.parquet")
    _assert_same(tmp_path / "ray-docs.parquet", tmp_path / "local-docs.parquet")
    assert (tmp_path / "ray.parquet.rejects.jsonl").read_text() == (tmp_path / "local.parquet.rejects.jsonl").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no parts or temp files left


def test_cli_engine_ray(tmp_path, tiny_model, local_ray):
    from typer.testing import CliRunner

    from stancewatch.cli import app

    src = _archive(tmp_path)
    runner = CliRunner()
    for engine, out in (("local", "local.jsonl"), ("ray", "ray.jsonl")):
        result = runner.invoke(app, ["score", str(src), "--out", str(tmp_path / out), "--model", tiny_model.tag,
                                     "--engine", engine, "--no-progress"])
        assert result.exit_code == 0, result.output
    got = [json.loads(line) for line in (tmp_path / "ray.jsonl").read_text().splitlines()]
    want = [json.loads(line) for line in (tmp_path / "local.jsonl").read_text().splitlines()]
    assert len(got) == len(want) > 0
    for g, w in zip(got, want):
        assert list(g) == list(w)
        assert {k: v for k, v in g.items() if not k.startswith("p_")} == {k: v for k, v in w.items()
                                                                         if not k.startswith("p_")}
        for k in (k for k in w if k.startswith("p_")):
            assert g[k] == pytest.approx(w[k], abs=1e-6)
    assert ray.is_initialized()  # the CLI used the running Ray and left it alone


def test_split_rejects_travel_through_the_actor_step(tiny_model, monkeypatch):
    """Records the splitter fails on become reject rows that the Predictor passes on (no Ray needed)."""
    import pyarrow as pa

    import stancewatch.scoring.pipeline as pipeline
    from stancewatch.scoring.ray_engine import REJECT, Predictor, _records_table, read_model_folder, split_batch

    real = pipeline.split_sentences

    def split(text):
        if "BOOM" in text:
            raise RuntimeError("segmenter failed")
        return real(text)

    monkeypatch.setattr(pipeline, "split_sentences", split)
    model = StanceModel.load(tiny_model.tag)
    records = _records_table([{"_item": 0, "doc_id": "a", "source": "s", "record_no": 1, "text": SENTENCES[0]},
                              {"_item": 1, "doc_id": "b", "source": "s", "record_no": 2, "text": "BOOM. BOOM."},
                              {"_item": 2, "doc_id": "c", "source": "s", "record_no": 3,
                               "text": " ".join(SENTENCES[1:3])}])
    rows = split_batch(records, "document")
    assert rows.column("_item").to_pylist() == [0, 1, 2, 2]
    scored = Predictor(read_model_folder(model.folder), model.tag, threads=1)(rows)
    bad = scored.filter(scored.column(REJECT).is_valid()).to_pylist()
    assert [(r["_item"], r["source"], r["_record_no"], r[REJECT]) for r in bad] == [
        (1, "s", 2, "cannot split: segmenter failed")]
    good = scored.filter(pa.compute.invert(scored.column(REJECT).is_valid()))
    probs, _ = model.predict_arrays(SENTENCES[:3], [None, None, SENTENCES[1]])
    name = model.schema.targets[0].name
    assert good.column("text").to_pylist() == SENTENCES[:3]
    assert good.column(f"p_{name}_{model.schema.targets[0].labels[0]}").to_pylist() == pytest.approx(
        [float(p) for p in probs[0][:, 0]], abs=1e-6)
