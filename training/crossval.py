"""k-fold cross-validation of the training recipe (nothing is saved to the model store)."""

from __future__ import annotations

import numpy as np

from stancewatch.training.config import TrainConfig
from stancewatch.training.data import LabelledData, grouped_folds, grouped_split, stratified_folds, stratified_split
from stancewatch.training.evaluate import evaluate_predictions, gold_lists, split_probs
from stancewatch.training.train import fit, predict_logits


def cross_validate(
    data: LabelledData, cfg: TrainConfig, folds: int = 5, progress: bool = True, by_article: bool = False
) -> dict:
    """Train on k-1 folds (early stopping on a dev split of those), score the held-out fold.

    `by_article`: folds (and the dev split inside each) never split a document (`doc_id`), so a
    fold's test articles are unseen as a whole, as a new article would be. Returns per-fold reports
    and, per target, the mean and standard deviation of F_avg and macro-F1.
    """
    schema = data.schema
    reports = []
    make_folds = grouped_folds if by_article else stratified_folds
    split = grouped_split if by_article else stratified_split
    for k, (train_idx, test_idx) in enumerate(make_folds(data.examples, schema, folds, cfg.seed), start=1):
        pool = [data.examples[i] for i in train_idx]
        test = [data.examples[i] for i in test_idx]
        train_ex, dev_ex = split(pool, schema, cfg.dev_fraction, cfg.seed)
        result = fit(train_ex, dev_ex, schema, cfg, progress=progress)
        result.release_scratch()  # only the in-memory encoder is used below
        enc = result.encoder.encode([e.text for e in test], [e.context or None for e in test])
        report = evaluate_predictions(
            schema, gold_lists(test, schema), split_probs(predict_logits(result.network, result.encoder, enc), schema)
        )
        report["fold"] = k
        report["best_epoch"] = result.best_epoch
        report["seconds"] = round(result.seconds, 1)
        reports.append(report)
        if progress:
            print(
                f"fold {k}/{folds}: mean F_avg {100 * report['mean_f_avg']:.2f}, "
                f"mean macro-F1 {100 * report['mean_macro_f1']:.2f} ({result.seconds:.0f} s)",
                flush=True,
            )
    out = {"folds": folds, "by_article": by_article, "per_fold": reports, "targets": {}}
    for name in schema.target_names:
        f_avg = [r["targets"][name]["f_avg"] for r in reports]
        macro = [r["targets"][name]["macro_f1"] for r in reports]
        out["targets"][name] = {
            "f_avg_mean": float(np.mean(f_avg)),
            "f_avg_std": float(np.std(f_avg)),
            "macro_f1_mean": float(np.mean(macro)),
            "macro_f1_std": float(np.std(macro)),
        }
    means = [r["mean_f_avg"] for r in reports]
    out["mean_f_avg"] = {"mean": float(np.mean(means)), "std": float(np.std(means))}
    return out
