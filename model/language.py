"""Which language a sentence is written in, so the model answers only text it was trained to read.

Detection uses lingua (`lingua-language-detector`, offline: its n-gram models ship in the wheel) in
high-accuracy mode over the 19 languages in `CANDIDATES` (the most common languages of world news
output). Measured on this 2-core machine (v1 corpus, 880 English news sentences):

- all 75 languages, low-accuracy mode: 143 MB, 0.4 ms/sentence, but 19 English sentences (2.1%)
  called something else ("The yen weakened." -> Norwegian);
- all 75 languages, high-accuracy mode: 6 of 888 wrong, but 1.3 GB of models;
- these 19, high-accuracy, models loaded lazily: 1 of 880 wrong ("Reporting by ...; Editing by ...":
  Tagalog), about 310 MB once the Latin-script models are in, 0.25 ms/sentence in parallel.

When the detector hesitates between a language the model reads and another one (the model's
language scores at least PREFER_RATIO of the top score), the model's language is taken: on the
855 sentences of the news test set, two short English sentences ("Dialogue remains essential.":
French 0.45, English 0.42) were otherwise called unsupported; short foreign phrases keep a clear
margin ("C'est faux.": French 0.51, English 0.09). With the rule, 3 of the 5,034 English sentences of
the bundled corpora (news training and test articles, v1 sentences) are still called something else
(Tagalog: "Taiwan is China's Taiwan." and two sentences made mostly of names); 28 of 28 short news
sentences in 16 other languages, written for the check, are called not English.

A language outside the list is reported as the closest listed one, so `language` is a best guess
for those, but the decision that matters (is this a language the model reads?) stays right: text
in an unlisted language is not detected as English. A text with no letters at all (numbers,
punctuation) has no language (`None`) and counts as readable, since nothing in it is language-specific.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable, Sequence

CANDIDATES = (
    "en",
    "de",
    "fr",
    "es",
    "it",
    "pt",
    "nl",
    "pl",
    "tr",
    "id",
    "vi",
    "tl",
    "zh",
    "ja",
    "ko",
    "ru",
    "ar",
    "hi",
    "th",
)
# A language is recorded as a model's language when at least this share of its training sentences
# is in it (and at least MIN_SENTENCES of them): stray misdetections do not make a language "supported".
MIN_SHARE = 0.02
MIN_SENTENCES = 20
PREFER_RATIO = 0.5


@functools.cache
def _detector():
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    codes = [getattr(IsoCode639_1, code.upper()) for code in CANDIDATES]
    return LanguageDetectorBuilder.from_iso_codes_639_1(*codes).build()


def _has_letters(text: str) -> bool:
    return any(ch.isalpha() for ch in text)


def detect_languages(texts: Sequence[str], prefer: Iterable[str] | None = None) -> list[str | None]:
    """ISO 639-1 code of each text (lowercase), or None for a text without letters.

    `prefer` (the model's languages) wins where it scores at least PREFER_RATIO of the top language.
    """
    if not texts:
        return []
    preferred = set(prefer or ())
    out: list[str | None] = []
    for values, text in zip(_detector().compute_language_confidence_values_in_parallel(list(texts)), texts):
        if not values or not _has_letters(text) or values[0].value <= 0:
            out.append(None)
            continue
        top = values[0].value
        best = values[0].language.iso_code_639_1.name.lower()
        for v in values:
            code = v.language.iso_code_639_1.name.lower()
            if code in preferred and v.value >= PREFER_RATIO * top:
                best = code
                break
        out.append(best)
    return out


def supported_flags(languages: Sequence[str | None], readable: Iterable[str] | None) -> list[bool]:
    """True where the model reads the language; `readable=None` (a model that predates language
    tracking) reads everything."""
    if readable is None:
        return [True] * len(languages)
    allowed = set(readable)
    return [lang is None or lang in allowed for lang in languages]


def corpus_languages(texts: Sequence[str]) -> list[str]:
    """The languages a training corpus is written in (see MIN_SHARE), most frequent first."""
    counts = Counter(lang for lang in detect_languages(texts) if lang is not None)
    total = sum(counts.values())
    found = [lang for lang, n in counts.most_common() if n >= MIN_SENTENCES and n / total >= MIN_SHARE]
    # A corpus too small for the thresholds still reads its most frequent language.
    return found or [lang for lang, _ in counts.most_common(1)]
