import csv
import json

import pytest

from stancewatch.training.data import DATA_DIR, DEFAULT_CORPUS, DataValidationError, load_labelled, stratified_split


def write_csv(path, header, rows):
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def problems_of(exc):
    return [(p.row, p.field, p.message) for p in exc.value.problems]


def test_wide_format_with_partial_labels(tmp_path):
    p = write_csv(
        tmp_path / "w.csv",
        ["text", "context", "taiwan_policy", "external_pressure"],
        [
            ["Sentence one.", "", "favor", ""],
            ["Sentence two.", "Before.", "", "against"],
        ],
    )
    d = load_labelled([p])
    assert d.schema.target_names == ["taiwan_policy", "external_pressure"]
    assert [e.labels for e in d.examples] == [{"taiwan_policy": "favor"}, {"external_pressure": "against"}]
    assert d.examples[1].context == "Before."
    assert not d.report.schema_inferred


def test_long_format_merges_targets_and_infers_other_schemas(tmp_path):
    p = write_csv(
        tmp_path / "l.csv",
        ["text", "target", "label"],
        [
            ["Climate change is real.", "Climate", "FAVOR"],
            ["Climate change is real.", "Atheism", "none"],
            ["God exists.", "Atheism", "against"],
            ["Warming is a hoax.", "Climate", "against"],
        ],
    )
    d = load_labelled([p])
    assert d.report.schema_inferred
    assert d.schema.target_names == ["Atheism", "Climate"]
    assert d.schema.target("Atheism").labels == ("against", "none")
    assert d.schema.target("Climate").labels == ("favor", "against")
    assert d.examples[0].labels == {"Climate": "favor", "Atheism": "none"}


def test_every_problem_is_reported_with_row_field_and_allowed_values(tmp_path):
    p = write_csv(
        tmp_path / "bad.csv",
        ["text", "context", "taiwan_policy", "external_pressure"],
        [
            ["Fine sentence.", "", "favor", "none"],  # row 1
            ["   ", "", "favor", "none"],  # row 2: empty text
            ["Another one.", "", "favour", "none"],  # row 3: unknown label
            ["Third one.", "", "", ""],  # row 4: no label at all
            ["Fine sentence.", "", "against", "none"],  # row 5: conflicts with row 1
        ],
    )
    with pytest.raises(DataValidationError) as exc:
        load_labelled([p])
    got = problems_of(exc)
    assert (2, "text", "empty text") in got
    assert (3, "label", "unknown label 'favour' for target 'taiwan_policy'; allowed: favor, against, none") in got
    assert (4, "labels", "no label for any target (taiwan_policy, external_pressure)") in got
    conflict = [g for g in got if g[1] == "label" and "conflicting" in g[2]]
    assert len(conflict) == 1 and conflict[0][0] == 1 and "row 5 says 'against'" in conflict[0][2]
    assert len(got) == 4
    assert "bad.csv: row 3: label:" in str(exc.value)
    # Worker processes (recipe search, Ray) send it pickled: it must arrive with the same problems.
    import pickle

    again = pickle.loads(pickle.dumps(exc.value))
    assert str(again) == str(exc.value) and again.problems == exc.value.problems


def test_unknown_target_against_a_given_schema(tmp_path):
    from stancewatch.model.schema import default_schema

    p = write_csv(
        tmp_path / "l.csv", ["text", "target", "label"], [["A.", "taiwan_policy", "none"], ["B.", "economy", "favor"]]
    )
    with pytest.raises(DataValidationError) as exc:
        load_labelled([p], schema=default_schema())
    assert problems_of(exc) == [(2, "target", "unknown target 'economy'; allowed: taiwan_policy, external_pressure")]


def test_missing_columns(tmp_path):
    p = write_csv(tmp_path / "m.csv", ["sentence", "label"], [["A.", "favor"]])
    with pytest.raises(DataValidationError, match="missing column 'text'"):
        load_labelled([p])
    p = write_csv(tmp_path / "n.csv", ["text", "label"], [["A.", "favor"]])
    with pytest.raises(DataValidationError, match="long format needs columns text, target, label; missing: target"):
        load_labelled([p])


