"""Every STANCEWATCH_* environment variable, read in one place with one parser.

A variable is declared once below (name, kind, default, allowed values, what it does); `load()`
reads them all into one frozen `Settings` object and `get(NAME)` reads one. A bad value fails with
a `SettingError` that names the variable, the value and what is allowed, instead of a bare
ValueError from `int()` somewhere at import. Values are read when asked for: only what BentoML's
service decorator needs (workers, CPU count, access log, metrics, tracing, direct routes, the served tag, the per-request sentence
limit in the OpenAPI schema) is read when service/service.py is imported.

`python -m stancewatch.settings` prints the table the README carries (a test keeps them equal).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

PREFIX = "STANCEWATCH_"


class SettingError(ValueError):
    """A STANCEWATCH_* variable holds a value that cannot be used."""


@dataclass(frozen=True)
class Variable:
    name: str  # without the prefix; the attribute of Settings is its lower-case form
    kind: str  # int | float | bool | str | choice
    default: Any
    doc: str
    minimum: float | None = None
    choices: tuple[str, ...] = ()
    used_by: str = ""

    @property
    def env(self) -> str:
        return PREFIX + self.name

    def allowed(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "bool":
            return "1/true/yes/on or 0/false/no/off"
        if self.kind in ("int", "float"):
            what = "an integer" if self.kind == "int" else "a number"
            return f"{what} >= {self.minimum:g}" if self.minimum is not None else what
        return "any text"

    def parse(self, raw: str | None) -> Any:
        """The value for `raw` (None or blank: the default)."""
        if raw is None or not raw.strip():
            return self.default
        text = raw.strip()
        try:
            value = _PARSERS[self.kind](self, text)
        except (ValueError, TypeError):
            raise SettingError(f"{self.env}={raw!r} is not valid: expected {self.allowed()}") from None
        if self.minimum is not None and value < self.minimum:
            raise SettingError(f"{self.env}={raw!r} is too small: expected {self.allowed()}")
        return value


def _bool(var: Variable, text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _choice(var: Variable, text: str) -> str:
    if text.lower() not in var.choices:
        raise ValueError(text)
    return text.lower()


_PARSERS: dict[str, Callable[[Variable, str], Any]] = {
    "int": lambda var, text: int(text),
    "float": lambda var, text: float(text),
    "bool": _bool,
    "str": lambda var, text: text,
    "choice": _choice,
}

VARIABLES: tuple[Variable, ...] = (
    # Which model and how it runs
    Variable(
        "MODEL",
        "str",
        None,
        "Tag to serve or score with (pins it: no hot reload); default production, else latest.",
        used_by="service, score",
    ),
    Variable(
        "BACKEND",
        "choice",
        "auto",
        "Inference runtime: auto picks the model's recorded best.",
        choices=("auto", "torch", "openvino"),
        used_by="service",
    ),
    Variable(
        "PRECISION",
        "choice",
        "auto",
        "OpenVINO precision: auto runs the version's gated choice, except int8 on a CPU without int8 "
        "dot-product instructions (VNNI, AMX), where the fp32 IR is faster and exact.",
        choices=("auto", "int8", "bf16", "fp32"),
        used_by="service, score",
    ),
    Variable(
        "THREADS",
        "int",
        None,
        "Inference threads (default: the CPUs this process may use, split between workers).",
        minimum=1,
        used_by="service, score, Ray actors",
    ),
    # 2,048 (was 8,192): faster and 0.4-0.5 GB less peak memory when scoring (bench/batch_tokens.py;
    # the figures are at StanceModel.__init__ in model/predictor.py and in the README).
    Variable(
        "BATCH_TOKENS",
        "int",
        2048,
        "Padded tokens per inference batch, sentences sorted by length (at most 128 sentences; OpenVINO "
        "batches have at least 8, so a budget under 8 x the width is exceeded).",
        minimum=1,
        used_by="service, score, Ray actors",
    ),
    Variable(
        "OV_SHAPE_CACHE",
        "int",
        200,
        "OpenVINO compiled shapes kept per model (each costs memory).",
        minimum=1,
        used_by="OpenVINO runtime",
    ),
    # HTTP service
    Variable(
        "WORKERS", "int", 1, "Service worker processes (each holds a copy of the model).", minimum=1, used_by="service"
    ),
    Variable(
        "MAX_SENTENCES", "int", 256, "Sentences per POST /predict request (more: 400).", minimum=1, used_by="service"
    ),
    Variable(
        "MAX_DOC_SENTENCES",
        "int",
        2000,
        "Sentences per POST /predict_document document (more: 413).",
        minimum=1,
        used_by="service",
    ),
    # 128,000: a document at the sentence limit of news sentences (the bundled corpus: 60 tokens per
    # sentence with its context) fits (~120,000); 2,000 sentences at the 128-token maximum (256,000) do not.
    Variable(
        "MAX_TOKENS",
        "int",
        128_000,
        "Model input tokens per request (sentence + context, after truncation to the model's maximum length; more: 413).",
        minimum=1,
        used_by="service",
    ),
    Variable("MAX_BODY_BYTES", "int", 1_000_000, "Request body bytes (more: 413).", minimum=1, used_by="service"),
    Variable(
        "BATCH_ITEMS", "int", 64, "Sentences per inference batch of the micro-batcher.", minimum=1, used_by="service"
    ),
    Variable(
        "GATHER_MS",
        "float",
        2.0,
        "Under load, how long the batcher waits to fill a batch (ms).",
        minimum=0,
        used_by="service",
    ),
    # 0.005 (Python's own): 0.0005 made no difference with MiniLM and cost the tiny test model, whose inference is
    # mostly Python, 25-40% of served throughput (bench/serve.py, busy 2-core box: 203 -> 272 req/s single sentences).
    Variable(
        "SWITCH_INTERVAL_S",
        "float",
        0.005,
        "Python's thread switch interval in the service (s).",
        minimum=1e-6,
        used_by="service",
    ),
    Variable(
        "RELOAD_SECONDS",
        "float",
        10.0,
        "Seconds between checks of the production pointer (0: never reload).",
        minimum=0,
        used_by="service",
    ),
    Variable(
        "SHUTDOWN_GRACE_S",
        "int",
        5,
        "On SIGTERM, seconds in-flight requests get to finish before they are cancelled (503).",
        minimum=1,
        used_by="stancewatch serve",
    ),
    Variable("ACCESS_LOG", "bool", True, "One log line per request (BentoML's access log).", used_by="service"),
    Variable(
        "METRICS",
        "bool",
        True,
        "Prometheus request metrics at /metrics (BentoML's metrics middleware: a histogram, two counters "
        "and two gauges updated per request in multiprocess files).",
        used_by="service",
    ),
    Variable(
        "TRACING",
        "bool",
        False,
        "OpenTelemetry spans per request (BentoML's tracing middleware); turn on when BentoML's config "
        "names a tracing exporter. Off, the middleware passes requests straight through.",
        used_by="service",
    ),
    Variable(
        "DIRECT_ROUTES",
        "bool",
        True,
        "JSON POSTs to /predict and /predict_document are answered by stancewatch's own middleware, "
        "skipping BentoML's per-request routing (same answers; with the model stubbed, 0.15 against "
        "0.36 ms of CPU per request); off: BentoML routes every request.",
        used_by="service",
    ),
    Variable(
        "API_KEY", "str", None, "When set, prediction endpoints need `Authorization: Bearer <key>`.", used_by="service"
    ),
    # Training and benchmarks
    Variable(
        "DATASETS_CACHE",
        "str",
        None,
        "Cache folder for the datasets library while loading training data.",
        used_by="train",
    ),
    Variable(
        "SHARED_DATA",
        "str",
        None,
        "Folder of the public stance datasets (default ../shared/data).",
        used_by="bench, tests",
    ),
)
_BY_NAME = {v.name: v for v in VARIABLES}


def variable(name: str) -> Variable:
    key = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    try:
        return _BY_NAME[key.upper()]
    except KeyError:
        raise KeyError(f"no setting {name!r}; known: {', '.join(v.env for v in VARIABLES)}") from None


def get(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """One variable's value, read now."""
    var = variable(name)
    return var.parse((os.environ if environ is None else environ).get(var.env))


