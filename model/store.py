"""Model versions in the BentoML model store, and which one is production.

Every training run becomes a new version of the BentoML model `stancewatch` (the store lives
under $BENTOML_HOME). Which version is *production* is recorded in one small JSON file next to
the store, replaced atomically, so a crash never leaves a half-written pointer. Promotion and
rollback read, change and write it holding an exclusive `fcntl.flock` on a lock file beside it, so
two trainings finishing together cannot lose each other's history entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import bentoml  # noqa: E402

from stancewatch import settings  # noqa: E402

MODEL_NAME = "stancewatch"
PRODUCTION_ENV = "STANCEWATCH_MODEL"


class ModelNotFound(LookupError):
    """No model version matches what was asked for."""


def bentoml_home() -> Path:
    return Path(os.environ.get("BENTOML_HOME", Path.home() / "bentoml"))


def _pointer_path() -> Path:
    return bentoml_home() / "stancewatch-production.json"


def _clean(value: Any) -> Any:
    """BentoML metadata rejects None; drop such keys recursively."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value if v is not None]
    return value


def save_version(artifact_dir: str | Path, metadata: dict[str, Any], labels: dict[str, str] | None = None) -> str:
    """Copy a finished artefact folder into a new model version; return its tag."""
    metadata = _clean({**metadata, "created_at": datetime.now(UTC).isoformat(timespec="seconds")})
    with bentoml.models.create(MODEL_NAME, metadata=metadata, labels=labels or {}) as ref:
        shutil.copytree(artifact_dir, ref.path, dirs_exist_ok=True)
    return str(ref.tag)


def list_versions() -> list[bentoml.Model]:
    """All versions, newest first."""
    try:
        models = bentoml.models.list(MODEL_NAME)
    except bentoml.exceptions.NotFound:
        return []
    return sorted(models, key=lambda m: m.info.creation_time, reverse=True)


def _read_pointer() -> dict[str, Any]:
    path = _pointer_path()
    if not path.exists():
        return {"tag": None, "history": []}
    return json.loads(path.read_text(encoding="utf-8"))


def production_tag() -> str | None:
    return _read_pointer().get("tag")


def _write_pointer(data: dict[str, Any]) -> None:
    path = _pointer_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".production-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)  # atomic: readers see the old or the new pointer, never a mix


@contextlib.contextmanager
def _pointer_lock():
    """Hold an exclusive lock for a read-change-write of the pointer (across processes and threads:
    each call opens the lock file anew, and flock locks of separate opens exclude each other).

    The lock file is never replaced (the pointer is, by os.replace), so everyone locks the same inode.
    Readers (`production_tag`) take no lock: the atomic replace already gives them a whole pointer.
    """
    path = _pointer_path().with_name(_pointer_path().name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


class ProductionChanged(RuntimeError):
    """Production is no longer the version a promotion decision was made against."""


_ANY = object()


def promote(tag: str, expect: str | None | object = _ANY) -> str:
    """Make `tag` production (recording the previous one for rollback); return the full tag.

    With `expect`, promote only if production is still that tag (None: no production): a decision
    that compared against one production must not replace another promoted meanwhile (checked under
    the same lock as the write, so two trainings finishing together cannot both pass it).
    """
    full = str(get(tag).tag)
    with _pointer_lock():
        data = _read_pointer()
        if expect is not _ANY and data.get("tag") != expect:
            raise ProductionChanged(
                f"not promoted: production changed from {expect!r} to {data.get('tag')!r} after {full} was compared "
                f"with it; compare again (`stancewatch models promote {full}` replaces it regardless)"
            )
        if data.get("tag") and data["tag"] != full:
            data.setdefault("history", []).append(data["tag"])
        data["tag"] = full
        data["promoted_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        _write_pointer(data)
    return full


def rollback() -> str:
    """Return production to the version it had before the last promotion.

    That version must still be in the store: if it was deleted, nothing changes and the error says
    which version is missing and how to choose another.
    """
    with _pointer_lock():
        data = _read_pointer()
        history = data.get("history", [])
        if not history:
            raise ModelNotFound("no earlier production version to roll back to")
        previous = history[-1]
        try:
            bentoml.models.get(previous)
        except bentoml.exceptions.NotFound:
            known = ", ".join(str(m.tag) for m in list_versions()[:5]) or "none"
            raise ModelNotFound(
                f"cannot roll back: the previous production version {previous!r} is no longer in the store at "
                f"{bentoml_home()} (deleted?); production stays {data.get('tag')!r}. Promote a version that exists "
                f"with `stancewatch models promote TAG` (newest: {known})"
            ) from None
        history.pop()
        data["tag"] = previous
        data["promoted_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        _write_pointer(data)
    return previous


def get(tag: str) -> bentoml.Model:
    """A version by full tag (`stancewatch:abc`), bare version (`abc`) or `latest`."""
    full = tag if ":" in tag else f"{MODEL_NAME}:{tag}"
    try:
        return bentoml.models.get(full)
    except bentoml.exceptions.NotFound:
        known = ", ".join(str(m.tag) for m in list_versions()[:5]) or "none"
        raise ModelNotFound(
            f"no model {full!r} in the store at {bentoml_home()} (newest: {known}); train one with `stancewatch train`"
        ) from None


def resolve(tag: str | None = None) -> bentoml.Model:
    """The version to use: `tag` if given, else $STANCEWATCH_MODEL, else production, else latest."""
    tag = tag or settings.get("MODEL") or None
    if tag in (None, "production"):
        prod = production_tag()
        if prod:
            return get(prod)
        if tag == "production":
            raise ModelNotFound("no version is marked production; use `stancewatch models promote TAG`")
        tag = "latest"
    return get(tag)
