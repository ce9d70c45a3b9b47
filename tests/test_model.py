import numpy as np
import pytest

from stancewatch.model.encoding import InputEncoder, collate, plan_batches
from stancewatch.model.predictor import StanceModel


@pytest.fixture(scope="module")
def encoder(minilm_path):
    return InputEncoder.from_folder(minilm_path, 24)


def test_sentence_first_context_second_and_pool_mask(encoder):
    [e] = encoder.encode(["There is no such fact."], ["Reports said Washington urged restraint."])
    tokens = encoder.tokenizer.decode(e.input_ids, skip_special_tokens=False)
    assert tokens.startswith("[CLS] there is no such fact. [SEP] reports said")
    n_sentence = len(encoder.tokenizer.encode("There is no such fact.", add_special_tokens=False).ids)
    assert e.pool_mask == [1] * (n_sentence + 2) + [0] * (len(e) - n_sentence - 2)
    assert not e.truncated


def test_long_sentence_is_truncated_and_flagged(encoder):
    long = "word " * 100
    [e] = encoder.encode([long])
    assert len(e) == 24 and e.truncated
    [short] = encoder.encode(["A short one."])
    assert not short.truncated


def test_context_is_cut_from_its_start_not_the_sentence(encoder):
    [e] = encoder.encode(
        ["Tokyo denied it."],
        [
            "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"
        ],
    )
    text = encoder.tokenizer.decode(e.input_ids, skip_special_tokens=False)
    assert len(e) == 24 and not e.truncated
    assert "tokyo denied it." in text and text.rstrip().endswith("twenty [SEP]")
    assert "one two" not in text


def test_batches_respect_the_token_budget_and_cover_every_index():
    lengths = [5, 40, 3, 40, 17, 9, 33, 2]
    batches = plan_batches(lengths, max_tokens=80, max_batch=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) <= 3 and len(b) * max(lengths[i] for i in b) <= 80


def test_shape_stepped_batches_use_a_small_fixed_set_of_shapes():
    # OpenVINO keeps memory per input shape it meets, so a long run must not keep meeting new ones.
    rng = np.random.default_rng(0)
    shapes = set()
    for _ in range(300):
        lengths = rng.integers(3, 129, size=int(rng.integers(8, 700))).tolist()
        batches = plan_batches(lengths, max_tokens=8192, max_batch=128, width_step=8, row_step=8)
        flat = [i for b in batches for i in b]
        assert sorted(set(flat)) == list(range(len(lengths)))
        # Only the last batch may repeat an index, and only to fill up to 8 rows.
        assert len(flat) - len(lengths) < 8 and len(set(batches[-1])) == len(batches[-1]) - (len(flat) - len(lengths))
        for b in batches:
            width = -(-max(lengths[i] for i in b) // 8) * 8
            assert len(b) in (8, 16, 32, 64, 128) and len(b) * width <= 8192
            shapes.add((len(b), width))
    assert len(shapes) <= 16 * 5  # widths 8..128 x rows 8, 16, 32, 64, 128
    tiny = plan_batches([5, 17, 40], max_tokens=8192, max_batch=128, width_step=8, row_step=8)
    assert sorted(i for b in tiny for i in b) == [0, 1, 2]  # fewer items than a row step: no filler


def test_collate_pads(encoder):
    items = encoder.encode(["a", "a b c d e"])
    batch = collate(items, encoder.pad_id)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, len(items[1]))
    assert batch["attention_mask"][0].sum() == len(items[0])


def test_predictions_are_in_input_order_whatever_the_batching(tiny_model):
    m = StanceModel(tiny_model.folder)
    sentences = [("x " * n).strip() + f" sentence {n}." for n in (30, 1, 12, 5, 60, 2, 8)]
    ref = np.concatenate(m.predict_arrays(sentences)[0], axis=1)
    one_by_one = np.concatenate([np.concatenate(m.predict_arrays([s])[0], axis=1) for s in sentences])
    np.testing.assert_allclose(ref, one_by_one, atol=1e-5)
    m.max_tokens, m.max_batch = 40, 2  # force many small length-sorted batches
    np.testing.assert_allclose(np.concatenate(m.predict_arrays(sentences)[0], axis=1), ref, atol=1e-5)


def test_batch_budget_is_read_from_its_setting(tiny_model, monkeypatch):
    monkeypatch.delenv("STANCEWATCH_BATCH_TOKENS", raising=False)
    assert StanceModel(tiny_model.folder).max_tokens == 2048
    monkeypatch.setenv("STANCEWATCH_BATCH_TOKENS", "512")
    assert StanceModel(tiny_model.folder).max_tokens == 512
    monkeypatch.setenv("STANCEWATCH_BATCH_TOKENS", "lots")
    with pytest.raises(ValueError, match="STANCEWATCH_BATCH_TOKENS='lots' is not valid: expected an integer >= 1"):
        StanceModel(tiny_model.folder)


def test_predict_shape_and_probabilities(tiny_model):
    m = StanceModel(tiny_model.folder)
    preds = m.predict(["Japan will not back down.", "Rain is expected."], ["", None])
    assert [p.text for p in preds] == ["Japan will not back down.", "Rain is expected."]
    for p in preds:
        assert set(p.stances) == {"taiwan_policy", "external_pressure"}
        for s in p.stances.values():
            assert abs(sum(s.probs.values()) - 1) < 1e-4
            assert s.label == max(s.probs, key=s.probs.get)
    with pytest.raises(ValueError, match="2 contexts for 1 sentences"):
        m.predict(["one"], ["a", "b"])


def test_context_changes_the_input(tiny_model):
    m = StanceModel(tiny_model.folder)
    a = np.concatenate(m.predict_arrays(["That is untrue."], [None])[0], axis=1)
    b = np.concatenate(m.predict_arrays(["That is untrue."], ["Beijing says Tokyo bowed to pressure."])[0], axis=1)
    assert not np.allclose(a, b)
