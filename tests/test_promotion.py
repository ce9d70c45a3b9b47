"""The promotion gate compares candidate and production on examples neither was selected on.

Tiny random BERT models (tests/conftest.py); what is checked is which examples go where and what
the decision says, not how good the models are, except in the "not promoted" test, where the two
models are made to predict one label each (see there).
"""

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stancewatch.cli import app
from stancewatch.model import store
from stancewatch.training.config import TrainConfig
from stancewatch.training.data import DataValidationError, load_labelled, stored_keys
from stancewatch.training.train import split_data, train, training_split

runner = CliRunner()
LABELS = ("favor", "against", "none")

# Every test here changes production; each puts the pointer back for the tests after it.
pytestmark = pytest.mark.usefixtures("restore_production")


def tiny_cfg(base, **kw):
    settings = dict(base_model=str(base), epochs=1, max_steps=1, batch_size=8, max_length=64, optimise=False)
    return TrainConfig(**{**settings, **kw})


def write_csv(path: Path, rows, doc_ids: bool = False) -> Path:
    """rows: (text, taiwan_policy, external_pressure[, doc_id]) in the default schema's wide format."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "taiwan_policy", "external_pressure"] + (["doc_id"] if doc_ids else []))
        w.writerows(rows)
    return path


def articles(prefix: str, n_docs: int, per_doc: int = 5):
    """n_docs made-up articles of per_doc sentences each, labels cycling so every stratum is filled."""
    return [
        (
            f"{prefix} report {d}, sentence {k}: officials in Tokyo spoke about item {d * per_doc + k}.",
            LABELS[(d + k) % 3],
            LABELS[(d * 2 + k) % 3],
            f"{prefix}-{d}",
        )
        for d in range(n_docs)
        for k in range(per_doc)
    ]


def keys(folder, role):
    path = Path(folder) / "data" / f"{role}.jsonl"
    return stored_keys(path) if path.exists() else set()


def test_gate_split_is_disjoint_from_train_dev_and_calibration_by_article(tmp_path, tiny_base):
    data = load_labelled([write_csv(tmp_path / "a.csv", articles("A", 60), doc_ids=True)])
    cfg = tiny_cfg(tiny_base, dev_fraction=0.4)
    splits = split_data(data, cfg)
    parts = {"train": splits.train, "dev": splits.dev, "calibration": splits.calibration, "gate": splits.gate}
    assert splits.separate_calibration and splits.separate_gate
    assert all(parts.values())
    groups = {name: {e.group for e in exs} for name, exs in parts.items()}
    names = list(parts)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not groups[a] & groups[b], (a, b)
    assert sum(len(p) for p in parts.values()) == len(data.examples)
    # The training set is the one the old two-way split gave: the gate comes out of the held-out part.
    assert splits.train == training_split(data, cfg)[0]
    held = len(data.examples) - len(splits.train)
    assert len(splits.gate) == pytest.approx(held * cfg.gate_fraction, abs=2 * 5)  # whole articles of 5

    result = train(data, cfg, save=False, progress=False)
    try:
        assert result.metadata["data_size"] == {name: len(p) for name, p in parts.items()}
        assert keys(result.folder, "gate") == {(e.text, e.context) for e in splits.gate}
        gate = result.metadata["gate"]
        assert gate["n"] == len(splits.gate) and gate["split"].startswith("separate gate split")
        assert 0 <= gate["mean_f_avg"] <= 1
        report = json.loads((result.folder / "eval" / "report.json").read_text())
        assert report["gate"]["n"] == len(splits.gate)
    finally:
        import shutil

        shutil.rmtree(result.folder, ignore_errors=True)


def test_production_training_rows_are_left_out_of_the_comparison(tmp_path, tiny_base):
    from stancewatch.model.predictor import StanceModel
    from stancewatch.training.evaluate import evaluate_predictions, gold_lists

    prod_rows = [
        (f"Production sentence {i} on the Taiwan question.", LABELS[i % 3], LABELS[(i + 1) % 3]) for i in range(12)
    ]
    prod = train(
        load_labelled([write_csv(tmp_path / "prod.csv", prod_rows)]),
        tiny_cfg(tiny_base, dev_fraction=0.5),
        progress=False,
        promote="always",
    )
    seen = keys(prod.folder, "train") | keys(prod.folder, "dev")
    assert len(seen) == 12 and store.production_tag() == prod.tag

    # The candidate's held-out file: 4 of production's training/dev rows, 5 new ones. Only
    # taiwan_policy is labelled there, so external_pressure must be left out of the means.
    reused = [(text, tp, "") for text, tp, _ in prod_rows[:4]]
    fresh = [(f"A new sentence {i} about Beijing and Tokyo.", LABELS[i % 3], "") for i in range(5)]
    held = load_labelled([write_csv(tmp_path / "held.csv", fresh[:2] + reused + fresh[2:])])
    cand_rows = [(f"Candidate training sentence {i}.", LABELS[i % 3], LABELS[(i + 2) % 3]) for i in range(10)]
    cand_data = load_labelled([write_csv(tmp_path / "cand.csv", cand_rows)], schema=held.schema)
    result = train(cand_data, tiny_cfg(tiny_base), dev=held, progress=False, promote="auto", margin=1000.0)
    decision = result.metadata["promotion"]

    assert decision["production_tag"] == prod.tag
    assert decision["gate_examples"] == 9 and decision["excluded_production_rows"] == 4
    assert decision["compared_examples"] == 5
    assert all("Production sentence" in line for line in decision["excluded_shown"])
    assert "4 of the gate's 9 left out" in decision["message"]
    assert decision["targets_without_labels"] == ["external_pressure"]
    assert "no labels there for external_pressure" in decision["message"]
    # Production's figure is its score on exactly the 5 new rows.
    model = StanceModel.load(prod.tag)
    new = [e for e in held.examples if e.text.startswith("A new sentence")]
    probs, _ = model.predict_arrays([e.text for e in new], [None] * len(new))
    expected = evaluate_predictions(
        held.schema, gold_lists(new, held.schema), dict(zip(held.schema.target_names, probs))
    )
    assert decision["production_mean_f_avg"] == pytest.approx(expected["mean_f_avg"], abs=1e-4)
    assert decision["promote"] is True and store.production_tag() == result.tag


def test_merge_keeps_production_dev_calibration_and_gate_rows_in_their_parts(tmp_path, tiny_base):
    data = load_labelled([write_csv(tmp_path / "a.csv", articles("M", 60), doc_ids=True)])
    prod = train(data, tiny_cfg(tiny_base, dev_fraction=0.4), progress=False, promote="always")
    before = {role: keys(prod.folder, role) for role in ("train", "dev", "calibration", "gate")}
    assert before["train"] and before["dev"] and before["calibration"]

    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"base_model: {tiny_base}\nepochs: 1\nmax_steps: 1\nbatch_size: 8\nmax_length: 64\n"
        "optimise: false\ndev_fraction: 0.4\n",
        encoding="utf-8",
    )
    new = write_csv(tmp_path / "new.csv", articles("N", 4), doc_ids=True)
    result = runner.invoke(app, ["train", "--merge", "--data", str(new), "--config", str(config), "--promote", "never"])
    assert result.exit_code == 0, result.output
    tag = result.output.split("new model version: ")[1].split()[0]
    folder = Path(store.get(tag).path)
    after = {role: keys(folder, role) for role in ("train", "dev", "calibration", "gate")}
    for role in ("dev", "calibration", "gate", "train"):  # the old code re-drew them all: dev failed first
        assert before[role] <= after[role], role
    assert not after["train"] & (before["dev"] | before["calibration"] | before["gate"])
    assert before["gate"]  # production had a gate split, and it stayed the gate (checked above)
    assert store.get(tag).info.metadata["merge"]["base_parts"] == {role: len(k) for role, k in before.items()}


def test_dev_rows_that_are_also_training_rows_are_an_error_naming_them(tmp_path, tiny_base, tiny_csv):
    dev = tmp_path / "dev.csv"
    write_csv(
        dev,
        [
            ("A sentence only in the dev file.", "none", "none"),
            ("The remarks were reckless and must be withdrawn.", "against", "none"),
            ("The yen edged lower against the dollar on Monday.", "none", "none"),
        ],
    )
    before = {str(m.tag) for m in store.list_versions()}
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(tiny_csv),
            "--dev",
            str(dev),
            "--base-model",
            str(tiny_base),
            "--max-steps",
            "1",
            "--epochs",
            "1",
        ],
    )
    assert result.exit_code == 2, result.output
    out = result.output
    assert "2 problem(s)" in out
    assert f"{dev}: row 2: text: also a training row ({tiny_csv}:row 2): 'The remarks were reckless" in out
    assert f"{dev}: row 3: text: also a training row ({tiny_csv}:row 4): 'The yen edged lower" in out
    assert "only in the dev file" not in out
    assert {str(m.tag) for m in store.list_versions()} == before  # nothing trained or saved
    # The library call refuses it too.
    data = load_labelled([tiny_csv])
    with pytest.raises(DataValidationError, match="also a training row"):
        train(data, tiny_cfg(tiny_base), dev=load_labelled([dev], schema=data.schema), save=False, progress=False)


def test_a_candidate_worse_on_the_gate_is_stored_but_not_promoted(tmp_path, tiny_base):
    # Production learns to say "favor" for both targets (all its labels are favor, large steps), the
    # candidate to say "none" (all its labels are none): on a gate where most gold labels are favor,
    # the candidate's F_avg is 0 and production's is not, whatever the random encoder does.
    steps = dict(epochs=3, max_steps=6, learning_rate=0.05, warmup_ratio=0.0)
    favor = [(f"Production sentence {i} on policy.", "favor", "favor") for i in range(16)]
    prod = train(
        load_labelled([write_csv(tmp_path / "favor.csv", favor)]),
        tiny_cfg(tiny_base, **steps),
        progress=False,
        promote="always",
    )
    assert store.production_tag() == prod.tag

    none = write_csv(tmp_path / "none.csv", [(f"Candidate sentence {i} on policy.", "none", "none") for i in range(16)])
    # 60 held-out rows: enough for a separate gate split (train.py MIN_GATE), cut from the --dev file.
    gate = write_csv(
        tmp_path / "gate.csv",
        [
            (f"Held-out sentence {i} on policy.", "favor" if i % 4 else "none", "favor" if i % 4 else "none")
            for i in range(60)
        ],
    )
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"base_model: {tiny_base}\nbatch_size: 8\nmax_length: 64\noptimise: false\n"
        + "".join(f"{k}: {v}\n" for k, v in steps.items()),
        encoding="utf-8",
    )
    before = {str(m.tag) for m in store.list_versions()}
    result = runner.invoke(app, ["train", "--data", str(none), "--dev", str(gate), "--config", str(config)])
    assert result.exit_code == 0, result.output
    tag = result.output.split("new model version: ")[1].split()[0]

    assert {str(m.tag) for m in store.list_versions()} == before | {tag}  # stored ...
    assert store.production_tag() == prod.tag  # ... but production is unchanged
    decision = store.get(tag).info.metadata["promotion"]
    assert decision["promote"] is False and decision["production_tag"] == prod.tag
    assert decision["candidate_mean_f_avg"] == 0.0 and decision["production_mean_f_avg"] > 0.005
    folder = Path(store.get(tag).path)
    assert decision["gate_split"].startswith("separate gate split")
    assert decision["compared_examples"] == len(keys(folder, "gate")) == decision["gate_examples"]
    assert decision["excluded_production_rows"] == 0
    assert not keys(folder, "gate") & (keys(folder, "dev") | keys(folder, "calibration"))
    assert "promotion: not promoted: candidate 0.00 vs production" in result.output
    assert "beyond margin 0.5" in result.output
    report_md = (folder / "eval" / "report.md").read_text()
    assert f"Promotion: {decision['message']}" in report_md


def test_gate_and_calibration_fractions_are_validated():
    with pytest.raises(ValueError, match=r"calibration_fraction \+ gate_fraction must be below 1"):
        TrainConfig(calibration_fraction=0.5, gate_fraction=0.5)
    with pytest.raises(ValueError, match=r"gate_fraction must be in \[0, 1\)"):
        TrainConfig(gate_fraction=-0.1)
