"""`score --keep-fields` and `stancewatch report`: kept fields reach every row (with rejects for bad ones),
and the report's groups and counts are those of the Parquet file, recomputed here independently."""

from __future__ import annotations

import datetime as dt
import io
import json
import tarfile
from collections import Counter, defaultdict
from html.parser import HTMLParser
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stancewatch.model.predictor import StanceModel
from stancewatch.report import ReportError, bin_width, build_report, read_info
from stancewatch.scoring.pipeline import score
from stancewatch.scoring.readers import ReadOptions, Reject, iter_items
from stancewatch.scoring.writer import OutputError

REPO = Path(__file__).resolve().parent.parent
OUTLETS = ["Wire", "Tokyo Daily", "Taipei Times", "Solo Blog"]


@pytest.fixture(scope="module")
def model(tiny_model) -> StanceModel:
    return StanceModel.load(tiny_model.tag)


def _paragraphs() -> list[str]:
    """The repository's example articles cut into paragraphs: each paragraph is one small article."""
    out = []
    for path in sorted((REPO / "examples").glob("*.txt")):
        out += [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if len(p.strip()) > 40]
    return out


def _records() -> list[dict]:
    """Articles with an outlet, a date over 9 days (some with a time and offset) and a url."""
    rows = []
    for i, text in enumerate(_paragraphs()):
        day = dt.date(2025, 11, 7) + dt.timedelta(days=i % 9)
        date = day.isoformat() if i % 3 else f"{day.isoformat()}T09:30:00+09:00"
        rows.append(
            {
                "id": f"p{i:02d}",
                "text": text,
                "outlet": OUTLETS[i % 3 if i % 7 else 3],
                "date": date,
                "url": f"https://example.org/{i}",
            }
        )
    return rows


def _archive(folder: Path, extra: list[dict] = ()) -> Path:
    """A tar.gz: the records as JSONL (plus `extra` lines), and one plain-text article without fields."""
    feed = "".join(json.dumps(r) + "\n" for r in [*_records(), *extra]).encode()
    note = (REPO / "examples" / "markets-report.txt").read_bytes()
    path = folder / "archive.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for name, data in [("feed.jsonl", feed), ("notes/market.txt", note)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


BAD = [
    {"id": "no-outlet", "text": "Beijing demanded a retraction.", "date": "2025-11-08", "url": "u"},
    {"id": "bad-date", "text": "Tokyo said the remarks stand.", "outlet": "Wire", "date": "last Tuesday", "url": "u"},
    {"id": "list-outlet", "text": "The yen fell.", "outlet": ["Wire"], "date": "2025-11-08", "url": "u"},
    {"id": "blank-url", "text": "The yen rose.", "outlet": "Wire", "date": "2025-11-08", "url": " "},
]


