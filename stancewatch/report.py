"""`stancewatch report`: one self-contained HTML file from a scoring output (`stancewatch score --out`).

Per target: the label shares overall, by a grouping column (`--by outlet`) and over time (`--over date`,
daily or weekly bins chosen from the span), always next to the counts they come from; the most
confident sentences per label with their document ids; the model tag, schema and date of scoring.
The charts are matplotlib PNGs embedded as data URIs, so the file opens offline.

The input is read in record batches of a few columns and folded into small tallies (one count per
group, day and label; the top sentences per label), so memory depends on the number of groups and
days, not on the number of sentences. Documents are counted by where `(source, doc_id)` changes:
the scorer writes a document's sentences together and in order, so no set of ids is kept either.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# The fixed columns of a sentence row (scoring/writer.py, `sentence_schema`); everything else is a
# target, a probability or a kept input field.
BASE_COLUMNS = ("doc_id", "source", "sentence_index", "start", "end", "text", "truncated", "language", "supported")
META_KEY = b"stancewatch"  # Parquet key-value metadata written by the scorer (model, schema, scored_at)
BATCH_ROWS = 65_536
MISSING = "(missing)"
# Groups and time bins with fewer supported sentences than this are drawn faded and flagged: on the
# news-genre test set one article has ~20 sentences, so this is about one to two articles' worth.
SMALL_GROUP = 30
MAX_GROUPS_SHOWN = 25  # by-group chart and table: the largest groups, the rest pooled as "other"
DAILY_MAX_DAYS = 62  # a span of up to ~two months is binned by day, longer spans by ISO week
LABEL_COLOURS = {"favor": "#1b7f3b", "against": "#c0392b", "none": "#9aa0a6"}
OTHER_COLOURS = ["#2f6db5", "#d68910", "#7d3c98", "#148f77", "#a04000", "#5d6d7e"]


class ReportError(Exception):
    """The scores file cannot be reported on (unknown format, missing columns, bad option)."""


# ---- reading -------------------------------------------------------------------------------------


@dataclass
class ScoresInfo:
    """What a scores file says about itself: targets and labels, and the scorer's metadata if any."""

    path: Path
    fmt: str
    columns: list[str]
    targets: list[tuple[str, list[str]]]
    model: str | None = None
    schema: dict | None = None
    scored_at: str | None = None
    extra: dict = field(default_factory=dict)


def _format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    raise ReportError(f"{path}: unknown scores format; expected the .parquet, .jsonl or .csv of `stancewatch score`")


def _columns(path: Path, fmt: str) -> list[str]:
    if fmt == "parquet":
        return list(pq.ParquetFile(path).schema_arrow.names)
    with path.open("r", encoding="utf-8") as fh:
        first = fh.readline()
    if not first.strip():
        raise ReportError(f"{path} is empty")
    if fmt == "csv":
        import csv

        return next(csv.reader([first]))
    return list(json.loads(first))


def infer_targets(columns: list[str]) -> list[tuple[str, list[str]]]:
    """Targets and labels from the column layout: a `<target>` column followed by `p_<target>_<label>`."""
    targets = []
    for i, c in enumerate(columns):
        if c in BASE_COLUMNS or c.startswith("p_"):
            continue
        prefix = f"p_{c}_"
        labels = []
        for x in columns[i + 1 :]:  # only the columns right after it: a kept field "taiwan" is no target
            if not x.startswith(prefix):
                break
            labels.append(x[len(prefix) :])
        if labels:
            targets.append((c, labels))
    return targets


