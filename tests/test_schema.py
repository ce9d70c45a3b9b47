import json

import pytest

from stancewatch.model.schema import Schema, SchemaError, Target, default_schema


def test_default_schema_matches_the_spec():
    s = default_schema()
    assert s.target_names == ["taiwan_policy", "external_pressure"]
    for t in s.targets:
        assert t.labels == ("favor", "against", "none")
        assert t.description and all(t.label_descriptions[lab] for lab in t.labels)
    assert s.stance_labels("taiwan_policy") == ["favor", "against"]


def test_round_trip_json(tmp_path):
    s = default_schema()
    s.save(tmp_path / "s.json")
    assert Schema.load(tmp_path / "s.json") == s


def test_yaml_with_label_list(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("targets:\n  - name: climate\n    labels: [pro, con, neutral]\nneutral_label: neutral\n")
    s = Schema.load(p)
    assert s.target("climate").labels == ("pro", "con", "neutral")
    assert s.stance_labels("climate") == ["pro", "con"]


@pytest.mark.parametrize(
    "targets, message",
    [
        ((), "at least one target"),
        ((Target("a", ("x",)),), "at least two labels"),
        ((Target("a", ("x", "x")),), "repeats a label"),
        ((Target("a", ("x", "y")), Target("a", ("x", "y"))), "defined twice"),
        ((Target(" padded", ("x", "y")),), "without outer spaces"),
        ((Target("", ("x", "y")),), "must be non-empty"),
    ],
)
def test_invalid_schemas_are_rejected(targets, message):
    with pytest.raises(SchemaError, match=message):
        Schema(targets=targets)


def test_inferred_schema_has_stable_label_order():
    a = Schema.infer([("t", "none"), ("t", "against"), ("t", "favor"), ("u", "zeta"), ("u", "alpha")])
    b = Schema.infer([("u", "alpha"), ("t", "favor"), ("u", "zeta"), ("t", "against"), ("t", "none")])
    assert a == b
    assert a.target("t").labels == ("favor", "against", "none")
    assert a.target("u").labels == ("alpha", "zeta")


def test_bad_schema_file_names_the_file(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text(json.dumps({"targets": [{"name": "x"}]}))
    with pytest.raises(SchemaError, match="broken.json"):
        Schema.load(p)