@pytest.fixture(scope="module")
def scored(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("scored")
    out, docs = folder / "scores.parquet", folder / "docs.parquet"
    result = score(
        [_archive(folder, BAD)], out, model, keep_fields=("date", "outlet", "url"), doc_summary=docs, chunk_size=7
    )  # several parts: a document may not straddle them, but groups do
    return result, out, docs


# ---- --keep-fields --------------------------------------------------------------------------------


def test_kept_fields_reach_every_row_and_the_document_summary(scored):
    result, out, docs = scored
    records = {r["id"]: r for r in _records()}
    table = pq.read_table(out)
    assert table.column_names[-3:] == ["date", "outlet", "url"]
    for row in table.to_pylist():
        if row["doc_id"] == "notes/market.txt":  # a text file has no fields: kept as null, not a reject
            assert (row["date"], row["outlet"], row["url"]) == (None, None, None)
            continue
        want = records[row["doc_id"]]
        assert (row["date"], row["outlet"], row["url"]) == (want["date"], want["outlet"], want["url"])
    summary = pq.read_table(docs).to_pylist()
    assert [d["doc_id"] for d in summary] == [*records, "notes/market.txt"]
    assert all(d["outlet"] == records[d["doc_id"]]["outlet"] for d in summary if d["doc_id"] in records)
    assert result.documents == len(records) + 1


def test_a_missing_or_malformed_kept_field_is_a_reject_naming_the_field(scored):
    result, out, _ = scored
    rejects = [json.loads(line) for line in out.with_name(out.name + ".rejects.jsonl").read_text().splitlines()]
    n = len(_records())
    assert result.rejected == 4
    assert [r["record_no"] for r in rejects] == [n + 1, n + 2, n + 3, n + 4]
    assert [r["reason"] for r in rejects] == [
        "missing field 'outlet' (--keep-fields)",
        "field 'date': 'last Tuesday' is not an ISO 8601 date (YYYY-MM-DD[THH:MM[:SS]][+HH:MM])",
        "field 'outlet' is list, not a string or number (--keep-fields)",
        "missing field 'url' (--keep-fields)",
    ]
    assert not {"no-outlet", "bad-date", "list-outlet", "blank-url"} & set(
        pq.read_table(out).column("doc_id").to_pylist()
    )


def test_kept_fields_from_csv_and_parquet_and_a_missing_column(tmp_path):
    (csv_in := tmp_path / "in.csv").write_text(
        "id,text,outlet,date\n1,First.,Wire,2025-11-07\n2,Second.,,2025-11-07\n3,Third.,Wire,07/11/2025\n",
        encoding="utf-8",
    )
    opt = ReadOptions(keep_fields=("outlet", "date"), date_fields=("date",))
    items = list(iter_items([csv_in], opt))
    assert items[0].fields == ("Wire", "2025-11-07")
    assert [i.reason for i in items[1:]] == [
        "missing field 'outlet' (--keep-fields)",
        "field 'date': '07/11/2025' is not an ISO 8601 date (YYYY-MM-DD[THH:MM[:SS]][+HH:MM])",
    ]
    pq.write_table(
        pa.table(
            {
                "id": ["a", "b"],
                "text": ["One.", "Two."],
                "outlet": ["Wire", "Paper"],
                "date": pa.array([dt.date(2025, 11, 7), None], pa.date32()),
                "rank": [1, 2],
            }
        ),
        parquet_in := tmp_path / "in.parquet",
    )
    items = list(iter_items([parquet_in], ReadOptions(keep_fields=("date", "rank"), date_fields=("date",))))
    assert items[0].fields == ("2025-11-07", "1")  # a Parquet date as ISO text, a number as text
    assert items[1].reason == "missing field 'date' (--keep-fields)"
    items = list(iter_items([parquet_in], ReadOptions(keep_fields=("outlet", "url"))))
    assert [type(i) for i in items] == [Reject]  # the whole source, like a missing text column
    assert items[0].reason.startswith("no column 'url' for --keep-fields")


def test_a_kept_field_may_not_shadow_an_output_column(tmp_path, model):
    (src := tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "text": "One."}) + "\n")
    with pytest.raises(OutputError, match="supported"):
        score([src], tmp_path / "o.parquet", model, keep_fields=("supported",))


# ---- the report ----------------------------------------------------------------------------------


class _Tables(HTMLParser):
    """The report's count tables: (target, kind) -> group -> (documents, sentences read, {label: count})."""

    def __init__(self):
        super().__init__()
        self.tables: dict[tuple[str, str], dict[str, tuple[int, int, dict[str, int]]]] = {}
        self._table = self._row = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("class") == "counts":
            self._table = self.tables.setdefault((a["data-target"], a["data-kind"]), {})
        elif tag == "tr" and self._table is not None and "data-group" in a:
            self._row = (a["data-group"], int(a["data-documents"] or -1), int(a["data-read"]), {})
            self._table[a["data-group"]] = self._row
        elif tag == "td" and self._row is not None and "data-label" in a:
            self._row[3][a["data-label"]] = int(a["data-count"])

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        if tag == "tr":
            self._row = None


def _read_tables(html: str):
    p = _Tables()
    p.feed(html)
    return {k: {g: (d, n, c) for g, (_, d, n, c) in rows.items()} for k, rows in p.tables.items()}


def _expected(rows: list[dict], key, target: str, labels) -> dict:
    """group -> (documents, sentences read, {label: count}), straight from the rows."""
    docs, read, counts = defaultdict(set), Counter(), defaultdict(Counter)
    for r in rows:
        g = key(r)
        docs[g].add(r["doc_id"])
        if r["supported"]:
            read[g] += 1
            counts[g][r[target]] += 1
    return {g: (len(docs[g]), read[g], {lab: counts[g][lab] for lab in labels}) for g in docs}


