"""Loading and validating labelled data (CSV, JSONL or Parquet; long or wide format).

Long format: one row per text and target, columns `text,target,label` and optional `context`.
Wide format: a `text` column, optional `context`, and one column per target holding its label
(an empty cell means "not labelled for this target"; the loss ignores it).

Every problem is collected before anything trains, each with file, row number (data rows count
from 1, the header excluded), field and the allowed values, and raised together as one
`DataValidationError`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stancewatch import settings
from stancewatch.model.schema import Schema, SchemaError, default_schema

# Columns that are never targets. `doc_id` also groups a document's sentences, so that splits and
# by-article cross-validation never put one article on both sides (see `grouped_split`).
RESERVED_COLUMNS = {
    "text",
    "context",
    "id",
    "source",
    "notes",
    "doc_id",
    "sentence_index",
    "genre",
    "date",
    "outlet",
    "headline",
    "language",
}
LONG_COLUMNS = {"text", "target", "label"}
SUPPORTED_SUFFIXES = {".csv": "csv", ".jsonl": "json", ".json": "json", ".ndjson": "json", ".parquet": "parquet"}
DATA_DIR = Path(__file__).resolve().parent / "data"
# The default model's training data: the hand-written news-genre articles (every sentence of each
# article, in order) and the kept part of the v1 sentence corpus. The news test set
# (news_test.csv) is never trained or tuned on.
DEFAULT_CORPUS = [DATA_DIR / "news_train.csv", DATA_DIR / "default_corpus.csv"]
NEWS_TEST = DATA_DIR / "news_test.csv"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    file: str
    row: int | None  # 1-based data row; None for file-level problems
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: row {self.row}" if self.row is not None else self.file
        return f"{where}: {self.field}: {self.message}"


class DataValidationError(ValueError):
    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        shown = "\n".join(f"  - {p}" for p in self.problems[:200])
        more = f"\n  ... and {len(self.problems) - 200} more" if len(self.problems) > 200 else ""
        super().__init__(f"{len(self.problems)} problem(s) in the labelled data:\n{shown}{more}")

    def __reduce__(self):
        # Rebuilt from the problems, not the message, when it crosses a process boundary.
        return (type(self), (self.problems,))


@dataclass
class Example:
    text: str
    context: str
    labels: dict[str, str]  # target -> label; targets without a label are absent
    source: str  # "file:row N" of the first row that contributed
    group: str = ""  # the document it belongs to (`doc_id` column); "" when unknown


@dataclass
class LoadReport:
    rows: int = 0
    duplicates_dropped: int = 0
    conflicts_dropped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    schema_inferred: bool = False


# The parts a version's examples are divided into, each stored as data/<role>.jsonl with the version.
ROLES = ("train", "dev", "calibration", "gate")


def example_key(ex: Example) -> tuple[str, str]:
    """What makes two rows the same example (the loader merges rows on it too)."""
    return ex.text, ex.context


@dataclass
class LabelledData:
    examples: list[Example]
    schema: Schema
    report: LoadReport
    # example_key -> the part (ROLES) an example must stay in; set for a production version's own
    # examples under `train --merge`, so its dev and gate rows are not re-drawn into training.
    roles: dict[tuple[str, str], str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.examples)

    def label_counts(self) -> dict[str, dict[str, int]]:
        counts = {t.name: {lab: 0 for lab in t.labels} for t in self.schema.targets}
        for ex in self.examples:
            for target, label in ex.labels.items():
                counts[target][label] += 1
        return counts


def fingerprint(examples: Iterable[Example]) -> str:
    """A content hash of the examples, independent of row order and file format."""
    digest = hashlib.sha256()
    for line in sorted(
        json.dumps([ex.text, ex.context, sorted(ex.labels.items())], ensure_ascii=False) for ex in examples
    ):
        digest.update(line.encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]


# ---- reading ----------------------------------------------------------------------------------


def _read_rows(path: Path) -> tuple[list[str], list[dict]]:
    """Columns and rows of one file, read with `datasets`; every value kept as given."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    kind = SUPPORTED_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataValidationError(
            [
                Problem(
                    str(path),
                    None,
                    "file",
                    f"unsupported format {path.suffix!r}; allowed: {', '.join(SUPPORTED_SUFFIXES)}",
                )
            ]
        )
    if not path.exists():
        raise DataValidationError([Problem(str(path), None, "file", "no such file")])
    cache = settings.get("DATASETS_CACHE")
    kwargs = {"split": "train", "cache_dir": cache} if cache else {"split": "train"}
    if kind == "csv":
        with path.open(newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), None)
        if not header:
            raise DataValidationError([Problem(str(path), None, "file", "empty file (no header row)")])
        features = datasets.Features({name: datasets.Value("string") for name in header})
        ds = datasets.load_dataset(
            "csv",
            data_files=str(path),
            features=features,
            keep_default_na=False,
            na_filter=False,
            encoding="utf-8-sig",
            **kwargs,
        )
    elif kind == "json":
        from stancewatch.training.importers import read_export

        exported = read_export(path)
        if exported is not None:  # a Label Studio or Argilla export
            _, rows, issues = exported
            if issues:
                raise DataValidationError([Problem(str(path), n, f, m) for n, f, m in issues])
            return ["text", "context", "target", "label"], rows
        bad = _bad_json_lines(path)
        if bad:
            raise DataValidationError(bad)
        ds = datasets.load_dataset("json", data_files=str(path), **kwargs)
    else:
        ds = datasets.load_dataset("parquet", data_files=str(path), **kwargs)
    return list(ds.column_names), ds.to_list()


