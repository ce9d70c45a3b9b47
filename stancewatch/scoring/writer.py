"""Checkpointed output: numbered part files plus a manifest, assembled into one file at the end.

While a job runs, ``OUT.parts/`` holds, per committed chunk *n*, ``part-n.parquet`` (sentence rows),
``rejects-n.jsonl`` and, with a document summary, ``docs-n.parquet``. Each file is written under a
temporary name, fsynced and renamed; only then is ``manifest.json`` replaced (again write, fsync,
``os.replace``). A chunk therefore either appears in the manifest with all its files complete, or
not at all: after a SIGKILL at any point, the manifest says exactly which input items are done.
When the job completes, the parts are streamed one by one into ``OUT`` (Parquet, JSONL or CSV by
suffix), ``OUT.rejects.jsonl`` and the summary file, and the folder is removed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}


class OutputError(Exception):
    """The output cannot be written (bad suffix, unwritable place, a mismatched resume)."""


def output_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise OutputError(f"{path}: unknown output format; use .parquet, .jsonl or .csv")
    return fmt


def sentence_schema(targets, keep_fields=()) -> pa.Schema:
    """Sentence rows: position and text, then per target its label and one probability per label, then
    the kept input fields (--keep-fields) as text."""
    fields = [
        ("doc_id", pa.string()),
        ("source", pa.string()),
        ("sentence_index", pa.int32()),
        ("start", pa.int64()),
        ("end", pa.int64()),
        ("text", pa.string()),
        ("truncated", pa.bool_()),
        ("language", pa.string()),
        ("supported", pa.bool_()),
    ]
    for t in targets:
        fields.append((t.name, pa.string()))
        fields += [(f"p_{t.name}_{label}", pa.float64()) for label in t.labels]
    return pa.schema(_with_kept(fields, keep_fields))


def _with_kept(fields: list, keep_fields) -> list:
    taken = {name for name, _ in fields}
    clash = [f for f in keep_fields if f in taken]
    if clash:
        raise OutputError(f"--keep-fields {', '.join(clash)}: the output already has a column of that name")
    return fields + [(f, pa.string()) for f in keep_fields]


def output_metadata(model_tag: str, schema: dict, unit: str, keep_fields=()) -> dict[bytes, bytes]:
    """Parquet key-value metadata for the assembled files: what scored them and when (read by
    `stancewatch report`). Written at assembly, so a resumed job records when it finished."""
    import datetime as dt

    meta = {
        "model": model_tag,
        "schema": schema,
        "unit": unit,
        "keep_fields": list(keep_fields),
        "scored_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return {b"stancewatch": json.dumps(meta, ensure_ascii=False).encode("utf-8")}


def doc_schema(targets, keep_fields=()) -> pa.Schema:
    """Document rows: id, source, sentence count, unsupported-language sentences, then the share of the
    supported sentences with each label."""
    fields = [("doc_id", pa.string()), ("source", pa.string()), ("sentences", pa.int32()), ("unsupported", pa.int32())]
    for t in targets:
        fields += [(f"share_{t.name}_{label}", pa.float64()) for label in t.labels]
    return pa.schema(_with_kept(fields, keep_fields))


# ---- durable small writes -----------------------------------------------------------------------


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_durably(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    _replace_durably(tmp, path)


# ---- the parts folder ---------------------------------------------------------------------------


class PartStore:
    """The ``OUT.parts/`` folder of one job: commits chunks, knows what is done, assembles the output."""

    def __init__(self, out: Path, job: dict[str, Any], resume: bool):
        self.out = out
        self.format = output_format(out)
        self.folder = out.with_name(out.name + ".parts")
        self.rejects_path = out.with_name(out.name + ".rejects.jsonl")
        self.job = job
        manifest_path = self.folder / MANIFEST
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            if manifest_path.exists():
                old = json.loads(manifest_path.read_text(encoding="utf-8"))
                if not resume:
                    raise OutputError(
                        f"{self.folder} holds an unfinished run ({old['items_done']} input records "
                        "done); pass --resume to finish it, or delete that folder to start over"
                    )
                diff = sorted(k for k in set(job) | set(old["job"]) if job.get(k) != old["job"].get(k))
                if diff:
                    raise OutputError(
                        f"--resume: the unfinished run in {self.folder} used other settings ("
                        + "; ".join(f"{k}: {old['job'].get(k)!r} then, {job.get(k)!r} now" for k in diff)
                        + ")"
                    )
                self.manifest = old
            else:
                if self.folder.exists():  # a folder without a manifest committed nothing
                    shutil.rmtree(self.folder)
                self.folder.mkdir()
                self.manifest = {
                    "version": MANIFEST_VERSION,
                    "job": job,
                    "items_done": 0,
                    "documents": 0,
                    "sentences": 0,
                    "rejected": 0,
                    "parts": [],
                }
                _write_json_atomic(manifest_path, self.manifest)
            probe = self.folder / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise OutputError(f"cannot write output next to {out}: {exc}") from None

    @property
    def items_done(self) -> int:
        return int(self.manifest["items_done"])

    def commit(
        self, items: int, documents: int, sentences: pa.Table, rejects: list[dict], docs: pa.Table | None = None
    ) -> None:
        """Write one chunk's files durably, then record it (and the items it consumed) in the manifest."""
        n = len(self.manifest["parts"])
        entry = {
            "part": f"part-{n:06d}.parquet",
            "rejects": f"rejects-{n:06d}.jsonl",
            "items": items,
            "documents": documents,
            "sentences": sentences.num_rows,
            "rejected": len(rejects),
        }
        tmp = self.folder / f".{entry['part']}.tmp"
        pq.write_table(sentences, tmp, compression="zstd")
        _replace_durably(tmp, self.folder / entry["part"])
        tmp = self.folder / f".{entry['rejects']}.tmp"
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects), encoding="utf-8")
        _replace_durably(tmp, self.folder / entry["rejects"])
        if docs is not None:
            entry["docs"] = f"docs-{n:06d}.parquet"
            tmp = self.folder / f".{entry['docs']}.tmp"
            pq.write_table(docs, tmp, compression="zstd")
            _replace_durably(tmp, self.folder / entry["docs"])
        manifest = dict(self.manifest)
        manifest["parts"] = self.manifest["parts"] + [entry]
        for key in ("items", "documents", "sentences", "rejected"):
            total_key = "items_done" if key == "items" else key
            manifest[total_key] = self.manifest[total_key] + entry[key]
        _write_json_atomic(self.folder / MANIFEST, manifest)
        self.manifest = manifest

    def discard_if_empty(self) -> None:
        """Remove the folder when no chunk was ever committed to it (a run that failed at start-up,
        e.g. Ray unreachable or a model that does not load): it holds nothing to resume, and left in
        place it would make the next run demand --resume."""
        if not self.manifest["parts"]:
            shutil.rmtree(self.folder, ignore_errors=True)

    def finish(
        self,
        schema: pa.Schema,
        doc_summary: Path | None = None,
        docs_schema: pa.Schema | None = None,
        metadata: dict[bytes, bytes] | None = None,
    ) -> None:
        """Assemble the final files from the parts (one part in memory at a time), then drop the folder.
        `metadata` goes into the Parquet files' key-value metadata (see `output_metadata`)."""
        parts = self.manifest["parts"]
        _assemble([self.folder / p["part"] for p in parts], schema, self.out, self.format, metadata)
        if doc_summary is not None:
            _assemble(
                [self.folder / p["docs"] for p in parts], docs_schema, doc_summary, output_format(doc_summary), metadata
            )
        tmp = self.rejects_path.with_name(f".{self.rejects_path.name}.tmp")
        with open(tmp, "wb") as dst:
            for p in parts:
                with open(self.folder / p["rejects"], "rb") as src:
                    shutil.copyfileobj(src, dst)
        _replace_durably(tmp, self.rejects_path)
        shutil.rmtree(self.folder)