def read_info(path: Path) -> ScoresInfo:
    """Columns, targets and the scorer's metadata (Parquet only; JSONL and CSV carry none)."""
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"scores file not found: {path}")
    fmt = _format(path)
    columns = _columns(path, fmt)
    missing = [c for c in ("doc_id", "source", "text", "supported") if c not in columns]
    if missing:
        raise ReportError(f"{path}: not a `stancewatch score` sentence output (no column {', '.join(missing)})")
    meta: dict[str, Any] = {}
    if fmt == "parquet":
        raw = (pq.ParquetFile(path).schema_arrow.metadata or {}).get(META_KEY)
        if raw:
            meta = json.loads(raw)
    targets = infer_targets(columns)
    schema = meta.get("schema")
    if schema:  # the schema's own order and labels, where the file says which
        named = {t: labels for t, labels in targets}
        targets = [(t["name"], list(t["labels"])) for t in schema["targets"] if t["name"] in named] or targets
    if not targets:
        raise ReportError(f"{path}: no target columns (`<target>` with `p_<target>_<label>`) found")
    return ScoresInfo(
        path,
        fmt,
        columns,
        targets,
        model=meta.get("model"),
        schema=schema,
        scored_at=meta.get("scored_at"),
        extra={k: v for k, v in meta.items() if k not in ("model", "schema", "scored_at")},
    )


