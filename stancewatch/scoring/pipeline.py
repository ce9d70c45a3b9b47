"""Batch scoring: input items → chunks of sentences → `StanceModel.predict_arrays` → checkpointed parts.

The item stream (readers.py) is cut into chunks of `chunk_size` items (records and rejects alike),
so chunk boundaries depend only on the input: a resumed run skips the items the manifest marks as
done and then forms exactly the chunks an uninterrupted run would have, giving identical output.
A background thread reads and splits the next chunks while the model runs (torch releases the
GIL); a bounded queue keeps memory flat whatever the input size.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from stancewatch.model.splitter import split_sentences, with_context
from stancewatch.scoring.readers import DEFAULT_MAX_MEMBER_BYTES, ReadOptions, Record, Reject, check_inputs, iter_items
from stancewatch.scoring.writer import PartStore, doc_schema, output_format, output_metadata, sentence_schema

UNITS = ("document", "sentence")
DEFAULT_CHUNK = {"document": 256, "sentence": 4096}  # items per chunk (and per checkpoint)
PREFETCH = 2  # chunks prepared ahead of the model


@dataclass
class Chunk:
    """One chunk's sentences, ready for the model, and its rejects."""

    items: int
    doc_id: list[str] = field(default_factory=list)
    source: list[str] = field(default_factory=list)
    index: list[int] = field(default_factory=list)
    start: list[int] = field(default_factory=list)
    end: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    context: list[str | None] = field(default_factory=list)
    docs: list[tuple[str, str, int]] = field(default_factory=list)  # (doc_id, source, sentence count)
    rejects: list[dict] = field(default_factory=list)
    kept: list[tuple] = field(default_factory=list)  # per sentence, its document's --keep-fields values
    doc_kept: list[tuple] = field(default_factory=list)  # the same, per document


@dataclass
class ChunkDone:
    """What one committed chunk added (for progress bars)."""

    items: int
    documents: int
    sentences: int
    rejected: int


@dataclass
class ScoreResult:
    out: Path
    rejects: Path
    documents: int  # whole job, resumed parts included
    sentences: int
    rejected: int
    items_resumed: int  # items found done in the manifest at start
    documents_this_run: int
    sentences_this_run: int
    elapsed_s: float
    timings: dict | None = None  # where the time went, for engines that measure it (the Ray engine)


def prepare(items: list[Record | Reject], unit: str) -> Chunk:
    """Split a chunk's records into sentences with offsets and context (the service's way)."""
    chunk = Chunk(items=len(items))
    for item in items:
        if isinstance(item, Reject):
            chunk.rejects.append(item.to_dict())
            continue
        if unit == "sentence":
            sentences, contexts = [(0, 0, len(item.text), item.text)], [None]
        else:
            try:
                parts = split_sentences(item.text)
            except Exception as exc:  # noqa: BLE001 - a segmenter failure rejects one record, not the run
                chunk.rejects.append(Reject(item.source, item.record_no, f"cannot split: {exc}").to_dict())
                continue
            if not parts:
                chunk.rejects.append(Reject(item.source, item.record_no, "no sentences").to_dict())
                continue
            sentences = [(s.index, s.start, s.end, s.text) for s in parts]
            contexts = with_context(parts)
        for (index, start, end, text), ctx in zip(sentences, contexts):
            chunk.doc_id.append(item.doc_id)
            chunk.source.append(item.source)
            chunk.index.append(index)
            chunk.start.append(start)
            chunk.end.append(end)
            chunk.text.append(text)
            chunk.context.append(ctx)
            chunk.kept.append(item.fields)
        chunk.docs.append((item.doc_id, item.source, len(sentences)))
        chunk.doc_kept.append(item.fields)
    return chunk


def _chunks(items: Iterator[Record | Reject], chunk_size: int, skip: int, unit: str) -> Iterator[Chunk]:
    buf: list[Record | Reject] = []
    for n, item in enumerate(items):
        if n < skip:
            continue  # done in an earlier run
        buf.append(item)
        if len(buf) == chunk_size:
            yield prepare(buf, unit)
            buf = []
    if buf:
        yield prepare(buf, unit)