def _bad_json_lines(path: Path) -> list[Problem]:
    problems = []
    with path.open(encoding="utf-8", errors="strict") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append(Problem(str(path), n, "json", f"not valid JSON ({exc.msg})"))
                continue
            if not isinstance(obj, dict):
                problems.append(Problem(str(path), n, "json", "each line must be a JSON object"))
    return problems


def _as_text(value) -> str | None:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return None


# ---- validation and assembly ----------------------------------------------------------------


def _choose_schema(observed: set[str], given: Schema | None) -> tuple[Schema, bool]:
    if given is not None:
        return given, False
    default = default_schema()
    if observed and observed <= set(default.target_names):
        return default, False
    return None, True  # inferred later from the labels seen


def load_labelled(
    paths: Sequence[str | Path], schema: Schema | None = None, drop_conflicts: bool = False
) -> LabelledData:
    """Read, validate and merge labelled files into examples. Raises DataValidationError."""
    problems: list[Problem] = []
    raw: list[tuple[str, int, str, str, str, str]] = []  # file, row, text, context, target, label
    groups: dict[tuple[str, str], str] = {}  # (text, context) -> doc_id
    report = LoadReport()
    tables = []
    observed_targets: set[str] = set()
    for p in paths:
        path = Path(p)
        try:
            columns, rows = _read_rows(path)
        except DataValidationError as exc:
            problems.extend(exc.problems)
            continue
        except Exception as exc:  # a reader error that names no row: keep the file and the cause
            problems.append(Problem(str(path), None, "file", f"could not be read: {exc}"))
            continue
        colset = set(columns)
        if "text" not in colset:
            problems.append(Problem(str(path), None, "columns", f"missing column 'text' (found: {', '.join(columns)})"))
            continue
        long = LONG_COLUMNS <= colset
        if not long and colset & {"target", "label"}:
            missing = sorted(LONG_COLUMNS - colset)
            problems.append(
                Problem(
                    str(path),
                    None,
                    "columns",
                    f"long format needs columns text, target, label; missing: {', '.join(missing)}",
                )
            )
            continue
        target_cols = [] if long else [c for c in columns if c not in RESERVED_COLUMNS]
        if not long and not target_cols:
            problems.append(
                Problem(
                    str(path),
                    None,
                    "columns",
                    "no target columns: use long format (text,target,label) or one column per target",
                )
            )
            continue
        if long:
            observed_targets |= {str(r.get("target") or "").strip() for r in rows} - {""}
        else:
            observed_targets |= set(target_cols)
        tables.append((path, long, target_cols, rows))

    schema, infer = _choose_schema(observed_targets, schema)

    for path, long, target_cols, rows in tables:
        for n, row in enumerate(rows, start=1):
            n = row.pop("_row", n)  # exports: the task/record number, not the flattened row
            report.rows += 1
            text = _as_text(row.get("text"))
            context = _as_text(row.get("context")) if "context" in row else ""
            if text is None:
                problems.append(Problem(str(path), n, "text", f"must be a string, got {type(row['text']).__name__}"))
                continue
            if not text.strip():
                problems.append(Problem(str(path), n, "text", "empty text"))
                continue
            if context is None:
                problems.append(
                    Problem(str(path), n, "context", f"must be a string, got {type(row['context']).__name__}")
                )
                continue
            text, context = text.strip(), context.strip()
            doc_id = row.get("doc_id")
            if doc_id is not None and str(doc_id).strip():
                groups.setdefault((text, context), f"{path.name}:{str(doc_id).strip()}")
            if long:
                target = _as_text(row.get("target"))
                label = _as_text(row.get("label"))
                if not target or not target.strip():
                    problems.append(Problem(str(path), n, "target", "empty target"))
                    continue
                if label is None or not label.strip():
                    problems.append(Problem(str(path), n, "label", f"empty label for target {target.strip()!r}"))
                    continue
                pairs = [(target.strip(), label.strip().lower())]
            else:
                pairs = []
                for col in target_cols:
                    cell = _as_text(row.get(col))
                    if cell is None:
                        problems.append(
                            Problem(str(path), n, col, f"must be a string label, got {type(row[col]).__name__}")
                        )
                    elif cell.strip():
                        pairs.append((col, cell.strip().lower()))
                if not pairs:
                    problems.append(
                        Problem(str(path), n, "labels", f"no label for any target ({', '.join(target_cols)})")
                    )
                    continue
            for target, label in pairs:
                raw.append((str(path), n, text, context, target, label))

    if infer:
        if problems or not raw:
            raise DataValidationError(
                problems or [Problem(", ".join(map(str, paths)), None, "rows", "no labelled rows")]
            )
        try:
            schema = Schema.infer((r[4], r[5]) for r in raw)
        except SchemaError as exc:
            raise DataValidationError(
                [
                    Problem(
                        ", ".join(map(str, paths)),
                        None,
                        "schema",
                        f"cannot infer a schema from the labels: {exc}; pass --schema",
                    )
                ]
            ) from None
        report.schema_inferred = True

    allowed_targets = set(schema.target_names)
    checked = []
    for file, n, text, context, target, label in raw:
        if target not in allowed_targets:
            problems.append(
                Problem(file, n, "target", f"unknown target {target!r}; allowed: {', '.join(schema.target_names)}")
            )
            continue
        labels = schema.target(target).labels
        # Data labels are lower-cased on reading; a schema may spell them otherwise ("Pro", "Con").
        label = label if label in labels else {lab.lower(): lab for lab in labels}.get(label, label)
        if label not in labels:
            problems.append(
                Problem(
                    file, n, "label", f"unknown label {label!r} for target {target!r}; allowed: {', '.join(labels)}"
                )
            )
            continue
        checked.append((file, n, text, context, target, label))

    # Merge rows into examples keyed by (text, context); find duplicates and conflicts.
    merged: dict[tuple[str, str], Example] = {}
    first_row: dict[tuple[str, str, str], tuple[str, int, str]] = {}
    conflicts: dict[tuple[str, str, str], list[tuple[str, int, str]]] = {}
    seen_rows: set[tuple[str, str, str, str]] = set()
    for file, n, text, context, target, label in checked:
        key = (text, context)
        where = f"{file}:row {n}"
        if (text, context, target, label) in seen_rows:
            report.duplicates_dropped += 1
            continue
        seen_rows.add((text, context, target, label))
        ex = merged.setdefault(key, Example(text, context, {}, where, groups.get(key, "")))
        if target in ex.labels and ex.labels[target] != label:
            conflicts.setdefault((text, context, target), [first_row[(text, context, target)]]).append((file, n, label))
            continue
        ex.labels[target] = label
        first_row.setdefault((text, context, target), (file, n, label))

    for (text, context, target), places in conflicts.items():
        said = "; ".join(f"{f}:row {n} says {lab!r}" for f, n, lab in places)
        if drop_conflicts:
            merged[(text, context)].labels.pop(target, None)
            report.conflicts_dropped.append(f"{target}: {text[:80]!r} ({said})")
        else:
            file, n, _ = places[0]
            problems.append(
                Problem(
                    file,
                    n,
                    "label",
                    f"conflicting labels for target {target!r} on the same text: {said} "
                    "(fix them, or pass --drop-conflicts to drop such rows)",
                )
            )

    if problems:
        raise DataValidationError(problems)

    examples = [ex for ex in merged.values() if ex.labels]
    data = LabelledData(examples, schema, report)
    for target, counts in data.label_counts().items():
        for label, count in counts.items():
            if count == 0:
                report.warnings.append(f"target {target!r}: no example of label {label!r}")
    if report.duplicates_dropped:
        log.info("dropped %d exact duplicate row(s)", report.duplicates_dropped)
    return data


