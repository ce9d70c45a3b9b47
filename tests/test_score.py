"""Batch scoring: every input kind, rejects, output values, archive safety, and resume after SIGKILL."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stancewatch.model.predictor import StanceModel
from stancewatch.model.splitter import split_sentences, with_context
from stancewatch.scoring.pipeline import score
from stancewatch.scoring.readers import ReadOptions, Record, Reject, iter_items
from stancewatch.scoring.writer import OutputError

REPO = Path(__file__).resolve().parent.parent
ARTICLES = [
    (
        "a1",
        "Tokyo will not retract the prime minister's remarks on Taiwan. Beijing demanded a correction. "
        "The yen edged lower on Monday.",
    ),
    ("a2", "The remarks were reckless and must be withdrawn. Mr. Smith said so in Jan. at the U.S. embassy."),
    ("a3", "Peace in the Taiwan Strait matters to Japan's own security."),
]


@pytest.fixture(scope="module")
def model(tiny_model) -> StanceModel:
    return StanceModel.load(tiny_model.tag)


def _jsonl_bytes(rows) -> bytes:
    return "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows).encode()


def _csv_bytes(rows) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["id", "text"])
    w.writerows(rows)
    return buf.getvalue().encode()


def _parquet_bytes(rows) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": [i for i, _ in rows], "text": [t for _, t in rows]}), buf)
    return buf.getvalue()


def _make_input(kind: str, folder: Path) -> Path:
    """The three ARTICLES as one input of `kind`; ids a1..a3 (for text files: their relative paths)."""
    if kind == "jsonl":
        (path := folder / "in.jsonl").write_bytes(_jsonl_bytes(ARTICLES))
    elif kind == "jsonl.gz":
        (path := folder / "in.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(ARTICLES)))
    elif kind == "jsonl.zst":
        import zstandard

        (path := folder / "in.ndjson.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl_bytes(ARTICLES)))
    elif kind == "csv":
        (path := folder / "in.csv").write_bytes(_csv_bytes(ARTICLES))
    elif kind == "parquet":
        (path := folder / "in.parquet").write_bytes(_parquet_bytes(ARTICLES))
    elif kind == "folder":
        path = folder / "articles"
        (path / "sub").mkdir(parents=True)
        (path / "a1.txt").write_text(ARTICLES[0][1], encoding="utf-8")
        (path / "a2.md").write_text(ARTICLES[1][1], encoding="utf-8")
        (path / "sub" / "a3.txt").write_text(ARTICLES[2][1], encoding="utf-8")
    elif kind == "zip":
        path = folder / "in.zip"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("a1.txt", ARTICLES[0][1])
            zf.writestr("more.jsonl", _jsonl_bytes(ARTICLES[1:2]))
            zf.writestr("d/rest.parquet", _parquet_bytes(ARTICLES[2:]))
    elif kind in ("tar", "tar.gz"):
        path = folder / f"in.{kind}"
        with tarfile.open(path, "w:gz" if kind == "tar.gz" else "w") as tf:
            for name, data in [
                ("a1.txt", ARTICLES[0][1].encode()),
                ("more.csv", _csv_bytes(ARTICLES[1:2])),
                ("d/rest.jsonl.gz", gzip.compress(_jsonl_bytes(ARTICLES[2:]))),
            ]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    else:
        raise ValueError(kind)
    return path


def _expected(model: StanceModel, articles) -> list[dict]:
    """What the service computes: split each article, read each sentence with the one before."""
    rows = []
    for doc_id, text in articles:
        parts = split_sentences(text)
        preds = model.predict([s.text for s in parts], with_context(parts))
        for s, p in zip(parts, preds):
            row = {
                "doc_id": doc_id,
                "sentence_index": s.index,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "truncated": p.truncated,
            }
            for name, st in p.stances.items():
                row[name] = st.label
                row.update({f"p_{name}_{lab}": v for lab, v in st.probs.items()})
            rows.append(row)
    return rows


def _assert_rows_match(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for key, value in w.items():
            if key.startswith("p_"):
                assert g[key] == pytest.approx(value, abs=2e-6), key
            else:
                assert g[key] == value, key


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "jsonl.zst", "csv", "parquet", "folder", "zip", "tar", "tar.gz"])
def test_every_input_kind_scores_like_the_model(kind, tmp_path, model):
    src = _make_input(kind, tmp_path)
    out = tmp_path / "out.parquet"
    result = score([src], out, model)
    assert (result.documents, result.rejected) == (3, 0)
    rows = pq.read_table(out).to_pylist()
    ids = {
        "folder": ["a1.txt", "a2.md", "sub/a3.txt"],
        "zip": ["a1.txt", "a2", "a3"],
        "tar": ["a1.txt", "a2", "a3"],
        "tar.gz": ["a1.txt", "a2", "a3"],
    }.get(kind, ["a1", "a2", "a3"])
    want = _expected(model, [(i, t) for i, (_, t) in zip(ids, ARTICLES)])
    _assert_rows_match(rows, want)
    assert result.sentences == len(want)
    assert not out.with_name("out.parquet.parts").exists()
    assert out.with_name("out.parquet.rejects.jsonl").read_text() == ""


def test_output_columns_formats_and_doc_summary(tmp_path, model):
    src = _make_input("jsonl", tmp_path)
    names = ["doc_id", "source", "sentence_index", "start", "end", "text", "truncated", "language", "supported"]
    for t in model.schema.targets:
        names += [t.name] + [f"p_{t.name}_{lab}" for lab in t.labels]
    score([src], tmp_path / "o.parquet", model, doc_summary=tmp_path / "docs.csv")
    table = pq.read_table(tmp_path / "o.parquet")
    assert table.column_names == names
    score([src], tmp_path / "o.jsonl", model)
    score([src], tmp_path / "o.csv", model)
    as_jsonl = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert as_jsonl == table.to_pylist()
    with open(tmp_path / "o.csv", newline="") as fh:
        as_csv = list(csv.DictReader(fh))
    assert [r["text"] for r in as_csv] == table.column("text").to_pylist()
    assert list(as_csv[0]) == names
    with open(tmp_path / "docs.csv", newline="") as fh:
        docs = list(csv.DictReader(fh))
    assert [d["doc_id"] for d in docs] == ["a1", "a2", "a3"]
    rows = table.to_pylist()
    for d in docs:
        mine = [r for r in rows if r["doc_id"] == d["doc_id"]]
        assert int(d["sentences"]) == len(mine)
        for t in model.schema.targets:
            for lab in t.labels:
                share = sum(r[t.name] == lab for r in mine) / len(mine)
                assert float(d[f"share_{t.name}_{lab}"]) == pytest.approx(share, abs=1e-6)


def test_sentence_unit_reads_each_record_as_one_sentence(tmp_path, model):
    src = tmp_path / "s.jsonl"
    src.write_bytes(_jsonl_bytes([("s1", "The remarks were reckless. Really."), ("s2", "There is no truth.")]))
    out = tmp_path / "o.parquet"
    score([src], out, model, unit="sentence")
    rows = pq.read_table(out).to_pylist()
    preds = model.predict(["The remarks were reckless. Really.", "There is no truth."])
    assert [(r["doc_id"], r["sentence_index"], r["start"], r["end"]) for r in rows] == [
        ("s1", 0, 0, 34),
        ("s2", 0, 0, 18),
    ]
    name = model.schema.targets[0].name
    assert [r[name] for r in rows] == [p.stances[name].label for p in preds]


def test_bad_records_are_rejected_with_line_numbers_and_the_run_goes_on(tmp_path, model):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(
        b'{"id": "ok1", "text": "Tokyo will not retract the remarks."}\n'  # 1
        b'{"id": "x", "text": \n'  # 2 invalid JSON
        b"\n"  # 3 blank: skipped
        b'{"id": "y"}\n'  # 4 missing text
        b'{"id": "z", "text": 42}\n'  # 5 not a string
        b'{"id": "u", "text": "caf\xe9 au lait"}\n'  # 6 bad UTF-8
        b'{"id": "e", "text": "   "}\n'  # 7 empty
        b"[1, 2]\n"  # 8 not an object
        b'{"text": "The yen edged lower."}\n'
    )  # 9 ok, no id
    out = tmp_path / "o.parquet"
    result = score([src], out, model)
    assert (result.documents, result.rejected) == (2, 6)
    rejects = [json.loads(line) for line in (tmp_path / "o.parquet.rejects.jsonl").read_text().splitlines()]
    assert [(r["source"], r["record_no"]) for r in rejects] == [(str(src), n) for n in (2, 4, 5, 6, 7, 8)]
    reasons = [r["reason"] for r in rejects]
    assert reasons[0].startswith("invalid JSON")
    assert reasons[1] == "missing field 'text'"
    assert reasons[2] == "field 'text' is int, not a string"
    assert reasons[3].startswith("undecodable bytes")
    assert reasons[4] == "empty text"
    assert pq.read_table(out).column("doc_id").to_pylist() == ["ok1", f"{src}:9"]


def test_csv_rejects_and_missing_column(tmp_path):
    src = tmp_path / "bad.csv"
    src.write_bytes(b"id,text\nr1,Fine sentence.\nr2,\nr3,caf\xe9\nr4,Also fine.\n")
    items = list(iter_items([src]))
    assert [type(i).__name__ for i in items] == ["Record", "Reject", "Reject", "Record"]
    assert [(i.record_no, i.reason) for i in items if isinstance(i, Reject)] == [
        (2, "empty text"),
        (3, "undecodable bytes (not UTF-8)"),
    ]
    (other := tmp_path / "other.csv").write_text("id,body\n1,x\n")
    assert [i.reason for i in iter_items([other])] == ["no column 'text' (columns: id, body)"]
    assert [i.text for i in iter_items([other], ReadOptions(text_field="body"))] == ["x"]


def test_missing_input_and_unwritable_output_stop_the_run(tmp_path, model):
    from stancewatch.scoring.readers import InputError

    with pytest.raises(InputError, match="not found"):
        score([tmp_path / "nope.jsonl"], tmp_path / "o.parquet", model)
    src = _make_input("jsonl", tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        score([src], tmp_path / "file" / "o.parquet", model)
    with pytest.raises(OutputError, match="unknown output format"):
        score([src], tmp_path / "o.xlsx", model)


def test_archive_member_names_never_become_paths(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    evil = ["../evil.txt", "../../evil2.txt", "/tmp/stancewatch-evil-abs.txt", "a/../../evil3.md"]
    zpath, tpath = tmp_path / "evil.zip", tmp_path / "evil.tar"
    with zipfile.ZipFile(zpath, "w") as zf:
        for name in evil:
            zf.writestr(name, "Escaped text here.")
    with tarfile.open(tpath, "w") as tf:
        for name in evil:
            info = tarfile.TarInfo(name)
            info.size = 18
            tf.addfile(info, io.BytesIO(b"Escaped text here."))
        link = tarfile.TarInfo("link.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    before = set(tmp_path.rglob("*"))
    items = list(iter_items([zpath, tpath]))
    assert [i.doc_id for i in items if isinstance(i, Record)] == evil + evil
    assert [i.reason for i in items if isinstance(i, Reject)] == ["not a regular file (link or device)"]
    assert set(tmp_path.rglob("*")) == before
    assert not Path("/tmp/stancewatch-evil-abs.txt").exists()
    assert not list(tmp_path.parent.glob("evil*"))


def test_compression_bomb_is_cut_at_the_member_limit(tmp_path):
    line = json.dumps({"text": "Bomb sentence here."}) + "\n"
    bomb = gzip.compress(line.encode() * 20_000)  # ~580 kB uncompressed, ~2 kB compressed
    zpath = tmp_path / "bomb.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("bomb.jsonl.gz", bomb)  # the declared size is the small compressed one
        zf.writestr("big.txt", "x" * 200_000)  # declared size over the limit: never read
        zf.writestr("ok.txt", "A normal article.")
    tpath = tmp_path / "bomb.tar.gz"
    with tarfile.open(tpath, "w:gz") as tf:
        info = tarfile.TarInfo("bomb.jsonl.gz")
        info.size = len(bomb)
        tf.addfile(info, io.BytesIO(bomb))
    limit = 100_000
    items = list(iter_items([zpath, tpath], ReadOptions(max_member_bytes=limit)))
    rejects = [i for i in items if isinstance(i, Reject)]
    records = [i for i in items if isinstance(i, Record)]
    assert len(rejects) == 3
    assert all(r.reason.startswith("too large") for r in rejects)
    # only what fits under the limit was read from each bomb
    per_bomb = [r for r in records if r.source.endswith("bomb.jsonl.gz")]
    assert 0 < len(per_bomb) <= 2 * limit // len(line)
    assert records[-1].doc_id != "ok.txt" or records[-1].text == "A normal article."
    assert any(r.doc_id == "ok.txt" for r in records)


def test_corrupt_member_is_rejected_and_the_rest_is_read(tmp_path):
    zpath = tmp_path / "c.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bad.jsonl.gz", b"not gzip at all")
        zf.writestr("good.txt", "Readable article.")
    items = list(iter_items([zpath]))
    assert isinstance(items[0], Reject) and items[0].reason.startswith("unreadable")
    assert isinstance(items[1], Record) and items[1].doc_id == "good.txt"


def test_resume_needs_the_same_settings_and_an_unfinished_run_needs_resume(tmp_path, model):
    src = _make_input("jsonl", tmp_path)
    out = tmp_path / "o.parquet"
    parts = tmp_path / "o.parquet.parts"
    parts.mkdir()
    (parts / "manifest.json").write_text(json.dumps({"job": {"unit": "sentence"}, "items_done": 1, "parts": []}))
    with pytest.raises(OutputError, match="--resume"):
        score([src], out, model)
    with pytest.raises(OutputError, match="other settings"):
        score([src], out, model, resume=True)


def test_in_process_resume_gives_the_uninterrupted_output(tmp_path, model, monkeypatch):
    import stancewatch.scoring.writer as writer

    src = tmp_path / "many.jsonl"
    src.write_bytes(_jsonl_bytes([(f"d{i}", ARTICLES[i % 3][1]) for i in range(20)]) + b"oops\n")
    score([src], tmp_path / "full.parquet", model, chunk_size=3)
    calls = {"n": 0}
    real = writer._write_json_atomic

    def crash_on_third_manifest(path, data):
        calls["n"] += 1
        if calls["n"] == 4:  # 1: the empty manifest, 2-3: two parts, then die
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(writer, "_write_json_atomic", crash_on_third_manifest)
    with pytest.raises(KeyboardInterrupt):
        score([src], tmp_path / "r.parquet", model, chunk_size=3)
    monkeypatch.setattr(writer, "_write_json_atomic", real)
    result = score([src], tmp_path / "r.parquet", model, chunk_size=3, resume=True)
    assert result.items_resumed == 6
    assert pq.read_table(tmp_path / "r.parquet").equals(pq.read_table(tmp_path / "full.parquet"))
    assert (tmp_path / "r.parquet.rejects.jsonl").read_text().count("\n") == 1


# ---- a real process killed with SIGKILL ---------------------------------------------------------


def _generate_articles(path: Path, n: int, seed: int = 0) -> None:
    with open(REPO / "training" / "data" / "default_corpus.csv", newline="", encoding="utf-8") as fh:
        sentences = [r["text"] for r in csv.DictReader(fh)]
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            fh.write(
                json.dumps({"id": f"doc{i}", "text": " ".join(rng.choices(sentences, k=rng.randint(3, 12)))}) + "\n"
            )
            if i % 997 == 0:
                fh.write("{broken line\n")


def _cli(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "stancewatch"  # the installed console script
    return [str(exe), "score", *args] if exe.exists() else [sys.executable, "-m", "stancewatch.cli", "score", *args]


@pytest.mark.slow  # three model loads in subprocesses: ~20 s on a busy 2-core machine
def test_sigkill_midway_then_resume_gives_the_uninterrupted_output(tmp_path, tiny_model):
    src = tmp_path / "big.jsonl"
    _generate_articles(src, 1000)
    # one inference thread: deterministic, and no spinning against the reader thread on small machines
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "HF_HUB_OFFLINE": "1", "STANCEWATCH_THREADS": "1"}
    common = ["--model", tiny_model.tag, "--chunk-size", "16", "--no-progress"]
    out = tmp_path / "killed.parquet"
    args = _cli(str(src), "--out", str(out), *common)
    proc = subprocess.Popen(args, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    manifest = tmp_path / "killed.parquet.parts" / "manifest.json"
    deadline = time.monotonic() + 120
    parts = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if manifest.exists():
            parts = len(json.loads(manifest.read_text())["parts"])
            if parts >= 2:
                break
        time.sleep(0.01)
    assert proc.poll() is None, f"finished before it could be killed:\n{proc.stdout.read().decode()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert parts >= 2 and not out.exists()
    done = json.loads(manifest.read_text())["items_done"]
    assert 0 < done < 1000

    resumed = subprocess.run(args + ["--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed after" in resumed.stdout
    import torch

    threads = torch.get_num_threads()
    full = tmp_path / "full.parquet"
    try:  # the uninterrupted run, in this process with the subprocesses' single thread
        score([src], full, StanceModel(tiny_model.folder, threads=1), chunk_size=16)
    finally:
        torch.set_num_threads(threads)

    a, b = pq.read_table(out), pq.read_table(full)
    assert a.num_rows > 1000
    assert a.equals(b)  # row for row, value for value
    keys = list(zip(a.column("doc_id").to_pylist(), a.column("sentence_index").to_pylist()))
    assert len(set(keys)) == len(keys)  # every sentence exactly once
    rejects = (tmp_path / "killed.parquet.rejects.jsonl").read_text()
    assert rejects == (tmp_path / "full.parquet.rejects.jsonl").read_text() and rejects.count("\n") == 2
