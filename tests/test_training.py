import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from stancewatch.model import store
from stancewatch.model.predictor import StanceModel, write_artifact
from stancewatch.training.config import TrainConfig
from stancewatch.training.data import load_labelled
from stancewatch.training.train import fit, predict_logits, train


def tiny_cfg(base, **kw):
    return TrainConfig(
        base_model=str(base), epochs=1, max_steps=2, batch_size=4, dev_fraction=0.5, max_length=64, optimise=False, **kw
    )


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
    write_artifact(
        tmp_path / "m",
        result.network,
        result.tokenizer_json,
        data.schema,
        max_length=max_length,
        base_model=Path(base).name,
    )
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
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "schema.json",
        "stancewatch.json",
        "eval/report.json",
        "eval/report.md",
        "eval/confusion_taiwan_policy.png",
        "eval/reliability_external_pressure.png",
    ):
        assert (folder / name).exists(), name
    report = json.loads((folder / "eval" / "report.json").read_text())
    assert "ece_uncalibrated" in report["targets"]["taiwan_policy"]
    assert set(report["temperatures"]) == {"taiwan_policy", "external_pressure"}


def test_partial_labels_and_class_weighting(tiny_base, tmp_path):
    p = tmp_path / "p.csv"
    p.write_text(
        "text,taiwan_policy,external_pressure\nA firm stance.,favor,\nHeed Beijing.,,favor\n"
        "Rain today.,none,none\nRetract it.,against,favor\n",
        encoding="utf-8",
    )
    data = load_labelled([p])
    result = train(data, tiny_cfg(tiny_base, class_weighting=True), save=False, progress=False)
    try:
        assert result.tag is None and (result.folder / "model.safetensors").exists()
    finally:
        shutil.rmtree(result.folder, ignore_errors=True)


def test_promotion_gate_and_rollback(tiny_base, tiny_csv, tiny_model, tmp_path, restore_production):
    data = load_labelled([tiny_csv])
    store.promote(tiny_model.tag)  # whatever earlier tests left as production
    never = train(data, tiny_cfg(tiny_base), progress=False, promote="never")
    assert never.metadata["promotion"]["promote"] is False
    assert store.production_tag() == tiny_model.tag
    # Retrained on the same rows, the candidate's gate holds only rows production trained or
    # early-stopped on: nothing is left to compare fairly, so it is not promoted.
    same = train(data, tiny_cfg(tiny_base), progress=False, promote="auto", margin=1000.0)
    decision = same.metadata["promotion"]
    assert decision["promote"] is False and decision["compared_examples"] == 0
    assert decision["excluded_production_rows"] == decision["gate_examples"] > 0
    assert "nothing is left to compare" in decision["message"]
    assert store.production_tag() == tiny_model.tag
    fresh = tmp_path / "fresh.csv"
    fresh.write_text(
        "text,taiwan_policy,external_pressure\n"
        + "".join(f"Fresh held-out sentence {i}.,{('favor', 'against', 'none')[i % 3]},none\n" for i in range(6)),
        encoding="utf-8",
    )
    auto = train(
        data,
        tiny_cfg(tiny_base),
        dev=load_labelled([fresh], schema=data.schema),
        progress=False,
        promote="auto",
        margin=1000.0,
    )
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

    from stancewatch.model.network import StanceNetwork

    data = load_labelled([tiny_csv])
    ex = data.examples
    kw = dict(
        base_model=str(tiny_base), epochs=1, max_steps=6, batch_size=4, max_length=64, learning_rate=0.05, members=1
    )
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
    import stancewatch.training.train as train_module

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


