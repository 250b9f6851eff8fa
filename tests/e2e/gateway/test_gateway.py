"""The gateway end to end: real embedder, real heads, real gateway processes on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
import yaml

from tests.conftest import ROOT, free_port
from tests.e2e.heads.fixtures import ADMIN_TOKEN, start_head_process, train, wait_ready, write_head_config

pytestmark = pytest.mark.timeout(240)


def start_gateway(heads_dir, routes_file, target, *extra: str, log=None):
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "gateway", "serve", "--port", str(port), "--heads-dir", str(heads_dir),
           "--routes-file", str(routes_file), "--embedder-target", target, *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "ab") if log else subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env={**os.environ, "POLYHEAD_GATEWAY_RELOAD_INTERVAL_S": "0.3",
                                 "POLYHEAD_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN})  # the heads' (fixtures.py)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError("gateway did not become ready")


def stop(proc):
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture(scope="module")
def stack(server_process, tmp_path_factory):
    """Embedder + two heads (tickets, helpdesk) + gateway; yields handles the tests can poke."""
    _, target = server_process
    root = tmp_path_factory.mktemp("gw")
    heads_dir, models = root / "configs", root / "models"
    configs = {name: write_head_config(heads_dir, name) for name in ("tickets", "helpdesk")}
    for config in configs.values():
        train(config, models, target)
    db = f"sqlite:///{root / 'inference.db'}"
    heads = {}
    for name, config in configs.items():
        heads[name] = start_head_process(config, models, target, db_url=db, spool_dir=root / "spool",
                                         log=root / f"{name}.log")
    routes = root / "routes.yaml"
    routes.write_text(yaml.safe_dump({name: url for name, (_, url) in heads.items()}))
    gateway, url = start_gateway(heads_dir, routes, target, "--db-url", db, log=root / "gateway.log")
    state = {"root": root, "heads_dir": heads_dir, "models": models, "routes": routes, "target": target,
             "db": db, "heads": heads, "configs": configs, "url": url}
    try:
        for _, head_url in heads.values():
            wait_ready(head_url)
        yield state
    finally:
        stop(gateway)
        for proc, _ in state["heads"].values():
            stop(proc)


def test_predict_routes_by_model_name(stack):
    url = stack["url"]
    for name in ("tickets", "helpdesk"):
        r = httpx.post(f"{url}/v1/models/{name}/predict", json={"text": "I was charged twice this month"})
        assert r.status_code == 200, r.text
        assert r.json()["head"] == name and r.json()["predictions"][0]["label"] == "billing"
    many = httpx.post(f"{url}/v1/models/tickets/predict", json={"texts": ["app crashes on start", "reset my password"]})
    assert [p["label"] for p in many.json()["predictions"]] == ["technical", "account"]


def test_request_id_travels_to_the_head_and_back(stack):
    url = stack["url"]
    r = httpx.post(f"{url}/v1/models/helpdesk/predict", json={"text": "refund please"},
                   headers={"x-request-id": "trace-me-42"})
    assert r.headers["x-request-id"] == "trace-me-42" and r.json()["request_id"] == "trace-me-42"
    generated = httpx.post(f"{url}/v1/models/helpdesk/predict", json={"text": "refund please"})
    assert len(generated.headers["x-request-id"]) >= 16
    engine = sa.create_engine(stack["db"])
    deadline = time.monotonic() + 10
    while True:
        with engine.connect() as conn:
            found = conn.execute(sa.text("select head from predictions where request_id='trace-me-42'")).all()
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    engine.dispose()
    assert found == [("helpdesk",)]


def test_model_listing_and_unknown_model(stack):
    url = stack["url"]
    listing = httpx.get(f"{url}/v1/models").json()
    by_name = {m["name"]: m for m in listing["data"]}
    assert set(by_name) >= {"tickets", "helpdesk"}
    m = by_name["tickets"]
    assert m["ready"] and m["version"] and sorted(m["labels"]) == ["account", "billing", "technical"]
    assert 0 < m["metrics"]["accuracy"] <= 1
    one = httpx.get(f"{url}/v1/models/helpdesk").json()
    assert one["name"] == "helpdesk" and one["ready"]
    missing = httpx.post(f"{url}/v1/models/nope/predict", json={"text": "x"})
    assert missing.status_code == 404
    assert "tickets" in missing.json()["error"]["message"] and "helpdesk" in missing.json()["error"]["message"]


def test_bad_input_is_a_clear_422_through_the_gateway(stack):
    r = httpx.post(f"{stack['url']}/v1/models/tickets/predict", json={"texts": ["ok", "  "]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "texts[1]"
    r = httpx.post(f"{stack['url']}/v1/models/tickets/predict", json={"text": 7})
    assert r.status_code == 422 and r.json()["error"]["field"] == "text"
    # The gateway forwards the body unparsed: malformed JSON and a missing body still get the head's 422.
    r = httpx.post(f"{stack['url']}/v1/models/tickets/predict", content=b'{"text": "unterminated',
                   headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "body"
    assert "invalid JSON at character" in r.json()["error"]["message"]
    r = httpx.post(f"{stack['url']}/v1/models/tickets/predict")
    assert r.status_code == 422 and r.json()["error"]["field"] == "body" and "x-request-id" in r.headers


def test_openai_client_embeds_through_the_gateway(stack, servable):
    import openai

    client = openai.OpenAI(base_url=stack["url"] + "/v1", api_key="unused-locally")
    result = client.embeddings.create(model="all-MiniLM-L6-v2", input=["hello world", "how are you?"])
    assert len(result.data) == 2 and [d.index for d in result.data] == [0, 1]
    vectors = np.array([d.embedding for d in result.data], dtype=np.float32)
    direct = servable.embed(["hello world", "how are you?"]).vectors
    assert np.min(np.sum(vectors * direct, axis=1)) > 0.99999
    assert result.usage.prompt_tokens == result.usage.total_tokens == 4 + 6  # [CLS] .. [SEP] each
    single = client.embeddings.create(model="all-MiniLM-L6-v2", input="one text", encoding_format="base64")
    decoded = np.frombuffer(__import__("base64").b64decode(single.data[0].embedding), dtype="<f4")
    assert decoded.shape == (384,) and float(decoded @ servable.embed(["one text"]).vectors[0]) > 0.99999


@pytest.mark.parametrize("payload, status, fragment", [
    ({"model": "gpt-4", "input": "x"}, 404, "all-MiniLM-L6-v2"),
    ({"model": "default", "input": [1, 2, 3]}, 422, "token arrays"),
    ({"model": "default", "input": []}, 422, "at least 1"),
    ({"model": "default", "input": ["ok", ""]}, 422, "input[1]"),
    ({"model": "default", "input": "x", "dimensions": 128}, 422, "384"),
])
def test_embeddings_bad_requests(stack, payload, status, fragment):
    r = httpx.post(stack["url"] + "/v1/embeddings", json=payload)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]["message"]


def test_grpc_client_embeds_directly(stack):
    from embedder.client import EmbedderClient

    with EmbedderClient(stack["target"]) as client:
        assert client.embed(["direct gRPC caller"]).vectors.shape == (1, 384)


def test_new_head_becomes_routable_without_restarts(stack):
    name = "late-joiner"
    config = write_head_config(stack["heads_dir"], name)
    train(config, stack["models"], stack["target"])
    proc, head_url = start_head_process(config, stack["models"], stack["target"], db_url=stack["db"],
                                        spool_dir=stack["root"] / "spool")
    stack["heads"][name] = (proc, head_url)
    wait_ready(head_url)
    routes = yaml.safe_load(stack["routes"].read_text())
    stack["routes"].write_text(yaml.safe_dump({**routes, name: head_url}))
    deadline = time.monotonic() + 10
    while True:
        r = httpx.post(f"{stack['url']}/v1/models/{name}/predict", json={"text": "my invoice is wrong"})
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200 and r.json()["head"] == name


def test_a_dead_head_503s_only_its_model_and_comes_back(stack):
    proc, head_url = stack["heads"]["helpdesk"]
    port = int(head_url.rsplit(":", 1)[1])
    stop(proc)
    down = httpx.post(f"{stack['url']}/v1/models/helpdesk/predict", json={"text": "hello"})
    assert down.status_code == 503 and int(down.headers["retry-after"]) >= 1
    assert "helpdesk" in down.json()["error"]["message"]
    assert httpx.post(f"{stack['url']}/v1/models/tickets/predict", json={"text": "hello"}).status_code == 200
    listing = {m["name"]: m for m in httpx.get(f"{stack['url']}/v1/models").json()["data"]}
    assert listing["helpdesk"]["ready"] is False and listing["tickets"]["ready"] is True
    proc, head_url = start_head_process(stack["configs"]["helpdesk"], stack["models"], stack["target"],
                                        db_url=stack["db"], spool_dir=stack["root"] / "spool", port=port)
    stack["heads"]["helpdesk"] = (proc, head_url)
    wait_ready(head_url)
    assert httpx.post(f"{stack['url']}/v1/models/helpdesk/predict", json={"text": "hello"}).status_code == 200


def test_a_silent_head_is_a_503_after_its_route_timeout_for_its_model_only(stack):
    import socket

    listener = socket.create_server(("127.0.0.1", 0))  # the kernel completes handshakes; nobody answers
    port = listener.getsockname()[1]
    write_head_config(stack["heads_dir"], "silent", timeout_s=0.5, address=f"http://127.0.0.1:{port}")
    url = f"{stack['url']}/v1/models/silent/predict"
    try:
        deadline = time.monotonic() + 10
        while httpx.post(url, json={"text": "x"}, timeout=10).status_code == 404 and time.monotonic() < deadline:
            time.sleep(0.1)  # until the gateway's poll picks the new config up
        started = time.monotonic()
        r = httpx.post(url, json={"text": "hello"}, timeout=10)
        assert time.monotonic() - started < 3  # the route's 0.5 s, not the gateway's 10 s default
        assert r.status_code == 503 and "timed out" in r.json()["error"]["message"] and "retry-after" in r.headers
        assert httpx.post(f"{stack['url']}/v1/models/tickets/predict", json={"text": "hello"}).status_code == 200
    finally:
        for path in stack["heads_dir"].glob("silent*"):
            path.unlink()
        listener.close()


def test_openapi_documents_error_responses(stack):
    spec = httpx.get(stack["url"] + "/openapi.json").json()
    predict = spec["paths"]["/v1/models/{name}/predict"]["post"]["responses"]
    assert {"200", "401", "403", "404", "413", "422", "429", "503"} <= set(predict)
    assert {"200", "404", "422", "503"} <= set(spec["paths"]["/v1/embeddings"]["post"]["responses"])
    # The predict body is forwarded unparsed, but still documented as the head's request shape.
    body = spec["paths"]["/v1/models/{name}/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert {"text", "texts"} <= set(body["properties"]) and body["additionalProperties"] is False


@pytest.fixture()
def secured_gateway(stack, tmp_path):
    from gateway.auth import hash_key

    keys = tmp_path / "keys.yaml"
    keys.write_text(yaml.safe_dump([
        {"name": "alice", "sha256": hash_key("alice-secret"), "models": ["*"]},
        {"name": "bob", "sha256": hash_key("bob-secret"), "models": ["helpdesk"]},
    ]))
    proc, url = start_gateway(stack["heads_dir"], stack["routes"], stack["target"], "--api-keys-file", str(keys),
                              "--rate-limit-per-s", "1", "--rate-limit-burst", "3", "--max-body-bytes", "2048")
    try:
        yield url
    finally:
        stop(proc)


def test_api_keys_rate_limit_and_body_limit(secured_gateway):
    url = secured_gateway + "/v1/models/tickets/predict"
    body = {"text": "refund"}
    assert httpx.post(url, json=body).status_code == 401
    assert httpx.post(url, json=body, headers={"authorization": "Bearer wrong"}).status_code == 401
    assert httpx.post(url, json=body, headers={"authorization": "Bearer bob-secret"}).status_code == 403
    alice = {"authorization": "Bearer alice-secret"}
    statuses = [httpx.post(url, json=body, headers=alice) for _ in range(4)]
    assert [r.status_code for r in statuses[:3]] == [200, 200, 200]
    assert statuses[3].status_code == 429 and int(statuses[3].headers["retry-after"]) >= 1
    time.sleep(1.1)
    big = httpx.post(url, json={"text": "x" * 5000}, headers=alice)
    assert big.status_code == 413 and "max_body_bytes=2048" in big.json()["error"]["message"]


def test_gateway_with_two_workers_serves_predictions(stack):
    proc, url = start_gateway(stack["heads_dir"], stack["routes"], stack["target"], "--workers", "2")
    try:
        for _ in range(6):
            r = httpx.post(f"{url}/v1/models/tickets/predict", json={"text": "refund my payment"})
            assert r.status_code == 200 and r.json()["predictions"][0]["label"] == "billing"
    finally:
        stop(proc)


def run_batch(predictor_factory, *args, **kwargs):
    from cli.batch import classify_file

    async def go():
        predictor = predictor_factory()  # inside the loop: grpc.aio and httpx clients belong to one
        try:
            return await classify_file(predictor, *args, **kwargs)
        finally:
            await predictor.aclose()

    return asyncio.run(go())


def test_batch_mode_resumes_without_duplicates_or_losses(stack, tmp_path):
    from cli.batch import GatewayPredictor

    rows = [{"id": f"t{i}", "text": text} for i, text in enumerate(
        ["refund my double charge", "the app crashes", "change my email", "invoice is wrong"] * 25)]
    source = tmp_path / "tickets.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored.jsonl"
    via_gateway = lambda: GatewayPredictor(stack["url"], "tickets")  # noqa: E731
    first = run_batch(via_gateway, source, out, id_field="id", chunk_size=8, concurrency=3,
                      max_chunks=5)  # interrupted part-way
    assert first.rows_classified == 40
    with out.open("a") as f:
        f.write('{"row": 99, "label": "bill')  # a crash mid-write leaves a torn line
    second = run_batch(via_gateway, source, out, id_field="id", chunk_size=8, concurrency=3)
    assert second.rows_done_before == 40 and second.rows_classified == 60
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["row"] for r in lines) == list(range(100))
    assert {r["id"] for r in lines} == {f"t{i}" for i in range(100)}
    by_row = {r["row"]: r["label"] for r in lines}
    assert by_row[0] == "billing" and by_row[1] == "technical"


def test_direct_batch_matches_the_gateway_and_refuses_a_foreign_encoder(stack, tmp_path):
    """--direct: the embedder plus the head's artifact in-process give the labels the served head gives."""
    from cli.batch import DirectPredictor, GatewayPredictor

    texts = ["refund my double charge", "the app crashes on start", "change my email address", "invoice is wrong",
             "I cannot log in", "payment failed twice"]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    config = stack["configs"]["tickets"]
    run_batch(lambda: GatewayPredictor(stack["url"], "tickets"), source, tmp_path / "gw.jsonl", chunk_size=4)
    direct = lambda: DirectPredictor(stack["target"], stack["models"], config)  # noqa: E731
    report = run_batch(direct, source, tmp_path / "direct.jsonl", chunk_size=4)
    assert report.rows_classified == len(texts)
    read = lambda p: sorted((r["row"], r["label"], r["version"]) for r in map(json.loads, p.read_text().splitlines()))  # noqa: E731
    assert read(tmp_path / "direct.jsonl") == read(tmp_path / "gw.jsonl")

    # A copy of the artifact that claims another encoder: refused with the reason, nothing written.
    import shutil

    models = tmp_path / "models"
    shutil.copytree(stack["models"], models)
    for manifest in (models / "tickets").glob("*/manifest.json"):
        data = json.loads(manifest.read_text())
        manifest.write_text(json.dumps({**data, "embedder_fingerprint": "sha256:0000000000000000"}))
    with pytest.raises(RuntimeError, match="fingerprint"):
        run_batch(lambda: DirectPredictor(stack["target"], models, config), source, tmp_path / "bad.jsonl")
    assert not (tmp_path / "bad.jsonl").exists() or (tmp_path / "bad.jsonl").read_text() == ""


