"""With API keys on: feedback belongs to the key that asked (or a labeller), who labelled is stored,
training trusts whom it is told to; what a key sees is what it may call; 401 comes before 422.

The gateway app (ASGITransport) forwards to the session's real head (uvicorn on loopback) over HTTP;
the inference DB is that head's SQLite file.
"""

from __future__ import annotations

import asyncio

import pytest_asyncio
import sqlalchemy as sa

from gateway.auth import hash_key
from tests.unit.conftest import HEAD, OFFLINE_HEAD, asgi_client

KEYS = {"alice": ([HEAD], []), "bob": ([HEAD], []), "lab": ([HEAD], ["labeller"]), "ops": (["*"], []),
        "elsewhere": ([OFFLINE_HEAD], ["labeller"])}
ADMIN_TOKEN = "admin-secret-for-tests"


def auth(name: str) -> dict:
    return {"authorization": f"Bearer {name}-secret"}


@pytest_asyncio.fixture(scope="module")
async def keyed(gateway_routes, embedder, head):
    from gateway.http_server import create_app
    from gateway.settings import GatewaySettings

    heads_dir, routes = gateway_routes
    settings = GatewaySettings(
        heads_dir=heads_dir, routes_file=routes, embedder_target=embedder.target, reload_interval_s=0, port=0,
        info_timeout_s=2, db_url=head.db_url, feedback_wait_s=0.5, admin_token=ADMIN_TOKEN,
        api_keys=[{"name": n, "sha256": hash_key(f"{n}-secret"), "models": models, "roles": roles}
                  for n, (models, roles) in KEYS.items()])
    async with asgi_client(create_app(settings), "http://gateway") as client:
        yield client


async def predict(client, key: str, text: str, request_id: str | None = None) -> dict:
    headers = {**auth(key), **({"x-request-id": request_id} if request_id else {})}
    reply = await client.post(f"/v1/models/{HEAD}/predict", json={"text": text}, headers=headers)
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert reply.headers["x-prediction-id"] == body["prediction_id"]
    return body


async def test_feedback_belongs_to_the_key_that_asked_or_a_labeller(keyed, head):
    # The drill's reproduction: two keys send the same x-request-id to the same model.
    a = await predict(keyed, "alice", "I was charged twice this month", "shared-394580")
    b = await predict(keyed, "bob", "bob's private text about his salary", "shared-394580")
    assert a["request_id"] == b["request_id"] == "shared-394580"  # a correlation id, echoed
    assert a["prediction_id"] != b["prediction_id"] and len(a["prediction_id"]) >= 22  # issued, 128 random bits

    # Bob names Alice's prediction: the same 404 as an id that does not exist, nothing stored, nothing shown.
    theirs = await keyed.post(f"/v1/models/{HEAD}/feedback", headers=auth("bob"),
                              json={"prediction_id": a["prediction_id"], "label": "billing"})
    unknown = await keyed.post(f"/v1/models/{HEAD}/feedback", headers=auth("bob"),
                               json={"prediction_id": "x" * 22, "label": "billing"})
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["error"]["message"].replace(a["prediction_id"], "ID") == \
        unknown.json()["error"]["message"].replace("x" * 22, "ID")
    assert a["predictions"][0]["label"] not in theirs.text.replace("'billing'", "")
    # The client-chosen request id names nothing.
    shared = await keyed.post(f"/v1/models/{HEAD}/feedback", headers=auth("alice"),
                              json={"prediction_id": "shared-394580", "label": "billing"})
    assert shared.status_code == 404

    mine = await keyed.post(f"/v1/models/{HEAD}/feedback", headers=auth("alice"),
                            json={"prediction_id": a["prediction_id"], "label": "billing"})
    assert mine.status_code == 200, mine.text
    assert mine.json()["items"][0]["prediction_id"] == a["prediction_id"]
    labelled = await keyed.post(f"/v1/models/{HEAD}/feedback", headers=auth("lab"),
                                json={"prediction_id": b["prediction_id"], "label": "account"})
    assert labelled.status_code == 200, labelled.text
    # A labeller key not allowed on this model: 403 (the model check), before any lookup.
    elsewhere = await keyed.post(f"/v1/models/{HEAD}/feedback", headers=auth("elsewhere"),
                                 json={"prediction_id": b["prediction_id"], "label": "account"})
    assert elsewhere.status_code == 403

    # Provenance: who asked is logged with the prediction, who labelled with the feedback (names, no secrets).
    engine = sa.create_engine(head.db_url)
    try:
        with engine.connect() as conn:
            given = dict(conn.execute(sa.text("SELECT request_id, given_by FROM feedback WHERE request_id IN "
                                              "(:a, :b)"), {"a": a["prediction_id"], "b": b["prediction_id"]}).all())
            callers = dict(conn.execute(sa.text("SELECT issued_id, caller FROM predictions WHERE issued_id IN "
                                                "(:a, :b)"), {"a": a["prediction_id"], "b": b["prediction_id"]}).all())
    finally:
        engine.dispose()
    assert given == {a["prediction_id"]: "alice", b["prediction_id"]: "lab"}
    assert callers == {a["prediction_id"]: "alice", b["prediction_id"]: "bob"}

    from heads.training.run import read_feedback

    trusted = await asyncio.to_thread(read_feedback, head.db_url, HEAD, ["lab"])
    assert [e.text for e in trusted] == ["bob's private text about his salary"]