# ---- splits -----------------------------------------------------------------------------------


def _strata(examples: Sequence[Example], schema: Schema) -> list[str]:
    keys = ["|".join(ex.labels.get(t, "-") for t in schema.target_names) for ex in examples]
    counts = Counter(keys)
    return [k if counts[k] >= 2 else "rare" for k in keys]


def stratified_split(
    examples: Sequence[Example], schema: Schema, dev_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Train/dev split stratified on the joint labels of all targets."""
    from sklearn.model_selection import train_test_split

    idx = list(range(len(examples)))
    strata = _strata(examples, schema)
    try:
        tr, dv = train_test_split(idx, test_size=dev_fraction, random_state=seed, stratify=strata)
    except ValueError:  # too few members in some stratum: fall back to a shuffled split
        rng = random.Random(seed)
        rng.shuffle(idx)
        cut = max(1, int(round(len(idx) * dev_fraction)))
        dv, tr = idx[:cut], idx[cut:]
    return [examples[i] for i in sorted(tr)], [examples[i] for i in sorted(dv)]


def stratified_folds(
    examples: Sequence[Example], schema: Schema, k: int, seed: int
) -> list[tuple[list[int], list[int]]]:
    from sklearn.model_selection import StratifiedKFold

    strata = _strata(examples, schema)
    counts = Counter(strata)
    strata = [s if counts[s] >= k else "rare" for s in strata]
    skf = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(list(tr), list(te)) for tr, te in skf.split(list(range(len(examples))), strata)]


def group_ids(examples: Sequence[Example]) -> list[str]:
    """Each example's document; an example without one is a document of its own."""
    return [ex.group or f"#{i}" for i, ex in enumerate(examples)]


def has_groups(examples: Sequence[Example]) -> bool:
    return any(ex.group for ex in examples)


def grouped_folds(examples: Sequence[Example], schema: Schema, k: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """k folds that never split a document, stratified on the joint labels as far as that allows."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = group_ids(examples)
    if len(set(groups)) < k:
        raise ValueError(f"{len(set(groups))} documents cannot make {k} by-article folds")
    strata = _strata(examples, schema)
    counts = Counter(strata)
    strata = [s if counts[s] >= k else "rare" for s in strata]
    sgkf = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(list(tr), list(te)) for tr, te in sgkf.split(list(range(len(examples))), strata, groups)]


def grouped_split(
    examples: Sequence[Example], schema: Schema, fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(rest, held-out) with about `fraction` of the examples held out, whole documents at a time;
    a plain stratified split when no example names its document."""
    if not has_groups(examples):
        return stratified_split(examples, schema, fraction, seed)
    k = max(2, int(round(1 / fraction)))
    if len(set(group_ids(examples))) < k:
        return stratified_split(examples, schema, fraction, seed)
    rest, held = grouped_folds(examples, schema, k, seed)[0]
    return [examples[i] for i in sorted(rest)], [examples[i] for i in sorted(held)]


# ---- persistence and merging ------------------------------------------------------------------


def write_examples(examples: Sequence[Example], schema: Schema, path: str | Path) -> None:
    """Save examples as wide JSONL (text, context, one key per target; null = unlabelled)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for ex in examples:
            row = {"text": ex.text, "context": ex.context, **({"doc_id": ex.group} if ex.group else {})}
            row.update({t: ex.labels.get(t) for t in schema.target_names})
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def load_version_data(folder: str | Path, schema: Schema) -> LabelledData:
    """The examples a version stored in its `data/` folder (train.jsonl, dev.jsonl, and calibration.jsonl
    and gate.jsonl where it had those parts), each remembering its part in `roles`."""
    data_dir = Path(folder) / "data"
    files = [(role, data_dir / f"{role}.jsonl") for role in ROLES]
    files = [(role, path) for role, path in files if path.exists()]
    if not any(role == "train" for role, _ in files):
        raise FileNotFoundError(f"{folder}: no data/train.jsonl (trained before data was stored with versions)")
    data = load_labelled([path for _, path in files], schema=schema)
    for role, path in files:
        for key in stored_keys(path):
            data.roles.setdefault(key, role)  # a row stored twice keeps its first part, train before dev
    return data


def stored_keys(path: str | Path) -> set[tuple[str, str]]:
    """The example keys of a file written by `write_examples` (read directly: no validation needed)."""
    keys = set()
    with Path(path).open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                keys.add((str(row.get("text") or "").strip(), str(row.get("context") or "").strip()))
    return keys


def check_disjoint(train: LabelledData, dev: LabelledData) -> None:
    """Raise DataValidationError naming every dev example that is also a training example: a model
    evaluated (and early-stopped, calibrated and gated) on its own training rows looks better than it is."""
    train_rows = {example_key(ex): ex.source for ex in train.examples}
    problems = []
    for ex in dev.examples:
        seen = train_rows.get(example_key(ex))
        if seen is None:
            continue
        file, _, row = ex.source.rpartition(":row ")
        problems.append(
            Problem(
                file or ex.source,
                int(row) if row.isdigit() else None,
                "text",
                f"also a training row ({seen}): {ex.text[:60]!r}; a row cannot be both trained and "
                "evaluated on: remove it from the --dev or the --data file(s)",
            )
        )
    if problems:
        raise DataValidationError(problems)


def merge(old: LabelledData, new: LabelledData) -> tuple[LabelledData, list[str]]:
    """Old examples plus new ones; where both label the same text and target, the new label wins.
    An old example keeps its part (`old.roles`), whoever labels it.

    Returns the merged data and one line per conflict that the new data overrode.
    """
    merged: dict[tuple[str, str], Example] = {}
    for ex in old.examples:
        merged[(ex.text, ex.context)] = Example(ex.text, ex.context, dict(ex.labels), ex.source, ex.group)
    conflicts = []
    for ex in new.examples:
        key = (ex.text, ex.context)
        if key not in merged:
            merged[key] = Example(ex.text, ex.context, dict(ex.labels), ex.source, ex.group)
            continue
        current = merged[key]
        for target, label in ex.labels.items():
            if target in current.labels and current.labels[target] != label:
                conflicts.append(
                    f"{target}: {ex.text[:80]!r} was {current.labels[target]!r}, now {label!r} ({ex.source})"
                )
            current.labels[target] = label
    report = LoadReport(
        rows=old.report.rows + new.report.rows,
        duplicates_dropped=len(old.examples) + len(new.examples) - len(merged),
        warnings=list(new.report.warnings),
    )
    return LabelledData(list(merged.values()), new.schema, report, dict(old.roles)), conflicts
