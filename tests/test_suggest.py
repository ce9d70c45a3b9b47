import csv

import numpy as np
from typer.testing import CliRunner

from stancewatch.cli import app
from stancewatch.training.data import load_labelled
from stancewatch.training.suggest import Candidate, select, uncertainty


def test_uncertainty_orders():
    p = np.array([[0.34, 0.33, 0.33], [0.9, 0.05, 0.05]])
    assert uncertainty(p, "margin")[0] > uncertainty(p, "margin")[1]
    assert uncertainty(p, "entropy")[0] > uncertainty(p, "entropy")[1]


def test_selection_spreads_over_targets_and_documents():
    cands = [Candidate("a", i, f"a{i}", "", [0.9 - i / 100, 0.1]) for i in range(5)]
    cands += [Candidate("b", 0, "b0", "", [0.2, 0.8]), Candidate("c", 0, "c0", "", [0.1, 0.7])]
    picked = select(cands, n_targets=2, n=4, per_doc=2)
    assert [(c.text, t) for c, t in picked] == [("a0", 0), ("b0", 1), ("a1", 0), ("c0", 1)]


def test_suggest_command_writes_a_labelable_csv(tmp_path, tiny_model):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"d{i}.txt").write_text(
            f"Tokyo rejected the claim {i}. Beijing warned of consequences. Markets were calm.", encoding="utf-8"
        )
    out = tmp_path / "to_label.csv"
    result = CliRunner().invoke(app, ["suggest", str(docs), "--n", "5", "--out", str(out), "--model", tiny_model.tag])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert len(rows) == 5
    assert set(rows[0]) == {"text", "context", "id", "notes", "taiwan_policy", "external_pressure"}
    assert all(sum(r["id"].startswith(f"d{i}") for r in rows) <= 3 for i in range(3))
    for r in rows:  # once labelled, the file trains as it is
        r["taiwan_policy"] = "none"
    with out.open("w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert len(load_labelled([out]).examples) == 5
