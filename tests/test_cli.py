from pathlib import Path

from typer.testing import CliRunner

from stancewatch.cli import app
from stancewatch.model import store

runner = CliRunner()
REPO = Path(__file__).resolve().parent.parent


def test_train_rejects_bad_data_before_training(tmp_path, tiny_base, tiny_model):
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "text,taiwan_policy,external_pressure\nGood.,favor,none\n,favor,none\nOk.,maybe,none\n", encoding="utf-8"
    )
    before = {str(m.tag) for m in store.list_versions()}
    result = runner.invoke(app, ["train", "--data", str(bad), "--base-model", str(tiny_base), "--max-steps", "1"])
    assert result.exit_code == 2
    out = result.output
    assert "bad.csv: row 2: text: empty text" in out
    assert (
        "bad.csv: row 3: label: unknown label 'maybe' for target 'taiwan_policy'; allowed: favor, against, none" in out
    )
    assert {str(m.tag) for m in store.list_versions()} == before  # no model written


def test_train_prints_tag_metrics_and_inferred_schema(tmp_path, tiny_base, tiny_model):
    p = tmp_path / "semeval_like.csv"
    rows = ["text,target,label"] + [
        f"Tweet number {i} about things.,{t},{lab}"
        for i, (t, lab) in enumerate(
            [
                ("Atheism", "favor"),
                ("Atheism", "against"),
                ("Atheism", "none"),
                ("Climate", "favor"),
                ("Climate", "against"),
                ("Climate", "none"),
            ]
            * 2
        )
    ]
    p.write_text("\n".join(rows) + "\n", encoding="utf-8")
    result = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(p),
            "--base-model",
            str(tiny_base),
            "--max-steps",
            "2",
            "--epochs",
            "1",
            "--promote",
            "never",
            "--members",
            "2",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "schema inferred from the data:" in result.output
    assert "target Atheism: labels favor, against, none" in result.output
    assert "new model version: stancewatch:" in result.output
    assert "not promoted (--promote never)" in result.output
    tag = result.output.split("new model version: ")[1].split()[0]
    assert store.get(tag).info.metadata["schema"]["targets"][1]["name"] == "Climate"
    meta = store.get(tag).info.metadata
    assert meta["train_config"]["members"] == 2 and len(meta["soup"]["members"]) == 2


def test_predict_table_and_document(tiny_model):
    result = runner.invoke(app, ["predict", "--model", tiny_model.tag, "Japan will not bow to pressure."])
    assert result.exit_code == 0, result.output
    assert "taiwan_policy" in result.output and "Japan will not bow" in result.output
    doc = REPO / "examples" / "article-denial.txt"
    result = runner.invoke(app, ["predict", "--model", tiny_model.tag, "--json", "--document", str(doc)])
    assert result.exit_code == 0, result.output
    import json

    body = json.loads(result.output)
    assert len(body["sentences"]) > 5


def test_eval_and_models_commands(tiny_model, tiny_csv, tmp_path):
    result = runner.invoke(
        app, ["eval", "--data", str(tiny_csv), "--model", tiny_model.tag, "--out", str(tmp_path / "r")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "report.md").exists() and (tmp_path / "r" / "confusion_taiwan_policy.png").exists()
    result = runner.invoke(app, ["models", "list"])
    assert result.exit_code == 0 and tiny_model.tag.split(":")[1][:8] in result.output
    result = runner.invoke(app, ["models", "show", tiny_model.tag])
    assert result.exit_code == 0 and "Held-out evaluation" in result.output


def test_labels_check(tiny_csv, tmp_path):
    result = runner.invoke(app, ["labels", "check", str(tiny_csv)])
    assert result.exit_code == 0 and "taiwan_policy: favor" in result.output
    bad = tmp_path / "b.csv"
    bad.write_text("text,target,label\nA.,taiwan_policy,yes\n", encoding="utf-8")
    result = runner.invoke(app, ["labels", "check", str(bad), "--schema", str(REPO / "model" / "default_schema.yaml")])
    assert result.exit_code == 2
    assert "row 1: label: unknown label 'yes'" in result.output


def test_merge_retrains_on_production_data_and_lists_overrides(tmp_path, tiny_base, tiny_model, tiny_csv):
    prod = store.resolve(None)
    assert (Path(prod.path) / "data" / "train.jsonl").exists()
    new = tmp_path / "new.csv"
    new.write_text(
        "text,context,taiwan_policy,external_pressure\n"
        "The remarks were reckless and must be withdrawn.,,against,favor\n"
        "A completely new sentence about tariffs.,,none,none\n",
        encoding="utf-8",
    )
    result = runner.invoke(
        app,
        [
            "train",
            "--merge",
            "--data",
            str(new),
            "--base-model",
            str(tiny_base),
            "--max-steps",
            "1",
            "--epochs",
            "1",
            "--promote",
            "never",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "overridden: external_pressure: 'The remarks were reckless" in result.output
    assert "was 'none', now 'favor'" in result.output
    tag = result.output.split("new model version: ")[1].split()[0]
    md = store.get(tag).info.metadata["merge"]
    assert md["base_version"] == str(prod.tag) and md["overridden_labels"] == 1 and md["new_examples"] == 2


def test_first_start_trains_the_quick_recipe_then_the_full_one_in_the_background(tmp_path, monkeypatch):
    """`init` on an empty store: one quick training run (FIRST_START), then a detached `train`."""
    import subprocess

    import stancewatch.cli as cli
    from stancewatch.training.config import FIRST_START

    monkeypatch.setenv("BENTOML_HOME", str(tmp_path / "empty-store"))  # where the PID file and log go
    monkeypatch.setattr(store, "list_versions", lambda: [])  # a fresh store
    calls, started = [], []
    monkeypatch.setattr(cli, "train", lambda **kw: calls.append(kw))

    class FakeProcess:
        pid = 424242

        def __init__(self, args, **kwargs):
            started.append((args, kwargs))

    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    result = runner.invoke(app, ["init"])
    assert result.exit_code == 0, result.output
    assert [c["epochs"] for c in calls] == [FIRST_START["epochs"]]
    ((args, kwargs),) = started
    assert args[:3] == ["nice", "-n", "10"] and args[-1] == "train" and kwargs["start_new_session"]
    assert (tmp_path / "empty-store" / "stancewatch-full-training.pid").read_text().strip() == "424242"
    assert "PID 424242" in result.output
    calls.clear()
    result = runner.invoke(app, ["init", "--no-background", "--force"])
    assert result.exit_code == 0 and len(calls) == 1 and len(started) == 1  # nothing more started
