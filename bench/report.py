"""`stancewatch report` at scale, and on a real scored archive.

Scale (default): writes scores files of N sentences in exactly the scorer's layout (the default
schema's columns from `sentence_schema`, row groups as `stancewatch score` writes them), with the
bundled corpus's sentences as text, random probabilities, 40 outlets and dates over 6 months; then
runs `stancewatch report --by outlet --over date` on each in a fresh process and prints its wall time
and peak RSS (from `wait4`). Several sizes, so that "bounded memory" is a comparison, not a claim.

    python bench/report.py [--sizes 20000,200000,600000]

Archive (`--archive N`): N articles rebuilt from the bundled news corpus (its own dates and outlets,
spread over 60 days), scored with the production model into Parquet with `--keep-fields
date,outlet`, reported, and the report's tables checked number for number against the Parquet file
recounted here; then the report is opened in headless Chromium with every network request refused,
and a screenshot saved.

    python bench/report.py --archive 1000 [--model TAG] [--screenshot docs/report.png]
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from html.parser import HTMLParser
from pathlib import Path

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
STANCEWATCH = [sys.executable, "-m", "stancewatch.cli"]


def _corpus() -> list[dict]:
    with open(REPO / "training" / "data" / "news_train.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _run(cmd: list[str]) -> tuple[float, float]:
    """Run `cmd`; its wall seconds and peak RSS in MiB."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    out = proc.stdout.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out}")
    return wall, usage.ru_maxrss / 1024


def write_scores(path: Path, n: int, seed: int = 0) -> None:
    """N sentence rows in the scorer's layout, written 16,384 rows at a time (as `_assemble` does)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from stancewatch.model.schema import default_schema
    from stancewatch.scoring.writer import ROW_GROUP_ROWS, output_metadata, sentence_schema

    schema_obj = default_schema()
    schema = sentence_schema(schema_obj.targets, ("date", "outlet"))
    texts = [r["text"] for r in _corpus()]
    rng = np.random.default_rng(seed)
    outlets = [f"Outlet {i:02d}" for i in range(40)]
    weights = 1 / np.arange(1, 41)  # a few large outlets, a long tail of small ones
    weights /= weights.sum()
    start = dt.date(2025, 6, 1)
    meta = output_metadata("bench:synthetic", schema_obj.to_dict(), "document", ("date", "outlet"))
    doc = 0
    with pq.ParquetWriter(path, schema.with_metadata(meta), compression="zstd") as w:
        written = 0
        while written < n:
            rows = min(ROW_GROUP_ROWS, n - written)
            # Documents of 5-35 sentences; a document never straddles two writes (as in the scorer).
            lengths = []
            while sum(lengths) < rows:
                lengths.append(int(rng.integers(5, 36)))
            lengths[-1] -= sum(lengths) - rows
            lengths = [x for x in lengths if x > 0]
            doc_of = np.repeat(np.arange(doc, doc + len(lengths)), lengths)
            index = np.concatenate([np.arange(x) for x in lengths])
            doc_outlet = rng.choice(len(outlets), size=len(lengths), p=weights)
            doc_day = rng.integers(0, 183, size=len(lengths))
            supported = rng.random(rows) > 0.02
            cols = {
                "doc_id": [f"d{d:07d}" for d in doc_of],
                "source": ["bench.jsonl"] * rows,
                "sentence_index": index.astype(np.int32),
                "start": index * 120,
                "end": index * 120 + 110,
                "text": [texts[i] for i in rng.integers(0, len(texts), size=rows)],
                "truncated": np.zeros(rows, dtype=bool),
                "language": np.where(supported, "en", "de"),
                "supported": supported,
            }
            for t in schema_obj.targets:
                p = rng.dirichlet([1.0, 1.0, 3.0], size=rows)
                cols[t.name] = pa.array(np.asarray(t.labels, dtype=object)[p.argmax(1)], pa.string(), mask=~supported)
                for k, lab in enumerate(t.labels):
                    cols[f"p_{t.name}_{lab}"] = pa.array(np.round(p[:, k], 6), pa.float64(), mask=~supported)
            cols["date"] = [(start + dt.timedelta(days=int(doc_day[d - doc]))).isoformat() for d in doc_of]
            cols["outlet"] = [outlets[doc_outlet[d - doc]] for d in doc_of]
            w.write_table(pa.Table.from_pydict(cols, schema=schema), row_group_size=ROW_GROUP_ROWS)
            written += rows
            doc += len(lengths)


def scale(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(x) for x in args.sizes.split(",")):
            path = Path(tmp) / f"scores-{n}.parquet"
            write_scores(path, n)
            wall, rss = _run(
                [
                    *STANCEWATCH,
                    "report",
                    str(path),
                    "--out",
                    str(Path(tmp) / "r.html"),
                    "--by",
                    "outlet",
                    "--over",
                    "date",
                ]
            )
            size = path.stat().st_size / 2**20
            print(
                f"{n:>8,} sentences ({size:.1f} MiB Parquet): report in {wall:.2f} s, peak RSS {rss:.0f} MiB",
                flush=True,
            )


# ---- a real archive -----------------------------------------------------------------------------


class _Tables(HTMLParser):
    """(target, kind) -> group -> (documents, read, {label: count}) from the report's data-* attributes."""

    def __init__(self):
        super().__init__()
        self.tables, self._t, self._r = {}, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table" and a.get("class") == "counts":
            self._t = self.tables.setdefault((a["data-target"], a["data-kind"]), {})
        elif tag == "tr" and self._t is not None and "data-group" in a:
            self._r = (int(a["data-documents"]), int(a["data-read"]), {})
            self._t[a["data-group"]] = self._r
        elif tag == "td" and self._r is not None and "data-label" in a:
            self._r[2][a["data-label"]] = int(a["data-count"])


