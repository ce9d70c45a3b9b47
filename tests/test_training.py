import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model import store
from model.predictor import StanceModel, write_artifact
from training.config import TrainConfig
from training.data import load_labelled
from training.train import fit, predict_logits, train


def tiny_cfg(base, **kw):
    return TrainConfig(base_model=str(base), epochs=1, max_steps=2, batch_size=4, dev_fraction=0.5, max_length=64,
                       optimise=False, **kw)


def test_config_is_validated():
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="is not a local folder"):
        TrainConfig(base_model="/nonexistent/encoder")


def test_config_file_rejects_unknown_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("epochs: 2\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match="unknown config key"):
        TrainConfig.from_file(p)


def _roundtrip(base, tiny_csv, tmp_path, max_length=64):
    data = load_labelled([tiny_csv])
    ex = data.examples
    cfg = TrainConfig(base_model=str(base), epochs=1, max_steps=3, batch_size=4, max_length=max_length)
    result = fit(ex, ex, data.schema, cfg, progress=False)
    write_artifact(tmp_path / "m", result.network, result.tokenizer_json, data.schema,
                   max_length=max_length, base_model=Path(base).name)
    result.release_scratch()
    enc = result.encoder.encode([e.text for e in ex], [e.context or None for e in ex])
    before = predict_logits(result.network, result.encoder, enc)
    loaded = StanceModel(tmp_path / "m")
    after = loaded.logits(loaded.encoder.encode([e.text for e in ex], [e.context or None for e in ex]))
    return before, after


def test_save_load_gives_identical_outputs_tiny(tiny_base, tiny_csv, tmp_path):
    before, after = _roundtrip(tiny_base, tiny_csv, tmp_path)
    np.testing.assert_allclose(before, after, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_save_load_gives_identical_outputs_real_minilm(minilm_path, tiny_csv, tmp_path):
    before, after = _roundtrip(minilm_path, tiny_csv, tmp_path, max_length=128)
    np.testing.assert_allclose(before, after, rtol=0, atol=1e-5)
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert not list((tmp_path / "m").glob("*.bin")) and not list((tmp_path / "m").glob("*.pt"))


def test_training_saves_a_version_with_metadata_and_report(tiny_model):
    m = store.get(tiny_model.tag)
    md = m.info.metadata
    for key in ("schema", "base_model", "train_config", "data_fingerprint", "metrics", "created_at", "promotion"):
        assert key in md, key
    assert md["schema"]["targets"][0]["name"] == "taiwan_policy"
    assert set(md["metrics"]) >= {"mean_f_avg", "taiwan_policy", "external_pressure"}
    folder = Path(m.path)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "schema.json", "stancewatch.json",
                 "eval/report.json", "eval/report.md", "eval/confusion_taiwan_policy.png",
                 "eval/reliability_external_pressure.png"):
        assert (folder / name).exists(), name
    report = json.loads((folder / "eval" / "report.json").read_text())
    assert "ece_uncalibrated" in report["targets"]["taiwan_policy"]
    assert set(report["temperatures"]) == {"taiwan_policy", "external_pressure"}


def test_partial_labels_and_class_weighting(tiny_base, tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("text,taiwan_policy,external_pressure\nA firm stance.,favor,\nHeed Beijing.,,favor\n"
                 "Rain today.,none,none\nRetract it.,against,favor\n", encoding="utf-8")
    data = load_labelled([p])
    result = train(data, tiny_cfg(tiny_base, class_weighting=True), save=False, progress=False)
    try:
        assert result.tag is None and (result.folder / "model.safetensors").exists()
    finally:
        shutil.rmtree(result.folder, ignore_errors=True)


def test_promotion_gate_and_rollback(tiny_base, tiny_csv, tiny_model):
    data = load_labelled([tiny_csv])
    assert store.production_tag() == tiny_model.tag
    never = train(data, tiny_cfg(tiny_base), progress=False, promote="never")
    assert never.metadata["promotion"]["promote"] is False
    assert store.production_tag() == tiny_model.tag
    auto = train(data, tiny_cfg(tiny_base), progress=False, promote="auto", margin=1000.0)
    decision = auto.metadata["promotion"]
    assert decision["promote"] is True and decision["production_tag"] == tiny_model.tag
    assert "production_mean_f_avg" in decision
    assert store.production_tag() == auto.tag
    assert store.rollback() == tiny_model.tag
    assert store.production_tag() == tiny_model.tag
    # A model marked in the stored metadata carries the decision too.
    assert store.get(auto.tag).info.metadata["promotion"]["promote"] is True


def test_unknown_tag_is_a_clear_error():
    with pytest.raises(store.ModelNotFound, match="no model 'stancewatch:doesnotexist'"):
        StanceModel.load("doesnotexist")


def test_weight_averaging_keeps_an_average_of_the_trajectory(tiny_base, tiny_csv):
    import torch

    from model.network import StanceNetwork

    data = load_labelled([tiny_csv])
    ex = data.examples
    kw = dict(base_model=str(tiny_base), epochs=1, max_steps=6, batch_size=4, max_length=64, learning_rate=0.05)
    plain = fit(ex, ex, data.schema, TrainConfig(**kw), progress=False).network
    averaged = fit(ex, ex, data.schema, TrainConfig(**kw, ema_decay=0.9), progress=False).network
    start = StanceNetwork.from_base(str(tiny_base), [len(t.labels) for t in data.schema.targets], 0.1)

    def distance(a, b):
        sa, sb = a.encoder.state_dict(), b.encoder.state_dict()
        return sum(float(torch.linalg.vector_norm(sa[k] - sb[k])) for k in sa if sa[k].is_floating_point())

    # Same seed, same steps: the averaged weights sit between the start and the last step's weights.
    assert distance(averaged, plain) > 0
    assert distance(averaged, start) < distance(plain, start)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def test_base_without_tokenizer_json_gets_one_and_its_temp_folder_goes(tiny_base, tiny_csv, tmp_path, monkeypatch):
    import training.train as train_module

    base = tmp_path / "base"
    shutil.copytree(tiny_base, base, ignore=shutil.ignore_patterns("tokenizer.json"))
    data = load_labelled([tiny_csv])
    scratches = []

    def spy(*args, **kwargs):
        result = fit(*args, **kwargs)
        scratches.append(result.scratch)
        assert result.tokenizer_json == result.scratch / "tokenizer.json" and result.tokenizer_json.exists()
        return result

    monkeypatch.setattr(train_module, "fit", spy)
    result = train(data, tiny_cfg(base), save=False, progress=False)
    try:
        assert (result.folder / "tokenizer.json").exists()  # copied into the artefact...
        assert scratches and not scratches[0].exists()  # ...then the temp folder was removed
    finally:
        shutil.rmtree(result.folder, ignore_errors=True)