def test_frozen_embeddings_stay_and_the_rest_trains(tiny_base, tiny_csv):
    from stancewatch.model.network import StanceNetwork

    data = load_labelled([tiny_csv])
    ex = data.examples
    cfg = TrainConfig(
        base_model=str(tiny_base),
        epochs=1,
        max_steps=4,
        batch_size=4,
        max_length=64,
        learning_rate=0.05,
        freeze_embeddings=True,
        label_smoothing=0.1,
        device="cpu",
    )
    trained = fit(ex, ex, data.schema, cfg, progress=False).network
    start = StanceNetwork.from_base(str(tiny_base), [len(t.labels) for t in data.schema.targets], 0.1)
    before, after = start.encoder.state_dict(), trained.encoder.state_dict()
    name = "embeddings.word_embeddings.weight"
    assert torch_equal(before[name], after[name])
    assert not torch_equal(
        before["encoder.layer.0.attention.self.query.weight"], after["encoder.layer.0.attention.self.query.weight"]
    )
    assert trained.encoder.get_input_embeddings().weight.requires_grad  # handed back trainable


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_task_adaptive_pretraining_changes_the_encoder_and_is_recorded(tiny_base, tiny_csv):
    from stancewatch.model.network import StanceNetwork

    data = load_labelled([tiny_csv])
    ex = data.examples
    kw = dict(base_model=str(tiny_base), epochs=1, max_steps=1, batch_size=4, max_length=64, learning_rate=1e-9)
    adapted = fit(ex, ex, data.schema, TrainConfig(**kw, tapt_epochs=2, tapt_learning_rate=0.01), progress=False)
    assert adapted.tapt["steps"] >= 2 and adapted.tapt["loss"] > 0
    start = StanceNetwork.from_base(str(tiny_base), [len(t.labels) for t in data.schema.targets], 0.1)
    # The fine-tuning learning rate is ~0, so the change in the layers comes from the masked-LM phase.
    name = "encoder.layer.1.output.dense.weight"
    assert not torch_equal(start.encoder.state_dict()[name], adapted.network.encoder.state_dict()[name])
    plain = fit(ex, ex, data.schema, TrainConfig(**kw), progress=False)
    assert plain.tapt is None


