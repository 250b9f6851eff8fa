"""The ONNX backend's tokenisation (HF fast tokenizer from the packaged vocab.txt) against the ids
sentence-transformers produced for the parity fixture, truncation included; no model, no TensorFlow.
(tests/e2e/embedder/test_onnx_backend.py compares it with the TF export's on hostile strings too.)"""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT

FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "minilm_parity.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("tokenizers", reason="the onnx install extra")
    from embedder.export import default_weights_dir
    from embedder.onnx_tokenizer import make_tokenizer

    return make_tokenizer(default_weights_dir() / "vocab.txt")


def test_ids_equal_sentence_transformers_on_the_parity_fixture(tokenizer):
    from embedder.onnx_tokenizer import tokenize

    limit = FIXTURE["max_seq_length"]
    texts = [item["text"] for item in FIXTURE["items"]]
    ids, mask, counts = tokenize(tokenizer, texts, limit)
    for item, row, m, count in zip(FIXTURE["items"], ids, mask, counts):
        expected = item["token_ids"]
        assert count == item["num_tokens"], item["text"]  # before truncation: the `truncated` flag's input
        if count > limit:
            expected = expected[: limit - 1] + [102]  # [SEP] kept last
        assert row[m.astype(bool)].tolist() == expected, item["text"]
    assert ids.shape[1] == limit and any(c > limit for c in counts)


def test_a_batch_is_padded_to_its_longest_text_only(tokenizer):
    from embedder.onnx_tokenizer import tokenize

    ids, mask, counts = tokenize(tokenizer, ["hi", "a slightly longer text"], 128)
    assert ids.shape == mask.shape == (2, int(counts.max()))
    assert mask.sum(axis=1).tolist() == counts.tolist() and ids[0, int(counts[0]):].tolist() == [0] * (ids.shape[1] - int(counts[0]))


def test_token_counts_are_the_tokenizers_before_truncation(tokenizer):
    from embedder.onnx_tokenizer import token_counts

    texts = [item["text"] for item in FIXTURE["items"]]
    assert token_counts(tokenizer, texts) == [item["num_tokens"] for item in FIXTURE["items"]]
