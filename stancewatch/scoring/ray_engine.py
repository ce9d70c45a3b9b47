"""Batch scoring on Ray Data: the same rows as the local engine (pipeline.py), computed on a Ray cluster.

The driver reads the inputs with `scoring.readers.iter_items` (inputs never need to be visible to the
workers) and cuts the item stream into rounds of `window` items, so driver and object-store memory
stay bounded whatever the input size. Each round is one Ray Data pipeline:

    from_arrow(blocks of records)
      -> map_batches(split_batch)                   tasks: sentences with offsets and context (`prepare`)
      -> map_batches(Predictor, ActorPoolStrategy)  N actors: each loads the model once, scores batches
      -> write_parquet(parts folder)                or, on a remote cluster, streamed back to the driver

The model travels as bytes: the driver reads the exported model folder into a {relative path: bytes}
dict and `ray.put`s it once; every actor writes it to a private temporary folder and builds a
`StanceModel` there. Workers need neither a shared filesystem nor a BentoML model store, only this
package installed.

Every row carries `_item` (the record's position in the input stream); after a round, the driver
orders the part files by `_item` and sorts rows by (`_item`, `sentence_index`), so the assembled
output has exactly the local engine's rows, columns and order. Rows of records that cannot be split
travel through the pipeline as rejects (`_reject` set) and are merged, in input order, with the
rejects the readers found. The helper columns are dropped before writing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from stancewatch.scoring.pipeline import Chunk, ChunkDone, ScoreResult, check_job, predict_table, prepare
from stancewatch.scoring.readers import DEFAULT_MAX_MEMBER_BYTES, ReadOptions, Record, Reject, iter_items
from stancewatch.scoring.writer import OutputError, doc_schema, output_format, sentence_schema

DEFAULT_WINDOW = 16384  # input items per Ray round (bounds driver and object-store memory)
BLOCK_ITEMS = 64  # records per input block (the unit of parallelism of the split step)
PREDICT_BATCH = 512  # sentences per actor call
WRITE_MODES = ("auto", "ray", "driver")

# Helper columns carried through the pipeline and dropped at the end.
ITEM, RECORD_NO, REJECT, CONTEXT = "_item", "_record_no", "_reject", "_context"


class RayEngineError(Exception):
    """Ray is missing or cannot be reached."""


# ---- the model as bytes -------------------------------------------------------------------------


def read_model_folder(folder: str | Path) -> dict[str, bytes]:
    """Every file of an exported model folder as {posix relative path: bytes}."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            files[path.relative_to(folder).as_posix()] = path.read_bytes()
    if "schema.json" not in files:
        raise ValueError(f"{folder} is not a model folder (no schema.json)")
    return files


def write_model_folder(files: dict[str, bytes], folder: Path) -> Path:
    """Recreate a folder written by `read_model_folder`; paths must stay inside `folder`."""
    root = folder.resolve()
    for rel, data in files.items():
        target = (root / rel).resolve()
        if root not in target.parents:
            raise ValueError(f"model file {rel!r} points outside the model folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root


# ---- schemas ------------------------------------------------------------------------------------


def _split_schema() -> pa.Schema:
    return pa.schema([(ITEM, pa.int64()), ("doc_id", pa.string()), ("source", pa.string()),
                      ("sentence_index", pa.int32()), ("start", pa.int64()), ("end", pa.int64()),
                      ("text", pa.string()), (CONTEXT, pa.string()), (RECORD_NO, pa.int64()),
                      (REJECT, pa.string())])


def _scored_schema(out_schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(ITEM, pa.int64())] + list(out_schema)
                     + [pa.field(RECORD_NO, pa.int64()), pa.field(REJECT, pa.string())])


# ---- pipeline steps (run on workers) ------------------------------------------------------------


def split_batch(batch: pa.Table, unit: str) -> pa.Table:
    """Records -> one row per sentence (with its context), or one reject row per unsplittable record."""
    cols: dict[str, list] = {name: [] for name in _split_schema().names}
    for row in batch.to_pylist():
        record = Record(row["source"], row["record_no"], row["doc_id"], row["text"])
        chunk = prepare([record], unit)  # the local engine's splitting, record by record
        for rej in chunk.rejects:
            for name, value in ((ITEM, row[ITEM]), ("doc_id", None), ("source", rej["source"]),
                                ("sentence_index", None), ("start", None), ("end", None), ("text", None),
                                (CONTEXT, None), (RECORD_NO, rej["record_no"]), (REJECT, rej["reason"])):
                cols[name].append(value)
        n = len(chunk.text)
        cols[ITEM] += [row[ITEM]] * n
        cols["doc_id"] += chunk.doc_id
        cols["source"] += chunk.source
        cols["sentence_index"] += chunk.index
        cols["start"] += chunk.start
        cols["end"] += chunk.end
        cols["text"] += chunk.text
        cols[CONTEXT] += chunk.context
        cols[RECORD_NO] += [row["record_no"]] * n
        cols[REJECT] += [None] * n
    return pa.Table.from_pydict(cols, schema=_split_schema())


