"""The fake embedding servable: deterministic, normalised, similar texts near, a fingerprint of its own."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from embedder.fake import FakeEmbeddingServable, is_fake_handle
from embedder.servable import TextEmbeddingServable, make_servable
from embedder.settings import EmbedderSettings


def loaded(**kwargs) -> FakeEmbeddingServable:
    model = FakeEmbeddingServable(**kwargs)
    model.load()
    return model


def test_vectors_are_deterministic_unit_float32_rows():
    texts = ["my card was declined", "where is my parcel", "!!!"]
    first = loaded().embed(texts)
    again = loaded().embed(list(reversed(texts)))  # another instance, another batch order
    assert first.vectors.dtype == np.float32 and first.vectors.shape == (3, 384)
    assert np.array_equal(first.vectors, again.vectors[::-1])
    assert np.allclose(np.linalg.norm(first.vectors, axis=1), 1.0, atol=1e-6)
    assert first.token_counts.tolist() == [4, 4, 1] and not first.truncated.any()


def test_texts_sharing_words_are_nearer_than_unrelated_ones():
    v = loaded().embed(["my card was declined", "my card was declined at the shop today",
                        "the parcel arrived damaged"]).vectors
    assert v[0] @ v[1] > 0.6
    assert abs(float(v[0] @ v[2])) < 0.3
    # Case and punctuation do not matter; word order does not either (a bag of words).
    same = loaded().embed(["My card... was DECLINED!", "declined was card my"]).vectors
    assert np.allclose(same, v[0], atol=1e-6)


def test_long_texts_are_truncated_at_max_seq_length_words():
    model = loaded(max_seq_length=8)
    out = model.embed([" ".join(f"w{i}" for i in range(20)), " ".join(f"w{i}" for i in range(8))])
    assert out.truncated.tolist() == [True, False]
    assert out.token_counts.tolist() == [8, 8]
    assert np.array_equal(out.vectors[0], out.vectors[1])  # only the first 8 words count


def test_fingerprint_is_fake_and_names_dim_and_seed():
    base = loaded()
    assert base.loaded and base.fingerprint.startswith("fake:")
    assert not base.fingerprint.startswith("sha256:")  # a real SavedModel's fingerprint is sha256:...
    assert loaded().fingerprint == base.fingerprint
    others = {loaded(dim=64).fingerprint, loaded(seed=1).fingerprint, loaded(max_seq_length=256).fingerprint}
    assert base.fingerprint not in others and len(others) == 3
    assert not np.allclose(loaded(seed=1).embed(["hello"]).vectors, base.embed(["hello"]).vectors)
    assert not FakeEmbeddingServable().loaded and FakeEmbeddingServable().dim == 0  # dim is known after load()


def test_fake_handle_selects_the_fake_and_logs_loudly(caplog):
    settings = EmbedderSettings(model_handle="fake://?dim=64&seed=3", max_seq_length=32)
    model = make_servable(settings)
    assert isinstance(model, FakeEmbeddingServable) and is_fake_handle(settings.model_handle)
    with caplog.at_level(logging.WARNING, logger="polyhead.embedder.fake"):
        model.load()
    assert (model.dim, model.max_seq_length, model.seed) == (64, 32, 3)
    assert any("FAKE" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert isinstance(make_servable(EmbedderSettings(model_handle="/no/such/model")), TextEmbeddingServable)


def test_a_bad_fake_handle_names_the_setting():
    with pytest.raises(ValueError, match="model_handle: expected fake://"):
        make_servable(EmbedderSettings(model_handle="fake://?dim=wide"))
