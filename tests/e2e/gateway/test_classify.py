"""POST /v1/classify end to end: one text, many models, across a packed head process and a one-head
process; errors and API-key refusals per model (real embedder, heads and gateway processes)."""

from __future__ import annotations

import shutil

import httpx
import pytest
import yaml

from gateway.auth import new_key
from tests.e2e.gateway.test_gateway import start_gateway, stop
from tests.e2e.heads.fixtures import start_head_process, train, wait_ready, write_head_config

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def classify_stack(trained_tickets, server_process, tmp_path_factory):
    """tickets + helpdesk packed in one process, solo in its own; a gateway with two API keys."""
    _, tickets_models, _, _ = trained_tickets
    _, target = server_process
    root = tmp_path_factory.mktemp("classify")
    heads, models = root / "configs", root / "models"
    shutil.copytree(tickets_models / "tickets", models / "tickets")
    configs = {n: write_head_config(heads, n) for n in ("tickets", "helpdesk", "solo")}
    train(configs["helpdesk"], models, target, seed=5)
    train(configs["solo"], models, target, seed=6)
    db = f"sqlite:///{root / 'inference.db'}"
    packed_proc, packed_url = start_head_process([configs["tickets"], configs["helpdesk"]], models, target, db_url=db,
                                                 spool_dir=root / "spool", log=root / "packed.log")
    solo_proc, solo_url = start_head_process(configs["solo"], models, target, db_url=db, spool_dir=root / "spool",
                                             log=root / "solo.log")
    routes = root / "routes.yaml"
    routes.write_text(yaml.safe_dump({"tickets": f"{packed_url}/heads/tickets", "helpdesk": f"{packed_url}/heads/helpdesk",
                                      "solo": solo_url}))
    full, full_hash = new_key()
    narrow, narrow_hash = new_key()
    keys = root / "keys.yaml"
    keys.write_text(yaml.safe_dump([{"name": "full", "sha256": full_hash, "models": ["*"]},
                                    {"name": "narrow", "sha256": narrow_hash, "models": ["tickets"]}]))
    gateway, url = start_gateway(heads, routes, target, "--api-keys-file", str(keys), log=root / "gateway.log")
    procs = [gateway, packed_proc, solo_proc]
    try:
        for head in (f"{packed_url}/heads/tickets", f"{packed_url}/heads/helpdesk", solo_url):
            wait_ready(head)
        yield {"url": url, "full": {"authorization": f"Bearer {full}"},
               "narrow": {"authorization": f"Bearer {narrow}"}, "solo": solo_proc, "procs": procs}
    finally:
        for proc in procs:
            stop(proc)


def test_classify_answers_every_model_for_the_same_texts(classify_stack):
    s = classify_stack
    r = httpx.post(s["url"] + "/v1/classify", headers={**s["full"], "x-request-id": "multi-1"},
                   json={"texts": ["I was charged twice, refund me", "the app crashes on launch"], "models": "*"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == "multi-1" and r.headers["x-request-id"] == "multi-1"
    assert sorted(body["results"]) == ["helpdesk", "solo", "tickets"]
    for name, result in body["results"].items():
        assert result["head"] == name and result["request_id"] == "multi-1"
        assert [p["label"] for p in result["predictions"]] == ["billing", "technical"]
    one = httpx.post(s["url"] + "/v1/classify", headers=s["full"],
                     json={"text": "reset my password", "models": ["solo", "tickets"]}).json()
    assert list(one["results"]) == ["solo", "tickets"]
    assert all(len(r["predictions"]) == 1 and r["predictions"][0]["label"] == "account" for r in one["results"].values())


def test_errors_and_key_refusals_are_per_model(classify_stack):
    s = classify_stack
    url = s["url"] + "/v1/classify"
    assert httpx.post(url, json={"text": "refund", "models": "*"}).status_code == 401  # no key: the whole request
    narrow = httpx.post(url, headers=s["narrow"], json={"text": "refund please", "models": ["tickets", "helpdesk", "nope"]})
    assert narrow.status_code == 200
    results = narrow.json()["results"]
    assert results["tickets"]["predictions"][0]["label"] == "billing"
    assert results["helpdesk"]["status"] == 403 and results["helpdesk"]["error"]["type"] == "forbidden"
    assert results["nope"]["status"] == 403  # as /v1/models/nope/predict answers this key: it names no model
    unknown = httpx.post(url, headers=s["full"], json={"text": "refund please", "models": ["nope", "tickets"]}).json()
    assert unknown["results"]["nope"]["status"] == 404 and "known models" in unknown["results"]["nope"]["error"]["message"]
    assert unknown["results"]["tickets"]["predictions"]
    everything = httpx.post(url, headers=s["narrow"], json={"text": "refund please", "models": "*"}).json()
    assert list(everything["results"]) == ["tickets"]  # '*' = every model this key may call

    too_long = httpx.post(url, headers=s["full"], json={"texts": ["ok", "y" * 10_001], "models": ["solo", "helpdesk"]})
    assert {n: r["status"] for n, r in too_long.json()["results"].items()} == {"solo": 422, "helpdesk": 422}
    assert "max_text_chars" in too_long.json()["results"]["solo"]["error"]["message"]
    bad = httpx.post(url, headers=s["full"], json={"text": "x", "models": []})
    assert bad.status_code == 422 and "models" in bad.json()["error"]["message"]


def test_a_dead_head_fails_only_its_entry(classify_stack):
    s = classify_stack
    stop(s["solo"])
    r = httpx.post(s["url"] + "/v1/classify", headers=s["full"], json={"text": "my card was declined", "models": "*"})
    assert r.status_code == 200
    results = r.json()["results"]
    assert results["solo"]["status"] == 503 and "unreachable" in results["solo"]["error"]["message"]
    assert results["tickets"]["predictions"] and results["helpdesk"]["predictions"]
