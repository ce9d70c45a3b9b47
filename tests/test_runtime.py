"""The OpenVINO runtime: export, int8 validation gate, fallback, order restoration, no torch import."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from stancewatch.model.predictor import SETTINGS_FILE, StanceModel
from stancewatch.training.config import TrainConfig
from stancewatch.training.data import DEFAULT_CORPUS, load_labelled
from stancewatch.training.train import train


@pytest.fixture(scope="module")
def optimised(tiny_base):
    data = load_labelled(DEFAULT_CORPUS)
    data.examples = data.examples[:160]
    cfg = TrainConfig(base_model=str(tiny_base), epochs=1, max_steps=6, batch_size=8, max_length=64, dev_fraction=0.25)
    result = train(data, cfg, save=False, progress=False)
    yield result
    shutil.rmtree(result.folder, ignore_errors=True)  # unsaved: the folder is ours to remove


def test_export_records_the_choice_and_agreement(optimised):
    settings = json.loads((optimised.folder / SETTINGS_FILE).read_text())
    runtime = settings["runtime"]
    assert (optimised.folder / "openvino" / "model.xml").exists()
    assert (optimised.folder / "openvino" / "model_int8.xml").exists()
    assert runtime["checked_on"] > 0
    int8 = runtime["candidates"]["int8"]
    assert set(int8["agreement"]) == {"taiwan_policy", "external_pressure"}
    # The rescue's figures are recorded whether int8 passed or not.
    assert set(int8["rescue_margin"]) == set(int8["agreement"]) == set(int8["agreement_without_rescue"])
    assert 0 <= int8["rescued_share"] <= 1 and int8["fit_rows"] > 0
    if int8["passed"]:
        assert runtime == {**runtime, "backend": "openvino", "precision": "int8"}
        assert min(int8["agreement"].values()) >= 0.995
        assert runtime["rescue_margin"] == pytest.approx(int8["rescue_margin"], abs=1e-5)
        loaded = StanceModel(optimised.folder, precision="int8")  # int8 whatever this CPU (see run_precision)
        assert list(loaded.backend.rescue_margin) == pytest.approx(list(runtime["rescue_margin"].values()))
    else:
        assert runtime["precision"] in ("bf16", "fp32")
    assert optimised.metadata["runtime"] == runtime


def test_openvino_agrees_with_torch_and_restores_order(optimised):
    torch_model = StanceModel(optimised.folder, backend="torch")
    sentences = [("word " * n) + f"number {n}." for n in (40, 3, 17, 1, 25, 8, 60, 2, 11)]
    ref = np.concatenate(torch_model.predict_arrays(sentences)[0], axis=1)
    fp32 = StanceModel(optimised.folder, backend="openvino", precision="fp32")
    got = np.concatenate(fp32.predict_arrays(sentences)[0], axis=1)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    fp32.max_tokens, fp32.max_batch = 64, 2  # many small batches in flight at once
    np.testing.assert_allclose(np.concatenate(fp32.predict_arrays(sentences)[0], axis=1), ref, atol=1e-4)
    int8 = StanceModel(optimised.folder, backend="openvino", precision="int8")
    agree = (
        np.argmax(int8.predict_arrays(sentences)[0][0], 1) == np.argmax(torch_model.predict_arrays(sentences)[0][0], 1)
    ).mean()
    assert agree >= 0.5  # a tiny random model is a poor int8 subject; the real gate is in training


def test_failed_validation_falls_back(optimised, monkeypatch, tmp_path):
    import shutil

    from stancewatch.training import optimise as opt

    folder = tmp_path / "copy"
    shutil.copytree(optimised.folder, folder)
    monkeypatch.setattr(opt, "MIN_AGREEMENT", 1.01)  # nothing can pass
    data = load_labelled(DEFAULT_CORPUS)
    from stancewatch.model.predictor import StanceModel as SM

    net = SM(folder, backend="torch").backend.network
    runtime = opt.optimise(folder, net, data.examples[:40], data.examples[40:80])
    assert runtime["backend"] == "torch" and runtime["precision"] == "fp32"
    assert not runtime["candidates"]["int8"]["passed"] and not runtime["candidates"]["bf16"]["passed"]
    assert StanceModel(folder).backend.name == "torch"


def test_int8_runs_only_where_the_cpu_has_int8_dot_products(optimised, tmp_path, monkeypatch):
    from stancewatch.model import runtime as rt

    avx2, vnni = frozenset({"sse4_2", "avx2", "fma"}), frozenset({"avx2", "avx512f", "avx512_vnni"})
    folder = optimised.folder
    assert rt.run_precision("int8", None, folder, avx2) == "fp32"
    assert rt.run_precision("int8", "auto", folder, frozenset({"avx2", "avx_vnni"})) == "int8"
    assert rt.run_precision("int8", None, folder, vnni) == "int8"
    assert rt.run_precision("int8", "int8", folder, avx2) == "int8"  # asked for: as asked
    assert rt.run_precision("bf16", None, folder, avx2) == "bf16"
    assert rt.run_precision("int8", None, tmp_path, avx2) == "int8"  # no fp32 IR to run instead
    monkeypatch.setattr(rt, "cpu_flags", lambda: None)
    assert rt.int8_pays()  # flags unknown (not Linux): the recorded choice stands

    # What a loaded model runs when its version recorded int8 with a rescue.
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    path = copy / SETTINGS_FILE
    settings = json.loads(path.read_text())
    settings["runtime"] = {
        "backend": "openvino",
        "precision": "int8",
        "rescue_margin": {"taiwan_policy": 0.05, "external_pressure": 0.05},
    }
    path.write_text(json.dumps(settings))
    monkeypatch.setattr(rt, "cpu_flags", lambda: avx2)
    m = StanceModel(copy)
    assert m.backend.precision == "fp32" and m.backend.rescue_margin is None and m.backend.fallback is None
    monkeypatch.setenv("STANCEWATCH_PRECISION", "int8")
    assert StanceModel(copy).backend.precision == "int8"
    monkeypatch.delenv("STANCEWATCH_PRECISION")
    monkeypatch.setattr(rt, "cpu_flags", lambda: vnni)
    m = StanceModel(copy)
    assert m.backend.precision == "int8" and list(m.backend.rescue_margin) == pytest.approx([0.05, 0.05])


class _FixedBackend:
    """A backend whose logits are a fixed function of the first token id (for the rescue tests)."""

    length_step = 8
    streams = 1

    def __init__(self, table: dict[int, list[float]], rescue_margin=None, fallback=None):
        self.table, self.fallback, self.calls = table, fallback, []
        self.rescue_margin = None if rescue_margin is None else np.asarray(rescue_margin, dtype=np.float32)

    def __call__(self, batch):
        self.calls.append(int((batch["attention_mask"].sum(1) > 0).sum()))
        return np.array([self.table[int(row[1])] for row in batch["input_ids"]], dtype=np.float32)


def test_near_ties_are_rerun_on_the_fallback_and_nothing_else(optimised):
    from stancewatch.model.runtime import near_ties

    # Hand case: head 1 has 3 labels, head 2 has 3; margins 0.1 and 0.2.
    logits = np.array(
        [
            [2.0, 1.95, 0.0, 5.0, 0.0, 0.0],  # head 1 margin 0.05 -> tie
            [2.0, 1.0, 0.0, 1.0, 0.85, 0.0],  # head 2 margin 0.15 -> tie
            [2.0, 1.0, 0.0, 1.0, 0.7, 0.0],  # margins 1.0 and 0.3 -> kept
        ]
    )
    assert near_ties(logits, [3, 3], np.array([0.1, 0.2])).tolist() == [0, 1]
    assert near_ties(logits, [3, 3], np.array([0.0, 0.0])).tolist() == []

    model = StanceModel(optimised.folder, backend="torch")
    sentences = ["Alpha rose.", "Beta fell.", "Gamma held."]
    first_ids = [model.encoder.encode([s])[0].input_ids[1] for s in sentences]
    int8_rows = [[1.0, 0.98, 0.0, 3.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0, 0.0, 4.0], [0.0, 0.0, 2.0, 1.0, 0.99, 0.0]]
    fp32_rows = [[0.0, 1.0, 0.0, 3.0, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0, 9.0, 9.0], [0.0, 0.0, 2.0, 0.0, 1.0, 0.0]]
    fallback = _FixedBackend(dict(zip(first_ids, fp32_rows)))
    model.backend = _FixedBackend(dict(zip(first_ids, int8_rows)), rescue_margin=[0.05, 0.05], fallback=fallback)
    model.pad_step = 8
    got = model.logits(model.encoder.encode(sentences))
    # Rows 0 and 2 were near ties (head 1, head 2): fp32 logits; row 1 kept int8's.
    np.testing.assert_array_equal(got, np.array([fp32_rows[0], int8_rows[1], fp32_rows[2]], dtype=np.float32))
    assert fallback.calls == [2] and (model.rows_scored, model.rows_rescued) == (3, 2)


def test_rescue_margins_fit_the_flips_and_the_sample_parts_are_disjoint():
    import random

    from stancewatch.training.data import Example
    from stancewatch.training.optimise import RESCUE_SAFETY, agreement_sample, fit_rescue_margins

    ref = np.array([[1.0, 0.0, 0.0, 2.0], [0.0, 1.0, 1.0, 0.0], [0.5, 0.4, 0.0, 1.0]])
    cand = np.array([[0.9, 0.1, 0.0, 2.0], [0.52, 0.5, 1.0, 0.0], [0.39, 0.4, 0.1, 1.0]])
    margins, flips = fit_rescue_margins(ref, cand, [2, 2])
    # Head 1: rows 1 and 2 flipped, with int8 margins 0.02 and 0.01; head 2: no flip, so the 99th
    # percentile of |ref - cand| over its 6 values (0, 0, 0, 0, 0, 0.1 -> 0.095).
    assert flips == [2, 0]
    assert margins[0] == pytest.approx(RESCUE_SAFETY * 0.02)
    assert margins[1] == pytest.approx(np.quantile([0, 0, 0, 0, 0.1, 0], 0.99))

    train_ex = [Example(f"t{i}", "", {}, "x") for i in range(30)]
    dev_ex = [Example(f"d{i}", "", {}, "x") for i in range(5)]
    fit, gate = agreement_sample(train_ex, dev_ex, random.Random(0))
    assert len(fit) == 10 and gate[:5] == dev_ex and len(gate) == 25
    assert not {e.text for e in fit} & {e.text for e in gate}


def test_openvino_process_never_imports_torch(optimised):
    code = (
        "import sys; from stancewatch.model.predictor import StanceModel; "
        "import stancewatch.cli, stancewatch.scoring.pipeline, stancewatch.scoring.readers, stancewatch.scoring.writer, "
        "stancewatch.service.io, stancewatch.service.batching, stancewatch.model.store; "
        f"m = StanceModel({str(optimised.folder)!r}, backend='openvino', precision='int8'); "
        "m.predict(['A sentence.']); "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False False"


def test_nothing_is_sent_home(optimised, tmp_path):
    # OpenVINO's converter (imported by `import openvino`) and NNCF send analytics events and write a
    # client id under ~/intel unless opted out; stancewatch turns both off for its processes.
    code = (
        "import sys; from stancewatch.model.predictor import StanceModel; import nncf; "
        f"m = StanceModel({str(optimised.folder)!r}, backend='openvino', precision='int8'); "
        "m.predict(['A sentence.']); print(sys.modules.get('openvino_telemetry'))"
    )
    env = {**os.environ, "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip().splitlines()[-1] == "None"
    assert not (tmp_path / "intel").exists(), sorted(p.name for p in (tmp_path / "intel").iterdir())


def _gate_case(n: int, flips: int, seed: int = 0):
    """Gold labels for n dev sentences, a perfect reference, and a candidate with `flips` of its
    correct stance predictions turned to `none` (each one costs F_avg)."""
    from stancewatch.model.schema import default_schema
    from stancewatch.training.data import Example

    schema = default_schema()
    rng = np.random.default_rng(seed)
    gold = rng.choice(["favor", "against", "none"], size=n, p=[0.25, 0.25, 0.5])
    examples = [
        Example(f"s{i}", "", {"taiwan_policy": g, "external_pressure": "none"}, "x") for i, g in enumerate(gold)
    ]
    labels = list(schema.target("taiwan_policy").labels)
    ref = np.eye(3)[[labels.index(g) for g in gold]]
    cand = ref.copy()
    stance_rows = [i for i, g in enumerate(gold) if g != "none"][:flips]
    cand[stance_rows] = np.eye(3)[labels.index("none")]
    other = np.eye(3)[[labels.index("none")] * n]
    return schema, examples, [ref, other], [cand, other]


def test_gate_lets_one_flip_through_and_stops_a_real_drop():
    # One flip on a 132-sentence dev split: an F_avg drop over 0.5 points, but not a significant one.
    from stancewatch.training.evaluate import evaluate_predictions, gold_lists
    from stancewatch.training.optimise import MAX_F_AVG_DROP, SIGNIFICANCE, f_avg_drop_p_value

    schema, ex, ref, cand = _gate_case(132, 1)
    score = lambda p: evaluate_predictions(  # noqa: E731
        schema, gold_lists(ex, schema), dict(zip(schema.target_names, p))
    )["targets"]["taiwan_policy"]["f_avg"]
    assert score(ref) - score(cand) > MAX_F_AVG_DROP  # the old gate rejected this
    assert f_avg_drop_p_value(schema, ex, ref, cand, "taiwan_policy") >= SIGNIFICANCE
    # Twelve flips: a real drop, rejected.
    schema, ex, ref, cand = _gate_case(132, 12)
    assert f_avg_drop_p_value(schema, ex, ref, cand, "taiwan_policy") < SIGNIFICANCE
    # No flip: never worse.
    schema, ex, ref, cand = _gate_case(132, 0)
    assert f_avg_drop_p_value(schema, ex, ref, cand, "taiwan_policy") == 1.0


def test_threads_are_pinned_to_cores_only_when_they_use_every_cpu(optimised, monkeypatch):
    """OpenVINO pins from core 0 in every process: two one-thread processes on one host (Ray actors,
    service workers) shared one core until pinning was left off for a process using fewer threads than
    its CPUs (model/runtime.py: pin_threads). The fp32 IR: it exists whatever the int8 gate decided."""
    from stancewatch.model import runtime

    assert runtime.pin_threads(1, cpus=2) is False
    assert runtime.pin_threads(2, cpus=2) is True
    assert runtime.pin_threads(4, cpus=2) is True
    for cpus, pinned in ((2, False), (1, True)):
        monkeypatch.setattr(runtime, "usable_cpus", lambda cpus=cpus: cpus)
        model = StanceModel(optimised.folder, backend="openvino", precision="fp32", threads=1)
        assert bool(model.backend.compiled.get_property("ENABLE_CPU_PINNING")) is pinned
