"""Saving, loading and running a stance model. The only code that touches weights and tokenizer.

A model artefact is a folder:

    model.safetensors   encoder + heads (safetensors, no pickle)
    config.json         the encoder's architecture, so loading needs no base model
    tokenizer.json      the fast tokenizer
    schema.json         targets and labels (model/schema.py)
    stancewatch.json    max_length, head sizes, per-target temperatures, base model name
    eval/               the evaluation report written by training

`StanceModel.load` accepts such a folder or a model-store tag (model/store.py).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from stancewatch import settings
from stancewatch.model.encoding import Encoded, InputEncoder, collate, plan_batches
from stancewatch.model.schema import Schema

ARTIFACT_FORMAT = 1
ROW_STEP = 8  # batch row counts are multiples of this on shape-specialising runtimes (see plan_batches)
SETTINGS_FILE = "stancewatch.json"
BACKENDS = ("auto", "torch", "openvino")


def default_threads() -> int:
    """Threads for inference: $STANCEWATCH_THREADS, else the CPUs this process may use."""
    from stancewatch.model.runtime import usable_cpus

    return settings.get("THREADS") or usable_cpus()


@dataclass
class TargetStance:
    label: str | None  # None: the sentence is in a language the model does not read
    probs: dict[str, float] | None


@dataclass
class Prediction:
    text: str
    truncated: bool
    stances: dict[str, TargetStance] = field(default_factory=dict)
    language: str | None = None  # ISO 639-1 (model/language.py); None for text without letters
    supported: bool = True  # False: no labels, since the model was not trained on this language

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "truncated": self.truncated,
            "language": self.language,
            "supported": self.supported,
            "stances": {t: {"label": s.label, "probs": s.probs} for t, s in self.stances.items()},
        }


@dataclass
class Readings:
    """What the model says about a list of sentences, in input order.

    `probs[j]` is target j's (n, labels) array; rows of unsupported sentences are NaN (never run).
    """

    probs: list[np.ndarray]
    truncated: list[bool]
    language: list[str | None]
    supported: list[bool]

    def label_ids(self, j: int) -> np.ndarray:
        """Target j's argmax per sentence; -1 where the sentence is unsupported."""
        p = self.probs[j]
        if not len(p):
            return np.zeros(0, dtype=np.int64)
        ids = np.nan_to_num(p, nan=-1.0).argmax(axis=1)
        return np.where(np.asarray(self.supported, dtype=bool), ids, -1)


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def split_softmax(
    logits: np.ndarray, head_sizes: Sequence[int], temperatures: Sequence[float] | None = None
) -> list[np.ndarray]:
    """Per-head probabilities from the concatenated logits of all heads, each head at its temperature."""
    probs, start = [], 0
    for i, size in enumerate(head_sizes):
        temp = 1.0 if temperatures is None else float(temperatures[i])
        probs.append(softmax(logits[:, start : start + size] / temp))
        start += size
    return probs


# ---- writing an artefact --------------------------------------------------------------------