async def test_classify_answers_carry_their_own_prediction_ids(keyed):
    reply = await keyed.post("/v1/classify", headers=auth("alice"), json={"text": "refund me", "models": [HEAD]})
    assert reply.status_code == 200, reply.text
    pid = reply.json()["results"][HEAD]["prediction_id"]
    ok = await keyed.post(f"/v1/models/{HEAD}/feedback", headers=auth("alice"),
                          json={"prediction_id": pid, "label": "billing"})
    assert ok.status_code == 200, ok.text


async def test_a_caller_without_a_key_gets_401_before_any_validation(keyed):
    for method, path, body in [("POST", "/v1/classify", {"text": 5, "models": "*"}),
                               ("POST", "/v1/embeddings", {"input": 5}),
                               ("POST", f"/v1/models/{HEAD}/feedback", {"nonsense": True}),
                               ("GET", f"/v1/models/{HEAD}/report?since=yesterday", None)]:
        reply = await keyed.request(method, path, json=body)
        assert reply.status_code == 401, (path, reply.text)
        wrong = await keyed.request(method, path, json=body, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401, (path, wrong.text)
    # with a key, the same body is the 422 it always was
    reply = await keyed.post("/v1/classify", json={"text": 5, "models": "*"}, headers=auth("ops"))
    assert reply.status_code == 422


async def test_a_key_sees_and_embeds_only_what_it_may(keyed):
    narrow = (await keyed.get("/v1/models", headers=auth("alice"))).json()["data"]
    assert [m["name"] for m in narrow] == [HEAD]
    full = (await keyed.get("/v1/models", headers=auth("ops"))).json()["data"]
    assert sorted(m["name"] for m in full) == sorted([HEAD, OFFLINE_HEAD])

    body = {"model": "default", "input": "hello"}
    refused = await keyed.post("/v1/embeddings", json=body, headers=auth("alice"))
    assert refused.status_code == 403 and "embeddings" in refused.json()["error"]["message"]
    assert (await keyed.post("/v1/embeddings", json=body, headers=auth("ops"))).status_code == 200


async def test_metrics_and_detailed_readiness_need_a_full_key_or_the_admin_token(keyed):
    assert (await keyed.get("/metrics")).status_code == 401
    assert (await keyed.get("/metrics", headers=auth("alice"))).status_code == 401  # limited to one model
    assert (await keyed.get("/metrics", headers=auth("ops"))).status_code == 200
    assert (await keyed.get("/metrics", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})).status_code == 200
    anonymous = (await keyed.get("/readyz")).json()
    assert set(anonymous) == {"ready"}  # a probe learns ready or not, not the model list
    detailed = (await keyed.get("/readyz", headers=auth("ops"))).json()
    assert HEAD in detailed["models"]


async def test_gateway_admin_needs_the_admin_token_or_a_full_key(keyed):
    assert (await keyed.post("/admin/reload")).status_code == 401
    assert (await keyed.post("/admin/reload", headers=auth("alice"))).status_code == 403
    assert (await keyed.post("/admin/reload", headers=auth("ops"))).status_code == 200
    assert (await keyed.post("/admin/reload", headers={"authorization": f"Bearer {ADMIN_TOKEN}"})).status_code == 200