def iter_batches(info: ScoresInfo, columns: list[str], batch_rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
    """The file as tables of `columns`, `batch_rows` rows at a time."""
    if info.fmt == "parquet":
        # Row group by row group (the scorer writes 16,384 rows per group), regrouped to `batch_rows`:
        # `ParquetFile.iter_batches` held more Arrow memory the longer the file (peak 62 MiB at
        # 200,000 sentences, 86 MiB at 600,000), reading row groups one at a time stays at 13 MiB.
        pf = pq.ParquetFile(info.path)
        pending: pa.Table | None = None
        for i in range(pf.num_row_groups):
            group = pf.read_row_group(i, columns=columns)
            pending = group if pending is None else pa.concat_tables([pending, group])
            while pending.num_rows >= batch_rows:
                yield pending.slice(0, batch_rows)
                pending = pending.slice(batch_rows)
        if pending is not None and pending.num_rows:
            yield pending
        return
    # Fixed types for CSV and JSONL: inferred per block, an all-empty block (say, every sentence
    # unsupported) would make a column null-typed in one batch and string in the next.
    types: dict[str, pa.DataType] = {}
    for c in columns:
        if c.startswith("p_"):
            types[c] = pa.float64()
        elif c in ("start", "end", "sentence_index"):
            types[c] = pa.int64()
        elif c in ("supported", "truncated"):
            types[c] = pa.bool_()
        else:
            types[c] = pa.string()  # ids, text, labels and kept fields are all text in the scorer's output
    if info.fmt == "csv":
        import pyarrow.csv as pcsv

        reader = pcsv.open_csv(
            info.path,
            read_options=pcsv.ReadOptions(block_size=1 << 23),
            convert_options=pcsv.ConvertOptions(column_types=types, include_columns=columns, strings_can_be_null=True),
        )
        for batch in reader:
            yield pa.Table.from_batches([batch])
        return
    schema = pa.schema([(c, types[c]) for c in columns])
    rows: list[dict] = []
    with info.path.open("r", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                obj = json.loads(line)
                rows.append({c: obj.get(c) for c in columns})
            if len(rows) == batch_rows:
                yield pa.Table.from_pylist(rows, schema=schema)
                rows = []
    if rows:
        yield pa.Table.from_pylist(rows, schema=schema)


# ---- dates ---------------------------------------------------------------------------------------


def parse_date(value: Any) -> dt.date | None:
    """The calendar date of an ISO 8601 date or date-time (as written, no time-zone conversion)."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    text = str(value).strip()
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text).date()
    except ValueError:
        return None


def bin_width(first: dt.date, last: dt.date) -> str:
    """'day' for spans up to DAILY_MAX_DAYS, else 'week' (bins start on Mondays)."""
    return "day" if (last - first).days <= DAILY_MAX_DAYS else "week"


def bin_start(day: dt.date, width: str) -> dt.date:
    return day if width == "day" else day - dt.timedelta(days=day.weekday())


# ---- tallies -------------------------------------------------------------------------------------


@dataclass
class Top:
    """The `k` most confident sentences for one target and label."""

    k: int
    rows: list[tuple[float, str, int, str, str]] = field(default_factory=list)  # (prob, doc_id, index, text, group)

    def offer(self, probs: np.ndarray, doc_ids, indices, texts, groups) -> None:
        if len(probs) == 0:
            return
        take = np.argsort(-probs, kind="stable")[: self.k]
        for i in take:
            self.rows.append((float(probs[i]), doc_ids[i], int(indices[i]), texts[i], groups[i]))
        # Highest probability first; ties in file order (document id, then sentence) for a stable report.
        self.rows.sort(key=lambda r: (-r[0], r[1], r[2]))
        del self.rows[self.k :]


@dataclass
class Tally:
    """Everything the report shows, folded batch by batch."""

    targets: list[tuple[str, list[str]]]
    by: str | None
    over: str | None
    top_k: int
    sentences: int = 0
    documents: int = 0
    unsupported: int = 0
    # target -> label -> count (supported sentences)
    overall: dict[str, dict[str, int]] = field(default_factory=dict)
    # target -> group -> label -> count; group -> sentences / documents
    by_group: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    group_sentences: dict[str, int] = field(default_factory=dict)
    group_documents: dict[str, int] = field(default_factory=dict)
    # target -> day -> label -> count; day -> sentences / documents (None: no parseable date)
    by_day: dict[str, dict[dt.date | None, dict[str, int]]] = field(default_factory=dict)
    day_sentences: dict[dt.date | None, int] = field(default_factory=dict)
    day_documents: dict[dt.date | None, int] = field(default_factory=dict)
    top: dict[tuple[str, str], Top] = field(default_factory=dict)
    _last_doc: tuple[Any, Any] | None = None

    def __post_init__(self) -> None:
        for t, labels in self.targets:
            self.overall[t] = {lab: 0 for lab in labels}
            self.by_group[t] = {}
            self.by_day[t] = {}
            for lab in labels:
                self.top[(t, lab)] = Top(self.top_k)

    def add(self, table: pa.Table) -> None:
        # Arrow kernels and integer codes only: no Python object per row. Converting each batch's
        # text and id columns to Python strings made peak RSS climb with the file (332 MiB at 200,000
        # sentences, 397 MiB at 600,000; bench/report.py), from allocator fragmentation.
        n = table.num_rows
        if n == 0:
            return
        doc, src = _array(table, "doc_id"), _array(table, "source")
        starts = np.ones(n, dtype=bool)
        if n > 1:
            changed = pc.or_(
                pc.not_equal(doc.slice(1), doc.slice(0, n - 1)), pc.not_equal(src.slice(1), src.slice(0, n - 1))
            )
            starts[1:] = changed.fill_null(True).to_numpy(zero_copy_only=False)
        first = (doc[0].as_py(), src[0].as_py())
        starts[0] = self._last_doc != first
        self._last_doc = (doc[n - 1].as_py(), src[n - 1].as_py())
        self.sentences += n
        self.documents += int(starts.sum())
        supported = _array(table, "supported").fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
        self.unsupported += int(n - supported.sum())

        groups = days = None  # (codes per row, key per code)
        if self.by:
            codes, values = _codes(_array(table, self.by))
            groups = (codes, [MISSING if v is None or str(v) == "" else str(v) for v in values])
            _count_codes(self.group_sentences, *groups)
            _count_codes(self.group_documents, codes[starts], groups[1])
        if self.over:
            codes, values = _codes(_array(table, self.over))
            days = (codes, [parse_date(v) for v in values])
            _count_codes(self.day_sentences, *days)
            _count_codes(self.day_documents, codes[starts], days[1])

        for t, labels in self.targets:
            col = _array(table, t)
            for lab in labels:
                hit = supported & pc.equal(col, lab).fill_null(False).to_numpy(zero_copy_only=False)
                count = int(hit.sum())
                if not count:
                    continue
                self.overall[t][lab] += count
                if groups is not None:
                    _count_label(self.by_group[t], groups[0][hit], groups[1], lab)
                if days is not None:
                    _count_label(self.by_day[t], days[0][hit], days[1], lab)
                if self.top_k:
                    p = _array(table, f"p_{t}_{lab}").fill_null(-1.0).to_numpy(zero_copy_only=False)
                    idx = np.flatnonzero(hit)
                    # Only this batch's best k can enter the overall best k; only they become Python strings.
                    best = idx[np.argsort(-p[idx], kind="stable")[: self.top_k]]
                    take = pa.array(best)
                    indices = (
                        table.column("sentence_index").take(take).to_pylist()
                        if "sentence_index" in table.column_names
                        else [0] * len(best)
                    )
                    group_of = [groups[1][c] for c in groups[0][best]] if groups is not None else [None] * len(best)
                    self.top[(t, lab)].offer(
                        p[best],
                        doc.take(take).to_pylist(),
                        indices,
                        table.column("text")
                        .take(take)
                        .to_pylist(),  # take on the chunked column: no copy of the whole text
                        group_of,
                    )


def _array(table: pa.Table, name: str) -> pa.Array:
    return table.column(name).combine_chunks()


def _codes(values: pa.Array) -> tuple[np.ndarray, list]:
    """Per row, the index of its value among the batch's distinct values (nulls: the last index)."""
    encoded = pc.dictionary_encode(values)
    distinct = encoded.dictionary.to_pylist() + [None]
    codes = encoded.indices.fill_null(len(distinct) - 1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, distinct


def _count_codes(counts: dict, codes: np.ndarray, keys: list) -> None:
    """Add the rows per key; several codes may share a key (null and "" are both missing)."""
    for code, c in enumerate(np.bincount(codes, minlength=len(keys))):
        if c:
            counts[keys[code]] = counts.get(keys[code], 0) + int(c)


def _count_label(table: dict, codes: np.ndarray, keys: list, label: str) -> None:
    partial: dict = {}
    _count_codes(partial, codes, keys)
    for k, c in partial.items():
        row = table.setdefault(k, {})
        row[label] = row.get(label, 0) + c


def tally(
    info: ScoresInfo, by: str | None = None, over: str | None = None, top_k: int = 5, batch_rows: int = BATCH_ROWS
) -> Tally:
    """Read the scores file once and fold it into a `Tally`."""
    for name, flag in ((by, "--by"), (over, "--over")):
        if name and name not in info.columns:
            kept = [
                c
                for c in info.columns
                if c not in BASE_COLUMNS and c not in dict(info.targets) and not c.startswith("p_")
            ]
            raise ReportError(
                f"{flag} {name}: no such column in {info.path} (kept input fields: "
                f"{', '.join(kept) or 'none; score with --keep-fields'})"
            )
    columns = ["doc_id", "source", "supported"] + [c for c in ("sentence_index", "text") if c in info.columns]
    for t, labels in info.targets:
        columns += [t] + [f"p_{t}_{lab}" for lab in labels]
    columns += [c for c in (by, over) if c and c not in columns]
    result = Tally(info.targets, by, over, top_k)
    for table in iter_batches(info, columns, batch_rows):
        result.add(table)
    return result


# ---- time bins -----------------------------------------------------------------------------------


@dataclass
class TimeBins:
    width: str  # day | week
    starts: list[dt.date]
    sentences: list[int]
    documents: list[int]
    labels: dict[str, dict[str, list[int]]]  # target -> label -> count per bin
    undated_sentences: int
    undated_documents: int


def time_bins(t: Tally) -> TimeBins | None:
    """Per-day tallies rebinned by day or week, every bin of the span present (empty ones as zero)."""
    days = sorted(d for d in t.day_sentences if d is not None)
    if not days:
        return None
    width = bin_width(days[0], days[-1])
    first, last = bin_start(days[0], width), bin_start(days[-1], width)
    step = dt.timedelta(days=1 if width == "day" else 7)
    starts = []
    d = first
    while d <= last:
        starts.append(d)
        d += step
    pos = {s: i for i, s in enumerate(starts)}
    sentences, documents = [0] * len(starts), [0] * len(starts)
    for day, n in t.day_sentences.items():
        if day is not None:
            sentences[pos[bin_start(day, width)]] += n
    for day, n in t.day_documents.items():
        if day is not None:
            documents[pos[bin_start(day, width)]] += n
    labels: dict[str, dict[str, list[int]]] = {}
    for target, tlabels in t.targets:
        labels[target] = {lab: [0] * len(starts) for lab in tlabels}
        for day, counts in t.by_day[target].items():
            if day is None:
                continue
            for lab, c in counts.items():
                labels[target][lab][pos[bin_start(day, width)]] += c
    return TimeBins(
        width, starts, sentences, documents, labels, t.day_sentences.get(None, 0), t.day_documents.get(None, 0)
    )


# ---- charts --------------------------------------------------------------------------------------


def label_colours(labels: list[str]) -> dict[str, str]:
    others = iter(OTHER_COLOURS * 4)
    return {lab: LABEL_COLOURS.get(lab) or next(others) for lab in labels}


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _stacked_bars(rows: list[tuple[str, dict[str, int]]], labels: list[str], title: str) -> str:
    """Horizontal bars of label shares, one per row, with n on the right; small rows faded."""
    import matplotlib.pyplot as plt

    colours = label_colours(labels)
    fig, ax = plt.subplots(figsize=(8, 0.42 * len(rows) + 0.9))
    for y, (_name, counts) in enumerate(rows):
        n = sum(counts.values())
        left = 0.0
        alpha = 0.35 if n < SMALL_GROUP else 1.0
        for lab in labels:
            share = counts.get(lab, 0) / n if n else 0.0
            ax.barh(
                y,
                share,
                left=left,
                color=colours[lab],
                alpha=alpha,
                edgecolor="white",
                linewidth=0.5,
                label=lab if y == 0 else None,
            )
            if share >= 0.08:
                ax.text(left + share / 2, y, f"{share:.0%}", ha="center", va="center", fontsize=8, color="white")
            left += share
        ax.text(1.01, y, f"n={n}" + (" (small)" if n < SMALL_GROUP else ""), va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda x, _: f"{x:.0%}")
    ax.set_title(title, fontsize=10, loc="left")
    ax.legend(ncol=len(labels), fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def _time_chart(bins: TimeBins, target: str, labels: list[str], neutral: str | None) -> str:
    """Shares of the stance labels per bin (hollow markers: small bins) above the sentence counts."""
    import matplotlib.pyplot as plt

    colours = label_colours(labels)
    x = np.array(bins.starts, dtype="datetime64[h]")
    if bins.width == "week":  # points and bars in the middle of their Monday-to-Sunday span
        x = x + np.timedelta64(84, "h")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 4.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    read = np.array([sum(bins.labels[target][lab][i] for lab in labels) for i in range(len(x))])
    small = read < SMALL_GROUP
    for lab in labels:
        if lab == neutral:
            continue
        counts = np.array(bins.labels[target][lab])
        share = np.where(read > 0, counts / np.maximum(read, 1), np.nan)
        top.plot(x, share, color=colours[lab], linewidth=1.4, label=lab)
        top.scatter(x[~small], share[~small], color=colours[lab], s=14, zorder=3)
        top.scatter(x[small], share[small], facecolors="white", edgecolors=colours[lab], s=14, zorder=3)
    top.yaxis.set_major_formatter(lambda v, _: f"{v:.0%}")
    top.set_ylim(bottom=0)
    top.set_title(
        f"{target}: share of supported sentences per {bins.width} (hollow: fewer than {SMALL_GROUP})",
        fontsize=10,
        loc="left",
    )
    top.legend(fontsize=8, frameon=False)
    width = 0.8 if bins.width == "day" else 5.6
    bottom.bar(x, read, width=width, color="#5d6d7e")
    bottom.set_ylabel("sentences", fontsize=8)
    for ax in (top, bottom):
        ax.spines[["top", "right"]].set_visible(False)
        ax.tick_params(labelsize=8)
    fig.autofmt_xdate()
    return _png(fig)


# ---- HTML ----------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2rem auto;max-width:62rem;
padding:0 1rem;color:#1c1c1c}
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2.2rem;border-bottom:1px solid #ddd}h3{font-size:1rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:13px}td,th{border:1px solid #ddd;padding:.2rem .5rem}
th{background:#f4f4f4;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.small td{color:#888}img{max-width:100%}.meta td:first-child{font-weight:600}
.note{color:#555;font-size:13px}blockquote{margin:.3rem 0 .6rem;padding:.2rem .6rem;border-left:3px solid #ccc}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _share_table(
    rows: list[tuple[str, dict[str, int], int | None]], labels: list[str], first: str, target: str, kind: str
) -> str:
    """Counts with shares; the data-* attributes let a test (or a script) read the numbers back."""
    head = "".join(f"<th>{_e(lab)}</th>" for lab in labels)
    out = [
        f'<table class="counts" data-target="{_e(target)}" data-kind="{_e(kind)}"><tr><th>{_e(first)}</th>'
        f"<th>documents</th><th>sentences read</th>{head}</tr>"
    ]
    for name, counts, docs in rows:
        n = sum(counts.values())
        cells = "".join(
            f'<td class="n" data-label="{_e(lab)}" data-count="{counts.get(lab, 0)}">{counts.get(lab, 0)}'
            + (f" ({counts.get(lab, 0) / n:.1%})" if n else "")
            + "</td>"
            for lab in labels
        )
        cls = "small" if n < SMALL_GROUP else ""
        out.append(
            f'<tr class="{cls}" data-group="{_e(name)}" data-documents="{"" if docs is None else docs}" '
            f'data-read="{n}"><td>{_e(name)}</td><td class="n">{"" if docs is None else docs}</td>'
            f'<td class="n">{n}</td>{cells}</tr>'
        )
    out.append("</table>")
    return "".join(out)


def _group_rows(t: Tally, target: str) -> list[tuple[str, dict[str, int], int | None]]:
    """The largest groups by sentences (ties by name), the rest pooled in one 'other' row."""
    order = sorted(t.group_sentences, key=lambda g: (-t.group_sentences[g], g))
    shown, rest = order[:MAX_GROUPS_SHOWN], order[MAX_GROUPS_SHOWN:]
    rows = [(g, t.by_group[target].get(g, {}), t.group_documents.get(g, 0)) for g in shown]
    if rest:
        pooled: dict[str, int] = {}
        for g in rest:
            for lab, c in t.by_group[target].get(g, {}).items():
                pooled[lab] = pooled.get(lab, 0) + c
        rows.append((f"other ({len(rest)} groups)", pooled, sum(t.group_documents.get(g, 0) for g in rest)))
    return rows


def render(info: ScoresInfo, t: Tally) -> str:
    """The report as one HTML string."""
    neutral = (info.schema or {}).get("neutral_label") or ("none" if any("none" in ls for _, ls in t.targets) else None)
    scored_at = info.scored_at or (
        dt.datetime.fromtimestamp(os.stat(info.path).st_mtime).isoformat(timespec="seconds")
        + " (file modified; no scoring date recorded)"
    )
    model = info.model or "not recorded (only Parquet output carries the model tag)"
    schema_desc = "; ".join(f"{name}: {', '.join(labels)}" for name, labels in t.targets)
    if info.schema:
        schema_desc = f"{info.schema.get('name', '')} v{info.schema.get('version', '')}: {schema_desc}"
    meta_rows = [
        ("scores file", info.path.name),
        ("model", model),
        ("schema", schema_desc),
        ("scored", scored_at),
        ("documents", t.documents),
        ("sentences", t.sentences),
        ("unsupported-language sentences", f"{t.unsupported} (not counted in any share)"),
    ]
    meta_rows += [
        (k.replace("_", " "), ", ".join(map(str, v)) if isinstance(v, list) else v)
        for k, v in info.extra.items()
        if isinstance(v, (str, int, float, list)) and v != []
    ]
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>stancewatch report: {_e(info.path.name)}"
        f"</title><style>{CSS}</style></head><body><h1>Stance report: {_e(info.path.name)}</h1>",
        '<table class="meta">'
        + "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in meta_rows)
        + "</table>",
        f'<p class="note">Shares are of the sentences the model read (supported language). Groups and time bins '
        f"with fewer than {SMALL_GROUP} such sentences are faded and marked small: read them as anecdotes.</p>",
    ]
    bins = time_bins(t) if t.over else None
    for target, labels in t.targets:
        parts.append(f"<h2>{_e(target)}</h2><h3>Overall</h3>")
        parts.append(
            f'<img alt="{_e(target)} overall" src="{_stacked_bars([("all", t.overall[target])], labels, "")}">'
        )
        parts.append(_share_table([("all", t.overall[target], t.documents)], labels, "scope", target, "overall"))
        if t.by:
            rows = _group_rows(t, target)
            parts.append(f"<h3>By {_e(t.by)}</h3>")
            parts.append(
                f'<img alt="{_e(target)} by {_e(t.by)}" src="'
                f'{_stacked_bars([(r[0], r[1]) for r in rows], labels, f"{target} by {t.by}")}">'
            )
            parts.append(_share_table(rows, labels, t.by, target, "by"))
        if t.over:
            parts.append(f"<h3>Over {_e(t.over)}</h3>")
            if bins is None:
                parts.append(f'<p class="note">No value of {_e(t.over)} parses as a date.</p>')
            else:
                parts.append(
                    f'<img alt="{_e(target)} over {_e(t.over)}" src="{_time_chart(bins, target, labels, neutral)}">'
                )
                rows = [
                    (
                        s.isoformat() if bins.width == "day" else f"week of {s.isoformat()}",
                        {lab: bins.labels[target][lab][i] for lab in labels},
                        bins.documents[i],
                    )
                    for i, s in enumerate(bins.starts)
                ]
                parts.append(
                    "<details><summary>counts per "
                    + bins.width
                    + "</summary>"
                    + _share_table(rows, labels, bins.width, target, "over")
                    + "</details>"
                )
                if bins.undated_sentences:
                    parts.append(
                        f'<p class="note">{bins.undated_documents} documents ({bins.undated_sentences} '
                        f"sentences) have no parseable {_e(t.over)} and are left out of this chart.</p>"
                    )
        if t.top_k:
            parts.append("<h3>Most confident sentences</h3>")
            for lab in labels:
                rows = t.top[(target, lab)].rows
                if not rows:
                    continue
                parts.append(f"<h4>{_e(lab)}</h4>")
                for prob, doc_id, index, text, group in rows:
                    where = f" · {_e(t.by)}: {_e(group)}" if t.by else ""
                    parts.append(
                        f'<blockquote>{_e(text)}<br><span class="note">p={prob:.3f} · document '
                        f"{_e(doc_id)}, sentence {index}{where}</span></blockquote>"
                    )
    parts.append(
        f'<p class="note">Generated by stancewatch report on '
        f"{dt.datetime.now().isoformat(timespec='seconds')}.</p></body></html>"
    )
    return "\n".join(parts)


def build_report(
    scores: Path,
    out: Path,
    by: str | None = None,
    over: str | None = None,
    top_k: int = 5,
    batch_rows: int = BATCH_ROWS,
) -> Tally:
    """Read `scores` once, write the HTML report to `out` (atomically), return the tallies behind it."""
    import matplotlib

    matplotlib.use("Agg")
    if top_k < 0:
        raise ReportError("--top must be 0 or more")
    info = read_info(Path(scores))
    t = tally(info, by, over, top_k, batch_rows)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(render(info, t), encoding="utf-8")
    os.replace(tmp, out)
    return t