def _prefetched(chunks: Iterator[Chunk], depth: int) -> Iterator[Chunk]:
    """Run `chunks` in a background thread, at most `depth` chunks ahead; re-raise its errors here."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(obj) -> bool:
        while not stop.is_set():
            try:
                q.put(obj, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for c in chunks:
                if not put(c):
                    return
            put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(exc)

    thread = threading.Thread(target=work, name="scoring-reader", daemon=True)
    thread.start()
    try:
        while True:
            obj = q.get()
            if obj is done:
                return
            if isinstance(obj, BaseException):
                raise obj
            yield obj
    finally:
        stop.set()
        thread.join(timeout=5)


def predict_table(model, chunk: Chunk, schema: pa.Schema) -> tuple[pa.Table, list[np.ndarray]]:
    """Score a chunk's sentences: the flat sentence table and the per-target label indices.

    A sentence in a language the model does not read has `supported` false, empty labels and
    probabilities, and label index -1.
    """
    r = model.read(chunk.text, chunk.context)
    supported = np.asarray(r.supported, dtype=bool)
    cols: dict[str, object] = {
        "doc_id": chunk.doc_id,
        "source": chunk.source,
        "sentence_index": chunk.index,
        "start": chunk.start,
        "end": chunk.end,
        "text": chunk.text,
        "truncated": r.truncated,
        "language": r.language,
        "supported": r.supported,
    }
    label_ids = []
    for j, (target, p) in enumerate(zip(model.schema.targets, r.probs)):
        ids = r.label_ids(j)
        label_ids.append(ids)
        names = np.asarray(target.labels, dtype=object)[np.maximum(ids, 0)] if len(p) else np.zeros(0, dtype=object)
        cols[target.name] = pa.array(names, type=pa.string(), mask=~supported) if len(p) else []
        rounded = np.round(p.astype(np.float64), 6)  # as the service and `StanceModel.predict` report them
        for k, label in enumerate(target.labels):
            cols[f"p_{target.name}_{label}"] = (
                pa.array(rounded[:, k], type=pa.float64(), mask=~supported) if len(p) else []
            )
    _add_kept(cols, schema, chunk.kept)
    return pa.Table.from_pydict(cols, schema=schema), label_ids


def _add_kept(cols: dict, schema: pa.Schema, kept: list[tuple]) -> None:
    """The kept input fields: the schema's columns after the computed ones, in --keep-fields order."""
    for j, name in enumerate(n for n in schema.names if n not in cols):
        cols[name] = [k[j] for k in kept]


def doc_table(targets, chunk: Chunk, label_ids: list[np.ndarray], schema: pa.Schema) -> pa.Table:
    """Per document: its sentence count, how many were unsupported, and per target (the model schema's
    `targets`) the share of its supported sentences with each label."""
    counts = np.array([n for _, _, n in chunk.docs], dtype=np.int64)
    owner = np.repeat(np.arange(len(counts)), counts)  # sentence -> document row
    cols: dict[str, object] = {
        "doc_id": [d for d, _, _ in chunk.docs],
        "source": [s for _, s, _ in chunk.docs],
        "sentences": counts,
    }
    unsupported = np.zeros(len(counts), dtype=np.int64)
    if label_ids:
        np.add.at(unsupported, owner, (label_ids[0] < 0).astype(np.int64))
    cols["unsupported"] = unsupported
    read = np.maximum(counts - unsupported, 1)
    for target, ids in zip(targets, label_ids):
        hits = np.zeros((len(counts), len(target.labels)))
        ok = ids >= 0
        np.add.at(hits, (owner[ok], ids[ok]), 1)
        shares = np.round(hits / read[:, None], 6)
        for j, label in enumerate(target.labels):
            cols[f"share_{target.name}_{label}"] = shares[:, j]
    _add_kept(cols, schema, chunk.doc_kept)
    return pa.Table.from_pydict(cols, schema=schema)


