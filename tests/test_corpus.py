"""The news-genre corpus: its writing format, agreement figures, by-article splits and the shipped files."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from stancewatch.training import corpus
from stancewatch.training.data import DATA_DIR, NEWS_TEST, grouped_folds, grouped_split, load_labelled

ARTICLES = """### id=X-01 | genre=wire | date=2025-11-20 | outlet=Test Wire | headline=Two sentences
N N | Flights between the two countries were cut by a third, the airline said.
F A | The prime minister said her answer stood and would not be changed under pressure.

A F | "Tokyo must retract," the spokesman said.
### id=X-02 | genre=unrelated | date=2025-11-21 | outlet=Test Wire | headline=Other news
N N | The yen weakened against the dollar on Friday.
"""


def test_parse_build_and_blind_copy(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text(ARTICLES, encoding="utf-8")
    arts = corpus.parse_articles(src)
    assert [a.doc_id for a in arts] == ["X-01", "X-02"]
    assert arts[0].paragraph_starts == [2]
    assert arts[0].text.count("\n\n") == 1
    out = tmp_path / "a.csv"
    assert corpus.write_csv(arts, out) == 4
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert rows[1]["context"] == rows[0]["text"] and rows[0]["context"] == "" and rows[3]["context"] == ""
    assert (rows[2]["taiwan_policy"], rows[2]["external_pressure"]) == ("against", "favor")
    assert corpus.splitter_mismatches(arts) == []
    data = load_labelled([out])  # the loader reads it as wide data with its documents
    assert {e.group for e in data.examples} == {"a.csv:X-01", "a.csv:X-02"}
    assert set(data.schema.target_names) == {"taiwan_policy", "external_pressure"}
    blind = corpus.blind_copy(arts, tmp_path / "blind", "a.txt").read_text(encoding="utf-8")
    assert "F A" not in blind and "1 | The prime minister" in blind
    again = corpus.parse_articles(tmp_path / "blind" / "a.txt", labelled=False)
    assert [a.sentences for a in again] == [a.sentences for a in arts]


def test_malformed_lines_are_named(tmp_path):
    src = tmp_path / "bad.txt"
    src.write_text("### id=B-1 | genre=poetry | date=2025-11-20\nN | no second label.\n", encoding="utf-8")
    with pytest.raises(corpus.CorpusError) as err:
        corpus.parse_articles(src)
    assert f"{src}:1" in str(err.value) and "genre 'poetry'" in str(err.value)
    assert f"{src}:2" in str(err.value)


def test_kappa_on_a_hand_computed_case(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text(ARTICLES, encoding="utf-8")
    arts = corpus.parse_articles(src)
    # Second pass: agrees on taiwan_policy everywhere, disagrees on one external_pressure label.
    second = {
        ("X-01", 0): ("none", "none"),
        ("X-01", 1): ("favor", "none"),
        ("X-01", 2): ("against", "favor"),
        ("X-02", 0): ("none", "none"),
    }
    result = corpus.agreement(arts, second)
    assert result["targets"]["taiwan_policy"]["kappa"] == pytest.approx(1.0)
    # external_pressure: first N A F N, second N N F N -> p_o = 3/4; p_e = (2*3 + 1*0 + 1*1)/16 = 7/16
    assert result["targets"]["external_pressure"]["agreement"] == pytest.approx(0.75)
    assert result["targets"]["external_pressure"]["kappa"] == pytest.approx((0.75 - 7 / 16) / (1 - 7 / 16))
    assert [(d["doc_id"], d["sentence_index"]) for d in result["disagreements"]] == [("X-01", 1)]
    assert corpus.agreement(arts, {})["missing"] == ["X-01:0", "X-01:1", "X-01:2", "X-02:0"]


def test_grouped_splits_never_split_an_article():
    data = load_labelled([DATA_DIR / "news_train.csv"])
    docs = lambda exs: {e.group for e in exs}  # noqa: E731
    rest, held = grouped_split(data.examples, data.schema, 0.15, seed=13)
    assert not docs(rest) & docs(held)
    assert abs(len(held) / len(data.examples) - 0.15) < 0.05
    folds = grouped_folds(data.examples, data.schema, 5, seed=13)
    seen = []
    for train_idx, test_idx in folds:
        assert not docs([data.examples[i] for i in train_idx]) & docs([data.examples[i] for i in test_idx])
        seen += test_idx
    assert sorted(seen) == list(range(len(data.examples)))


def _articles(path):
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    by_doc: dict[str, list[dict]] = {}
    for r in rows:
        by_doc.setdefault(r["doc_id"], []).append(r)
    return rows, by_doc


@pytest.mark.parametrize(
    "path, min_articles, min_sentences", [(DATA_DIR / "news_train.csv", 150, 3000), (NEWS_TEST, 40, 800)]
)
def test_shipped_news_corpus_is_whole_articles_in_the_shares_asked_for(path, min_articles, min_sentences):
    rows, by_doc = _articles(path)
    assert len(by_doc) >= min_articles and len(rows) >= min_sentences
    for doc, sents in by_doc.items():
        assert [int(r["sentence_index"]) for r in sents] == list(range(len(sents))), doc
        assert all(b["context"] == a["text"] for a, b in zip(sents, sents[1:])), doc  # context = sentence before
        assert len({(r["genre"], r["date"]) for r in sents}) == 1
    genres = Counter(sents[0]["genre"] for sents in by_doc.values())
    assert set(genres) == set(corpus.GENRES)
    assert genres["unrelated"] / len(by_doc) >= 0.10
    both_none = sum(r["taiwan_policy"] == r["external_pressure"] == "none" for r in rows) / len(rows)
    assert 0.45 <= both_none <= 0.62
    assert sum(len(r["text"].split()) for r in rows) / len(rows) >= 18  # long news sentences, not tidy fragments


def test_test_set_is_apart_from_the_training_data():
    train_rows, train_docs = _articles(DATA_DIR / "news_train.csv")
    test_rows, test_docs = _articles(NEWS_TEST)
    assert not set(train_docs) & set(test_docs)
    with (DATA_DIR / "default_corpus.csv").open(newline="", encoding="utf-8") as fh:
        v1 = {r["text"] for r in csv.DictReader(fh)}
    assert not {r["text"] for r in test_rows} & ({r["text"] for r in train_rows} | v1)


def test_shipped_csvs_are_built_from_the_articles_and_decisions(tmp_path):
    """The CSVs are derived data: rebuilding them from the written articles and the adjudicated
    labels (`make corpus`) must give the same files."""
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    decisions = corpus.read_decisions(sorted((repo / "docs" / "annotation" / "decisions").glob("*.tsv")))
    for split, shipped in (("train", DATA_DIR / "news_train.csv"), ("test", NEWS_TEST)):
        arts = [a for f in sorted((DATA_DIR / "articles" / split).glob("*.txt")) for a in corpus.parse_articles(f)]
        corpus.apply_decisions(arts, decisions)
        assert corpus.splitter_mismatches(arts) == []  # every written sentence is a sentence the service sees
        corpus.write_csv(arts, tmp_path / f"{split}.csv")
        assert (tmp_path / f"{split}.csv").read_bytes() == shipped.read_bytes()


def test_second_pass_covers_every_sentence_and_kappa_is_as_reported():
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    arts = [a for f in sorted((DATA_DIR / "articles").glob("*/*.txt")) for a in corpus.parse_articles(f)]
    second = corpus.read_second_pass(sorted((repo / "docs" / "annotation" / "second-pass").glob("*.tsv")))
    result = corpus.agreement(arts, second)
    assert result["missing"] == []
    for target in corpus.TARGETS:
        assert result["targets"][target]["kappa"] >= 0.9  # docs/corpus.md reports the exact figures
    decisions = corpus.read_decisions(sorted((repo / "docs" / "annotation" / "decisions").glob("*.tsv")))
    assert {(d["doc_id"], d["sentence_index"]) for d in result["disagreements"]} == set(decisions)