@dataclass(frozen=True)
class Settings:
    model: str | None
    backend: str
    precision: str
    threads: int | None
    batch_tokens: int
    ov_shape_cache: int
    workers: int
    max_sentences: int
    max_doc_sentences: int
    max_tokens: int
    max_body_bytes: int
    batch_items: int
    gather_ms: float
    switch_interval_s: float
    reload_seconds: float
    shutdown_grace_s: int
    access_log: bool
    metrics: bool
    tracing: bool
    direct_routes: bool
    api_key: str | None
    datasets_cache: str | None
    shared_data: str | None


assert [f.name for f in fields(Settings)] == [v.name.lower() for v in VARIABLES], "Settings and VARIABLES differ"


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """All variables, read now; the first bad one raises SettingError."""
    env = os.environ if environ is None else environ
    return Settings(**{v.name.lower(): v.parse(env.get(v.env)) for v in VARIABLES})


def unknown(environ: Mapping[str, str] | None = None) -> list[str]:
    """STANCEWATCH_* names that are set but mean nothing (most often a typo)."""
    env = os.environ if environ is None else environ
    return sorted(k for k in env if k.startswith(PREFIX) and k[len(PREFIX) :] not in _BY_NAME)


def markdown_table() -> str:
    rows = ["| Variable | Default | Allowed | Used by | What it does |", "|---|---|---|---|---|"]
    for v in VARIABLES:
        default = (
            "unset"
            if v.default is None
            else (
                str(v.default).lower()
                if v.kind == "bool"
                else f"{v.default:,}"
                if isinstance(v.default, int)
                else str(v.default)
            )
        )
        rows.append(f"| `{v.env}` | {default} | {v.allowed()} | {v.used_by} | {v.doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
