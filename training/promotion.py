"""The promotion gate: does a new version replace production?

The candidate and the current production model are scored on the same held-out examples (the
candidate's calibration split, which chose neither its epochs, soup nor precision; training/train.py
calibration_split); `auto` promotes unless the candidate's mean F_avg is worse by more than
`margin` points. The decision is stored in the candidate's metadata.
"""

from __future__ import annotations

from typing import Sequence

from stancewatch.model.schema import Schema
from stancewatch.training.data import Example
from stancewatch.training.evaluate import evaluate_predictions

MODES = ("auto", "always", "never")


def _same_task(a: Schema, b: Schema) -> bool:
    return [(t.name, t.labels) for t in a.targets] == [(t.name, t.labels) for t in b.targets]


def decide(schema: Schema, dev_ex: Sequence[Example], candidate_report: dict, mode: str, margin: float) -> dict:
    """Return {promote, message, candidate_mean_f_avg, production_tag?, production_mean_f_avg?}."""
    from stancewatch.model import store
    from stancewatch.model.predictor import StanceModel
    from stancewatch.training.evaluate import gold_lists

    if mode not in MODES:
        raise ValueError(f"promotion mode must be one of {', '.join(MODES)}, got {mode!r}")
    cand = candidate_report["mean_f_avg"]
    out = {"mode": mode, "margin_points": margin, "candidate_mean_f_avg": round(cand, 4)}
    prod_tag = store.production_tag()
    if mode == "never":
        return {**out, "promote": False, "message": "not promoted (--promote never)"}
    if mode == "always":
        return {**out, "promote": True, "message": "promoted (--promote always)"}
    if prod_tag is None:
        return {**out, "promote": True, "message": "promoted: no production model yet"}
    prod = StanceModel.load(prod_tag)
    out["production_tag"] = prod_tag
    if not _same_task(prod.schema, schema):
        return {**out, "promote": False,
                "message": f"not promoted: production {prod_tag} has other targets/labels, so they cannot be compared "
                           "(use --promote always to replace it)"}
    probs, _ = prod.predict_arrays([e.text for e in dev_ex], [e.context or None for e in dev_ex])
    prod_report = evaluate_predictions(schema, gold_lists(dev_ex, schema), dict(zip(schema.target_names, probs)))
    prod_score = prod_report["mean_f_avg"]
    out["production_mean_f_avg"] = round(prod_score, 4)
    delta = 100 * (cand - prod_score)
    figures = f"candidate {100 * cand:.2f} vs production {prod_tag} {100 * prod_score:.2f} on the same {len(dev_ex)} held-out examples"
    if delta >= -margin:
        return {**out, "promote": True, "message": f"promoted: {figures} (change {delta:+.2f}, margin {margin})"}
    return {**out, "promote": False, "message": f"not promoted: {figures} (change {delta:+.2f} beyond margin {margin})"}
