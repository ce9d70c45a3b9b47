"""Score a model on the held-out news-genre test set, the way the service answers.

Every sentence is read with the sentence before it in its article as context (as
`POST /predict_document` does) through `StanceModel.read`, so language detection applies: a test
sentence wrongly called unsupported counts as a prediction of the neutral label (what a client
that maps "no label" to "no stance" would record), and how many there were is reported.

    python bench/news.py                       # the production model, training/data/news_test.csv
    python bench/news.py --model TAG --out docs/results/news-test

Writes report.json/report.md with the confusion-matrix and reliability PNGs (training/evaluate.py)
and prints, per target, macro-F1, F_avg, ECE and the share of gold-none sentences given a stance,
overall and per genre. The test set is never used to train or choose anything.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def score_rows(model, rows: list[dict]):
    """Gold labels and gated probabilities (unsupported rows -> one-hot neutral) for the rows."""
    import numpy as np

    r = model.read([x["text"] for x in rows], [x["context"] or None for x in rows])
    probs = {}
    for target, p in zip(model.schema.targets, r.probs):
        p = p.copy()
        neutral = target.labels.index(model.schema.neutral_label) if model.schema.neutral_label in target.labels else 0
        off = ~np.asarray(r.supported, dtype=bool)
        p[off] = 0.0
        p[off, neutral] = 1.0
        probs[target.name] = p
    gold = {t: [x.get(t) or None for x in rows] for t in model.schema.target_names}
    return gold, probs, r


def main(argv: list[str] | None = None) -> int:
    from stancewatch.model.predictor import StanceModel
    from stancewatch.training.data import NEWS_TEST
    from stancewatch.training.evaluate import evaluate_predictions, write_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="tag or artefact folder (default: production, else latest)")
    parser.add_argument("--data", type=Path, default=NEWS_TEST)
    parser.add_argument("--out", type=Path, help="write the report here")
    args = parser.parse_args(argv)

    model = StanceModel.load(args.model)
    rows = _rows(args.data)
    gold, probs, r = score_rows(model, rows)
    report = evaluate_predictions(model.schema, gold, probs)
    report["model"] = model.tag
    report["data"] = str(args.data)
    report["unsupported"] = int(sum(not s for s in r.supported))
    by_genre: dict[str, list[int]] = defaultdict(list)
    for i, x in enumerate(rows):
        by_genre[x.get("genre") or "-"].append(i)
    report["by_genre"] = {}
    for genre, idx in sorted(by_genre.items()):
        sub = evaluate_predictions(
            model.schema, {t: [g[i] for i in idx] for t, g in gold.items()}, {t: p[idx] for t, p in probs.items()}
        )
        report["by_genre"][genre] = {
            "n": len(idx),
            **{
                t: {k: round(v[k], 4) for k in ("macro_f1", "f_avg", "ece", "neutral_given_stance")}
                for t, v in sub["targets"].items()
            },
        }
    print(
        f"model {model.tag} on {args.data.name}: {len(rows)} sentences, "
        f"{len({x.get('doc_id') for x in rows})} articles, {report['unsupported']} called unsupported"
    )
    for name, t in report["targets"].items():
        print(
            f"  {name}: macro-F1 {t['macro_f1']:.3f}, F_avg {t['f_avg']:.3f}, accuracy {t['accuracy']:.3f}, "
            f"ECE {t['ece']:.3f}, gold-none given a stance {100 * t['neutral_given_stance']:.1f}%"
        )
    print("  by genre (macro-F1 per target):")
    for genre, g in report["by_genre"].items():
        cells = ", ".join(f"{t} {g[t]['macro_f1']:.3f}" for t in model.schema.target_names)
        print(f"    {genre:13s} n={g['n']:4d}  {cells}")
    if args.out:
        write_report(report, args.out, title=f"News-genre test set ({args.data.name}), model {model.tag}")
        (args.out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"report: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