def test_conflicts_can_be_dropped_and_are_listed(tmp_path):
    p = write_csv(
        tmp_path / "c.csv",
        ["text", "taiwan_policy", "external_pressure"],
        [["Same text.", "favor", "none"], ["Same text.", "against", "none"], ["Other.", "none", "none"]],
    )
    d = load_labelled([p], drop_conflicts=True)
    assert len(d.report.conflicts_dropped) == 1 and "taiwan_policy" in d.report.conflicts_dropped[0]
    same = [e for e in d.examples if e.text == "Same text."][0]
    assert same.labels == {"external_pressure": "none"}


def test_exact_duplicates_are_dropped_and_counted(tmp_path):
    p = write_csv(
        tmp_path / "d.csv",
        ["text", "taiwan_policy", "external_pressure"],
        [["Dup.", "favor", "none"], ["Dup.", "favor", "none"], ["Other.", "none", "none"]],
    )
    d = load_labelled([p])
    assert len(d.examples) == 2
    assert d.report.duplicates_dropped == 2  # one row, two targets


def test_jsonl_bad_lines_and_types(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"text": "Fine.", "target": "t", "label": "favor"}\n{not json}\n[1, 2]\n', encoding="utf-8")
    with pytest.raises(DataValidationError) as exc:
        load_labelled([p])
    got = problems_of(exc)
    assert [g[:2] for g in got] == [(2, "json"), (3, "json")]


def test_jsonl_and_parquet_load_like_csv(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"text": "A sentence.", "target": "taiwan_policy", "label": "favor", "context": ""},
        {"text": "B sentence.", "target": "external_pressure", "label": "none", "context": "Prior."},
    ]
    j = tmp_path / "a.jsonl"
    j.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    q = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(rows), q)
    a, b = load_labelled([j]), load_labelled([q])
    assert a.fingerprint == b.fingerprint
    assert [e.labels for e in a.examples] == [{"taiwan_policy": "favor"}, {"external_pressure": "none"}]


def test_missing_label_example_is_a_warning(tmp_path):
    p = write_csv(
        tmp_path / "w.csv",
        ["text", "taiwan_policy", "external_pressure"],
        [["A.", "favor", "none"], ["B.", "none", "none"]],
    )
    d = load_labelled([p])
    assert "target 'taiwan_policy': no example of label 'against'" in d.report.warnings


def test_unsupported_and_missing_files(tmp_path):
    with pytest.raises(DataValidationError, match="unsupported format '.xlsx'"):
        load_labelled([tmp_path / "a.xlsx"])
    with pytest.raises(DataValidationError, match="no such file"):
        load_labelled([tmp_path / "nope.csv"])


def test_default_corpus_follows_the_brief():
    d = load_labelled([DATA_DIR / "default_corpus.csv"])  # the v1 sentences (news articles: test_corpus.py)
    assert len(d.examples) >= 800
    combos = {(e.labels["taiwan_policy"], e.labels["external_pressure"]) for e in d.examples}
    assert len(combos) == 9
    both_none = sum(1 for e in d.examples if set(e.labels.values()) == {"none"})
    assert 0.25 <= both_none / len(d.examples) <= 0.45
    assert sum(1 for e in d.examples if e.context) >= 100
    assert d.report.duplicates_dropped == 0


def test_stratified_split_is_deterministic_and_disjoint():
    d = load_labelled(DEFAULT_CORPUS)
    tr1, dv1 = stratified_split(d.examples, d.schema, 0.15, seed=3)
    tr2, dv2 = stratified_split(d.examples, d.schema, 0.15, seed=3)
    assert [e.text for e in dv1] == [e.text for e in dv2]
    assert not {(e.text, e.context) for e in tr1} & {(e.text, e.context) for e in dv1}
    assert abs(len(dv1) - 0.15 * len(d.examples)) <= 2


