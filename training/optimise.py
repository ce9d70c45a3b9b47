"""Export a freshly trained model for fast CPU inference and choose its precision.

int8 (OpenVINO + NNCF) is kept when two things hold for every target:

- its argmax agrees with the fp32 torch model on at least 99% of a large unlabelled sample (the dev
  inputs and then training inputs, with their contexts, up to AGREEMENT_SAMPLE sentences), and
- its dev-split F_avg is not worse by more than 0.5 points *and* significantly so (paired
  bootstrap over dev sentences, one-sided 95%).

The old gate (agreement and F_avg on the dev split alone) failed the default model's int8 on one
flipped sentence out of 132: 99.24% agreement, but 0.67 F_avg points for external_pressure, which a
single sentence moves on so small a set. Otherwise bf16 is tried under the same gate, and fp32 torch
is the last resort.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stancewatch.model.encoding import collate
from stancewatch.model.predictor import SETTINGS_FILE, StanceModel
from stancewatch.model.runtime import QuantizeOptions, agreement, export_fp32, quantize_int8
from stancewatch.training.data import Example
from stancewatch.training.evaluate import evaluate_predictions

log = logging.getLogger(__name__)
MIN_AGREEMENT = 0.99  # argmax agreement with fp32 torch, per target, on the agreement sample
MAX_F_AVG_DROP = 0.005  # 0.5 F_avg points, per target ...
SIGNIFICANCE = 0.05  # ... rejected only when a drop that large is also significant at this level
AGREEMENT_SAMPLE = 2500  # sentences (training and dev inputs) the agreement is measured on
BOOTSTRAP_ROUNDS = 1000


def _probs(model: StanceModel, examples: Sequence[Example]) -> list[np.ndarray]:
    return model.predict_arrays([e.text for e in examples], [e.context or None for e in examples])[0]


def _f_avg(model: StanceModel, probs: list[np.ndarray], examples: Sequence[Example]) -> dict[str, float]:
    from stancewatch.training.evaluate import gold_lists

    report = evaluate_predictions(
        model.schema, gold_lists(examples, model.schema), dict(zip(model.schema.target_names, probs))
    )
    return {t: report["targets"][t]["f_avg"] for t in model.schema.target_names}


def f_avg_drop_p_value(
    model_schema,
    dev_ex: Sequence[Example],
    ref: list[np.ndarray],
    cand: list[np.ndarray],
    target: str,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> float:
    """Paired bootstrap: the share of dev resamples in which the candidate's F_avg for `target` is
    not below the reference's (small: the drop is real; about 0.5 or more: it is noise)."""
    from stancewatch.training.evaluate import gold_lists

    j = model_schema.target_names.index(target)
    gold = gold_lists(dev_ex, model_schema)[target]
    keep = np.array([i for i, g in enumerate(gold) if g is not None])
    if len(keep) == 0:
        return 1.0
    t = model_schema.target(target)
    stance = [t.labels.index(lab) for lab in model_schema.stance_labels(target)]
    g = np.array([t.labels.index(gold[i]) for i in keep])
    a, b = ref[j][keep].argmax(1), cand[j][keep].argmax(1)

    # F_avg by hand on label ids: sklearn's scorer per resample made 1,000 rounds slow for no gain.
    def f_avg(gold_ids, pred):
        f1s = []
        for lab in stance:
            tp = np.sum((pred == lab) & (gold_ids == lab))
            denom = np.sum(pred == lab) + np.sum(gold_ids == lab)
            f1s.append(2 * tp / denom if denom else 0.0)
        return float(np.mean(f1s)) if f1s else 0.0

    rng = np.random.default_rng(seed)
    not_worse = 0
    for _ in range(rounds):
        idx = rng.integers(0, len(keep), len(keep))
        not_worse += f_avg(g[idx], b[idx]) >= f_avg(g[idx], a[idx])
    return not_worse / rounds


def optimise(folder: Path, network, train_ex: Sequence[Example], dev_ex: Sequence[Example], seed: int = 0) -> dict:
    """Export `network` (already saved in `folder`), validate int8/bf16, record the choice."""
    reference = StanceModel(folder, backend="torch")
    rng = random.Random(seed)
    opts = QuantizeOptions()
    calib = rng.sample(list(train_ex), min(opts.calibration, len(train_ex)))
    encoded = reference.encoder.encode([e.text for e in calib], [e.context or None for e in calib])
    batches = [
        collate(encoded[i : i + opts.batch], reference.encoder.pad_id) for i in range(0, len(encoded), opts.batch)
    ]
    export_fp32(folder, network, batches[0])
    quantize_int8(folder, batches, opts)

    # The agreement sample starts with the dev split (whose rows also give the F_avg check), then
    # training inputs up to AGREEMENT_SAMPLE: each candidate is run over it once.
    n_dev, room = len(dev_ex), max(0, AGREEMENT_SAMPLE - len(dev_ex))
    sample = list(dev_ex) + (list(train_ex) if len(train_ex) <= room else rng.sample(list(train_ex), room))
    ref_sample = _probs(reference, sample)
    ref_probs = [p[:n_dev] for p in ref_sample]
    ref_f = _f_avg(reference, ref_probs, dev_ex)
    runtime: dict = {
        "backend": "torch",
        "precision": "fp32",
        "checked_on": len(dev_ex),
        "agreement_sample": len(sample),
        "candidates": {},
    }
    for precision in ("int8", "bf16"):
        cand = StanceModel(folder, backend="openvino", precision=precision)
        cand_sample = _probs(cand, sample)
        agree = dict(zip(reference.schema.target_names, agreement(ref_sample, cand_sample)))
        probs = [p[:n_dev] for p in cand_sample]
        f = _f_avg(cand, probs, dev_ex)
        drop = {t: ref_f[t] - f[t] for t in f}
        p_values = {
            t: f_avg_drop_p_value(reference.schema, dev_ex, ref_probs, probs, t, seed=seed)
            for t, d in drop.items()
            if d > MAX_F_AVG_DROP
        }
        real_drop = {t: p for t, p in p_values.items() if p < SIGNIFICANCE}
        ok = all(a >= MIN_AGREEMENT for a in agree.values()) and not real_drop
        runtime["candidates"][precision] = {
            "agreement": {t: round(a, 4) for t, a in agree.items()},
            "f_avg_drop": {t: round(d, 4) for t, d in drop.items()},
            "drop_p_value": {t: round(p, 4) for t, p in p_values.items()},
            "passed": ok,
        }
        log.info("%s: agreement %s, F_avg drop %s (p %s), passed %s", precision, agree, drop, p_values, ok)
        if ok:
            runtime.update(backend="openvino", precision=precision)
            break
    path = folder / SETTINGS_FILE
    settings = json.loads(path.read_text(encoding="utf-8"))
    settings["runtime"] = runtime
    path.write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return runtime
