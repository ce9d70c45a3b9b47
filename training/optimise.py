"""Export a freshly trained model for fast CPU inference and choose its precision.

int8 (OpenVINO + NNCF) is kept only if, on the dev split, its argmax agrees with the fp32 torch
model on at least 99% of sentences for every target and no target's F_avg drops by more than
0.5 points; otherwise bf16 is tried under the same gate, and fp32 torch is the last resort.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Sequence

import numpy as np

from model.encoding import collate
from model.predictor import SETTINGS_FILE, StanceModel
from model.runtime import agreement, export_fp32, quantize_int8
from training.data import Example
from training.evaluate import evaluate_predictions

log = logging.getLogger(__name__)
CALIBRATION_SIZE = 300
MIN_AGREEMENT = 0.99  # argmax agreement with fp32 torch, per target
MAX_F_AVG_DROP = 0.005  # 0.5 F_avg points, per target


def _probs(model: StanceModel, examples: Sequence[Example]) -> list[np.ndarray]:
    return model.predict_arrays([e.text for e in examples], [e.context or None for e in examples])[0]


def _f_avg(model: StanceModel, probs: list[np.ndarray], examples: Sequence[Example]) -> dict[str, float]:
    from training.train import gold_lists

    report = evaluate_predictions(model.schema, gold_lists(examples, model.schema), dict(zip(model.schema.target_names, probs)))
    return {t: report["targets"][t]["f_avg"] for t in model.schema.target_names}


def optimise(folder: Path, network, train_ex: Sequence[Example], dev_ex: Sequence[Example], seed: int = 0) -> dict:
    """Export `network` (already saved in `folder`), validate int8/bf16, record the choice."""
    reference = StanceModel(folder, backend="torch")
    rng = random.Random(seed)
    calib = rng.sample(list(train_ex), min(CALIBRATION_SIZE, len(train_ex)))
    encoded = reference.encoder.encode([e.text for e in calib], [e.context or None for e in calib])
    batches = [collate(encoded[i : i + 8], reference.encoder.pad_id) for i in range(0, len(encoded), 8)]
    export_fp32(folder, network, batches[0])
    quantize_int8(folder, batches)

    ref_probs = _probs(reference, dev_ex)
    ref_f = _f_avg(reference, ref_probs, dev_ex)
    runtime: dict = {"backend": "torch", "precision": "fp32", "checked_on": len(dev_ex), "candidates": {}}
    for precision in ("int8", "bf16"):
        cand = StanceModel(folder, backend="openvino", precision=precision)
        probs = _probs(cand, dev_ex)
        agree = dict(zip(reference.schema.target_names, agreement(ref_probs, probs)))
        f = _f_avg(cand, probs, dev_ex)
        drop = {t: ref_f[t] - f[t] for t in f}
        ok = all(a >= MIN_AGREEMENT for a in agree.values()) and all(d <= MAX_F_AVG_DROP for d in drop.values())
        runtime["candidates"][precision] = {
            "agreement": {t: round(a, 4) for t, a in agree.items()},
            "f_avg_drop": {t: round(d, 4) for t, d in drop.items()},
            "passed": ok,
        }
        log.info("%s: agreement %s, F_avg drop %s, passed %s", precision, agree, drop, ok)
        if ok:
            runtime.update(backend="openvino", precision=precision)
            break
    path = folder / SETTINGS_FILE
    settings = json.loads(path.read_text(encoding="utf-8"))
    settings["runtime"] = runtime
    path.write_text(json.dumps(settings, indent=2), encoding="utf-8")
    return runtime