def test_report_groups_and_counts_are_those_of_the_parquet_file(scored, model, tmp_path):
    _, out, _ = scored
    html_path = tmp_path / "report.html"
    build_report(out, html_path, by="outlet", over="date")
    html = html_path.read_text(encoding="utf-8")
    tables = _read_tables(html)
    rows = pq.read_table(out).to_pylist()
    assert model.tag in html  # the model tag comes from the file's metadata
    assert "scored" in html and "file modified" not in html
    assert "<script" not in html and "http://" not in html.replace("https://example.org", "")  # nothing to fetch
    assert html.count('src="data:image/png;base64,') == 3 * len(model.schema.targets)
    for t in model.schema.targets:
        labels = list(t.labels)
        assert tables[(t.name, "overall")] == _expected(rows, lambda r: "all", t.name, labels)
        assert tables[(t.name, "by")] == _expected(rows, lambda r: r["outlet"] or "(missing)", t.name, labels)
        dated = [r for r in rows if r["date"]]
        over = _expected(dated, lambda r: r["date"][:10], t.name, labels)
        span = sorted(over)
        assert bin_width(dt.date.fromisoformat(span[0]), dt.date.fromisoformat(span[-1])) == "day"
        assert tables[(t.name, "over")] == over
    assert "(missing)" in tables[(model.schema.targets[0].name, "by")]  # the plain-text member
    assert sum(1 for _ in rows if _["doc_id"] == "notes/market.txt") > 0


def test_report_reads_jsonl_and_csv_outputs_alike(scored, model, tmp_path):
    _, out, _ = scored
    table = pq.read_table(out)
    as_jsonl = tmp_path / "s.jsonl"
    as_jsonl.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()), encoding="utf-8")
    import pyarrow.csv as pcsv

    pcsv.write_csv(table, as_csv := tmp_path / "s.csv")
    build_report(out, tmp_path / "p.html", by="outlet", over="date")
    want = _read_tables((tmp_path / "p.html").read_text())
    for path in (as_jsonl, as_csv):
        got = build_report(path, tmp_path / f"{path.suffix}.html", by="outlet", over="date", batch_rows=5)
        assert _read_tables((tmp_path / f"{path.suffix}.html").read_text()) == want
        assert got.documents == len(set(table.column("doc_id").to_pylist()))
    assert "not recorded" in (tmp_path / ".csv.html").read_text()  # CSV carries no model tag


def test_weekly_bins_for_a_long_span_and_the_top_sentences(tmp_path):
    labels = ["favor", "against", "none"]
    rows = []
    for d in range(120):  # 120 days, one two-sentence document a day
        day = dt.date(2025, 1, 1) + dt.timedelta(days=d)
        for i in range(2):
            p = [0.1, 0.1, 0.8] if i else [0.7 + d / 1000, 0.2, 0.1 - d / 1000]
            rows.append(
                {
                    "doc_id": f"d{d}",
                    "source": "x",
                    "sentence_index": i,
                    "text": f"s{d}-{i}",
                    "supported": True,
                    "t": labels[p.index(max(p))],
                    **{f"p_t_{lab}": v for lab, v in zip(labels, p)},
                    "date": day.isoformat(),
                }
            )
    pq.write_table(pa.Table.from_pylist(rows), src := tmp_path / "s.parquet")
    t = build_report(src, tmp_path / "r.html", over="date", top_k=3, batch_rows=7)
    tables = _read_tables((tmp_path / "r.html").read_text())
    weeks = tables[("t", "over")]
    assert list(weeks)[0] == "week of 2024-12-30"  # Monday of 2025-01-01's week
    assert all(g.startswith("week of ") for g in weeks)
    assert sum(n for _, n, _ in weeks.values()) == 240
    assert weeks["week of 2025-01-06"] == (7, 14, {"favor": 7, "against": 0, "none": 7})
    # The most confident favor sentences are those of the last days (p rises by 0.001 a day).
    assert [r[1] for r in t.top[("t", "favor")].rows] == ["d119", "d118", "d117"]
    assert t.documents == 120