def test_new_options_are_validated():
    with pytest.raises(ValueError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(ValueError, match="device must be"):
        TrainConfig(device="tpu")
    with pytest.raises(ValueError, match="tapt_epochs"):
        TrainConfig(tapt_epochs=-1)


def test_asking_for_cuda_without_it_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert str(TrainConfig().torch_device()) == "cpu"  # auto falls back to the CPU
    with pytest.raises(ValueError, match="no CUDA device"):
        TrainConfig(device="cuda").torch_device()


def test_members_are_averaged_greedily_and_recorded(tiny_base, tiny_csv):
    data = load_labelled([tiny_csv])
    ex = data.examples
    kw = dict(base_model=str(tiny_base), epochs=2, max_steps=3, batch_size=4, max_length=64, learning_rate=0.02)
    single = fit(ex, ex, data.schema, TrainConfig(**kw, members=1), progress=False)
    souped = fit(ex, ex, data.schema, TrainConfig(**kw, members=3), progress=False)
    soup = souped.soup
    assert single.soup is None
    assert [m["seed"] for m in soup["members"]] == [13, 1013, 2013]
    # The first member is the single-model run: same seed, same start, same data order.
    assert soup["members"][0]["dev_mean_f_avg"] == pytest.approx(single.best_dev_f_avg)
    best = max(soup["members"], key=lambda m: m["dev_mean_f_avg"])
    assert soup["chosen"][0] == best["seed"] and set(soup["chosen"]) <= {13, 1013, 2013}
    assert soup["dev_mean_f_avg"] >= best["dev_mean_f_avg"]  # greedy: never worse than its best member
    assert 0 <= soup["ensemble_dev_mean_f_avg"] <= 1
    # The recorded epoch is the first chosen member's, not member 0's.
    assert souped.best_epoch == soup["best_epoch"] == best["best_epoch"]
    # The kept weights score what the soup recorded.
    enc = souped.encoder.encode([e.text for e in ex], [e.context or None for e in ex])
    from stancewatch.training.evaluate import evaluate_predictions, gold_lists, split_probs

    report = evaluate_predictions(
        data.schema,
        gold_lists(ex, data.schema),
        split_probs(predict_logits(souped.network, souped.encoder, enc), data.schema),
    )
    assert report["mean_f_avg"] == pytest.approx(soup["dev_mean_f_avg"])
    with pytest.raises(ValueError, match="members"):
        TrainConfig(members=0)


def _news_subset(n_docs: int):
    from stancewatch.training.data import DATA_DIR

    data = load_labelled([DATA_DIR / "news_train.csv"])
    docs = sorted({e.group for e in data.examples})[:n_docs]
    data.examples = [e for e in data.examples if e.group in docs]
    return data


def test_temperatures_are_fitted_on_a_split_that_early_stopping_never_saw(tiny_base):
    from stancewatch.training.data import LabelledData
    from stancewatch.training.train import split_data, training_split

    data = _news_subset(30)
    cfg = TrainConfig(
        base_model=str(tiny_base), epochs=1, max_steps=2, batch_size=8, max_length=64, optimise=False, dev_fraction=0.3
    )
    train_ex, held = training_split(data, cfg)
    splits = split_data(data, cfg)
    dev_ex, calib_ex, gate_ex = splits.dev, splits.calibration, splits.gate
    assert splits.calibration_note.startswith("separate calibration split")
    groups = lambda exs: {e.group for e in exs}  # noqa: E731
    assert not groups(train_ex) & groups(held) and not groups(dev_ex) & groups(calib_ex)
    assert splits.train == train_ex and len(dev_ex) + len(calib_ex) + len(gate_ex) == len(held)
    result = train(data, cfg, save=False, progress=False)
    try:
        assert result.report["n_examples"] == len(calib_ex)  # the report is on the calibration split
        assert result.metadata["data_size"] == {
            "train": len(train_ex),
            "dev": len(dev_ex),
            "calibration": len(calib_ex),
            "gate": len(gate_ex),
        }
        assert (result.folder / "data" / "calibration.jsonl").exists()
        # One split does all three when there are too few held-out examples (the tiny fixture data) ...
        small = split_data(
            LabelledData(train_ex[:20], data.schema, data.report),
            cfg,
            dev=LabelledData(held[:10], data.schema, data.report),
        )
        assert small.calibration is small.dev and small.gate is small.dev
        assert small.calibration_note.startswith("dev split") and "favours the candidate" in small.gate_note
        # ... and between 40 and 60 the gate shares the calibration split (temperatures change no label).
        middle = split_data(
            LabelledData(train_ex[:20], data.schema, data.report),
            cfg,
            dev=LabelledData(held[:50], data.schema, data.report),
        )
        assert middle.separate_calibration and middle.gate is middle.calibration
        assert middle.gate_note.startswith("calibration split")
    finally:
        shutil.rmtree(result.folder, ignore_errors=True)


def test_crossval_by_article_keeps_articles_whole(tiny_base):
    from stancewatch.training.crossval import cross_validate

    data = _news_subset(12)
    cfg = TrainConfig(base_model=str(tiny_base), epochs=1, max_steps=1, batch_size=8, max_length=64, optimise=False)
    result = cross_validate(data, cfg, folds=3, progress=False, by_article=True)
    assert result["by_article"] is True and len(result["per_fold"]) == 3
    assert sum(r["n_examples"] for r in result["per_fold"]) == len(data.examples)
    with pytest.raises(ValueError, match="documents cannot make"):
        cross_validate(_news_subset(2), cfg, folds=3, progress=False, by_article=True)


def test_a_decision_against_one_production_does_not_replace_another(
    tiny_base, tiny_csv, tiny_model, tmp_path, restore_production, monkeypatch
):
    data = load_labelled([tiny_csv])
    other = train(data, tiny_cfg(tiny_base), progress=False, promote="never")
    store.promote(tiny_model.tag)
    fresh = tmp_path / "fresh.csv"
    fresh.write_text(
        "text,taiwan_policy,external_pressure\n"
        + "".join(f"Another held-out sentence {i}.,{('favor', 'against', 'none')[i % 3]},none\n" for i in range(6)),
        encoding="utf-8",
    )
    real_save = store.save_version

    def save_then_someone_promotes(folder, metadata):  # another training finishes in between
        tag = real_save(folder, metadata)
        store.promote(other.tag)
        return tag

    monkeypatch.setattr(store, "save_version", save_then_someone_promotes)
    late = train(
        data,
        tiny_cfg(tiny_base),
        dev=load_labelled([fresh], schema=data.schema),
        progress=False,
        promote="auto",
        margin=1000.0,  # it would be promoted against tiny_model
    )
    decision = late.metadata["promotion"]
    assert decision["production_at_decision"] == tiny_model.tag
    assert decision["promote"] is False and "production changed" in decision["message"]
    assert store.production_tag() == other.tag  # the newer promotion stands
