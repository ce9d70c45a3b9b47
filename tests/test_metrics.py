"""Metrics checked against hand-computed values: F_avg, macro-F1, pooled F_avg, ECE, the temperature fit."""

from __future__ import annotations

import numpy as np
import pytest

from stancewatch.model.schema import Schema, Target
from stancewatch.training.evaluate import evaluate_predictions, expected_calibration_error, fit_temperature

LABELS = ("favor", "against", "none")


def _schema(*names):
    return Schema(targets=tuple(Target(n, LABELS) for n in names), neutral_label="none")


def _onehot(labels):
    return np.eye(3)[[LABELS.index(x) for x in labels]]


def test_f_avg_macro_f1_and_pooled_f_avg_by_hand():
    schema = _schema("a", "b")
    gold = {"a": ["favor", "favor", "against", "none", "none"], "b": ["against", "none", "none", "favor", "against"]}
    pred = {"a": ["favor", "against", "against", "none", "favor"], "b": ["against", "none", "favor", "favor", "none"]}
    r = evaluate_predictions(schema, gold, {t: _onehot(p) for t, p in pred.items()})
    # Target a: favor P 1/2 R 1/2 F1 1/2; against P 1/2 R 1 F1 2/3; none P 1 R 1/2 F1 2/3.
    a = r["targets"]["a"]
    assert a["f_avg"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert a["macro_f1"] == pytest.approx((1 / 2 + 2 / 3 + 2 / 3) / 3)
    # Target b: favor P 1/2 R 1 F1 2/3; against P 1 R 1/2 F1 2/3; none P 1/2 R 1/2 F1 1/2.
    b = r["targets"]["b"]
    assert b["f_avg"] == pytest.approx(2 / 3)
    assert r["mean_f_avg"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 2 / 3) / 2)
    # Pooled (SemEval scorer): favor tp 2, predicted 4, gold 3 -> F1 4/7; against tp 2, predicted 3, gold 3 -> 2/3.
    assert r["pooled_f_avg"] == pytest.approx((4 / 7 + 2 / 3) / 2)
    assert a["neutral_given_stance"] == pytest.approx(1 / 2)  # one of the two gold-none rows got favor


def test_a_target_without_labels_is_left_out_of_the_means():
    schema = _schema("a", "b")
    gold = {"a": ["favor", "against", "none"], "b": [None, None, None]}
    probs = {"a": _onehot(["favor", "against", "none"]), "b": _onehot(["none"] * 3)}
    r = evaluate_predictions(schema, gold, probs)
    assert r["targets"]["b"]["n"] == 0 and r["targets_without_labels"] == ["b"]
    assert r["mean_f_avg"] == pytest.approx(1.0) and r["mean_macro_f1"] == pytest.approx(1.0)


def test_ece_on_a_known_case():
    # Four predictions at confidence 0.9 (3 right) and four at 0.6 (2 right), in two bins:
    # ECE = 0.5 * |0.75 - 0.9| + 0.5 * |0.5 - 0.6| = 0.125.
    probs = np.array([[0.9, 0.05, 0.05]] * 4 + [[0.6, 0.3, 0.1]] * 4)
    gold = np.array([0, 0, 0, 1, 0, 0, 1, 2])
    assert expected_calibration_error(probs, gold) == pytest.approx(0.125)


def test_a_planted_temperature_is_recovered():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2.0, size=(4000, 3))
    p = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    gold = np.array([rng.choice(3, p=row) for row in p])
    # A model that reports those logits times 2.5 is overconfident; the fit should find T close to 2.5.
    assert fit_temperature(true_logits * 2.5, gold) == pytest.approx(2.5, rel=0.08)
