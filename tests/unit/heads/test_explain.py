"""Word-occlusion explanations on a hand-made head: one embedder call, importance = probability drop.

The "embedder" here is a bag of words over a tiny vocabulary (a narrow unit test of the arithmetic
and of the single call; the real encoder is exercised in tests/e2e/gateway/test_console.py).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from heads.artifacts import HeadArtifact
from heads.config import ServingConfig
from heads.explain import explain, without, words_of
from heads.model import HeadModel
from heads.pipeline import FingerprintMismatch, HeadPipeline
from heads.servable import HeadServable
from polyhead.errors import ValidationError

VOCAB = ["refund", "charged", "crash", "password", "please"]
LABELS = ["billing", "technical", "account"]


class RecordingEmbedder:
    def __init__(self, fingerprint: str = "fp-1"):
        self.calls: list[list[str]] = []
        self.fingerprint = fingerprint

    async def embed(self, texts, request_id=None, feature_set="default"):
        assert feature_set == "default"  # the artifact's, absent from its manifest
        self.calls.append(list(texts))
        vectors = np.array([[float(w in t.lower().split()) for w in VOCAB] for t in texts], dtype=np.float32)
        return SimpleNamespace(vectors=vectors, fingerprint=self.fingerprint)


def make_pipeline(client, max_top_k: int = 3):
    W = np.zeros((len(VOCAB), len(LABELS)), np.float32)
    W[0, 0], W[1, 0], W[2, 1], W[3, 2], W[4, 1] = 2.0, 1.0, 2.0, 2.0, 0.5  # "please" leans technical
    model = HeadModel("logreg", {"W": W, "b": np.zeros(len(LABELS), np.float32)}, LABELS)
    artifact = HeadArtifact("toy", "v1", Path("."), model, {"embedder_fingerprint": "fp-1"}, {})
    servable = HeadServable(artifact, ServingConfig(top_k=max_top_k))
    return HeadPipeline("toy", lambda: servable, client), model


def proba(model, text: str) -> np.ndarray:
    x = np.array([[float(w in text.lower().split()) for w in VOCAB]], dtype=np.float32)
    return model.predict_proba(x)[0]


def test_words_and_their_removal():
    text = "Refund, please: I was charged twice (e-mail: don't)"
    assert [w for w, _, _ in words_of(text)] == ["Refund", "please", "I", "was", "charged", "twice", "e-mail", "don't"]
    assert all(text[s:e] == w for w, s, e in words_of(text))
    assert without("refund please now", 7, 13) == "refund now"
    assert without("refund", 0, 6) == ""


async def test_one_embedder_call_and_importance_is_the_probability_drop():
    client = RecordingEmbedder()
    pipeline, model = make_pipeline(client)
    text = "refund please I was charged"
    result = await explain(pipeline, text, max_words=64, request_id="r1")
    assert len(client.calls) == 1  # the text and all five variants in ONE call
    assert client.calls[0] == [text, "please I was charged", "refund I was charged", "refund please was charged",
                               "refund please I charged", "refund please I was"]
    p = proba(model, text)
    assert result.label == "billing" and result.probability == pytest.approx(p[0], abs=1e-6)
    by_word = {w.word: w.importance for w in result.words}
    for word in by_word:
        rest = " ".join(w for w in text.split() if w != word)
        assert by_word[word] == pytest.approx(p[0] - proba(model, rest)[0], abs=1e-6)
    assert by_word["refund"] > by_word["charged"] > 0  # heavier weight, bigger drop
    assert by_word["please"] < 0  # it leans "technical": without it, p(billing) rises
    assert by_word["I"] == pytest.approx(0.0, abs=1e-6)  # out of vocabulary: no effect


async def test_a_word_against_the_label_has_negative_importance():
    pipeline, _ = make_pipeline(RecordingEmbedder())
    result = await explain(pipeline, "refund crash", max_words=64, request_id="r")
    words = {w.word: w.importance for w in result.words}
    assert result.label in ("billing", "technical")
    against = "crash" if result.label == "billing" else "refund"
    assert words[against] < 0


async def test_single_word_text_falls_back_to_the_uninformed_guess():
    client = RecordingEmbedder()
    pipeline, model = make_pipeline(client)
    result = await explain(pipeline, "refund", max_words=64, request_id="r")
    assert client.calls == [["refund"]]  # an empty variant is never sent to the embedder
    assert result.words[0].importance == pytest.approx(proba(model, "refund")[0] - 1 / 3, abs=1e-6)


async def test_word_limit_is_a_422_naming_max_explain_words_before_any_embedding():
    client = RecordingEmbedder()
    pipeline, _ = make_pipeline(client)
    with pytest.raises(ValidationError) as err:
        await explain(pipeline, " ".join(["refund"] * 11), max_words=10, request_id="r")
    assert err.value.field == "text" and "11 words exceed the limit of max_explain_words=10" in err.value.message
    assert client.calls == []


async def test_foreign_encoder_is_refused():
    pipeline, _ = make_pipeline(RecordingEmbedder(fingerprint="other"))
    with pytest.raises(FingerprintMismatch):
        await explain(pipeline, "refund please", max_words=64, request_id="r")


async def test_explain_through_the_gateway_is_one_embedder_call(gateway, head):
    """Gateway -> head -> the in-process gRPC embedder (fake model): one Embed RPC for the text and all
    its variants, and explanations are not logged as predictions."""
    from tests.unit.conftest import HEAD, embedder_calls

    text = "please send me a copy of last month's invoice"
    before = embedder_calls("Embed")
    reply = await gateway.post(f"/v1/models/{HEAD}/explain", json={"text": text}, headers={"x-request-id": "explain-unit"})
    assert reply.status_code == 200, reply.text
    assert embedder_calls("Embed") - before == 1
    body = reply.json()
    assert [w["word"] for w in body["words"]] == ["please", "send", "me", "a", "copy", "of", "last", "month's", "invoice"]
    predicted = (await gateway.post(f"/v1/models/{HEAD}/predict", json={"text": text})).json()["predictions"][0]
    assert body["label"] == predicted["label"] and body["probability"] == pytest.approx(predicted["probability"], abs=1e-6)
    await head.flush_log()
    import sqlalchemy as sa

    from polyhead.inference_log.schema import make_engine, predictions

    engine = make_engine(head.db_url)
    try:
        with engine.connect() as conn:
            logged = conn.execute(sa.select(sa.func.count()).where(predictions.c.request_id == "explain-unit")).scalar()
    finally:
        engine.dispose()
    assert logged == 0
    too_many = await gateway.post(f"/v1/models/{HEAD}/explain", json={"text": "word " * 65})
    assert too_many.status_code == 422 and "max_explain_words=64" in too_many.json()["error"]["message"]
