"""The loaders on the public datasets in ../shared/data (skipped when that folder is absent)."""

import pytest
from conftest import SHARED

from stancewatch.training.data import load_labelled

DATA = SHARED / "data"
pytestmark = pytest.mark.skipif(not DATA.exists(), reason="../shared/data is not present")


def test_semeval_gives_five_heads():
    d = load_labelled([DATA / "semeval2016-task6" / "train.csv"])
    assert d.report.schema_inferred
    assert len(d.schema.targets) == 5
    assert all(t.labels == ("favor", "against", "none") for t in d.schema.targets)
    assert all(len(e.labels) == 1 for e in d.examples)  # each tweet is labelled for one target
    assert len(d.examples) + d.report.duplicates_dropped >= 2800


def test_pstance_is_two_way():
    d = load_labelled([DATA / "p-stance" / "dev.csv"])
    assert len(d.schema.targets) == 3
    assert all(t.labels == ("favor", "against") for t in d.schema.targets)
    assert d.schema.neutral_label is None
    assert d.schema.stance_labels(d.schema.target_names[0]) == ["favor", "against"]
