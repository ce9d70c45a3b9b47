"""The promotion gate: does a new version replace production?

The candidate and the current production model are scored on the same examples, chosen so that
neither was selected on them:

- the candidate's gate split (training/train.py split_data), which chose none of its epochs, soup
  members, precision or temperatures;
- less every gate example that production trained on or early-stopped on (its stored
  data/train.jsonl and data/dev.jsonl): a model scores better on rows it has seen, and with the
  same corpus re-split, or `--merge`, those rows can land in the candidate's gate. Production's
  calibration rows stay: they chose only its temperatures, which change no predicted label, so its
  F_avg on them is unaffected.

`auto` promotes unless the candidate's mean F_avg there is worse by more than `margin` points;
means are over the targets that have labels among the compared examples (the others are listed in
`targets_without_labels`). The decision, with both figures and the rows left out, is stored in
the candidate's metadata and report.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stancewatch.model.schema import Schema
from stancewatch.training.data import Example, example_key, stored_keys
from stancewatch.training.evaluate import evaluate_predictions, gold_lists

MODES = ("auto", "always", "never")
# The parts of production's stored examples that the comparison leaves out (see the module docstring).
PRODUCTION_SELECTED_ON = ("train", "dev")
SHOWN_EXCLUDED = 10  # excluded rows named in the decision; the count covers all of them


def _same_task(a: Schema, b: Schema) -> bool:
    return [(t.name, t.labels) for t in a.targets] == [(t.name, t.labels) for t in b.targets]


def production_rows(folder: str | Path) -> set[tuple[str, str]] | None:
    """Example keys production trained or early-stopped on; None when it stored no data files."""
    data_dir = Path(folder) / "data"
    if not (data_dir / "train.jsonl").exists():
        return None
    keys: set[tuple[str, str]] = set()
    for role in PRODUCTION_SELECTED_ON:
        if (data_dir / f"{role}.jsonl").exists():
            keys |= stored_keys(data_dir / f"{role}.jsonl")
    return keys


def _subset(probs: dict[str, np.ndarray], keep: list[int]) -> dict[str, np.ndarray]:
    return {t: p[keep] for t, p in probs.items()}


def decide(
    schema: Schema,
    gate_ex: Sequence[Example],
    candidate_probs: dict[str, np.ndarray],
    mode: str,
    margin: float,
    gate_note: str = "",
    candidate_report: dict | None = None,
) -> dict:
    """Return {promote, message, candidate_mean_f_avg, compared_examples, production_tag?,
    production_mean_f_avg?, excluded_production_rows?, ...}.

    `candidate_probs`: the candidate's probabilities for `gate_ex`, per target (row i is gate_ex[i]);
    `candidate_report`: their evaluation on the whole gate when the caller has it already.
    """
    from stancewatch.model import store
    from stancewatch.model.predictor import StanceModel

    if mode not in MODES:
        raise ValueError(f"promotion mode must be one of {', '.join(MODES)}, got {mode!r}")
    gate_ex = list(gate_ex)
    full = candidate_report or evaluate_predictions(schema, gold_lists(gate_ex, schema), candidate_probs)
    out = {
        "mode": mode,
        "margin_points": margin,
        "gate_split": gate_note,
        "gate_examples": len(gate_ex),
        "candidate_mean_f_avg": round(full["mean_f_avg"], 4),
        "compared_examples": len(gate_ex),
        "targets_without_labels": full["targets_without_labels"],
    }
    prod_tag = store.production_tag()
    out["production_at_decision"] = prod_tag  # promote() checks production is still this one
    if mode == "never":
        return {**out, "promote": False, "message": "not promoted (--promote never)"}
    if mode == "always":
        return {**out, "promote": True, "message": "promoted (--promote always)"}
    if prod_tag is None:
        return {**out, "promote": True, "message": "promoted: no production model yet"}
    prod = StanceModel.load(prod_tag)
    out["production_tag"] = prod_tag
    if not _same_task(prod.schema, schema):
        return {
            **out,
            "promote": False,
            "message": f"not promoted: production {prod_tag} has other targets/labels, so they cannot be compared "
            "(use --promote always to replace it)",
        }

    seen = production_rows(prod.folder)
    if seen is None:
        out["production_rows_known"] = False
        seen = set()
    excluded = [i for i, e in enumerate(gate_ex) if example_key(e) in seen]
    keep = [i for i, e in enumerate(gate_ex) if example_key(e) not in seen]
    out["excluded_production_rows"] = len(excluded)
    out["excluded_shown"] = [f"{gate_ex[i].source}: {gate_ex[i].text[:60]!r}" for i in excluded[:SHOWN_EXCLUDED]]
    out["compared_examples"] = len(keep)
    if not keep:
        return {
            **out,
            "promote": False,
            "message": f"not promoted: all {len(gate_ex)} gate examples are rows production {prod_tag} trained or "
            "early-stopped on, so nothing is left to compare them on fairly (label new held-out data, "
            "or use --promote always)",
        }
    compared = [gate_ex[i] for i in keep]
    gold = gold_lists(compared, schema)
    # Nothing left out: the comparison rows are the whole gate, already evaluated above.
    cand_report = full if not excluded else evaluate_predictions(schema, gold, _subset(candidate_probs, keep))
    probs, _ = prod.predict_arrays([e.text for e in compared], [e.context or None for e in compared])
    prod_report = evaluate_predictions(schema, gold, dict(zip(schema.target_names, probs)))
    cand, prod_score = cand_report["mean_f_avg"], prod_report["mean_f_avg"]
    out.update(
        candidate_mean_f_avg=round(cand, 4),
        production_mean_f_avg=round(prod_score, 4),
        targets_without_labels=cand_report["targets_without_labels"],
        per_target={
            t: {
                "candidate_f_avg": round(cand_report["targets"][t]["f_avg"], 4),
                "production_f_avg": round(prod_report["targets"][t]["f_avg"], 4),
                "n": cand_report["targets"][t]["n"],
            }
            for t in schema.target_names
        },
    )
    delta = 100 * (cand - prod_score)
    figures = (
        f"candidate {100 * cand:.2f} vs production {prod_tag} {100 * prod_score:.2f} mean F_avg on the same "
        f"{len(keep)} gate examples"
    )
    if excluded:
        figures += (
            f" ({len(excluded)} of the gate's {len(gate_ex)} left out: production trained or early-stopped on them)"
        )
    elif out.get("production_rows_known") is False:
        figures += " (production stored no data files, so rows it trained on could not be left out)"
    if gate_note.startswith("dev split"):
        figures += "; these are the candidate's own dev examples (too few held out for a gate split), which favours it"
    if cand_report["targets_without_labels"]:
        figures += f"; no labels there for {', '.join(cand_report['targets_without_labels'])} (left out of the means)"
    if delta >= -margin:
        return {**out, "promote": True, "message": f"promoted: {figures} (change {delta:+.2f}, margin {margin})"}
    return {**out, "promote": False, "message": f"not promoted: {figures} (change {delta:+.2f} beyond margin {margin})"}
