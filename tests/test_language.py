"""Sentences in a language the model was not trained on get no labels, everywhere they can come out."""

from __future__ import annotations

import asyncio
import json

import pyarrow.parquet as pq
import pytest

from stancewatch.model.language import corpus_languages, detect_languages, supported_flags
from stancewatch.model.predictor import StanceModel

# Written for these tests: the same kind of news sentence in other languages, and short English ones.
FOREIGN = {
    "de": "Die Regierung in Tokio lehnt es ab, die Äußerungen der Ministerpräsidentin zurückzunehmen.",
    "fr": "Le gouvernement japonais affirme que sa position sur Taïwan reste inchangée malgré les pressions.",
    "ja": "政府は首相の答弁を撤回する考えはないと強調した。",
    "zh": "外交部发言人要求日方立即撤回错误言论。",
    "es": "Pekín exigió a Tokio que rectificara de inmediato las declaraciones de la primera ministra.",
}
ENGLISH = [
    "Tokyo will not revise its position under pressure from anyone.",
    "Shares of department-store operators fell for a third straight session on Tuesday.",
    "That never happened, the spokesman said.",
]


def test_detection_names_the_language():
    found = detect_languages(list(FOREIGN.values()) + ENGLISH)
    assert found == list(FOREIGN) + ["en"] * len(ENGLISH)
    assert detect_languages(["2025.", "--"]) == [None, None]  # no letters: no language


def test_supported_flags_and_corpus_languages():
    assert supported_flags(["en", "de", None], ["en"]) == [True, False, True]
    assert supported_flags(["de"], None) == [True]  # a model made before languages were recorded
    assert corpus_languages(ENGLISH * 10 + [FOREIGN["de"]]) == ["en"]  # one stray sentence is not a language
    assert corpus_languages(ENGLISH[:1]) == ["en"]  # a tiny corpus still reads its own language


def test_training_records_languages(tiny_model):
    model = StanceModel.load(tiny_model.tag)
    assert model.languages == ["en"]
    assert tiny_model.metadata["languages"] == ["en"]


def test_predict_gives_no_labels_to_unsupported_sentences(tiny_model):
    model = StanceModel.load(tiny_model.tag)
    preds = model.predict([ENGLISH[0], FOREIGN["de"], FOREIGN["ja"]])
    assert [(p.language, p.supported) for p in preds] == [("en", True), ("de", False), ("ja", False)]
    assert all(s.label is not None and s.probs for s in preds[0].stances.values())
    for p in preds[1:]:
        assert set(p.stances) == set(model.schema.target_names)
        assert all(s.label is None and s.probs is None for s in p.stances.values())
    # The supported sentence gets exactly what it gets alone: skipping the others changes nothing.
    assert preds[0].to_dict() == model.predict([ENGLISH[0]])[0].to_dict()


@pytest.fixture(scope="module")
def svc(tiny_model):
    import importlib

    import stancewatch.service.service as module

    module = importlib.reload(module)
    service = module.StanceService()
    yield service
    service.batcher.close()


def test_service_document_summary_counts_unsupported_apart(svc):
    text = f"{ENGLISH[0]} {FOREIGN['fr']}\n\n{ENGLISH[1]}"
    out = asyncio.run(svc.predict_document(text=text)).model_dump()
    parts = out["sentences"]
    assert [s["supported"] for s in parts] == [True, False, True]
    assert parts[1]["language"] == "fr" and parts[1]["stances"]["taiwan_policy"] == {"label": None, "probs": None}
    for target in svc.model.schema.targets:
        summary = out["summary"][target.name]
        assert summary["unsupported"] == 1
        assert sum(summary["counts"].values()) == 2
        assert sum(summary["shares"].values()) == pytest.approx(1.0, abs=1e-5)


def test_batch_output_leaves_unsupported_sentences_empty(tmp_path, tiny_model):
    from stancewatch.scoring.pipeline import score

    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "text": f"{ENGLISH[0]} {FOREIGN['es']}"}) + "\n", encoding="utf-8")
    model = StanceModel.load(tiny_model.tag)
    score([src], tmp_path / "o.parquet", model, doc_summary=tmp_path / "docs.parquet")
    rows = pq.read_table(tmp_path / "o.parquet").to_pylist()
    assert [(r["language"], r["supported"]) for r in rows] == [("en", True), ("es", False)]
    assert rows[0]["taiwan_policy"] is not None and rows[1]["taiwan_policy"] is None
    assert all(rows[1][k] is None for k in rows[1] if k.startswith("p_"))
    doc = pq.read_table(tmp_path / "docs.parquet").to_pylist()[0]
    assert doc["sentences"] == 2 and doc["unsupported"] == 1
    for t in model.schema.targets:
        assert sum(doc[f"share_{t.name}_{lab}"] for lab in t.labels) == pytest.approx(1.0, abs=1e-5)
