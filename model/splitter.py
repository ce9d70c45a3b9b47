"""Splitting documents into sentences with character offsets.

Uses syntok, a rule-based segmenter that keeps abbreviations ("U.S.", "Mr.", "Jan."), initials,
decimals and closing quotes attached to the right sentence, and reports token offsets, so every
sentence maps back to `document[start:end]` exactly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import syntok.segmenter as segmenter

# syntok ends a sentence after a title followed by an initial ("Dr. A. Ishikawa"); such a
# one-word "sentence" is joined to the next one.
_TITLE_ONLY = re.compile(r"^(?:Dr|Mr|Mrs|Ms|Prof|Gen|Lt|Col|Capt|Sen|Rep|Gov|Sgt|Rev|St|Hon|Amb|Adm)\.$")


@dataclass(frozen=True)
class Sentence:
    index: int
    start: int
    end: int
    text: str


def split_sentences(document: str) -> list[Sentence]:
    """Sentences of `document` in order; `document[s.start:s.end] == s.text` for each."""
    spans: list[tuple[int, int]] = []
    for paragraph in segmenter.analyze(document):
        for tokens in paragraph:
            tokens = [t for t in tokens if t.value]
            if not tokens:
                continue
            start = tokens[0].offset
            end = tokens[-1].offset + len(tokens[-1].value)
            spans.append((start, end))
    merged: list[list[int]] = []
    for start, end in spans:
        if merged and _TITLE_ONLY.match(document[merged[-1][0] : merged[-1][1]]):
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [Sentence(i, start, end, document[start:end]) for i, (start, end) in enumerate(merged)]


def with_context(sentences: list[Sentence]) -> list[str | None]:
    """The context of each sentence: the one before it (None for the first)."""
    return [None] + [s.text for s in sentences[:-1]]