def test_label_studio_export(tmp_path):
    tasks = [
        {
            "data": {"text": "Tokyo will not back down."},
            "annotations": [
                {"was_cancelled": True, "result": []},
                {
                    "result": [
                        {"from_name": "taiwan_policy", "type": "choices", "value": {"choices": ["favor"]}},
                        {"from_name": "external_pressure", "type": "choices", "value": {"choices": ["against"]}},
                    ]
                },
            ],
        },
        {
            "data": {"text": "It rained.", "context": "Earlier."},
            "annotations": [
                {"result": [{"from_name": "taiwan_policy", "type": "choices", "value": {"choices": ["none"]}}]}
            ],
        },
    ]
    p = tmp_path / "ls.json"
    p.write_text(json.dumps(tasks), encoding="utf-8")
    d = load_labelled([p])
    assert [e.labels for e in d.examples] == [
        {"taiwan_policy": "favor", "external_pressure": "against"},
        {"taiwan_policy": "none"},
    ]
    assert d.examples[1].context == "Earlier."
    tasks[1]["annotations"][0]["result"][0]["value"]["choices"] = ["maybe"]
    p.write_text(json.dumps(tasks), encoding="utf-8")
    with pytest.raises(DataValidationError) as exc:
        load_labelled([p])
    assert problems_of(exc) == [
        (2, "label", "unknown label 'maybe' for target 'taiwan_policy'; allowed: favor, against, none")
    ]


def test_argilla_records(tmp_path):
    records = [
        {
            "fields": {"text": "Beijing demanded a retraction."},
            "responses": {
                "taiwan_policy": [{"value": "against", "status": "submitted"}],
                "external_pressure": [{"value": "favor", "status": "submitted"}, {"value": "none", "status": "draft"}],
            },
        },
        {
            "fields": {"text": "Disputed one."},
            "responses": {
                "taiwan_policy": [{"value": "favor", "status": "submitted"}, {"value": "none", "status": "submitted"}]
            },
        },
    ]
    p = tmp_path / "argilla.json"
    p.write_text(json.dumps(records), encoding="utf-8")
    with pytest.raises(DataValidationError) as exc:
        load_labelled([p])
    assert problems_of(exc) == [(2, "taiwan_policy", "annotators disagree: ['favor', 'none']")]
    p.write_text(json.dumps(records[:1]), encoding="utf-8")
    d = load_labelled([p])
    assert d.examples[0].labels == {"taiwan_policy": "against", "external_pressure": "favor"}


def test_a_user_schema_with_capitalised_labels_accepts_its_own_labels(tmp_path):
    from stancewatch.model.schema import Schema

    schema_file = tmp_path / "schema.yaml"
    schema_file.write_text(
        "neutral_label: Neutral\ntargets:\n  - name: climate\n"
        "    labels: {Pro: supports, Con: opposes, Neutral: none}\n",
        encoding="utf-8",
    )
    data_file = tmp_path / "d.csv"
    data_file.write_text(
        "text,climate\nCut emissions now.,Pro\nDrill everywhere.,con\nIt rained.,Neutral\n", encoding="utf-8"
    )
    d = load_labelled([data_file], schema=Schema.load(schema_file))
    assert [e.labels["climate"] for e in d.examples] == ["Pro", "Con", "Neutral"]  # the schema's spelling


def test_label_studio_export_with_a_bom_and_leading_white_space(tmp_path):
    tasks = [
        {
            "data": {"text": "Tokyo will not back down."},
            "annotations": [
                {"result": [{"from_name": "taiwan_policy", "type": "choices", "value": {"choices": ["favor"]}}]}
            ],
        }
    ]
    p = tmp_path / "ls.json"
    p.write_bytes(b"\xef\xbb\xbf\n  " + json.dumps(tasks).encode("utf-8"))
    assert [e.labels for e in load_labelled([p]).examples] == [{"taiwan_policy": "favor"}]
