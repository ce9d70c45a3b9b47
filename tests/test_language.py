"""Sentences in a language the model was not trained on get no labels, everywhere they can come out."""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from stancewatch.model import language
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


# ---- the cheap routes (model/language.py): they may only skip lingua where lingua would agree ----
def _foreign_sentences() -> list[tuple[str, str]]:
    path = Path(__file__).parent / "data" / "foreign_sentences.tsv"
    rows = [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines() if not line.startswith("#")]
    return [(code, text) for code, text in rows]


def _bundled_english() -> list[str]:
    folder = Path(__file__).resolve().parent.parent / "training" / "data"
    texts = []
    for name in ("default_corpus.csv", "news_train.csv", "news_test.csv"):
        with open(folder / name, newline="", encoding="utf-8") as fh:
            texts += [row["text"] for row in csv.DictReader(fh)]
    return texts


def _high_accuracy(texts: list[str], prefer=("en",)) -> list[str | None]:
    """What detection gave before the cheap routes: lingua in high-accuracy mode on every text."""
    values = language._detector().compute_language_confidence_values_in_parallel(texts)
    return [language._decide(v, t, set(prefer)) for v, t in zip(values, texts)]


def test_no_foreign_sentence_is_plainly_english():
    rows = _foreign_sentences()
    assert len(rows) >= 90 and len({code for code, _ in rows}) >= 20
    assert [text for _, text in rows if language.plainly_english(text)] == []
    texts = [text for _, text in rows]
    assert detect_languages(texts, prefer=["en"]) == _high_accuracy(texts)


def test_most_english_news_skips_lingua_and_lingua_agrees():
    english = _bundled_english()
    plain = [t for t in english if language.plainly_english(t)]
    assert len(plain) >= 0.9 * len(english)  # 4,882 of 5,034 when written
    # lingua calls two of them Tagalog (sentences made mostly of Japanese names); the rest English
    assert sum(lang != "en" for lang in _high_accuracy(plain)) <= 3
    assert all(language.plainly_english(t) for t in ENGLISH[:2])
    assert not language.plainly_english("Dialogue remains essential.")  # too few marker words: lingua decides


def test_low_accuracy_route_gives_the_high_accuracy_answer_for_long_texts():
    long_texts = [t for t in _bundled_english() if language._letters(t) >= language.TRIGRAM_ONLY][::10]
    long_texts += [t for _, t in _foreign_sentences() if language._letters(t) >= language.TRIGRAM_ONLY]
    assert len(long_texts) > 200
    low = language._detector(low_accuracy=True).compute_language_confidence_values_in_parallel(long_texts)
    high = language._detector().compute_language_confidence_values_in_parallel(long_texts)
    for a, b in zip(low, high):
        assert [(v.language, round(v.value, 9)) for v in a] == [(v.language, round(v.value, 9)) for v in b]


def test_every_route_gives_the_same_answers_as_high_accuracy_alone():
    texts = _bundled_english()[::7] + [t for _, t in _foreign_sentences()] + ["2025.", "Tokio protestiert."]
    for prefer in (["en"], []):
        new, old = detect_languages(texts, prefer=prefer), _high_accuracy(texts, prefer)
        changed = [(t, a, b) for t, a, b in zip(texts, old, new) if a != b]
        assert all(b == "en" and a == "tl" for _, a, b in changed), changed  # only the name-heavy ones
        assert len(changed) <= 2
