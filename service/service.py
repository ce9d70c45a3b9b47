"""The BentoML HTTP service: POST /predict, POST /predict_document, GET /model.

Run with `stancewatch serve` (or `bentoml serve stancewatch.service.service:StanceService`). The model comes
from $STANCEWATCH_MODEL, else the production version, else the latest. Limits, threads, batching,
reload and the API key are STANCEWATCH_* variables, all declared in stancewatch/settings.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any, Optional

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import bentoml  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from stancewatch import settings  # noqa: E402
from stancewatch.model import store  # noqa: E402
from stancewatch.model.predictor import default_threads  # noqa: E402
from stancewatch.service.batching import MicroBatcher  # noqa: E402
from stancewatch.service.direct import DirectRoutes  # noqa: E402
from stancewatch.service.io import (  # noqa: E402,F401  (EXAMPLE_* and the models are part of this module's API)
    EXAMPLE_DOCUMENT,
    EXAMPLE_INPUT,
    MAX_SENTENCES,
    DocumentRequest,
    DocumentResponse,
    JSONResult,
    ModelInfo,
    PredictRequest,
    PredictResponse,
    invalid,
    too_large,
)
from stancewatch.service.middleware import GuardMiddleware  # noqa: E402
from stancewatch.service.reload import ProductionWatcher  # noqa: E402

logger = logging.getLogger("stancewatch.service")
# Read at import: only what @bentoml.service needs (worker count, CPU resources, access log); the
# rest of the settings are read when the service starts (StanceService.__init__).
_BOOT = settings.load()
# Worker processes: each parses HTTP in its own interpreter (one Python process tops out at a few
# hundred requests/s) and holds its own copy of the model; inference threads are split between them.
WORKERS = _BOOT.workers
THREADS = _BOOT.threads or max(1, default_threads() // WORKERS)


def serving_tag() -> str:
    """The full tag to serve; fails with a clear message when the store has no model."""
    try:
        return str(store.resolve().tag)
    except store.ModelNotFound as exc:
        if settings.get("MODEL") or not store.list_versions():
            raise RuntimeError(f"stancewatch service: {exc}") from None
        # Inside a Bento the store holds only the packed model, not the one the pointer names.
        logger.warning("%s; serving the latest version instead", exc)
        return str(store.get("latest").tag)


info_app = FastAPI(title="stancewatch model info")


@info_app.get("/model", response_model=ModelInfo, response_model_by_alias=True)
def get_model_info() -> dict:
    """The serving model: tag, schema, base model, data fingerprint, metrics, creation time."""
    return bentoml.get_current_service().model_info()


UI_PAGE = Path(__file__).resolve().parent / "static" / "ui.html"
# The page loads nothing from elsewhere; this header makes the browser hold it to that (no CDN, no
# web fonts: it works offline) and keeps it from sending article text anywhere but this service.
UI_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@info_app.get("/ui", include_in_schema=False)
def get_ui():
    """The analyst's page (service/static/ui.html): paste an article, see each sentence's stances."""
    from fastapi.responses import HTMLResponse

    return HTMLResponse(UI_PAGE.read_text(encoding="utf-8"), headers={"Content-Security-Policy": UI_POLICY})


@bentoml.asgi_app(info_app, path="/")
@bentoml.service(
    name="stancewatch",
    workers=WORKERS,
    resources={"cpu": str(THREADS * WORKERS)},
    traffic={"timeout": 600},
    logging={"access": {"enabled": _BOOT.access_log}},
    metrics={"enabled": _BOOT.metrics},
    # BentoML always wraps the app in OpenTelemetry's ASGI middleware, which opens five spans per
    # request even with no exporter to send them to. Excluding every URL (the default,
    # STANCEWATCH_TRACING=0) makes it call the app directly.
    tracing={} if _BOOT.tracing else {"excluded_urls": [".*"]},
)
class StanceService:
    """Sentence-level stance classification: every sentence gets a label and probabilities per target."""

    model_ref = bentoml.models.BentoModel(serving_tag())

    def __init__(self) -> None:
        from stancewatch.model.predictor import StanceModel

        # The event loop and the inference thread share the GIL. A switch interval shorter than
        # Python's 5 ms made no measurable difference with MiniLM (its compute releases the GIL), and
        # cost 25-40% of served throughput with a model whose inference is mostly Python (the tiny
        # test model, bench/serve.py): the default is now Python's own; the setting stays for trials.
        self.settings = cfg = settings.load()
        sys.setswitchinterval(cfg.switch_interval_s)

        self.backend_choice = cfg.backend
        self.model = StanceModel(
            Path(self.model_ref.path), backend=cfg.backend, threads=THREADS, tag=str(self.model_ref.tag)
        )
        from stancewatch.model.language import preload

        preload()  # the detector's models, ~2 s once, not in the first request
        self.tag = self.model.tag
        # Each job carries the model its request started on, and a batch holds one model's jobs.
        self.batcher = MicroBatcher(
            self._run_batch,
            max_items=cfg.batch_items,
            gather_ms=cfg.gather_ms,
            thread_init=getattr(self.model.backend, "thread_init", None),
            keyed=True,
        )
        # A pinned tag ($STANCEWATCH_MODEL) is never reloaded.
        reload_s = 0.0 if cfg.model else cfg.reload_seconds
        self.reloader = ProductionWatcher(self, reload_s) if reload_s > 0 else None

    def _run_batch(self, items: list[tuple], model) -> list[dict]:
        # `model` is the version the requests in this batch started on (the batcher's key), not
        # self.model: a request split over several batches is scored by one version throughout.
        # Items are (sentence, context, encoded or None); encoded when the token check made it.
        encoded = [e for _, _, e in items]
        predictions = model.predict(
            [s for s, _, _ in items], [c for _, c, _ in items], encoded if None not in encoded else None
        )
        return [p.to_dict() for p in predictions]

    def swap_model(self, model) -> None:
        """Serve `model` to requests that arrive from now on; requests already running finish on
        the version they started with (it travels in their batcher jobs)."""
        old = self.model
        self.model, self.tag = model, model.tag
        thread_init = getattr(model.backend, "thread_init", None)
        if thread_init is not None:
            self.batcher.run_in_worker(thread_init)
        logger.info("now serving %s (was %s)", model.tag, old.tag)

    async def _jobs_or_413(self, model, sentences: list[str], contexts: list, field: str) -> list | JSONResult:
        """The batcher items (sentence, context, encoded) for a request, or a 413 answer when its
        model input exceeds $STANCEWATCH_MAX_TOKENS.

        Every input is at most the model's max_length tokens, so a request with n * max_length
        within the limit is never tokenised here (all /predict requests at the defaults: 256 x 128
        = 32,768 <= 128,000); only larger documents are (0.22 s per 2,000 sentences with their
        contexts on a busy 2-core machine), and their encodings go on to the model, which then
        does not encode them again.
        """
        limit = self.settings.max_tokens
        if len(sentences) * model.max_length <= limit:
            return [(s, c, None) for s, c in zip(sentences, contexts)]
        encoded = await asyncio.to_thread(model.encoder.encode, sentences, contexts)
        total = sum(len(e) for e in encoded)
        if total <= limit:
            return list(zip(sentences, contexts, encoded))
        return too_large(
            [field],
            "too_many_tokens",
            total,
            limit,
            "STANCEWATCH_MAX_TOKENS",
            f"the request is {total:,} model input tokens (sentences with their contexts, after "
            f"truncation to {model.max_length} each), over the limit of {limit:,}",
        )

    @bentoml.api(input_spec=PredictRequest)
    async def predict(self, sentences: list[str], contexts: Optional[list[Optional[str]]] = None) -> PredictResponse:
        """Classify sentences (each optionally with the sentence before it as context), in input order."""
        model = self.model  # this request is scored by this version from start to end, whatever reloads
        contexts = contexts or [None] * len(sentences)
        jobs = await self._jobs_or_413(model, sentences, contexts, "sentences")
        if isinstance(jobs, JSONResult):
            return jobs
        results = await self.batcher.submit(jobs, key=model)
        # A ready JSON response: BentoML passes a Response through, so the results (already checked
        # by the predictor) are not validated into PredictResponse and dumped again per request.
        return JSONResult({"model": model.tag, "sentences": results})

    @bentoml.api(input_spec=DocumentRequest)
    async def predict_document(self, text: str, id: Optional[str] = None) -> DocumentResponse:
        """Split a document into sentences, classify each with the one before it, and summarise per target."""
        from stancewatch.model.splitter import split_sentences, with_context

        model = self.model  # the tag, the outputs and the summary's targets all come from this version
        parts = await asyncio.to_thread(split_sentences, text)
        if not parts:
            raise invalid("DocumentRequest", ("text",), "no_sentences", "the document contains no sentences")
        limit = self.settings.max_doc_sentences
        if len(parts) > limit:
            return too_large(
                ["text"],
                "too_many_sentences",
                len(parts),
                limit,
                "STANCEWATCH_MAX_DOC_SENTENCES",
                f"the document has {len(parts):,} sentences, over the limit of {limit:,}; "
                "split it or send the sentences in parts",
            )
        texts, contexts = [s.text for s in parts], with_context(parts)
        jobs = await self._jobs_or_413(model, texts, contexts, "text")
        if isinstance(jobs, JSONResult):
            return jobs
        results = await self.batcher.submit(jobs, key=model)
        sentences = [{"index": s.index, "start": s.start, "end": s.end, **r} for s, r in zip(parts, results)]
        return JSONResult(
            {"model": model.tag, "id": id, "sentences": sentences, "summary": self.summarise(results, model)}
        )

    def summarise(self, results: list[dict], model=None) -> dict[str, dict]:
        """Per target of `model` (default: the serving one): how many supported sentences got each label,
        their share, the mean probabilities, and how many sentences were in a language the model does not
        read (counted apart)."""
        read = [r for r in results if r["supported"]]
        n, out = max(1, len(read)), {}
        for target in (model or self.model).schema.targets:
            counts = {lab: sum(r["stances"][target.name]["label"] == lab for r in read) for lab in target.labels}
            out[target.name] = {
                "counts": counts,
                "shares": {lab: round(c / n, 6) for lab, c in counts.items()},
                "mean_probs": {
                    lab: round(sum(r["stances"][target.name]["probs"][lab] for r in read) / n, 6)
                    for lab in target.labels
                },
                "unsupported": len(results) - len(read),
            }
        return out

    def model_info(self) -> dict[str, Any]:
        """Tag, schema, base model, training-data fingerprint, metrics and creation time."""
        model = self.model  # one read: /model runs in a thread pool, a swap may happen meanwhile
        tag = model.tag
        info = store.get(tag).info if tag != str(self.model_ref.tag) else self.model_ref.info
        md = dict(info.metadata)
        return {
            "tag": tag,
            "schema": model.schema.to_dict(),
            "base_model": md.get("base_model"),
            "data_fingerprint": md.get("data_fingerprint"),
            "metrics": md.get("metrics", {}),
            "created_at": str(md.get("created_at") or info.creation_time.isoformat()),
        }


StanceService.add_asgi_middleware(GuardMiddleware, max_body_bytes=_BOOT.max_body_bytes, api_key=_BOOT.api_key)
# Inside the guard: JSON POSTs to the two prediction routes skip BentoML's per-request routing
# (service/direct.py says what that saves and how the two paths are kept equal).
if _BOOT.direct_routes:
    StanceService.add_asgi_middleware(DirectRoutes, service=StanceService, paths=("/predict", "/predict_document"))
