"""Evaluation: per-target precision/recall/F1, macro-F1, F_avg, calibration, confusion matrices.

F_avg is the SemEval-2016 Task 6 metric: the mean F1 of the stance labels (favor and against),
i.e. every label except the schema's neutral one. The "pooled" F_avg pools all targets'
predictions first, as the official SemEval scorer does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stancewatch.model.schema import Schema

N_BINS = 10


def split_probs(
    logits: np.ndarray, schema: Schema, temperatures: dict[str, float] | None = None
) -> dict[str, np.ndarray]:
    """Per-target probabilities from the concatenated logits, each target at its temperature."""
    from stancewatch.model.predictor import split_softmax

    temps = [(temperatures or {}).get(t.name, 1.0) for t in schema.targets]
    probs = split_softmax(logits, [len(t.labels) for t in schema.targets], temps)
    return dict(zip(schema.target_names, probs))


def gold_lists(examples, schema: Schema) -> dict[str, list[str | None]]:
    """Per target, each example's gold label (None where it has none): `evaluate_predictions`'s input."""
    return {t: [ex.labels.get(t) for ex in examples] for t in schema.target_names}


def expected_calibration_error(probs: np.ndarray, gold: np.ndarray, bins: int = N_BINS) -> float:
    """ECE of the top label: |accuracy - confidence| averaged over equal-width confidence bins."""
    if len(gold) == 0:
        return 0.0
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == gold).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - conf[mask].mean())
    return float(ece)


def reliability(probs: np.ndarray, gold: np.ndarray, bins: int = N_BINS) -> list[dict]:
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == gold).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi)
        out.append(
            {
                "lo": float(lo),
                "hi": float(hi),
                "n": int(mask.sum()),
                "accuracy": float(correct[mask].mean()) if mask.any() else 0.0,
                "confidence": float(conf[mask].mean()) if mask.any() else 0.0,
            }
        )
    return out


def _f1_table(gold: Sequence[str], pred: Sequence[str], labels: Sequence[str]) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(gold, pred, labels=list(labels), zero_division=0)
    return {
        "per_label": {
            lab: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, lab in enumerate(labels)
        },
        "confusion": confusion_matrix(gold, pred, labels=list(labels)).tolist(),
    }


def evaluate_predictions(
    schema: Schema,
    gold: dict[str, Sequence[str | None]],
    probs: dict[str, np.ndarray],
    raw_probs: dict[str, np.ndarray] | None = None,
) -> dict:
    """Metrics for every target. `gold[t][i]` is None where example i has no label for t."""
    report: dict = {"targets": {}, "n_examples": 0}
    pooled_gold: list[str] = []
    pooled_pred: list[str] = []
    for target in schema.targets:
        labels = list(target.labels)
        keep = [i for i, g in enumerate(gold[target.name]) if g is not None]
        g = [gold[target.name][i] for i in keep]
        pr = probs[target.name][keep]
        pred = [labels[k] for k in pr.argmax(axis=1)] if len(keep) else []
        table = _f1_table(g, pred, labels) if keep else {"per_label": {}, "confusion": []}
        stance = schema.stance_labels(target.name)
        f1s = table["per_label"]
        gold_ids = np.array([labels.index(x) for x in g], dtype=int)
        entry = {
            "n": len(keep),
            "labels": labels,
            **table,
            "macro_f1": float(np.mean([f1s[lab]["f1"] for lab in labels])) if keep else 0.0,
            "f_avg": float(np.mean([f1s[lab]["f1"] for lab in stance])) if keep and stance else 0.0,
            "accuracy": float(np.mean([a == b for a, b in zip(g, pred)])) if keep else 0.0,
            # Gold-neutral examples that got a stance label: the "reads a position into an event" error.
            "neutral_given_stance": (
                float(np.mean([p != schema.neutral_label for a, p in zip(g, pred) if a == schema.neutral_label]))
                if schema.neutral_label in labels and schema.neutral_label in g
                else 0.0
            ),
            "ece": expected_calibration_error(pr, gold_ids),
            "reliability": reliability(pr, gold_ids),
        }
        if raw_probs is not None:
            entry["ece_uncalibrated"] = expected_calibration_error(raw_probs[target.name][keep], gold_ids)
        report["targets"][target.name] = entry
        report["n_examples"] = max(report["n_examples"], len(gold[target.name]))
        pooled_gold += g
        pooled_pred += pred
    names = schema.target_names
    # Means over the targets that have labels here; a target without any would count as 0 and drag
    # the mean (and the promotion decision) down for no reason. It is listed instead.
    labelled = [t for t in names if report["targets"][t]["n"]] or names
    report["targets_without_labels"] = [t for t in names if not report["targets"][t]["n"]]
    report["mean_f_avg"] = float(np.mean([report["targets"][t]["f_avg"] for t in labelled]))
    report["mean_macro_f1"] = float(np.mean([report["targets"][t]["macro_f1"] for t in labelled]))
    stance_sets = {tuple(schema.stance_labels(t)) for t in names}
    if len(stance_sets) == 1 and pooled_gold:
        from sklearn.metrics import f1_score

        stance = list(next(iter(stance_sets)))
        f = f1_score(pooled_gold, pooled_pred, labels=stance, average=None, zero_division=0)
        report["pooled_f_avg"] = float(np.mean(f))
    return report


def summary(report: dict) -> dict:
    """The few numbers worth keeping in model metadata."""
    out = {"mean_f_avg": round(report["mean_f_avg"], 4), "mean_macro_f1": round(report["mean_macro_f1"], 4)}
    if "pooled_f_avg" in report:
        out["pooled_f_avg"] = round(report["pooled_f_avg"], 4)
    for name, t in report["targets"].items():
        out[name] = {
            "f_avg": round(t["f_avg"], 4),
            "macro_f1": round(t["macro_f1"], 4),
            "ece": round(t["ece"], 4),
            "n": t["n"],
            "neutral_given_stance": round(t.get("neutral_given_stance", 0.0), 4),
        }
    return out


def to_markdown(report: dict, title: str = "Evaluation") -> str:
    lines = [
        f"# {title}",
        "",
        f"Examples: {report['n_examples']}  ",
        f"Mean F_avg over targets: **{100 * report['mean_f_avg']:.2f}**  ",
        f"Mean macro-F1 over targets: {100 * report['mean_macro_f1']:.2f}  ",
    ]
    if report.get("targets_without_labels"):
        lines.append(
            f"Targets without labels here (left out of the means): {', '.join(report['targets_without_labels'])}  "
        )
    if "pooled_f_avg" in report:
        lines.append(f"Pooled F_avg (SemEval-2016 official): {100 * report['pooled_f_avg']:.2f}  ")
    gate, promotion = report.get("gate"), report.get("promotion")
    if gate:
        lines.append(
            f"Gate split ({gate['split']}): mean F_avg {100 * gate['mean_f_avg']:.2f} on {gate['n']} examples  "
        )
    if promotion:
        lines.append(f"Promotion: {promotion['message']}  ")
    for name, t in report["targets"].items():
        lines += [
            "",
            f"## {name} (n={t['n']})",
            "",
            f"F_avg {100 * t['f_avg']:.2f}, macro-F1 {100 * t['macro_f1']:.2f}, accuracy {100 * t['accuracy']:.2f}, "
            f"ECE {t['ece']:.3f}"
            + (f" (before calibration {t['ece_uncalibrated']:.3f})" if "ece_uncalibrated" in t else "")
            + (
                f", gold-neutral given a stance {100 * t['neutral_given_stance']:.1f}%"
                if "neutral_given_stance" in t
                else ""
            ),
            "",
            "| label | precision | recall | F1 | support |",
            "|---|---|---|---|---|",
        ]
        for lab, m in t["per_label"].items():
            lines.append(f"| {lab} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['support']} |")
        if t["confusion"]:
            lines += [
                "",
                "Confusion matrix (rows gold, columns predicted):",
                "",
                "| gold \\ pred | " + " | ".join(t["labels"]) + " |",
                "|---" * (len(t["labels"]) + 1) + "|",
            ]
            for lab, row in zip(t["labels"], t["confusion"]):
                lines.append(f"| {lab} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def write_report(report: dict, folder: str | Path, title: str = "Evaluation") -> Path:
    """Write report.json, report.md, one confusion-matrix PNG and one reliability PNG per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (folder / "report.md").write_text(to_markdown(report, title), encoding="utf-8")
    for name, t in report["targets"].items():
        if not t["confusion"]:
            continue
        cm = np.array(t["confusion"])
        fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=110)
        ax.imshow(cm, cmap="Blues")
        ax.set_xticks(range(len(t["labels"])), t["labels"])
        ax.set_yticks(range(len(t["labels"])), t["labels"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("gold")
        ax.set_title(name)
        for i in range(cm.shape[0]):
            for j in range(cm.shape[1]):
                ax.text(
                    j, i, str(cm[i, j]), ha="center", va="center", color="black" if cm[i, j] < cm.max() / 2 else "white"
                )
        fig.tight_layout()
        fig.savefig(folder / f"confusion_{name}.png")
        plt.close(fig)
        bins = [b for b in t["reliability"] if b["n"]]
        fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=110)
        ax.plot([0, 1], [0, 1], "--", color="grey")
        ax.bar(
            [(b["lo"] + b["hi"]) / 2 for b in bins],
            [b["accuracy"] for b in bins],
            width=1 / N_BINS,
            alpha=0.6,
            edgecolor="k",
        )
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}: ECE {t['ece']:.3f}")
        fig.tight_layout()
        fig.savefig(folder / f"reliability_{name}.png")
        plt.close(fig)
    return folder


def fit_temperature(logits: np.ndarray, gold: np.ndarray) -> float:
    """The temperature minimising the dev negative log-likelihood (grid search, robust on small sets)."""
    if len(gold) < 5:
        return 1.0
    best_t, best_nll = 1.0, np.inf
    for t in np.exp(np.linspace(np.log(0.25), np.log(8.0), 121)):
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        nll = -logp[np.arange(len(gold)), gold].mean()
        if nll < best_nll:
            best_t, best_nll = float(t), nll
    return best_t
