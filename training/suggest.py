"""Active learning: pick the sentences the model is least sure about, for the next labelling round.

Uncertainty per sentence and target is the margin between the two most probable labels (small is
uncertain) or the entropy of the label distribution (large is uncertain). Picks go round-robin over
the targets, each time the most uncertain sentence not yet picked, with at most `per_doc` sentences
from one document, so the batch is spread over documents and targets.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stancewatch.model.splitter import split_sentences, with_context

STRATEGIES = ("margin", "entropy")


@dataclass
class Candidate:
    doc_id: str
    index: int
    text: str
    context: str
    scores: list[float]  # per target; higher = more uncertain


def uncertainty(probs: np.ndarray, strategy: str) -> np.ndarray:
    if strategy == "margin":
        top = np.sort(probs, axis=1)
        return 1.0 - (top[:, -1] - top[:, -2])
    if strategy == "entropy":
        return -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)
    raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")


def candidates(
    model, documents: Iterable[tuple[str, str]], strategy: str, max_sentences: int, chunk: int = 512
) -> list[Candidate]:
    """Score the sentences of `(doc_id, text)` documents, up to `max_sentences`."""
    out: list[Candidate] = []
    pending: list[tuple[str, int, str, str]] = []
    seen: set[tuple[str, str]] = set()  # a sentence repeated across documents is offered once

    def flush():
        if not pending:
            return
        r = model.read([p[2] for p in pending], [p[3] or None for p in pending])
        scores = np.stack([uncertainty(p, strategy) for p in r.probs], axis=1)
        # Sentences in a language the model does not read are not offered: their labels would not help it.
        out.extend(Candidate(d, i, t, c, s.tolist()) for (d, i, t, c), s, ok in zip(pending, scores, r.supported) if ok)
        pending.clear()

    for doc_id, text in documents:
        sents = split_sentences(text)
        for s, ctx in zip(sents, with_context(sents)):
            if len(out) + len(pending) >= max_sentences:
                break
            if (s.text, ctx or "") in seen:
                continue
            seen.add((s.text, ctx or ""))
            pending.append((doc_id, s.index, s.text, ctx or ""))
        if len(pending) >= chunk:
            flush()
        if len(out) + len(pending) >= max_sentences:
            break
    flush()
    return out


def select(cands: list[Candidate], n_targets: int, n: int, per_doc: int) -> list[tuple[Candidate, int]]:
    """Round-robin over targets, most uncertain first, at most `per_doc` per document."""
    orders = [sorted(range(len(cands)), key=lambda i, t=t: -cands[i].scores[t]) for t in range(n_targets)]
    cursor = [0] * n_targets
    taken: set[int] = set()
    per: dict[str, int] = {}
    picked: list[tuple[Candidate, int]] = []
    while len(picked) < n and any(c < len(cands) for c in cursor):
        for t in range(n_targets):
            while cursor[t] < len(cands):
                i = orders[t][cursor[t]]
                cursor[t] += 1
                if i in taken or per.get(cands[i].doc_id, 0) >= per_doc:
                    continue
                taken.add(i)
                per[cands[i].doc_id] = per.get(cands[i].doc_id, 0) + 1
                picked.append((cands[i], t))
                break
            if len(picked) >= n:
                break
    return picked


def write_suggestions(picked: list[tuple[Candidate, int]], target_names: list[str], model_tag: str, out: Path) -> None:
    """A wide-format CSV with empty label columns, ready to label and train on."""
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "context", "id", "notes", *target_names])
        for cand, t in picked:
            note = f"{model_tag}: least sure about {target_names[t]} (uncertainty {cand.scores[t]:.3f})"
            w.writerow([cand.text, cand.context, f"{cand.doc_id}#{cand.index}", note, *[""] * len(target_names)])
