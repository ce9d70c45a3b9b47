"""Request and response models of the HTTP API (validation lives here, I/O in service.py)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Optional

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import InitErrorDetails, PydanticCustomError
from starlette.responses import Response

from stancewatch import settings

# Read at import: the limit is part of the OpenAPI schema that BentoML builds from these models.
MAX_SENTENCES = settings.get("MAX_SENTENCES")
EXAMPLE_INPUT = {
    "sentences": [
        "Tokyo will not retract the prime minister's remarks on Taiwan.",
        "Beijing demanded that Japan correct its erroneous statement.",
    ],
}
EXAMPLE_DOCUMENT = {"id": "doc-1", "text": "Beijing demanded a retraction. Tokyo said the remarks stand."}


def invalid(title: str, loc: tuple, kind: str, msg: str, value: Any = None) -> ValidationError:
    """A pydantic ValidationError, which BentoML answers with 400 and the field's location."""
    return ValidationError.from_exception_data(
        title, [InitErrorDetails(type=PydanticCustomError(kind, msg), loc=loc, input=value)]
    )


class JSONResult(Response):
    """A JSON response made from plain dicts; `model_dump()` gives the dict back to in-process callers.

    The endpoints return this instead of PredictResponse/DocumentResponse (which still describe the
    body in the OpenAPI schema): BentoML passes a Response through untouched, where a model would be
    validated again and serialised twice per request.
    """

    media_type = "application/json"

    def __init__(self, data: dict[str, Any], status_code: int = 200):
        self.data = data
        super().__init__(
            json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8"), status_code=status_code
        )

    def model_dump(self, **_: Any) -> dict[str, Any]:
        return self.data


def too_large(loc: list, kind: str, got: int, limit: int, setting: str, msg: str) -> JSONResult:
    """A 413 refusing a request before any inference, naming the limit and the variable that sets it;
    shaped like the other errors ({"error", "detail": [{"loc", "msg", "type"}]}) plus the figures."""
    return JSONResult(
        {
            "error": "payload too large",
            "detail": [
                {
                    "loc": loc,
                    "msg": f"{msg} ({setting}={limit})",
                    "type": kind,
                    "got": got,
                    "limit": limit,
                    "setting": setting,
                }
            ],
        },
        status_code=413,
    )


def _non_blank(text: str) -> str:
    if not text.strip():
        raise PydanticCustomError("blank", "must not be empty or whitespace-only")
    return text


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @classmethod
    def model_validate_json(cls, data, **kwargs):  # BentoML parses request bodies with this
        if isinstance(data, (bytes, bytearray)):
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise invalid(
                    cls.__name__,
                    ("body",),
                    "invalid_utf8",
                    f"request body is not valid UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start})",
                ) from None
        try:
            return super().model_validate_json(data, **kwargs)
        except ValidationError as exc:
            errors = exc.errors()
            if errors and errors[0]["type"] == "json_invalid":  # say where: the body
                raise invalid(cls.__name__, ("body",), "json_invalid", errors[0]["msg"]) from None
            raise


class PredictRequest(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": EXAMPLE_INPUT})
    sentences: list[Annotated[str, AfterValidator(_non_blank)]] = Field(
        min_length=1, max_length=MAX_SENTENCES, description=f"1 to {MAX_SENTENCES} sentences"
    )
    contexts: Optional[list[Optional[str]]] = Field(
        None, description="The sentence before each sentence (same length as `sentences`); null for none"
    )

    @field_validator("contexts")
    @classmethod
    def _same_length(cls, v, info):
        n = len(info.data.get("sentences") or [])
        if v is not None and "sentences" in info.data and len(v) != n:
            raise PydanticCustomError(
                "length_mismatch", "got {got} contexts for {n} sentences", {"got": len(v), "n": n}
            )
        return v


class DocumentRequest(_Request):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"example": EXAMPLE_DOCUMENT})
    text: Annotated[str, AfterValidator(_non_blank)] = Field(description="The document (UTF-8, at most the body limit)")
    id: Optional[str] = Field(None, description="Echoed back in the response")


class Stance(BaseModel):
    label: Optional[str] = Field(description="null when the sentence's language is not supported")
    probs: Optional[dict[str, float]] = Field(description="null when the sentence's language is not supported")


class SentenceResult(BaseModel):
    text: str
    truncated: bool
    language: Optional[str] = Field(None, description="ISO 639-1 code detected for the sentence; null: no letters")
    supported: bool = Field(True, description="false: the model was not trained on this language and gives no labels")
    stances: dict[str, Stance]


class PredictResponse(BaseModel):
    model: str
    sentences: list[SentenceResult]


class DocumentSentence(SentenceResult):
    index: int
    start: int
    end: int


class TargetSummary(BaseModel):
    counts: dict[str, int] = Field(description="labels of the supported sentences")
    shares: dict[str, float] = Field(description="share of the supported sentences with each label")
    mean_probs: dict[str, float] = Field(description="mean probabilities over the supported sentences")
    unsupported: int = Field(0, description="sentences in a language the model does not read (not in the counts)")


class DocumentResponse(BaseModel):
    model: str
    id: Optional[str] = None
    sentences: list[DocumentSentence]
    summary: dict[str, TargetSummary]


class ModelInfo(BaseModel):
    tag: str
    schema_: dict[str, Any] = Field(alias="schema")
    base_model: Optional[str] = None
    data_fingerprint: Optional[str] = None
    metrics: dict[str, Any] = {}
    created_at: str
