"""The label schema: which targets a model predicts and which labels each target has.

This module is the only owner of targets, labels and their ids. Everything else (training,
evaluation, the predictor, the service, batch scoring) asks a `Schema` instead of hard-coding.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_SCHEMA_PATH = Path(__file__).with_name("default_schema.yaml")
# Labels are listed in this order when a schema is inferred from data, so ids do not depend on
# which label happens to come first in a file.
_CANONICAL_ORDER = ("favor", "against", "none")


class SchemaError(ValueError):
    """A schema file or an inferred schema is not usable."""


@dataclass(frozen=True)
class Target:
    name: str
    labels: tuple[str, ...]
    description: str = ""
    label_descriptions: Mapping[str, str] = field(default_factory=dict)

    def label_id(self, label: str) -> int:
        return self.labels.index(label)


@dataclass(frozen=True)
class Schema:
    targets: tuple[Target, ...]
    name: str = "custom"
    version: int = 1
    neutral_label: str | None = "none"

    def __post_init__(self) -> None:
        if not self.targets:
            raise SchemaError("a schema needs at least one target")
        seen: set[str] = set()
        for t in self.targets:
            if not t.name or t.name != t.name.strip() or not t.name.isprintable():
                raise SchemaError(f"target name {t.name!r} must be non-empty printable text without outer spaces")
            if t.name in seen:
                raise SchemaError(f"target {t.name!r} is defined twice")
            seen.add(t.name)
            if len(t.labels) < 2:
                raise SchemaError(f"target {t.name!r} needs at least two labels, got {list(t.labels)}")
            if len(set(t.labels)) != len(t.labels):
                raise SchemaError(f"target {t.name!r} repeats a label: {list(t.labels)}")
            for label in t.labels:
                if not label or label != label.strip():
                    raise SchemaError(f"target {t.name!r} has an empty or padded label {label!r}")

    # ---- lookups -------------------------------------------------------------------------
    @property
    def target_names(self) -> list[str]:
        return [t.name for t in self.targets]

    def target(self, name: str) -> Target:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(f"unknown target {name!r}; allowed: {', '.join(self.target_names)}")

    def stance_labels(self, target: str) -> list[str]:
        """Labels that count in F_avg: every label except the neutral one."""
        return [lab for lab in self.target(target).labels if lab != self.neutral_label]

    # ---- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "neutral_label": self.neutral_label or "",
            "targets": [
                {
                    "name": t.name,
                    "description": t.description,
                    "labels": {lab: t.label_descriptions.get(lab, "") for lab in t.labels},
                }
                for t in self.targets
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schema:
        if not isinstance(data, Mapping) or "targets" not in data:
            raise SchemaError("a schema must be a mapping with a 'targets' list")
        targets = []
        for i, raw in enumerate(data["targets"]):
            if not isinstance(raw, Mapping) or "name" not in raw or "labels" not in raw:
                raise SchemaError(f"targets[{i}] needs 'name' and 'labels'")
            labels_raw = raw["labels"]
            if isinstance(labels_raw, Mapping):
                labels = tuple(str(k) for k in labels_raw)
                descriptions = {str(k): str(v or "") for k, v in labels_raw.items()}
            else:
                labels = tuple(str(x) for x in labels_raw)
                descriptions = {}
            targets.append(
                Target(
                    name=str(raw["name"]),
                    labels=labels,
                    description=" ".join(str(raw.get("description", "")).split()),
                    label_descriptions=descriptions,
                )
            )
        neutral = data.get("neutral_label", "none")
        return cls(
            targets=tuple(targets),
            name=str(data.get("name", "custom")),
            version=int(data.get("version", 1)),
            neutral_label=str(neutral) if neutral else None,
        )

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise SchemaError(f"{path}: not valid {path.suffix.lstrip('.') or 'YAML'}: {exc}") from exc
        try:
            return cls.from_dict(data)
        except SchemaError as exc:
            raise SchemaError(f"{path}: {exc}") from exc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def infer(cls, pairs: Iterable[tuple[str, str]]) -> Schema:
        """Build a schema from observed (target, label) pairs, in a stable order."""
        found: dict[str, set[str]] = {}
        for target, label in pairs:
            found.setdefault(target, set()).add(label)
        targets = []
        for name in sorted(found):
            labels = found[name]
            ordered = [lab for lab in _CANONICAL_ORDER if lab in labels]
            ordered += sorted(labels - set(_CANONICAL_ORDER))
            targets.append(Target(name=name, labels=tuple(ordered)))
        all_labels = set().union(*found.values()) if found else set()
        return cls(targets=tuple(targets), name="inferred", neutral_label="none" if "none" in all_labels else None)


def default_schema() -> Schema:
    """The two-target schema shipped with stancewatch (see docs/labelling-guide.md)."""
    return Schema.load(DEFAULT_SCHEMA_PATH)