ROW_GROUP_ROWS = 16_384  # rows per Parquet row group in the assembled file


def _assemble(
    parts: list[Path], schema: pa.Schema, out: Path, fmt: str, metadata: dict[bytes, bytes] | None = None
) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    if fmt == "parquet":
        # The writer keeps every row group's metadata until it closes: one small row group per part,
        # with min/max statistics of the text columns, made memory grow with the input (+39 MB for
        # 782 parts). Large row groups and no statistics on strings keep it flat.
        stats = [f.name for f in schema if not (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))]
        file_schema = schema.with_metadata(metadata) if metadata else schema
        with pq.ParquetWriter(tmp, file_schema, compression="zstd", write_statistics=stats) as w:
            pending: list[pa.Table] = []
            rows = 0
            for part in parts:
                table = pq.read_table(part, schema=schema)
                pending.append(table)
                rows += table.num_rows
                if rows >= ROW_GROUP_ROWS:
                    w.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
                    pending, rows = [], 0
            if pending:
                w.write_table(pa.concat_tables(pending), row_group_size=ROW_GROUP_ROWS)
    elif fmt == "csv":
        import pyarrow.csv as pcsv

        with pcsv.CSVWriter(tmp, schema) as w:
            for part in parts:
                w.write_table(pq.read_table(part, schema=schema))
    else:
        with open(tmp, "w", encoding="utf-8") as fh:
            for part in parts:
                for batch in pq.read_table(part, schema=schema).to_batches(max_chunksize=4096):
                    fh.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in batch.to_pylist())
    _replace_durably(tmp, out)