def _recount(rows, key, target, labels, width: str | None = None):
    docs, read, counts = defaultdict(set), Counter(), defaultdict(Counter)
    for r in rows:
        g = key(r)
        docs[g].add(r["doc_id"])
        if r["supported"]:
            read[g] += 1
            counts[g][r[target]] += 1
    return {g: (len(docs[g]), read[g], {lab: counts[g][lab] for lab in labels}) for g in docs}


def archive(args) -> None:
    import pyarrow.parquet as pq

    by_doc: dict[str, list[dict]] = defaultdict(list)
    for r in _corpus():
        by_doc[r["doc_id"]].append(r)
    docs = list(by_doc.values())
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "archive.jsonl"
        with src.open("w", encoding="utf-8") as fh:
            for i in range(args.archive):
                d = docs[i % len(docs)]
                day = dt.date(2025, 11, 1) + dt.timedelta(days=rng.randrange(60))
                fh.write(
                    json.dumps(
                        {
                            "id": f"a{i:05d}",
                            "text": " ".join(s["text"] for s in d),
                            "outlet": d[0]["outlet"],
                            "date": day.isoformat(),
                        }
                    )
                    + "\n"
                )
        out = Path(tmp) / "scores.parquet"
        cmd = [*STANCEWATCH, "score", str(src), "--out", str(out), "--keep-fields", "date,outlet", "--no-progress"]
        if args.model:
            cmd += ["--model", args.model]
        wall, rss = _run(cmd)
        table = pq.read_table(out)
        print(f"scored {args.archive} articles, {table.num_rows} sentences in {wall:.1f} s (peak RSS {rss:.0f} MiB)")
        html_path = Path(args.keep) if args.keep else Path(tmp) / "report.html"
        wall, rss = _run(
            [*STANCEWATCH, "report", str(out), "--out", str(html_path), "--by", "outlet", "--over", "date"]
        )
        print(f"report in {wall:.2f} s (peak RSS {rss:.0f} MiB): {html_path}")
        parser = _Tables()
        parser.feed(html_path.read_text(encoding="utf-8"))
        rows = table.to_pylist()
        info = json.loads(table.schema.metadata[b"stancewatch"])
        mismatches = 0
        for t in info["schema"]["targets"]:
            labels = list(t["labels"])
            want = {
                "overall": _recount(rows, lambda r: "all", t["name"], labels),
                "by": _recount(rows, lambda r: r["outlet"], t["name"], labels),
                "over": _recount(rows, lambda r: r["date"], t["name"], labels),
            }
            for kind, expected in want.items():
                got = parser.tables[(t["name"], kind)]
                if kind == "over":  # days without articles are drawn (as zero), but have no rows to recount
                    got = {g: v for g, v in got.items() if v[0]}
                if kind == "by":  # the groups past the 25 largest are one pooled row: pool them here too
                    pooled = [g for g in got if g.startswith("other (")]
                    rest = [g for g in expected if g not in got]
                    if pooled and rest:
                        docs_, read_, counts_ = 0, 0, Counter()
                        for g in rest:
                            d_, n_, c_ = expected.pop(g)
                            docs_, read_ = docs_ + d_, read_ + n_
                            counts_.update(c_)
                        expected[f"other ({len(rest)} groups)"] = (docs_, read_, {lab: counts_[lab] for lab in labels})
                ok = got == expected
                mismatches += not ok
                print(
                    f"  {t['name']:<18} {kind:<8} {len(got):>3} groups: {'equal to the Parquet file' if ok else 'DIFFERENT'}"
                )
        if args.screenshot:
            _screenshot(html_path, Path(args.screenshot))
        if mismatches:
            raise SystemExit(f"{mismatches} tables differ from the Parquet file")


def _screenshot(html_path: Path, png: Path) -> None:
    """Open the report from disk in headless Chromium with every network request refused."""
    from playwright.sync_api import sync_playwright

    browser_path = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        ctx = b.new_context(viewport={"width": 1100, "height": 1400}, offline=True)
        asked: list[str] = []
        ctx.route(
            "**/*",
            lambda route: (
                route.continue_()
                if route.request.url.startswith("file:")
                else (asked.append(route.request.url), route.abort())
            ),
        )
        page = ctx.new_page()
        page.goto(html_path.resolve().as_uri())
        broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
        page.screenshot(path=str(png), full_page=False)
        b.close()
    print(f"opened offline: {len(asked)} outside requests, {broken} broken images; screenshot {png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20000,200000,600000", help="sentences per scores file, comma-separated")
    ap.add_argument("--archive", type=int, default=0, help="score and check a real archive of this many articles")
    ap.add_argument("--model", default=None)
    ap.add_argument("--keep", default=None, help="with --archive: write the report here")
    ap.add_argument("--screenshot", default=None, help="with --archive: a PNG of the report opened offline")
    args = ap.parse_args()
    archive(args) if args.archive else scale(args)


if __name__ == "__main__":
    main()
