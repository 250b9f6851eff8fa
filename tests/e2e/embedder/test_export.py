"""The exported SavedModel: parity with sentence-transformers, fingerprint stability, truncation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import ROOT

FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "minilm_parity.json").read_text(encoding="utf-8"))


def test_fixture_header_names_the_command_that_made_it():
    assert "make_parity_fixture.py" in FIXTURE["generated_by"]  # now scripts/dev/; the fixture names its old path
    assert len(FIXTURE["items"]) >= 30


def test_export_matches_sentence_transformers_on_every_fixture_vector(servable):
    texts = [item["text"] for item in FIXTURE["items"]]
    result = servable.embed(texts)
    reference = np.array([item["vector"] for item in FIXTURE["items"]], dtype=np.float32)
    cosines = np.sum(result.vectors * reference, axis=1) / np.linalg.norm(reference, axis=1)
    worst = int(np.argmin(cosines))
    assert cosines.min() >= 0.9999, f"text {texts[worst]!r} has cosine {cosines[worst]:.6f}"
    assert np.allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-5)


def test_tokenisation_matches_hf_ids_exactly(servable):
    import tensorflow as tf

    texts = [item["text"] for item in FIXTURE["items"]]
    ids = servable._module.token_ids(tf.constant(texts)).numpy()
    for item, row in zip(FIXTURE["items"], ids):
        mine = [int(t) for t in row if t != 0]
        expected = item["token_ids"]
        if item["num_tokens"] > FIXTURE["max_seq_length"]:
            expected = expected[: FIXTURE["max_seq_length"] - 1] + [102]  # HF keeps [SEP] last
        assert mine == expected, item["text"]


def test_truncation_is_flagged_only_for_long_texts(servable):
    texts = [item["text"] for item in FIXTURE["items"]]
    result = servable.embed(texts)
    expected = [item["num_tokens"] > FIXTURE["max_seq_length"] for item in FIXTURE["items"]]
    assert any(expected)
    assert result.truncated.tolist() == expected


def test_batch_results_do_not_depend_on_batch_company(servable):
    # Padding to the longest text of the batch must not change any text's vector.
    alone = servable.embed(["short text"]).vectors[0]
    together = servable.embed(["short text", "a much longer text " * 10]).vectors[0]
    assert float(alone @ together) > 0.99999


def test_fingerprint_is_stable_across_exports_and_changes_with_weights(exported_model, servable, tmp_path):
    from embedder.export import default_weights_dir, export_minilm, load_weights
    from embedder.fingerprint import fingerprint_saved_model

    again = export_minilm(tmp_path / "again")
    assert fingerprint_saved_model(again) == fingerprint_saved_model(exported_model) == servable.fingerprint

    weights = load_weights(default_weights_dir())
    weights["encoder.layer.3.output.dense.bias"] = weights["encoder.layer.3.output.dense.bias"] + np.float32(1e-3)
    changed = export_minilm(tmp_path / "changed", weights=weights)
    assert fingerprint_saved_model(changed) != servable.fingerprint


def test_fingerprint_changes_with_preprocessing(tmp_path, servable):
    from embedder.export import export_minilm
    from embedder.fingerprint import fingerprint_saved_model

    shorter = export_minilm(tmp_path / "short", max_seq_length=64)
    assert fingerprint_saved_model(shorter) != servable.fingerprint


def test_export_rejects_a_sequence_length_beyond_the_model(tmp_path):
    from embedder.export import export_minilm

    with pytest.raises(ValueError, match="max_seq_length"):
        export_minilm(tmp_path / "bad", max_seq_length=1024)
