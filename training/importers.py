"""Annotation-tool exports as labelled rows: Label Studio JSON and Argilla records.

Both become long-format rows (`text, context, target, label`) that `training.data` validates like
any other file. Rows are numbered by task/record position (1-based) so errors point back to them.

Label Studio: the JSON export of a text-classification project with one `<Choices>` control per
target, whose `name` is the target: `[{"data": {"text", "context"?}, "annotations": [{"result":
[{"from_name": "taiwan_policy", "type": "choices", "value": {"choices": ["favor"]}}]}]}]`. The last
annotation that is not cancelled wins.

Argilla (v2 records, `dataset.records.to_list(flatten=False)` or the exported JSON): `[{"fields":
{"text", "context"?}, "responses": {"taiwan_policy": [{"value": "favor", "status": "submitted"}]}}]`.
Only submitted responses count; if annotators disagree the record is reported as a conflict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMATS = ("label-studio", "argilla")


class ImportError_(ValueError):
    """The export is not in a recognised shape (named so as not to shadow the builtin)."""


def detect(records: list[Any]) -> str | None:
    if not records or not isinstance(records[0], dict):
        return None
    first = records[0]
    if "annotations" in first and "data" in first:
        return "label-studio"
    if "responses" in first and "fields" in first:
        return "argilla"
    return None


def _label_studio_rows(tasks: list[dict]) -> tuple[list[dict], list[tuple[int, str, str]]]:
    rows, problems = [], []
    for n, task in enumerate(tasks, start=1):
        data = task.get("data") or {}
        text, context = data.get("text"), data.get("context", "")
        annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not annotations:
            problems.append((n, "annotations", "no (non-cancelled) annotation"))
            continue
        for item in annotations[-1].get("result") or []:
            if item.get("type") != "choices":
                continue
            choices = (item.get("value") or {}).get("choices") or []
            if len(choices) != 1:
                problems.append((n, item.get("from_name", "result"), f"expected exactly one choice, got {choices}"))
                continue
            rows.append(
                {"text": text, "context": context, "target": item.get("from_name"), "label": choices[0], "_row": n}
            )
    return rows, problems


def _argilla_rows(records: list[dict]) -> tuple[list[dict], list[tuple[int, str, str]]]:
    rows, problems = [], []
    for n, rec in enumerate(records, start=1):
        fields = rec.get("fields") or {}
        text, context = fields.get("text"), fields.get("context", "")
        for question, responses in (rec.get("responses") or {}).items():
            values = {r.get("value") for r in responses or [] if r.get("status", "submitted") == "submitted"}
            if not values:
                continue
            if len(values) > 1:
                problems.append((n, question, f"annotators disagree: {sorted(map(str, values))}"))
                continue
            rows.append({"text": text, "context": context, "target": question, "label": values.pop(), "_row": n})
    return rows, problems


def read_export(path: Path) -> tuple[str, list[dict], list[tuple[int, str, str]]] | None:
    """(format, rows, problems) for a Label Studio / Argilla JSON export, or None if it is neither."""
    # utf-8-sig drops a byte-order mark; leading white space is skipped before looking for the array.
    with path.open(encoding="utf-8-sig") as fh:
        head = fh.read(4096).lstrip()
        if not head.startswith("["):
            return None
        fh.seek(0)
        try:
            records = json.loads(fh.read())
        except json.JSONDecodeError:
            return None
    kind = detect(records)
    if kind == "label-studio":
        return (kind, *_label_studio_rows(records))
    if kind == "argilla":
        return (kind, *_argilla_rows(records))
    return None
