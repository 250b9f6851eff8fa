"""The gateway app (ASGITransport) -> a head (uvicorn on loopback, aiohttp hop) -> the embedder (in-process gRPC)."""

from __future__ import annotations

import base64
import uuid

import numpy as np
import sqlalchemy as sa

from polyhead.inference_log.schema import make_engine, predictions
from tests.unit.conftest import HEAD, OFFLINE_HEAD, asgi_client, embedder_calls, gateway_app


async def test_predict_goes_through_gateway_head_and_embedder(gateway, head, trained_head):
    rid = f"unit-{uuid.uuid4().hex}"
    reply = await gateway.post(f"/v1/models/{HEAD}/predict", json={"text": "I need a copy of last month's invoice"},
                               headers={"x-request-id": rid})
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-request-id"] == rid
    body = reply.json()
    assert (body["head"], body["version"], body["request_id"]) == (HEAD, trained_head.version, rid)
    assert body["embedder_fingerprint"] == trained_head.fingerprint
    assert body["predictions"][0]["label"] in trained_head.labels
    await head.flush_log()  # the head logged it, under the caller's request id
    engine = make_engine(head.db_url)
    try:
        with engine.connect() as conn:
            labels = conn.execute(sa.select(predictions.c.label).where(predictions.c.request_id == rid)).scalars().all()
    finally:
        engine.dispose()
    assert labels == [body["predictions"][0]["label"]]


async def test_unknown_model_is_a_404_naming_the_known_ones(gateway):
    reply = await gateway.post("/v1/models/no-such-model/predict", json={"text": "hi"})
    assert reply.status_code == 404
    error = reply.json()["error"]
    assert error["field"] == "name"
    assert error["message"] == f"unknown model 'no-such-model'; known models: {OFFLINE_HEAD}, {HEAD}"


async def test_the_heads_422s_reach_the_caller_naming_field_and_limit(gateway):
    many = await gateway.post(f"/v1/models/{HEAD}/predict", json={"texts": ["hello"] * 65})
    assert many.status_code == 422
    assert many.json()["error"]["field"] == "texts"
    assert "limit of max_texts_per_request=64" in many.json()["error"]["message"]
    empty = await gateway.post(f"/v1/models/{HEAD}/predict", json={"texts": ["fine", ""]})
    assert empty.status_code == 422 and empty.json()["error"]["field"] == "texts[1]"
    both = await gateway.post(f"/v1/models/{HEAD}/predict", json={"text": "a", "texts": ["b"]})
    assert both.status_code == 422 and "exactly one of 'text' or 'texts'" in both.json()["error"]["message"]


async def test_an_unreachable_head_is_a_503_with_retry_after(gateway):
    reply = await gateway.post(f"/v1/models/{OFFLINE_HEAD}/predict", json={"text": "great product"})
    assert reply.status_code == 503 and reply.headers["Retry-After"] == "2"
    assert "unreachable" in reply.json()["error"]["message"]


async def test_models_lists_every_route_with_its_readiness(gateway, trained_head):
    models = {m["name"]: m for m in (await gateway.get("/v1/models")).json()["data"]}
    assert set(models) == {HEAD, OFFLINE_HEAD}
    assert models[HEAD]["ready"] is True and models[HEAD]["version"] == trained_head.version
    assert models[HEAD]["labels"] == trained_head.labels
    assert (models[HEAD]["feature_set"], models[HEAD]["embedder_fingerprint"]) == ("default", trained_head.fingerprint)
    assert models[OFFLINE_HEAD]["ready"] is False and "unreachable" in models[OFFLINE_HEAD]["error"]
    ready = await gateway.get("/readyz")
    assert ready.status_code == 200 and ready.json()["embedder"] == "SERVING"


async def test_embeddings_have_the_openai_shape_and_the_models_vectors(gateway, embedder):
    texts = ["embeddings unit one", "embeddings unit two", "embeddings unit three"]
    reply = await gateway.post("/v1/embeddings", json={"input": texts, "model": "default"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["object"] == "list" and body["model"] == embedder.model.name
    assert [d["index"] for d in body["data"]] == [0, 1, 2] and {d["object"] for d in body["data"]} == {"embedding"}
    expected = embedder.model.embed(texts).vectors
    assert np.allclose(np.array([d["embedding"] for d in body["data"]]), expected, atol=1e-6)
    assert body["usage"] == {"prompt_tokens": 9, "total_tokens": 9}

    b64 = await gateway.post("/v1/embeddings", json={"input": texts[0], "model": embedder.model.name,
                                                     "encoding_format": "base64", "dimensions": 384})
    vector = np.frombuffer(base64.b64decode(b64.json()["data"][0]["embedding"]), dtype="<f4")
    assert np.array_equal(vector, expected[0])


async def test_embeddings_errors_name_the_field(gateway, embedder):
    unknown = await gateway.post("/v1/embeddings", json={"input": "x", "model": "text-embedding-3-small"})
    assert unknown.status_code == 404 and embedder.model.name in unknown.json()["error"]["message"]
    dims = await gateway.post("/v1/embeddings", json={"input": "x", "model": "default", "dimensions": 512})
    assert dims.status_code == 422 and dims.json()["error"]["field"] == "dimensions"
    assert "produces 384 dimensions" in dims.json()["error"]["message"]
    empty = await gateway.post("/v1/embeddings", json={"input": ["ok", " "], "model": "default"})
    # Rejected at the gateway's edge (its schema), before any embedder call, in the same words.
    assert empty.status_code == 422 and empty.json()["error"]["message"].startswith("input[1]: empty")


async def test_embeddings_422s_from_the_embedder_carry_the_field(gateway):
    empty = await gateway.post("/v1/embeddings", json={"input": ["ok", " "], "model": "default"})
    assert empty.json()["error"].get("field") == "input[1]"
    many = await gateway.post("/v1/embeddings", json={"input": ["ok"] * 1025, "model": "default"})
    assert many.json()["error"].get("field") == "input" and "texts:" not in many.json()["error"]["message"]


async def test_embeddings_read_the_embedders_info_once_for_many_calls(gateway_routes, embedder):
    async with asgi_client(gateway_app(*gateway_routes, embedder.target)) as fresh:  # nothing cached yet
        info_before, embed_before = embedder_calls("Info"), embedder_calls("Embed")
        for i in range(5):
            reply = await fresh.post("/v1/embeddings", json={"input": f"info once {i}", "model": "default"})
            assert reply.status_code == 200
        assert embedder_calls("Embed") - embed_before == 5
        assert embedder_calls("Info") - info_before == 1
