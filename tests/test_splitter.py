from stancewatch.model.splitter import split_sentences, with_context

# Written for this test: news-style text with abbreviations, initials, decimals and quotes.
ARTICLE = (
    "The U.S. envoy, Mr. J. R. Hale, landed in Tokyo on Jan. 12 for two days of talks. "
    "Officials said exports fell 2.5 percent in December.\n\n"
    "\u201cWe do not take instructions from anyone,\u201d the spokesman said. \u201cOur policy is our own.\u201d "
    "Dr. K. Mori of Keio Univ. disagreed. Did Washington ask for restraint? Nobody would say!"
)


def test_offsets_map_back_to_the_document():
    sents = split_sentences(ARTICLE)
    for i, s in enumerate(sents):
        assert s.index == i
        assert ARTICLE[s.start : s.end] == s.text


def test_abbreviations_initials_decimals_and_quotes():
    texts = [s.text for s in split_sentences(ARTICLE)]
    assert texts == [
        "The U.S. envoy, Mr. J. R. Hale, landed in Tokyo on Jan. 12 for two days of talks.",
        "Officials said exports fell 2.5 percent in December.",
        "\u201cWe do not take instructions from anyone,\u201d the spokesman said.",
        "\u201cOur policy is our own.\u201d",
        "Dr. K. Mori of Keio Univ. disagreed.",
        "Did Washington ask for restraint?",
        "Nobody would say!",
    ]


def test_context_is_the_previous_sentence():
    sents = split_sentences("One here. Two there. Three everywhere.")
    assert with_context(sents) == [None, "One here.", "Two there."]


def test_empty_and_blank_documents():
    assert split_sentences("") == []
    assert split_sentences("   \n\n  ") == []