def test_report_errors_name_the_problem(scored, tmp_path):
    _, out, _ = scored
    with pytest.raises(ReportError, match="--by publisher: no such column .*kept input fields: date, outlet, url"):
        build_report(out, tmp_path / "r.html", by="publisher")
    pq.write_table(pa.table({"a": [1]}), bad := tmp_path / "x.parquet")
    with pytest.raises(ReportError, match="not a `stancewatch score` sentence output"):
        read_info(bad)
    (html := tmp_path / "r.html").write_text("x")
    with pytest.raises(ReportError, match="unknown scores format"):
        read_info(html)


def test_cli_report(scored, tmp_path):
    from typer.testing import CliRunner

    from stancewatch.cli import app

    _, out, _ = scored
    r = CliRunner().invoke(
        app, ["report", str(out), "--out", str(tmp_path / "r.html"), "--by", "outlet", "--over", "date"]
    )
    assert r.exit_code == 0, r.output
    assert "report:" in r.output and (tmp_path / "r.html").stat().st_size > 10_000
    r = CliRunner().invoke(app, ["report", str(out), "--out", str(tmp_path / "r.html"), "--over", "when"])
    assert r.exit_code == 2 and "--over when" in r.output


def test_batches_with_only_unsupported_sentences_or_no_group(tmp_path):
    """JSONL read two rows at a time: whole batches with null labels, probabilities and outlets."""
    rows = [
        {
            "doc_id": "a",
            "source": "s",
            "sentence_index": 0,
            "text": "x",
            "supported": False,
            "t": None,
            "p_t_yes": None,
            "p_t_no": None,
            "outlet": None,
        },
        {
            "doc_id": "a",
            "source": "s",
            "sentence_index": 1,
            "text": "y",
            "supported": False,
            "t": None,
            "p_t_yes": None,
            "p_t_no": None,
            "outlet": None,
        },
        {
            "doc_id": "b",
            "source": "s",
            "sentence_index": 0,
            "text": "z",
            "supported": True,
            "t": "yes",
            "p_t_yes": 0.9,
            "p_t_no": 0.1,
            "outlet": "W",
        },
        {
            "doc_id": "b",
            "source": "s",
            "sentence_index": 1,
            "text": "w",
            "supported": True,
            "t": "no",
            "p_t_yes": 0.2,
            "p_t_no": 0.8,
            "outlet": "W",
        },
    ]
    (src := tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = build_report(src, tmp_path / "r.html", by="outlet", batch_rows=2)
    assert (t.sentences, t.documents, t.unsupported) == (4, 2, 2)
    tables = _read_tables((tmp_path / "r.html").read_text())
    assert tables[("t", "by")] == {"W": (1, 2, {"yes": 1, "no": 1}), "(missing)": (1, 0, {"yes": 0, "no": 0})}
    assert [r[1:3] for r in t.top[("t", "yes")].rows] == [("b", 0)]


def test_cli_score_keep_fields_then_report(tmp_path, tiny_model):
    from typer.testing import CliRunner

    from stancewatch.cli import app

    src = tmp_path / "feed.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in _records()[:6]), encoding="utf-8")
    out = tmp_path / "s.parquet"
    r = CliRunner().invoke(
        app,
        [
            "score",
            str(src),
            "--out",
            str(out),
            "--model",
            tiny_model.tag,
            "--no-progress",
            "--keep-fields",
            "outlet, date,outlet",
            "--doc-summary",
            str(tmp_path / "d.csv"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert pq.read_table(out).column_names[-2:] == ["outlet", "date"]  # in the order given, once each
    assert (tmp_path / "d.csv").read_text().splitlines()[0].endswith('"outlet","date"')
    r = CliRunner().invoke(app, ["report", str(out), "--out", str(tmp_path / "r.html"), "--by", "outlet"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        app,
        [
            "score",
            str(src),
            "--out",
            str(tmp_path / "x.parquet"),
            "--model",
            tiny_model.tag,
            "--no-progress",
            "--keep-fields",
            "text",
        ],
    )
    assert r.exit_code == 2 and "already has a column" in r.output
