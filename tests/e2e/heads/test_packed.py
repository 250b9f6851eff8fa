"""Packed heads: one head process serving several heads (real embedder, real processes on loopback),
the head process's /classify (one embedding for many heads), and coalescing of concurrent embeds."""

from __future__ import annotations

import asyncio
import shutil
import time

import httpx
import numpy as np
import pytest
import sqlalchemy as sa

from tests.conftest import free_port
from tests.e2e.heads.fixtures import ADMIN, head_process, train, wait_ready, write_head_config

pytestmark = pytest.mark.timeout(240)

BILLING, TECHNICAL, ACCOUNT = "I was billed twice, refund me", "the app keeps crashing on startup", "reset my password"


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def packed(trained_tickets, server_process, tmp_path_factory):
    """One process: tickets and helpdesk (good), broken (its only artifact is corrupt)."""
    tickets_config, tickets_models, first, _ = trained_tickets
    _, target = server_process
    root = tmp_path_factory.mktemp("packed")
    heads, models = root / "configs", root / "models"
    shutil.copytree(tickets_models / "tickets", models / "tickets")
    configs = {"tickets": write_head_config(heads, "tickets"), "helpdesk": write_head_config(heads, "helpdesk"),
               "broken": write_head_config(heads, "broken")}
    train(configs["helpdesk"], models, target, seed=3)
    shutil.copytree(first.path, models / "broken" / first.version)
    (models / "broken" / first.version / "weights.npz").write_bytes(b"not a numpy archive")
    (models / "broken" / "latest").write_text(first.version)
    db = f"sqlite:///{root / 'inference.db'}"
    with head_process(list(configs.values()), models, target, db_url=db, spool_dir=root / "spool",
                      log=root / "head.log", extra_args=("--pool-name", "test-pool")) as (proc, url):
        wait_ready(url + "/heads/tickets")
        wait_ready(url + "/heads/helpdesk")
        yield {"url": url, "db": db, "models": models, "configs": configs, "target": target, "root": root,
               "first": first}


def test_each_head_answers_at_its_own_path(packed):
    url = packed["url"]
    for name in ("tickets", "helpdesk"):
        r = httpx.post(f"{url}/heads/{name}/predict", json={"texts": [BILLING, TECHNICAL, ACCOUNT]})
        assert r.status_code == 200, r.text
        assert r.json()["head"] == name
        assert [p["label"] for p in r.json()["predictions"]] == ["billing", "technical", "account"]
        info = httpx.get(f"{url}/heads/{name}/info").json()
        assert info["name"] == name and info["ready"] and info["version"] and "drift" in info
        drift = httpx.get(f"{url}/heads/{name}/drift")  # other per-head endpoints come along in packed mode
        assert drift.status_code == 200 and drift.json()["head"] == name
    assert httpx.post(url + "/predict", json={"text": BILLING}).status_code == 404  # no head at the root
    listed = httpx.get(url + "/heads").json()["heads"]
    assert {h["name"]: h["path"] for h in listed} == {n: f"/heads/{n}" for n in ("broken", "helpdesk", "tickets")}
    metrics = httpx.get(url + "/metrics").text
    assert 'polyhead_head_requests_total{head="tickets",status="200"}' in metrics
    assert 'polyhead_head_requests_total{head="helpdesk",status="200"}' in metrics


def test_a_bad_artifact_makes_only_its_head_unready(packed):
    url = packed["url"]
    broken = httpx.get(url + "/heads/broken/readyz")
    assert broken.status_code == 503 and "missing" in broken.json()["checks"]["artifact"]
    r = httpx.post(url + "/heads/broken/predict", json={"text": BILLING})
    assert r.status_code == 503 and "no loaded artifact" in r.json()["error"]["message"]
    process = httpx.get(url + "/readyz")
    assert process.status_code == 200, process.text  # the others still serve
    heads = process.json()["heads"]
    assert heads["tickets"]["ready"] and heads["helpdesk"]["ready"] and not heads["broken"]["ready"]
    assert httpx.get(url + "/heads/tickets/readyz").status_code == 200
    assert httpx.get(url + "/healthz").status_code == 200


