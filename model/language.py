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
margin ("C'est faux.": French 0.51, English 0.09). With the rule, lingua alone called 3 of the 5,034
English sentences of the bundled corpora (news training and test articles, v1 sentences) something
else (Tagalog: "Taiwan is China's Taiwan." and two sentences made mostly of names); the word route
below settles the two long ones, so one is left.

A language outside the list is reported as the closest listed one, so `language` is a best guess
for those, but the decision that matters (is this a language the model reads?) stays right: text
in an unlisted language is not detected as English. A text with no letters at all (numbers,
punctuation) has no language (`None`) and counts as readable, since nothing in it is language-specific.

Three routes, cheapest first, so that a large English archive does not pay for the full detector on
every sentence (6,000 sentences of bench/throughput.py's news workload in chunks of 4,096, as
`stancewatch score` reads them, 2-core EPYC, two fresh processes each: 3.0 s wall and 5.9 s CPU
through lingua alone, 1.6-1.8 s and 3.1-3.4 s this way; the short texts of route 3 still load lingua's
full models, which is most of what is left). Every answer is lingua's except those two (tests check it):

1. `plainly_english`: only ASCII letters, at least two English marker words making up at least a
   tenth of the words, and not one function word of the other Latin-script languages. 4,882 of the
   5,034 English corpus sentences take this route; of the 92 foreign sentences in 22 languages written
   for the check (tests/data/foreign_sentences.tsv), with and without their diacritics, none does.
   lingua agrees on all of the 4,882 but two, the name-heavy "Tagalog" ones above.
2. Texts with at least TRIGRAM_ONLY letters: lingua's low-accuracy mode. From 120 characters on,
   lingua uses trigrams alone in both modes, so the answer is the same as high accuracy (a test
   checks the confidence values are equal), and its models load in 0.1 s instead of 1.5-1.9 s.
3. The rest (short texts not plainly English): lingua in high-accuracy mode, as before.
"""

from __future__ import annotations

import functools
import re
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


# Lingua reads a text of this many characters or more with trigrams alone, in either accuracy mode.
# Letters are a lower bound on the characters lingua counts after removing punctuation and digits.
TRIGRAM_ONLY = 120

# Words that are common in English news and are not words of another Latin-script candidate (nor of
# Scandinavian, Finnish, Romanian or Catalan): "in", "on", "to", "is", "was", "for", "at", "of", "also",
# "die", "will", "most", "even", "prime", "court", "support" and the like are left out on purpose.
EN_MARKERS = frozenset(
    """
    the and that with this from which have has had been were would said says their they its not but are
    who after than about into more what when could should there our she him them being these those while
    against between because before during since until where whether such other only any cannot must
    might does did done told according you your it year years week weeks month months people government
    officials percent new first last two three four five seven eight nine made make take took back well
    very much many some out how why then now here today yesterday monday tuesday wednesday thursday
    friday saturday sunday january february june july october market markets shares stock stocks prices
    price talks trade country countries foreign ministry spokesman spokeswoman statement remarks comments
    policy economy economic security military defence without within around across further however
    although though through already again never always often yet whose whom every each both either
    neither nor another one meanwhile including called asked
    """.split()
)
# Function words of the other Latin-script candidates (and a few neighbours), written without
# diacritics too; one of them anywhere sends the text to lingua.
FOREIGN_MARKERS = frozenset(
    """
    der die das und ist nicht ein eine einen mit den dem des auf für fur von sich auch wird wurde sind
    nach bei wir ich le la les et est une du dans pour pas qui sur au aux avec ce cette sont ont été ete
    il elle ne nous vous el los las y del por para con una es lo se su sus fue ha han como más mas pero
    muy di che non della dei delle nel alla sono gli em não nao uma os das dos ao pelo pela são sao foi
    het een niet van zijn op voor dat ook er wordt werd aan się sie nie jest w z na że ze który która oraz
    przez bir ve bu için icin ile olarak olan çok cok daha yang dan ini itu dengan untuk dari dalam tidak
    akan pada adalah ng ang sa mga ay ni hindi của cua và va là có co không khong được duoc những nhung
    một mot các cac cho với voi này nay och att inte har ikke og af til
    """.split()
)
_WORD = re.compile(r"[a-z]+")


def plainly_english(text: str) -> bool:
    """True for text that is English beyond doubt by a word count (no detector needed); False means
    "ask lingua", not "not English"."""
    if any(ch.isalpha() and not ("a" <= ch <= "z" or "A" <= ch <= "Z") for ch in text):
        return False
    words = _WORD.findall(text.lower())
    english = sum(w in EN_MARKERS for w in words)
    if english < 2 or english < 0.1 * len(words):
        return False
    return not any(w in FOREIGN_MARKERS for w in words)


@functools.cache
def _detector(low_accuracy: bool = False):
    from lingua import IsoCode639_1, LanguageDetectorBuilder

    codes = [getattr(IsoCode639_1, code.upper()) for code in CANDIDATES]
    builder = LanguageDetectorBuilder.from_iso_codes_639_1(*codes)
    return (builder.with_low_accuracy_mode() if low_accuracy else builder).build()


def preload() -> None:
    """Load the detectors' models now (the service does this before its first request)."""
    _detector(low_accuracy=True).compute_language_confidence_values("Le gouvernement refuse de commenter.")
    _detector().compute_language_confidence_values("Tokio protestiert.")


def _has_letters(text: str) -> bool:
    return any(ch.isalpha() for ch in text)


def _letters(text: str) -> int:
    return sum(ch.isalpha() for ch in text)


def _decide(values, text: str, preferred: set[str]) -> str | None:
    if not values or not _has_letters(text) or values[0].value <= 0:
        return None
    top = values[0].value
    for v in values:
        code = v.language.iso_code_639_1.name.lower()
        if code in preferred and v.value >= PREFER_RATIO * top:
            return code
    return values[0].language.iso_code_639_1.name.lower()


def detect_languages(texts: Sequence[str], prefer: Iterable[str] | None = None) -> list[str | None]:
    """ISO 639-1 code of each text (lowercase), or None for a text without letters.

    `prefer` (the model's languages) wins where it scores at least PREFER_RATIO of the top language.
    """
    preferred = set(prefer or ())
    out: list[str | None] = [None] * len(texts)
    long_ones: list[int] = []
    short_ones: list[int] = []
    for i, text in enumerate(texts):
        if plainly_english(text):
            out[i] = "en"
        elif letters := _letters(text):
            (long_ones if letters >= TRIGRAM_ONLY else short_ones).append(i)
    for rows, low in ((long_ones, True), (short_ones, False)):
        if rows:
            batch = [texts[i] for i in rows]
            for i, values in zip(rows, _detector(low).compute_language_confidence_values_in_parallel(batch)):
                out[i] = _decide(values, texts[i], preferred)
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