class Predictor:
    """A Ray Data actor: loads the model once from its shipped bytes, then scores sentence batches."""

    def __init__(self, model_files, tag: str, backend: str = "auto", threads: int = 1):
        import ray

        from stancewatch.model.predictor import StanceModel

        files = model_files[0] if isinstance(model_files, list) else model_files  # [ref]: not auto-resolved
        if isinstance(files, ray.ObjectRef):
            files = ray.get(files)
        folder = Path(tempfile.mkdtemp(prefix="stancewatch-model-"))
        self._cleanup = weakref.finalize(self, shutil.rmtree, folder, True)
        self.model = StanceModel(write_model_folder(files, folder), backend=backend, threads=threads, tag=tag)
        self.out_schema = sentence_schema(self.model.schema.targets)
        self.schema = _scored_schema(self.out_schema)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rejected = batch.column(REJECT).is_valid()
        good = batch.filter(pc.invert(rejected))
        bad = batch.filter(rejected)
        chunk = Chunk(items=0, doc_id=good.column("doc_id").to_pylist(), source=good.column("source").to_pylist(),
                      index=good.column("sentence_index").to_pylist(), start=good.column("start").to_pylist(),
                      end=good.column("end").to_pylist(), text=good.column("text").to_pylist(),
                      context=good.column(CONTEXT).to_pylist())
        table, _ = predict_table(self.model, chunk, self.out_schema)
        scored = table.add_column(0, ITEM, good.column(ITEM))
        scored = scored.append_column(RECORD_NO, good.column(RECORD_NO))
        scored = scored.append_column(REJECT, good.column(REJECT))
        if bad.num_rows == 0:
            return scored.cast(self.schema)
        nulls = {f.name: pa.nulls(bad.num_rows, f.type) for f in self.schema}
        for name in (ITEM, "source", RECORD_NO, REJECT):
            nulls[name] = bad.column(name)
        return pa.concat_tables([scored.cast(self.schema), pa.table(nulls, schema=self.schema)])


# ---- assembling on the driver -------------------------------------------------------------------


