"""A head app over the in-process embedder (fake model): predict, readiness, 422s, fingerprint checks, the log."""

from __future__ import annotations

import json
import shutil
import uuid

import sqlalchemy as sa

from polyhead.inference_log.schema import make_engine, predictions
from tests.unit.conftest import HEAD, asgi_client, head_app, running_embedder


async def test_a_trained_head_is_ready_and_answers_with_its_labels(head, trained_head):
    ready = await head.client.get("/readyz")
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    log_state = checks.pop("inference_log")  # the log's lag, live (it never makes the head unready)
    assert checks == {"artifact": f"version {trained_head.version}", "embedder": "reachable", "fingerprint": "match"}
    assert set(log_state) == {"db", "oldest_unwritten_s", "spool_rows", "dead_letters", "stalled"}
    assert log_state["dead_letters"] == 0 and log_state["stalled"] is False
    reply = await head.client.post("/predict", json={"texts": ["I was charged twice for my subscription",
                                                               "the app crashes when I open settings"]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["head"], body["version"], body["embedder_fingerprint"]) == \
        (HEAD, trained_head.version, trained_head.fingerprint)
    assert trained_head.fingerprint.startswith("fake:")
    for p in body["predictions"]:
        assert p["label"] in trained_head.labels and not p["abstained"]
        assert len(p["top_k"]) == 3 and p["top_k"][0]["label"] == p["label"]
    info = (await head.client.get("/info")).json()
    assert info["labels"] == trained_head.labels and info["metrics"]["accuracy"] > 0.4  # 5 labels: chance 0.2


async def test_the_head_learned_something_from_fake_vectors(head):
    """Bag-of-words vectors carry the words: texts made of a label's typical words get that label."""
    reply = await head.client.post("/predict", json={"texts": [
        "invoice charged twice refund payment card billing", "tracking number parcel delivery shipping courier"]})
    assert [p["label"] for p in reply.json()["predictions"]] == ["billing", "shipping"]


async def test_422s_name_the_field_and_the_limit(head):
    both = await head.client.post("/predict", json={"text": "a", "texts": ["b"]})
    assert both.status_code == 422 and "exactly one of 'text' or 'texts'" in both.json()["error"]["message"]
    empty = await head.client.post("/predict", json={"text": "   "})
    assert empty.status_code == 422
    assert empty.json()["error"]["field"] == "text"
    assert empty.json()["error"]["message"].startswith("text: empty or whitespace-only text")
    for invisible in ("\x00\x00", "\u200b\u200d", "\x00\u200b \t"):  # they classified as text before
        reply = await head.client.post("/predict", json={"texts": ["fine", invisible]})
        assert reply.status_code == 422 and reply.json()["error"]["field"] == "texts[1]", ascii(invisible)
    many = await head.client.post("/predict", json={"texts": ["hello"] * 65})
    assert many.status_code == 422 and many.json()["error"]["field"] == "texts"
    assert "65 texts exceed the limit of max_texts_per_request=64" in many.json()["error"]["message"]


async def test_predictions_are_logged_to_sqlite_with_the_request_id(head, trained_head):
    rid = f"unit-{uuid.uuid4().hex}"
    texts = ["please reset my password", "my parcel never arrived"]
    reply = await head.client.post("/predict", json={"texts": texts}, headers={"x-request-id": rid})
    assert reply.status_code == 200 and reply.headers["x-request-id"] == rid
    await head.flush_log()
    engine = make_engine(head.db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(predictions).where(predictions.c.request_id == rid)
                                .order_by(predictions.c.text)).mappings().all()
    finally:
        engine.dispose()
    labels = {p_text: p["label"] for p_text, p in zip(texts, reply.json()["predictions"])}
    assert sorted(r["text"] for r in rows) == sorted(texts)
    for row in rows:
        assert (row["head"], row["head_version"], row["embedder_fingerprint"]) == \
            (HEAD, trained_head.version, trained_head.fingerprint)
        assert row["label"] == labels[row["text"]] and row["latency_ms"] > 0


async def test_an_embedder_serving_another_model_makes_the_head_unready_and_refuse(trained_head, tmp_path):
    """Another encoder (the fake with another seed: another fingerprint) must not feed this artifact."""
    async with running_embedder(model_handle="fake://?seed=1") as other:
        assert other.model.fingerprint != trained_head.fingerprint
        async with asgi_client(head_app(trained_head, other.target, tmp_path)) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["fingerprint"].startswith("mismatch")
            assert other.model.fingerprint in ready.json()["checks"]["fingerprint"]
            reply = await client.post("/predict", json={"text": "my card was declined"})
            assert reply.status_code == 503 and "Retry-After" in reply.headers
            assert trained_head.fingerprint in reply.json()["error"]["message"]
            assert other.model.fingerprint in reply.json()["error"]["message"]


async def test_an_artifact_of_the_real_model_refuses_the_fake_embedder(trained_head, embedder, tmp_path):
    """The fake's fingerprint can never pass for a real SavedModel's (sha256:...)."""
    models = tmp_path / "models"
    shutil.copytree(trained_head.models_dir, models)
    manifest_path = models / HEAD / trained_head.version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["embedder_fingerprint"] = "sha256:0123456789abcdef"
    manifest_path.write_text(json.dumps(manifest))
    async with asgi_client(head_app(trained_head, embedder.target, tmp_path, models_dir=models)) as client:
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.post("/predict", json={"text": "hello"})).status_code == 503