def test_batch_cli_reports_throughput(stack, tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("text\nrefund please\napp is broken\n")
    out = tmp_path / "out.jsonl"
    r = subprocess.run([sys.executable, "-m", "cli", "batch", str(source), "--model", "tickets", "-o", str(out),
                        "--gateway", stack["url"]], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["classified"] == 2 and report["rows_per_s"] > 0
    assert len(out.read_text().splitlines()) == 2
    # The same file with --direct (embedder + artifact in the CLI process) resumes the same way.
    direct_out = tmp_path / "direct.jsonl"
    r = subprocess.run([sys.executable, "-m", "cli", "batch", str(source), "--model", "tickets", "-o",
                        str(direct_out), "--direct", "--embedder-target", stack["target"], "--heads-dir",
                        str(stack["heads_dir"]), "--models-dir", str(stack["models"])],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1])["classified"] == 2
    assert [json.loads(x)["label"] for x in direct_out.read_text().splitlines()] == \
        [json.loads(x)["label"] for x in out.read_text().splitlines()]
    r = subprocess.run([sys.executable, "-m", "cli", "batch", str(source), "--model", "nope", "-o",
                        str(tmp_path / "x.jsonl"), "--direct", "--heads-dir", str(stack["heads_dir"])],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "nope.yaml" in r.stderr