def test_classify_embeds_once_for_every_head_and_reports_errors_per_head(packed):
    url = packed["url"]
    rpcs = metric(url, "polyhead_head_embed_rpcs_total")
    r = httpx.post(url + "/classify", json={"texts": [BILLING, "a text no cache has seen 7c1f"],
                                            "models": ["tickets", "helpdesk", "broken", "nope"]},
                   headers={"x-request-id": "classify-rid-1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == "classify-rid-1"
    results = body["results"]
    assert list(results) == ["tickets", "helpdesk", "broken", "nope"]
    for name in ("tickets", "helpdesk"):
        assert results[name]["head"] == name and results[name]["predictions"][0]["label"] == "billing"
        assert results[name]["request_id"] == "classify-rid-1"
    assert results["broken"]["status"] == 503 and results["broken"]["error"]["type"] == "unavailable"
    assert results["nope"]["status"] == 404 and "helpdesk" in results["nope"]["error"]["message"]
    assert metric(url, "polyhead_head_embed_rpcs_total") - rpcs == 1  # one Embed call for both heads

    too_many = httpx.post(url + "/classify", json={"texts": ["x"] * 65, "models": "*"}).json()["results"]
    assert {n: e["status"] for n, e in too_many.items()} == {"broken": 422, "helpdesk": 422, "tickets": 422}
    assert "max_texts_per_request=64" in too_many["tickets"]["error"]["message"]

    engine = sa.create_engine(packed["db"])
    deadline = time.monotonic() + 10
    while True:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("select head, shadow from predictions where request_id='classify-rid-1'")).all()
        if len(rows) >= 6 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    engine.dispose()
    assert sorted(r[0] for r in rows if not r[1]) == ["helpdesk", "helpdesk", "tickets", "tickets"]
    # tickets' first version is its champion's challenger (serving.json): shadowed in the packed /classify too
    assert sorted(r[0] for r in rows if r[1]) == ["tickets", "tickets"]
    assert [p.name for p in (packed["root"] / "spool").iterdir()] == ["test-pool"]  # one writer per process


def test_concurrent_predicts_each_get_their_own_answer(packed):
    url = packed["url"]
    texts = {BILLING: "billing", TECHNICAL: "technical", ACCOUNT: "account"}
    jobs = [(name, text, f"{text} (variant {i})") for i in range(16) for name in ("tickets", "helpdesk")
            for text in texts]

    async def run():
        async with httpx.AsyncClient(timeout=30) as client:
            return await asyncio.gather(*(client.post(f"{url}/heads/{name}/predict", json={"text": variant},
                                                      headers={"x-request-id": f"rid-{i}"})
                                          for i, (name, _, variant) in enumerate(jobs)))

    rpcs = metric(url, "polyhead_head_embed_rpcs_total")
    replies = asyncio.run(run())
    for i, ((name, text, _), r) in enumerate(zip(jobs, replies)):
        assert r.status_code == 200, r.text
        assert r.json()["head"] == name and r.json()["request_id"] == f"rid-{i}"
        assert r.json()["predictions"][0]["label"] == texts[text]
    assert metric(url, "polyhead_head_embed_rpcs_total") - rpcs < len(jobs)  # coalesced


def test_hot_reload_and_admin_reload_touch_only_their_head(packed):
    url = packed["url"]
    tickets_before = httpx.get(url + "/heads/tickets/info").json()["version"]
    helpdesk_before = httpx.get(url + "/heads/helpdesk/info").json()["version"]
    newer = train(packed["configs"]["helpdesk"], packed["models"], packed["target"], seed=4)
    assert newer.role == "challenger"  # picked up as a challenger: shadowed, not served
    deadline = time.monotonic() + 15
    while [c["version"] for c in httpx.get(url + "/heads/helpdesk/roles", headers=ADMIN).json()["challengers"] if c["shadowed"]] \
            != [newer.version]:
        assert time.monotonic() < deadline, "the new helpdesk version was not picked up as a challenger"
        time.sleep(0.2)
    assert httpx.get(url + "/heads/helpdesk/info").json()["version"] == helpdesk_before
    promoted = httpx.post(url + "/heads/helpdesk/admin/promote", json={"version": newer.version}, headers=ADMIN)
    assert promoted.status_code == 200, promoted.text
    assert httpx.get(url + "/heads/helpdesk/info").json()["version"] == newer.version
    assert newer.version != helpdesk_before
    assert httpx.get(url + "/heads/tickets/info").json()["version"] == tickets_before

    pin = httpx.post(url + "/heads/tickets/admin/reload", json={"version": packed["first"].version}, headers=ADMIN)
    assert pin.status_code == 200 and pin.json()["version"] == packed["first"].version
    assert httpx.get(url + "/heads/helpdesk/info").json()["version"] == newer.version
    assert httpx.post(url + "/heads/tickets/admin/reload", json={"version": "latest"}, headers=ADMIN).status_code == 200


# -- coalescing (in this process, against the real embedder) ----------------------------------------
def test_coalescing_gives_each_caller_its_own_vectors(server_process):
    from embedder.client import AsyncEmbedderClient
    from heads.coalescing import CoalescingEmbedder

    _, target = server_process
    calls = [[f"coalesce me {i}"] if i % 3 else [f"coalesce me {i}", "shared text", f"other {i}"] for i in range(40)]

    async def run():
        direct = AsyncEmbedderClient(target, timeout_s=60)
        merged = CoalescingEmbedder(AsyncEmbedderClient(target, timeout_s=60), max_inflight=1, max_texts=64)
        try:
            expected = [await direct.embed(texts) for texts in calls]
            got = await asyncio.gather(*(merged.embed(texts, request_id=f"r{i}") for i, texts in enumerate(calls)))
            return expected, got, merged.stats
        finally:
            await direct.close()
            await merged.close()

    expected, got, stats = asyncio.run(run())
    for texts, want, have in zip(calls, expected, got):
        assert have.vectors.shape == (len(texts), want.vectors.shape[1])
        np.testing.assert_allclose(have.vectors, want.vectors, atol=1e-5)
        assert have.fingerprint == want.fingerprint and len(have.cached) == len(texts)
    assert stats.calls == len(calls) and stats.rpcs < len(calls) / 4
    assert stats.texts_sent < sum(len(t) for t in calls)  # "shared text" sent once per RPC


def test_coalescing_delivers_errors_to_the_callers_they_belong_to(server_process):
    from embedder.client import AsyncEmbedderClient
    from heads.coalescing import CoalescingEmbedder
    from polyhead.errors import UnavailableError, ValidationError

    _, target = server_process

    async def run(client_target: str, texts_per_call):
        merged = CoalescingEmbedder(AsyncEmbedderClient(client_target, timeout_s=10), max_inflight=1)
        try:
            return await asyncio.gather(*(merged.embed(t) for t in texts_per_call), return_exceptions=True)
        finally:
            await merged.close()

    calls = [["fine one"], ["x" * 10_001], ["fine two"], ["fine three"]]  # the embedder's max_text_chars is 10,000
    outcomes = asyncio.run(run(target, calls))
    assert isinstance(outcomes[1], ValidationError) and "10000" in outcomes[1].message
    assert all(o.vectors.shape[0] == 1 for i, o in enumerate(outcomes) if i != 1), outcomes

    dead = asyncio.run(run(f"127.0.0.1:{free_port()}", [["a"], ["b"], ["c"]]))
    assert all(isinstance(o, UnavailableError) for o in dead), dead