class _Sink:
    """One output file (parquet, jsonl or csv by suffix), written under a temporary name."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path, self.schema, self.format = path, schema, output_format(path)
        self.tmp = path.with_name(f".{path.name}.tmp")
        if self.format == "parquet":
            self._w = pq.ParquetWriter(self.tmp, schema, compression="zstd")
        elif self.format == "csv":
            import pyarrow.csv as pcsv

            self._w = pcsv.CSVWriter(self.tmp, schema)
        else:
            self._w = open(self.tmp, "w", encoding="utf-8")

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        if self.format == "jsonl":
            for batch in table.to_batches(max_chunksize=4096):
                self._w.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in batch.to_pylist())
        else:
            self._w.write_table(table)

    def close(self, commit: bool) -> None:
        self._w.close()
        if commit:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


class _DocStats:
    """Per-document sentence counts and label shares of one round (`doc_table`'s numbers)."""

    def __init__(self, targets):
        self.targets = targets
        self.docs: dict[int, list] = {}  # _item -> [doc_id, source, count, hits per target, unsupported]

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        items = table.column(ITEM).to_numpy()
        uniq, first, inverse = np.unique(items, return_index=True, return_inverse=True)
        counts = np.bincount(inverse, minlength=len(uniq))
        doc_ids = table.column("doc_id").take(pa.array(first)).to_pylist()
        sources = table.column("source").take(pa.array(first)).to_pylist()
        unsupported = np.bincount(inverse, weights=~table.column("supported").to_numpy(zero_copy_only=False),
                                  minlength=len(uniq))
        per_target = []
        for t in self.targets:
            index = {label: j for j, label in enumerate(t.labels)}
            ids = np.array([index.get(v, -1) for v in table.column(t.name).to_pylist()], dtype=np.int64)
            ok = ids >= 0  # unsupported sentences carry no label
            hits = np.zeros((len(uniq), len(t.labels)))
            np.add.at(hits, (inverse[ok], ids[ok]), 1)
            per_target.append(hits)
        for k, item in enumerate(uniq.tolist()):
            entry = self.docs.setdefault(item, [doc_ids[k], sources[k], 0,
                                                [np.zeros(len(t.labels)) for t in self.targets], 0])
            entry[2] += int(counts[k])
            entry[4] += int(unsupported[k])
            for acc, hits in zip(entry[3], per_target):
                acc += hits[k]

    def table(self, schema: pa.Schema) -> pa.Table:
        keys = sorted(self.docs)
        cols: dict[str, list] = {"doc_id": [self.docs[k][0] for k in keys], "source": [self.docs[k][1] for k in keys],
                                 "sentences": [self.docs[k][2] for k in keys],
                                 "unsupported": [self.docs[k][4] for k in keys]}
        for ti, t in enumerate(self.targets):
            for j, label in enumerate(t.labels):
                cols[f"share_{t.name}_{label}"] = [
                    float(np.round(self.docs[k][3][ti][j] / max(self.docs[k][2] - self.docs[k][4], 1), 6)) for k in keys]
        self.docs = {}
        return pa.Table.from_pydict(cols, schema=schema)


def _ordered_tables(folder: Path) -> list[pa.Table] | None:
    """The round's part files as tables in input order, or None when they hold no rows."""
    files = sorted(folder.rglob("*.parquet"))
    spans = []
    for f in files:
        column = pq.read_table(f, columns=[ITEM]).column(ITEM)
        if len(column):
            spans.append((pc.min(column).as_py(), pc.max(column).as_py(), f))
    if not spans:
        return None
    spans.sort(key=lambda s: (s[0], s[1]))
    disjoint = all(a[1] < b[0] for a, b in zip(spans, spans[1:]))
    keys = [(ITEM, "ascending"), ("sentence_index", "ascending")]
    if disjoint:  # the usual case (order preserved): one file in memory at a time
        return [pq.read_table(f).sort_by(keys) for _, _, f in spans]
    # A document split across files: sort the whole round (bounded by `window`).
    return [pa.concat_tables([pq.read_table(f) for _, _, f in spans]).sort_by(keys)]


# ---- Ray ----------------------------------------------------------------------------------------


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayEngineError(f"--engine ray needs Ray Data: pip install 'ray[data]' ({exc})") from None
    return ray


def init_ray(address: str | None = None, num_cpus: int | None = None):
    """Connect to `address` (ray://host:10001, auto, ...) or start a local Ray; True when we started it."""
    ray = _import_ray()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        if address:
            ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        else:
            ray.init(address=None, num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                     logging_level="WARNING", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayEngineError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {exc}") from None
    return True


def score_ray(
    inputs: list[Path],
    out: Path,
    model_folder: str | Path,
    *,
    unit: str = "document",
    text_field: str = "text",
    id_field: str = "id",
    doc_summary: Path | None = None,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    tag: str | None = None,
    backend: str = "auto",
    ray_address: str | None = None,
    num_actors: int | None = None,
    threads: int | None = None,
    window: int | None = None,
    batch_size: int = PREDICT_BATCH,
    write: str = "auto",
    on_start: Callable[[int], None] | None = None,
    on_chunk: Callable[[ChunkDone], None] | None = None,
) -> ScoreResult:
    """Score `inputs` with the model exported in `model_folder` on Ray Data; same output as `pipeline.score`.

    Uses the running Ray if there is one, else connects to `ray_address` or starts a local Ray (and
    shuts down what it started). `num_actors` model replicas (default: the cluster's CPUs less one,
    divided by `threads` per actor) score batches of `batch_size` sentences. `write`: "ray" writes the
    parts with `write_parquet` (the parts folder must be reachable by the workers: local Ray or shared
    storage), "driver" streams the scored blocks back to the driver, "auto" picks "ray" for a local Ray.
    """
    if write not in WRITE_MODES:
        raise ValueError(f"write must be one of {', '.join(WRITE_MODES)}, got {write!r}")
    inputs, out = check_job(inputs, out, unit, doc_summary)
    window = int(window or DEFAULT_WINDOW)
    if window < 1:
        raise ValueError("window must be at least 1")
    files = read_model_folder(model_folder)
    from stancewatch.model.schema import Schema

    targets = Schema.load(Path(model_folder) / "schema.json").targets
    schema, dschema = sentence_schema(targets), doc_schema(targets)
    threads = int(threads or os.environ.get("STANCEWATCH_THREADS") or 1)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        parts = Path(tempfile.mkdtemp(prefix=f".{out.name}.ray-", dir=out.parent))
    except OSError as exc:
        raise OutputError(f"cannot write output next to {out}: {exc}") from None
    rejects_path = out.with_name(out.name + ".rejects.jsonl")

    ray = _import_ray()
    started_ray = init_ray(ray_address)
    if write == "auto":
        write = "ray" if not ray_address or ray_address == "local" else "driver"
    sinks: list[_Sink] = []
    ok = False
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        cpus = int(ray.cluster_resources().get("CPU", 1))
        actors = int(num_actors or max(1, (cpus - 1) // threads))
        model_ref = ray.put(files)
        del files
        if on_start:
            on_start(0)
        t0 = time.perf_counter()
        sink = _Sink(out, schema)
        sinks.append(sink)
        dsink = _Sink(doc_summary, dschema) if doc_summary is not None else None
        if dsink:
            sinks.append(dsink)
        rtmp = rejects_path.with_name(f".{rejects_path.name}.tmp")
        totals = {"documents": 0, "sentences": 0, "rejected": 0}
        opt = ReadOptions(text_field=text_field, id_field=id_field, max_member_bytes=max_member_bytes)
        with open(rtmp, "w", encoding="utf-8") as rfh:
            round_no = 0
            for records, rejects, n_items in _rounds(iter_items(inputs, opt), window):
                folder = parts / f"round-{round_no:06d}"
                round_no += 1
                split_rejects: list[tuple[int, dict]] = []
                docs = _DocStats(targets) if dsink else None
                sentences = 0
                doc_items: set[int] = set()
                if records:
                    ds = ray.data.from_arrow([_records_table(records[i:i + BLOCK_ITEMS])
                                              for i in range(0, len(records), BLOCK_ITEMS)])
                    ds = ds.map_batches(split_batch, batch_format="pyarrow", batch_size=None,
                                        fn_kwargs={"unit": unit})
                    ds = ds.map_batches(Predictor, batch_format="pyarrow", batch_size=batch_size,
                                        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=threads,
                                        fn_constructor_kwargs={"model_files": [model_ref], "tag": tag or
                                                               Path(model_folder).name, "backend": backend,
                                                               "threads": threads})
                    if write == "ray":
                        ds.write_parquet(str(folder))
                    else:
                        folder.mkdir()
                        for k, block in enumerate(ds.iter_batches(batch_size=None, batch_format="pyarrow")):
                            pq.write_table(block, folder / f"part-{k:06d}.parquet")
                    for table in _ordered_tables(folder) or []:
                        bad = table.column(REJECT).is_valid()
                        for row in table.filter(bad).select([ITEM, "source", RECORD_NO, REJECT]).to_pylist():
                            split_rejects.append((row[ITEM], {"source": row["source"], "record_no": row[RECORD_NO],
                                                              "reason": row[REJECT]}))
                        good = table.filter(pc.invert(bad))
                        sink.write(good)
                        if docs:
                            docs.add(good)
                        sentences += good.num_rows
                        doc_items.update(pc.unique(good.column(ITEM)).to_pylist())
                    shutil.rmtree(folder, ignore_errors=True)
                documents = len(doc_items)
                if dsink:
                    dsink.write(docs.table(dschema))
                merged = sorted(rejects + split_rejects, key=lambda r: r[0])
                rfh.writelines(json.dumps(r, ensure_ascii=False) + "\n" for _, r in merged)
                totals["documents"] += documents
                totals["sentences"] += sentences
                totals["rejected"] += len(merged)
                if on_chunk:
                    on_chunk(ChunkDone(n_items, documents, sentences, len(merged)))
        for s in sinks:
            s.close(commit=True)
        os.replace(rtmp, rejects_path)
        ok = True
    finally:
        if not ok:
            for s in sinks:
                try:
                    s.close(commit=False)
                except Exception:  # noqa: BLE001 - already failing
                    pass
        shutil.rmtree(parts, ignore_errors=True)
        if started_ray:
            ray.shutdown()
    return ScoreResult(out=out, rejects=rejects_path, documents=totals["documents"], sentences=totals["sentences"],
                       rejected=totals["rejected"], items_resumed=0, documents_this_run=totals["documents"],
                       sentences_this_run=totals["sentences"], elapsed_s=time.perf_counter() - t0)


def _rounds(items, window: int):
    """(records as dicts, [(item no, reject dict)], item count) per `window` input items."""
    records: list[dict] = []
    rejects: list[tuple[int, dict]] = []
    count = 0
    for n, item in enumerate(items):
        if isinstance(item, Reject):
            rejects.append((n, item.to_dict()))
        else:
            records.append({ITEM: n, "doc_id": item.doc_id, "source": item.source, "record_no": item.record_no,
                            "text": item.text})
        count += 1
        if count == window:
            yield records, rejects, count
            records, rejects, count = [], [], 0
    if count:
        yield records, rejects, count


def _records_table(records: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(records, schema=pa.schema([(ITEM, pa.int64()), ("doc_id", pa.string()),
                                                           ("source", pa.string()), ("record_no", pa.int64()),
                                                           ("text", pa.string())]))
