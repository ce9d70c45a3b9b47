"""Streaming records out of every input kind batch scoring accepts, without extracting anything.

Every input becomes one deterministic stream of items, each either a `Record` (one article, or one
sentence with `--unit sentence`) or a `Reject` (a record that cannot be scored, with the reason).
Archives are read member by member through `zipfile`/`tarfile` file objects, so member names are
only ever used as ids: nothing is written to disk under a name taken from an archive. Every archive
member is read through a counter that stops at `max_member_bytes` uncompressed bytes (compression
bombs).

Kinds, chosen by file name: ``.jsonl``/``.ndjson`` (optionally ``.gz``/``.zst``), ``.csv``,
``.parquet``, ``.txt``/``.md`` (one article per file), a folder (its files, recursively, sorted by
relative path) and ``.zip``/``.tar``/``.tar.gz``/``.tgz`` archives of any of those.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

DEFAULT_MAX_MEMBER_BYTES = 200 * 1024 * 1024  # uncompressed bytes per archive member
TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
COMPRESSIONS = (".gz", ".zst")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")

csv.field_size_limit(sys.maxsize)  # an article in one CSV cell can be long


@dataclass(frozen=True)
class Record:
    source: str
    record_no: int  # line number (JSONL), data row (CSV, Parquet), 1 for a text file
    doc_id: str
    text: str
    # The --keep-fields values, in the order asked for; None where the source has no fields (text files).
    fields: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class Reject:
    source: str
    record_no: int  # 0 when the whole source or member is unreadable
    reason: str

    def to_dict(self) -> dict:
        return {"source": self.source, "record_no": self.record_no, "reason": self.reason}


Item = Record | Reject


class InputError(Exception):
    """An input that does not exist or is of no known kind: the run cannot start."""


class MemberTooLarge(Exception):
    """An archive member decompressed past the configured limit."""


@dataclass(frozen=True)
class ReadOptions:
    text_field: str = "text"
    id_field: str = "id"
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES
    keep_fields: tuple[str, ...] = ()  # input fields carried to every output row (--keep-fields)
    date_fields: tuple[str, ...] = ()  # those of them that must be ISO 8601 dates (--date-fields)


# ---- kinds --------------------------------------------------------------------------------------


def _kind(name: str) -> str | None:
    """The kind of a file by its name: text, jsonl, csv, parquet, zip, tar, or None."""
    low = name.lower()
    if low.endswith(TEXT_SUFFIXES):
        return "text"
    for comp in ("",) + COMPRESSIONS:
        if low.endswith(tuple(s + comp for s in JSONL_SUFFIXES)):
            return "jsonl"
        if low.endswith(".csv" + comp):
            return "csv"
    if low.endswith(".parquet"):
        return "parquet"
    if low.endswith(".zip"):
        return "zip"
    if low.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    return None


def check_inputs(inputs: list[Path]) -> None:
    """Raise `InputError` unless every input exists and is of a known kind."""
    if not inputs:
        raise InputError("no input given")
    for path in inputs:
        if not path.exists():
            raise InputError(f"input not found: {path}")
        if not path.is_dir() and _kind(path.name) is None:
            raise InputError(
                f"{path}: unknown input kind; expected .jsonl/.ndjson[.gz|.zst], .csv[.gz|.zst], "
                ".parquet, .txt, .md, a folder, .zip, .tar or .tar.gz"
            )


# ---- bounded reading ----------------------------------------------------------------------------


class LimitedReader(io.RawIOBase):
    """A read-only stream over `raw` that raises `MemberTooLarge` past `limit` bytes."""

    def __init__(self, raw: IO[bytes], limit: int | None):
        self._raw = raw
        self._limit = limit
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self._limit is None:
            data = self._raw.read(len(buffer))
            buffer[: len(data)] = data
            return len(data)
        want = min(len(buffer), self._limit + 1 - self.count)  # one byte past the limit proves it
        if want <= 0:
            raise MemberTooLarge(f"more than {self._limit} uncompressed bytes")
        data = self._raw.read(want)
        n = len(data)
        buffer[:n] = data
        self.count += n
        if self.count > self._limit:
            raise MemberTooLarge(f"more than {self._limit} uncompressed bytes")
        return n


def _decompressed(fh: IO[bytes], name: str) -> IO[bytes]:
    low = name.lower()
    if low.endswith(".gz"):
        return gzip.GzipFile(fileobj=fh, mode="rb")
    if low.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True)
    return fh


def _bounded(fh: IO[bytes], limit: int | None) -> IO[bytes]:
    """A buffered, line-iterable stream over `fh` that stops past `limit` bytes (None: no limit)."""
    return io.BufferedReader(LimitedReader(fh, limit), 1 << 16)


# ---- one stream of bytes ------------------------------------------------------------------------


def _doc_id(value, source: str, record_no: int) -> str:
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) != "":
        return str(value)
    return f"{source}:{record_no}"  # stable: the same input always gives the same id


def _check_text(value, field: str) -> str | None:
    """The reason `value` cannot be scored as text, or None."""
    if value is None:
        return f"missing field {field!r}"
    if not isinstance(value, str):
        return f"field {field!r} is {type(value).__name__}, not a string"
    if not value.strip():
        return "empty text"
    return None


def _kept_value(value, name: str, is_date: bool) -> tuple[str | None, str | None]:
    """A kept field's value as text, or the reason the record is rejected.

    Missing means absent, null or blank (the text field's rule). Numbers are kept as written by
    `str`; lists, objects and booleans are malformed. A date field must parse as ISO 8601 (a date, or
    a date-time with optional offset); it is rejected otherwise, not kept as text, so that grouping
    by date never silently loses records.
    """
    if isinstance(value, (dt.datetime, dt.date)):  # Parquet date and timestamp columns
        return value.isoformat(), None
    if value is None or (isinstance(value, str) and not value.strip()):
        return None, f"missing field {name!r} (--keep-fields)"
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None, f"field {name!r} is {type(value).__name__}, not a string or number (--keep-fields)"
    text = str(value)
    if is_date and not is_iso_date(text):
        return None, f"field {name!r}: {text[:40]!r} is not an ISO 8601 date (YYYY-MM-DD[THH:MM[:SS]][+HH:MM])"
    return text, None


def is_iso_date(text: str) -> bool:
    text = text.strip()
    if len(text) < 10 or not text[:4].isdigit():  # fromisoformat also takes "20251107" and week dates
        return False
    try:
        dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        return False
    return True


def _kept(get, opt: ReadOptions) -> tuple[tuple[str | None, ...], str | None]:
    """All kept fields of one record via `get(name)`, or the first reason to reject it."""
    values = []
    for name in opt.keep_fields:
        value, reason = _kept_value(get(name), name, name in opt.date_fields)
        if reason:
            return (), reason
        values.append(value)
    return tuple(values), None


def _read_jsonl(fh: IO[bytes], source: str, opt: ReadOptions) -> Iterator[Item]:
    line_no = 0
    for line_no, raw in enumerate(fh, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Reject(source, line_no, f"undecodable bytes: {exc}")
            continue
        if not line.strip():
            continue  # blank lines (often the last one) carry no record
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Reject(source, line_no, f"invalid JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            yield Reject(source, line_no, f"not a JSON object but {type(obj).__name__}")
            continue
        text = obj.get(opt.text_field)
        reason = _check_text(text, opt.text_field)
        kept, reason = _kept(obj.get, opt) if not reason else ((), reason)
        if reason:
            yield Reject(source, line_no, reason)
            continue
        yield Record(source, line_no, _doc_id(obj.get(opt.id_field), source, line_no), text, kept)


def _has_surrogates(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _missing_columns(columns: list[str], source: str, opt: ReadOptions) -> Reject | None:
    """A whole-source reject when a table (CSV, Parquet) lacks the text column or a kept field."""
    if opt.text_field not in columns:
        return Reject(source, 0, f"no column {opt.text_field!r} (columns: {', '.join(columns)})")
    absent = [f for f in opt.keep_fields if f not in columns]
    if absent:
        return Reject(
            source, 0, f"no column {', '.join(map(repr, absent))} for --keep-fields (columns: {', '.join(columns)})"
        )
    return None


def _read_csv(fh: IO[bytes], source: str, opt: ReadOptions) -> Iterator[Item]:
    text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    if missing := _missing_columns(header, source, opt):
        yield missing
        return
    ti = header.index(opt.text_field)
    ii = header.index(opt.id_field) if opt.id_field in header else None
    ki = [header.index(f) for f in opt.keep_fields]
    for row_no, row in enumerate(reader, start=1):
        if not row:
            continue
        value = row[ti] if ti < len(row) else None
        if value is not None and _has_surrogates(value):
            yield Reject(source, row_no, "undecodable bytes (not UTF-8)")
            continue
        reason = _check_text(value, opt.text_field)
        if not reason and any(i < len(row) and _has_surrogates(row[i]) for i in ki):
            reason = "undecodable bytes (not UTF-8) in a kept field"
        cells = {f: row[i] if i < len(row) else None for f, i in zip(opt.keep_fields, ki)}
        kept, reason = _kept(cells.get, opt) if not reason else ((), reason)
        if reason:
            yield Reject(source, row_no, reason)
            continue
        raw_id = row[ii] if ii is not None and ii < len(row) and not _has_surrogates(row[ii]) else None
        yield Record(source, row_no, _doc_id(raw_id, source, row_no), value, kept)


def _read_parquet(fh, source: str, opt: ReadOptions) -> Iterator[Item]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(fh)
    names = pf.schema_arrow.names
    if missing := _missing_columns(names, source, opt):
        yield missing
        return
    columns = [opt.text_field] + ([opt.id_field] if opt.id_field in names and opt.id_field != opt.text_field else [])
    columns += [f for f in opt.keep_fields if f not in columns]
    row_no = 0
    for batch in pf.iter_batches(batch_size=1024, columns=columns):
        texts = batch.column(opt.text_field).to_pylist()
        ids = batch.column(opt.id_field).to_pylist() if opt.id_field in columns[1:2] else [None] * len(texts)
        kept_cols = {f: batch.column(f).to_pylist() for f in opt.keep_fields}
        for i, (text, raw_id) in enumerate(zip(texts, ids)):
            row_no += 1
            reason = _check_text(text, opt.text_field)
            kept, reason = _kept({f: v[i] for f, v in kept_cols.items()}.get, opt) if not reason else ((), reason)
            if reason:
                yield Reject(source, row_no, reason)
                continue
            yield Record(source, row_no, _doc_id(raw_id, source, row_no), text, kept)


def _read_text(fh: IO[bytes], source: str, doc_id: str, opt: ReadOptions = ReadOptions()) -> Iterator[Item]:
    data = fh.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        yield Reject(source, 1, f"undecodable bytes: {exc}")
        return
    if not text.strip():
        yield Reject(source, 1, "empty text")
        return
    yield Record(source, 1, doc_id, text, (None,) * len(opt.keep_fields))  # a text file has no fields to keep


def _read_stream(
    fh: IO[bytes], name: str, source: str, doc_id: str, opt: ReadOptions, limit: int | None
) -> Iterator[Item]:
    """Items of one file's bytes (a plain file or an archive member); `limit` bounds its size."""
    kind = _kind(name)
    if kind == "parquet":
        # Parquet needs random access: a member is copied (bounded) into an anonymous temp file.
        if limit is not None:
            with tempfile.TemporaryFile() as tmp:
                src = _bounded(fh, limit)
                while chunk := src.read(1 << 20):
                    tmp.write(chunk)
                tmp.seek(0)
                yield from _read_parquet(tmp, source, opt)
            return
        yield from _read_parquet(fh, source, opt)
        return
    if kind == "text":
        yield from _read_text(_bounded(fh, limit), source, doc_id, opt)
    elif kind == "jsonl":
        yield from _read_jsonl(_bounded(_decompressed(fh, name), limit), source, opt)
    elif kind == "csv":
        yield from _read_csv(_bounded(_decompressed(fh, name), limit), source, opt)
    else:
        yield Reject(source, 0, "unsupported file type")


def _guarded(items: Iterator[Item], source: str) -> Iterator[Item]:
    """Pass items through; turn a failure mid-stream into one final Reject for the source."""
    last = 0
    try:
        for item in items:
            last = item.record_no
            yield item
    except MemberTooLarge as exc:
        yield Reject(source, last + 1, f"too large: {exc}; the rest is skipped")
    except (OSError, EOFError, ValueError, RuntimeError, zipfile.BadZipFile, tarfile.TarError) as exc:
        # gzip/zstd/zip CRC errors, truncated streams, corrupt Parquet (ArrowInvalid is a ValueError)
        yield Reject(source, last + 1, f"unreadable: {type(exc).__name__}: {exc}")


# ---- containers ---------------------------------------------------------------------------------


def _skip_member(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return any(p.startswith(".") and p not in (".", "..") for p in parts) or "__MACOSX" in parts


def _read_zip(path: Path, opt: ReadOptions) -> Iterator[Item]:
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if info.is_dir() or _skip_member(info.filename):
                continue
            source = f"{path}!{info.filename}"
            if _kind(info.filename) in ("zip", "tar"):
                yield Reject(source, 0, "nested archives are not read")
                continue
            if info.file_size > opt.max_member_bytes:  # declared size; the reader checks the real one
                yield Reject(
                    source, 0, f"too large: {info.file_size} uncompressed bytes (limit {opt.max_member_bytes})"
                )
                continue
            try:
                member = zf.open(info)
            except (RuntimeError, NotImplementedError, zipfile.BadZipFile, OSError) as exc:  # encrypted, bad
                yield Reject(source, 0, f"unreadable: {exc}")
                continue
            with member:
                yield from _guarded(
                    _read_stream(member, info.filename, source, info.filename, opt, opt.max_member_bytes), source
                )


def _read_tar(path: Path, opt: ReadOptions) -> Iterator[Item]:
    # Stream mode ("r|*"): members are read in order and never all held, extracted or seeked.
    with tarfile.open(path, mode="r|*") as tf:
        for member in tf:
            if member.isdir() or _skip_member(member.name):
                continue
            source = f"{path}!{member.name}"
            if not member.isfile():
                yield Reject(source, 0, "not a regular file (link or device)")
                continue
            if _kind(member.name) in ("zip", "tar"):
                yield Reject(source, 0, "nested archives are not read")
                continue
            if member.size > opt.max_member_bytes:
                yield Reject(source, 0, f"too large: {member.size} uncompressed bytes (limit {opt.max_member_bytes})")
                continue
            fh = tf.extractfile(member)  # a file object over the stream, nothing written
            yield from _guarded(_read_stream(fh, member.name, source, member.name, opt, opt.max_member_bytes), source)


def _read_folder(path: Path, opt: ReadOptions) -> Iterator[Item]:
    files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
    for file in files:
        rel = file.relative_to(path).as_posix()
        if _skip_member(rel):
            continue
        yield from _read_file(file, opt, doc_id=rel)


def _read_file(path: Path, opt: ReadOptions, doc_id: str | None = None) -> Iterator[Item]:
    source = str(path)
    kind = _kind(path.name)
    if kind is None:
        yield Reject(source, 0, "unsupported file type")
        return
    try:
        if kind == "zip":
            yield from _guarded(_read_zip(path, opt), source)
        elif kind == "tar":
            yield from _guarded(_read_tar(path, opt), source)
        else:
            with path.open("rb") as fh:
                yield from _guarded(_read_stream(fh, path.name, source, doc_id or path.name, opt, None), source)
    except OSError as exc:  # unreadable file (permissions), archive that does not open
        yield Reject(source, 0, f"unreadable: {exc}")


def iter_items(inputs: list[Path], opt: ReadOptions = ReadOptions()) -> Iterator[Item]:
    """Every record and reject of `inputs`, in a fixed order (inputs as given, files sorted)."""
    check_inputs(inputs)
    for path in inputs:
        if path.is_dir():
            yield from _read_folder(path, opt)
        else:
            yield from _read_file(path, opt)


def count_items(inputs: list[Path]) -> int | None:
    """The number of records when it is cheap to know (Parquet, folders, zips of texts), else None."""
    total = 0
    for path in inputs:
        kind = None if path.is_dir() else _kind(path.name)
        try:
            if path.is_dir():
                total += sum(
                    1
                    for p in path.rglob("*")
                    if p.is_file() and _kind(p.name) == "text" and not _skip_member(p.relative_to(path).as_posix())
                )
                if any(p.is_file() and _kind(p.name) not in (None, "text") for p in path.rglob("*")):
                    return None
            elif kind == "parquet":
                import pyarrow.parquet as pq

                total += pq.ParquetFile(path).metadata.num_rows
            elif kind == "text":
                total += 1
            elif kind == "zip":
                with zipfile.ZipFile(path) as zf:
                    names = [i.filename for i in zf.infolist() if not i.is_dir() and not _skip_member(i.filename)]
                if any(_kind(n) != "text" for n in names):
                    return None
                total += len(names)
            else:
                return None
        except (OSError, ValueError, zipfile.BadZipFile):
            return None
    return total