def check_job(inputs, out, unit: str, doc_summary: Path | None) -> tuple[list[Path], Path]:
    """Fail early on a bad unit, a missing input or an unusable output (shared by both engines)."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {', '.join(UNITS)}, got {unit!r}")
    inputs = [Path(p) for p in inputs]
    check_inputs(inputs)
    output_format(Path(out))
    if doc_summary is not None:
        output_format(doc_summary)
    return inputs, Path(out)


# One engine's scoring step: (chunks, sentence schema) -> (chunk, its sentence table, its label ids), in
# chunk order. The local engine runs the model here; the Ray engine (ray_engine.py) hands the chunk's
# sentences to actors. Everything around it (job settings, checkpoints, resume, assembly) is `run_job`.
ChunkScorer = Callable[[Iterator[Chunk], pa.Schema], Iterator[tuple[Chunk, pa.Table, list[np.ndarray]]]]


@dataclass(frozen=True)
class JobOptions:
    """What a scoring job reads and writes, shared by both engines (`score`, `ray_engine.score_ray`).

    `keep_fields` are input fields copied to every sentence and document row (a record missing one, or
    with a malformed value, is a reject); those also in `date_fields` must be ISO 8601 dates."""

    unit: str = "document"
    text_field: str = "text"
    id_field: str = "id"
    resume: bool = False
    chunk_size: int | None = None
    doc_summary: Path | None = None
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    keep_fields: tuple[str, ...] = ()
    date_fields: tuple[str, ...] = ("date",)


def score(
    inputs: list[Path],
    out: Path,
    model,
    *,
    on_start: Callable[[int], None] | None = None,
    on_chunk: Callable[[ChunkDone], None] | None = None,
    **options,
) -> ScoreResult:
    """Score every record of `inputs` with `model` into `out`; with `resume`, finish an interrupted run.
    `options` are `JobOptions` fields."""

    def local(chunks: Iterator[Chunk], schema: pa.Schema):
        for chunk in chunks:
            table, label_ids = predict_table(model, chunk, schema)
            yield chunk, table, label_ids

    return run_job(inputs, out, model.tag, model.schema, local, JobOptions(**options), on_start, on_chunk)


def run_job(
    inputs: list[Path],
    out: Path,
    tag: str,
    model_schema,
    scorer: ChunkScorer,
    opts: JobOptions = JobOptions(),
    on_start: Callable[[int], None] | None = None,
    on_chunk: Callable[[ChunkDone], None] | None = None,
) -> ScoreResult:
    """The job around an engine's `scorer`: chunks cut from the inputs, each committed to the part
    store (fsync, rejects, document summary) as it comes back, then assembled. Shared by both engines,
    so a job either of them left unfinished resumes with the same settings."""
    unit, text_field, id_field, doc_summary = opts.unit, opts.text_field, opts.id_field, opts.doc_summary
    max_member_bytes, keep_fields, date_fields = opts.max_member_bytes, opts.keep_fields, opts.date_fields
    inputs, out = check_job(inputs, out, unit, doc_summary)
    chunk_size = int(opts.chunk_size or DEFAULT_CHUNK[unit])
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    job = {
        "inputs": [str(p.resolve()) for p in inputs],
        "unit": unit,
        "text_field": text_field,
        "id_field": id_field,
        "model": tag,
        "chunk_size": chunk_size,
        "max_member_bytes": max_member_bytes,
        "doc_summary": doc_summary is not None,
    }
    keep_fields = tuple(keep_fields)
    date_fields = tuple(f for f in date_fields if f in keep_fields)
    targets = model_schema.targets
    schema = sentence_schema(targets, keep_fields)  # raises on a kept name that is an output column
    dschema = doc_schema(targets, keep_fields)
    if keep_fields:  # only then, so that unfinished runs of earlier versions still resume
        job.update(keep_fields=list(keep_fields), date_fields=list(date_fields))
    store = PartStore(out, job, opts.resume)
    skip = store.items_done
    if on_start:
        on_start(skip)
    started = time.perf_counter()
    docs_run = sentences_run = 0
    opt = ReadOptions(
        text_field=text_field,
        id_field=id_field,
        max_member_bytes=max_member_bytes,
        keep_fields=keep_fields,
        date_fields=date_fields,
    )
    chunks = _prefetched(_chunks(iter_items(inputs, opt), chunk_size, skip, unit), PREFETCH)
    try:
        with closing(chunks):  # on any error, stop the reader thread now
            for chunk, table, label_ids in scorer(chunks, schema):
                docs = doc_table(targets, chunk, label_ids, dschema) if doc_summary is not None else None
                store.commit(chunk.items, len(chunk.docs), table, chunk.rejects, docs)
                docs_run += len(chunk.docs)
                sentences_run += table.num_rows
                if on_chunk:
                    on_chunk(ChunkDone(chunk.items, len(chunk.docs), table.num_rows, len(chunk.rejects)))
    except BaseException:
        store.discard_if_empty()  # a run that failed before its first commit leaves nothing behind
        raise
    m = store.manifest
    store.finish(schema, doc_summary, dschema, output_metadata(tag, model_schema.to_dict(), unit, keep_fields))
    return ScoreResult(
        out=out,
        rejects=store.rejects_path,
        documents=m["documents"],
        sentences=m["sentences"],
        rejected=m["rejected"],
        items_resumed=skip,
        documents_this_run=docs_run,
        sentences_this_run=sentences_run,
        elapsed_s=time.perf_counter() - started,
    )