def write_artifact(
    folder: str | Path,
    network,
    tokenizer_json: str | Path,
    schema: Schema,
    *,
    max_length: int,
    base_model: str,
    temperatures: dict[str, float] | None = None,
    languages: Sequence[str] | None = None,
) -> None:
    """Write a trained `StanceNetwork` and everything needed to run it into `folder`."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in network.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    network.encoder.config.to_json_file(str(folder / "config.json"))
    shutil.copyfile(tokenizer_json, folder / "tokenizer.json")
    schema.save(folder / "schema.json")
    settings = {
        "format": ARTIFACT_FORMAT,
        "max_length": int(max_length),
        "head_sizes": [len(t.labels) for t in schema.targets],
        "base_model": base_model,
        "temperatures": {t.name: float((temperatures or {}).get(t.name, 1.0)) for t in schema.targets},
    }
    if languages is not None:  # the languages of the training texts (model/language.py)
        settings["languages"] = list(languages)
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")


def set_temperatures(folder: str | Path, temperatures: dict[str, float]) -> None:
    path = Path(folder) / SETTINGS_FILE
    settings = json.loads(path.read_text(encoding="utf-8"))
    settings["temperatures"].update({k: float(v) for k, v in temperatures.items()})
    path.write_text(json.dumps(settings, indent=2), encoding="utf-8")


# ---- backends ---------------------------------------------------------------------------------


class TorchBackend:
    """fp32 torch inference; the reference every faster backend is validated against."""

    name = "torch"

    def __init__(self, folder: Path, head_sizes: list[int], threads: int):
        try:
            import torch
            from safetensors.torch import load_file
        except ImportError:  # a serving install (no [train] extra) runs OpenVINO models only
            raise RuntimeError(
                f"{folder}: the torch backend needs torch and transformers, which this install lacks; "
                "install `stancewatch[train]`, or serve a version with an OpenVINO export (backend openvino)"
            ) from None

        from stancewatch.model.network import StanceNetwork

        torch.set_num_threads(threads)
        self._torch = torch
        self.threads = threads
        self.network = StanceNetwork.from_config(folder, head_sizes)
        missing, unexpected = self.network.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
        # Some encoders keep non-persistent buffers (position ids) out of the state dict.
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(
                f"{folder}: weights do not match the architecture (missing {missing}, unexpected {unexpected})"
            )
        self.network.eval()

    def thread_init(self) -> None:
        """Call in a thread that will run inference: torch's thread count is per calling thread."""
        self._torch.set_num_threads(self.threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            logits = self.network(**{k: torch.from_numpy(v) for k, v in batch.items()})
        return logits.float().numpy()


# ---- the predictor ----------------------------------------------------------------------------


def locate(ref: str | Path | None = None) -> tuple[Path, str]:
    """The folder and tag of a version, without loading it: `ref` an artefact folder (tag: its name)
    or a tag in the model store (default: production, else latest). Raises store.ModelNotFound."""
    if ref is not None and Path(ref).is_dir() and (Path(ref) / SETTINGS_FILE).exists():
        return Path(ref), Path(ref).name
    from stancewatch.model import store

    bento_model = store.resolve(None if ref is None else str(ref))
    return Path(bento_model.path), str(bento_model.tag)


def chosen_backend(runtime: dict, backend: str = "auto") -> str:
    """The backend a version runs on: `backend` as asked, "auto" the one training recorded in its
    runtime settings (torch for versions made before there was a choice)."""
    return runtime.get("backend", "torch") if backend == "auto" else backend


def check_folder(folder: Path, backend: str = "auto") -> None:
    """Fail now, naming the file, where loading `folder` with `backend` would fail for a missing file:
    for a process that ships the folder elsewhere (the Ray driver) instead of loading it."""
    folder = Path(folder)
    for name in ("schema.json", SETTINGS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing; {folder} is not a complete model version")
    runtime = json.loads((folder / SETTINGS_FILE).read_text(encoding="utf-8")).get("runtime", {})
    if chosen_backend(runtime, backend) == "openvino" and not (folder / "openvino" / "model.xml").is_file():
        raise FileNotFoundError(
            f"{folder / 'openvino' / 'model.xml'} is missing; the version was not exported for OpenVINO"
        )


class StanceModel:
    """Predicts, for each sentence, a label and calibrated probabilities for every target."""

    def __init__(
        self,
        folder: Path,
        backend: str = "auto",
        threads: int | None = None,
        tag: str | None = None,
        precision: str | None = None,
        batch_tokens: int | None = None,
    ):
        self.folder = Path(folder)
        self.tag = tag or self.folder.name
        self.schema = Schema.load(self.folder / "schema.json")
        self.settings = json.loads((self.folder / SETTINGS_FILE).read_text(encoding="utf-8"))
        self.max_length = int(self.settings["max_length"])
        self.head_sizes = [int(n) for n in self.settings["head_sizes"]]
        self.threads = threads or default_threads()
        self.encoder = InputEncoder.from_folder(self.folder, self.max_length)
        # Padded tokens per inference batch ($STANCEWATCH_BATCH_TOKENS). 2,048 beat the earlier 8,192
        # (bench/batch_tokens.py: fresh `stancewatch score` processes, 6,000 sentences, MiniLM int8,
        # 2-core EPYC with VNNI, 2026-12-03): median wall ratio 0.851 (long) and 0.948 (news), peak
        # RSS 1.13 instead of 1.65 GB (long), the same labels. Probably because smaller batches keep a
        # layer's activations in the cores' caches (not profiled). torch: no loss (README).
        self.max_tokens = batch_tokens or settings.get("BATCH_TOKENS")
        self.max_batch = 128
        self.backend = self._make_backend(backend, precision)
        self.pad_step = getattr(self.backend, "length_step", 1)
        self.rows_scored = self.rows_rescued = 0  # rows through logits(); of them re-run in fp32
        # Languages the model was trained on (recorded by training); None for artefacts made before
        # that was recorded, which are trusted with every language as they always were.
        self.languages: list[str] | None = self.settings.get("languages")

    def _make_backend(self, backend: str, precision: str | None):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
        runtime = self.settings.get("runtime", {})
        backend = chosen_backend(runtime, backend)
        if backend == "openvino":
            from stancewatch.model.runtime import OpenVINOBackend, run_precision

            precision = run_precision(
                runtime.get("precision", "int8"), precision or settings.get("PRECISION"), self.folder
            )
            rescue = runtime.get("rescue_margin")  # per target, recorded by training/optimise.py
            margins = [float(rescue[t.name]) for t in self.schema.targets] if rescue else None
            return OpenVINOBackend(self.folder, precision, self.threads, rescue_margin=margins)
        return TorchBackend(self.folder, self.head_sizes, self.threads)

    @classmethod
    def load(cls, ref: str | Path | None = None, backend: str = "auto", threads: int | None = None) -> StanceModel:
        """Load from an artefact folder, or from the model store by tag (default: production, else latest)."""
        folder, tag = locate(ref)
        return cls(folder, backend=backend, threads=threads, tag=tag)

    @property
    def temperatures(self) -> np.ndarray:
        temps = self.settings.get("temperatures", {})
        return np.array([float(temps.get(t.name, 1.0)) for t in self.schema.targets])

    # ---- core -----------------------------------------------------------------------------
    def logits(self, encoded: Sequence[Encoded]) -> np.ndarray:
        """Raw logits (n, sum of head sizes) in input order, in length-sorted batches.

        On int8 with a near-tie rescue (model/runtime.py), rows nearly tied for some target are run
        again in fp32 and keep those logits; `self.rows_rescued` counts them.
        """
        out = self._run(self.backend, encoded)
        margins = getattr(self.backend, "rescue_margin", None)
        if margins is not None and len(out):
            from stancewatch.model.runtime import near_ties

            rows = near_ties(out, self.head_sizes, margins)
            if len(rows):
                out[rows] = self._run(self.backend.fallback, [encoded[i] for i in rows])
                self.rows_rescued += len(rows)
        self.rows_scored += len(out)
        return out

    def _run(self, backend, encoded: Sequence[Encoded]) -> np.ndarray:
        out = np.zeros((len(encoded), sum(self.head_sizes)), dtype=np.float32)
        if not encoded:
            return out
        rows = ROW_STEP if self.pad_step > 1 else 1
        plan = plan_batches([len(e) for e in encoded], self.max_tokens, self.max_batch, self.pad_step, rows)
        run_many = getattr(backend, "run_many", None)
        streams = getattr(backend, "streams", 1)
        while run_many and len(plan) < streams and max(len(b) for b in plan) > 1:
            # Fewer batches than parallel streams (small requests): split the largest so every core works,
            # at a multiple of the row step where it is big enough.
            big = max(plan, key=len)
            cut = len(big) // 2
            if cut >= rows:
                cut -= cut % rows
            plan.remove(big)
            plan += [big[:cut], big[cut:]]
        for start in range(0, len(plan), 32):  # bounded number of padded batches held at once
            chunk = plan[start : start + 32]
            batches = [self._collate([encoded[i] for i in idx]) for idx in chunk]
            results = run_many(batches) if run_many else [backend(b) for b in batches]
            for idx, res in zip(chunk, results):
                out[idx] = res
        return out

    def _collate(self, items: Sequence[Encoded]) -> dict[str, np.ndarray]:
        width = max(len(x) for x in items)
        if self.pad_step > 1:  # a bounded set of shapes for runtimes that specialise per shape
            width = -(-width // self.pad_step) * self.pad_step
        return collate(items, self.encoder.pad_id, pad_to=width)

    def probabilities(self, logits: np.ndarray, calibrated: bool = True) -> list[np.ndarray]:
        """Split logits per target and turn them into (optionally temperature-scaled) probabilities."""
        return split_softmax(logits, self.head_sizes, self.temperatures if calibrated else None)

    def predict_arrays(
        self,
        sentences: Sequence[str],
        contexts: Sequence[str | None] | None = None,
        encoded: Sequence[Encoded] | None = None,
    ) -> tuple[list[np.ndarray], list[bool]]:
        """Per-target probability arrays (n, labels) and truncation flags, in input order.

        `encoded`: the inputs already encoded by this model's encoder (the service counts tokens of
        large documents that way and passes them on instead of encoding twice)."""
        if contexts is not None and len(contexts) != len(sentences):
            raise ValueError(f"got {len(contexts)} contexts for {len(sentences)} sentences")
        if encoded is None:
            encoded = self.encoder.encode(sentences, contexts)
        elif len(encoded) != len(sentences):
            raise ValueError(f"got {len(encoded)} encoded inputs for {len(sentences)} sentences")
        return self.probabilities(self.logits(encoded)), [e.truncated for e in encoded]

    def read(
        self,
        sentences: Sequence[str],
        contexts: Sequence[str | None] | None = None,
        encoded: Sequence[Encoded] | None = None,
    ) -> Readings:
        """Detect each sentence's language, run the model on the ones it reads, leave the rest NaN."""
        from stancewatch.model.language import detect_languages, supported_flags

        if contexts is not None and len(contexts) != len(sentences):
            raise ValueError(f"got {len(contexts)} contexts for {len(sentences)} sentences")
        languages = detect_languages(sentences, prefer=self.languages)
        supported = supported_flags(languages, self.languages)
        keep = [i for i, ok in enumerate(supported) if ok]
        if len(keep) == len(sentences):
            probs, truncated = self.predict_arrays(sentences, contexts, encoded)
        else:
            part, part_trunc = self.predict_arrays(
                [sentences[i] for i in keep],
                None if contexts is None else [contexts[i] for i in keep],
                None if encoded is None else [encoded[i] for i in keep],
            )
            probs = [np.full((len(sentences), size), np.nan, dtype=np.float32) for size in self.head_sizes]
            truncated = [False] * len(sentences)
            for full, p in zip(probs, part):
                full[keep] = p
            for i, t in zip(keep, part_trunc):
                truncated[i] = t
        return Readings(probs, truncated, languages, supported)

    def predict(
        self,
        sentences: Sequence[str],
        contexts: Sequence[str | None] | None = None,
        encoded: Sequence[Encoded] | None = None,
    ) -> list[Prediction]:
        """Label every sentence for every target; `contexts[i]` is the sentence before sentence i.

        A sentence in a language the model was not trained on gets no labels (label and probs None).
        """
        r = self.read(sentences, contexts, encoded)
        results = []
        for i, text in enumerate(sentences):
            stances = {}
            for target, p in zip(self.schema.targets, r.probs):
                row = p[i]
                stances[target.name] = (
                    TargetStance(
                        label=target.labels[int(row.argmax())],
                        probs={lab: round(float(v), 6) for lab, v in zip(target.labels, row)},
                    )
                    if r.supported[i]
                    else TargetStance(label=None, probs=None)
                )
            results.append(
                Prediction(
                    text=text,
                    truncated=r.truncated[i],
                    stances=stances,
                    language=r.language[i],
                    supported=r.supported[i],
                )
            )
        return results
