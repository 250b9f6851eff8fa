"""Head services end to end: real embedder process, real head processes over loopback."""

from __future__ import annotations

import json
import shutil
import threading
import time

import httpx
import pytest
import sqlalchemy as sa

from polyhead.inference_log.schema import count_rows
from tests.conftest import free_port
from tests.e2e.heads.fixtures import ADMIN, head_process, train, wait_ready, write_head_config
from tests.helpers import PostgresBackend

pytestmark = pytest.mark.timeout(180)


@pytest.fixture()
def tickets_head(trained_tickets, server_process, tmp_path):
    config, models, first, second = trained_tickets
    _, target = server_process
    db = f"sqlite:///{tmp_path / 'inference.db'}"
    with head_process(config, models, target, db_url=db, spool_dir=tmp_path / "spool", log=tmp_path / "head.log") as (proc, url):
        wait_ready(url)
        yield url, db, proc


def test_train_writes_a_complete_versioned_artifact(trained_tickets):
    config, models, first, second = trained_tickets
    assert first.version < second.version
    assert (models / "tickets" / "latest").read_text().strip() == second.version
    files = {p.name for p in first.path.iterdir()}
    assert {"weights.npz", "labels.json", "metrics.json", "config.yaml", "manifest.json"} <= files
    manifest = json.loads((first.path / "manifest.json").read_text())
    assert manifest["embedder_fingerprint"].startswith("sha256:")
    assert manifest["data_sha256"].startswith("sha256:") and manifest["code_version"]
    all_metrics = json.loads((first.path / "metrics.json").read_text())
    metrics = all_metrics["test"]
    assert {"accuracy", "f1_weighted", "f1_macro", "per_class", "confusion_matrix"} <= set(metrics)
    assert metrics["accuracy"] >= 0.75  # 12 held-out tickets, 3 clearly separable classes
    # model selection across head families: every candidate's validation score and the choice
    selection = all_metrics["selection"]
    assert {c["family"] for c in selection["candidates"]} == {"mlp", "logreg", "blend"}  # the default families
    best = max(c["val_score"] for c in selection["candidates"])
    chosen = [c for c in selection["candidates"] if c["family"] == selection["chosen"]["family"]
              and c["params"] == selection["chosen"]["params"]]
    assert len(chosen) == 1 and chosen[0]["val_score"] == best == all_metrics["val"]["score"]
    assert manifest["head_type"] == ("logreg" if selection["chosen"]["family"] == "logreg" else "mlp")


def test_predict_one_and_many_and_every_prediction_is_logged(tickets_head):
    url, db, _ = tickets_head
    one = httpx.post(url + "/predict", json={"text": "I was billed twice, refund me"}, headers={"x-request-id": "rid-1"})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["predictions"][0]["label"] == "billing"
    assert body["request_id"] == "rid-1" and one.headers["x-request-id"] == "rid-1"
    assert body["embedder_fingerprint"].startswith("sha256:") and body["head"] == "tickets"
    top = body["predictions"][0]["top_k"]
    assert len(top) == 3 and abs(sum(t["probability"] for t in top) - 1) < 1e-4

    many = httpx.post(url + "/predict", json={"texts": ["the app keeps crashing on startup", "reset my password"]})
    assert [p["label"] for p in many.json()["predictions"]] == ["technical", "account"]

    deadline = time.monotonic() + 10
    while count_rows(db, heads=["tickets"]) < 6 and time.monotonic() < deadline:  # + the challenger's shadow rows
        time.sleep(0.1)
    engine = sa.create_engine(db)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select request_id, head_version, label, text, top_k, embedder_fingerprint "
                                    "from predictions where shadow is null or not shadow order by ts")).mappings().all()
        shadow = conn.execute(sa.text("select request_id, text_index, head_version from predictions where shadow "
                                      "order by ts, text_index")).all()
    engine.dispose()
    assert len(rows) == 3
    # the first version is the champion's challenger (trained_tickets promoted the second): shadowed on every text
    assert [(r[0], r[1]) for r in shadow] == [("rid-1", 0), (many.json()["request_id"], 0),
                                             (many.json()["request_id"], 1)]
    assert {r[2] for r in shadow} != {body["version"]}
    assert rows[0]["request_id"] == "rid-1" and rows[0]["label"] == "billing"
    assert rows[0]["text"] == "I was billed twice, refund me" and rows[0]["head_version"] == body["version"]


def test_info_readyz_and_metrics(tickets_head):
    url, _, _ = tickets_head
    info = httpx.get(url + "/info").json()
    assert sorted(info["labels"]) == ["account", "billing", "technical"]
    assert info["ready"] and info["metrics"]["accuracy"] > 0 and info["version_spec"] == "latest"
    ready = httpx.get(url + "/readyz").json()
    assert ready["checks"]["fingerprint"] == "match"
    httpx.post(url + "/predict", json={"text": "billing question"})
    text = httpx.get(url + "/metrics").text
    assert 'polyhead_head_requests_total{head="tickets",status="200"}' in text


@pytest.mark.parametrize("payload, field, fragment", [
    ({"text": ""}, "text", "empty"),
    ({"text": "   \n"}, "text", "whitespace"),
    ({}, "body", "exactly one"),
    ({"text": "a", "texts": ["b"]}, "body", "exactly one"),
    ({"text": 42}, "text", "string"),
    ({"texts": "not a list"}, "texts", "list"),
    ({"texts": []}, "texts", "at least 1"),
    ({"texts": ["ok", " "]}, "texts[1]", "whitespace"),
    ({"texts": ["x"] * 65}, "texts", "max_texts_per_request=64"),
    ({"text": "y" * 10_001}, "text", "max_text_chars=10000"),
    ({"text": "ok", "extra": 1}, "extra", "not permitted"),
])
def test_bad_input_is_422_naming_the_field_and_limit(tickets_head, payload, field, fragment):
    url, _, _ = tickets_head
    r = httpx.post(url + "/predict", json=payload)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field or field in error["message"], error
    assert fragment in error["message"], error


def test_non_json_body_is_422_not_500(tickets_head):
    url, _, _ = tickets_head
    r = httpx.post(url + "/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_embedder_unreachable_is_503_with_retry_after(trained_tickets, tmp_path):
    config, models, _, _ = trained_tickets
    dead = f"127.0.0.1:{free_port()}"
    with head_process(config, models, dead, db_url=f"sqlite:///{tmp_path / 'i.db'}", spool_dir=tmp_path / "s") as (_, url):
        r = httpx.post(url + "/predict", json={"text": "hello"})
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        assert "embedder" in r.json()["error"]["message"]
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 503 and "unreachable" in ready.json()["checks"]["embedder"]


def test_fingerprint_mismatch_refuses_readiness_and_says_why(trained_tickets, server_process, tmp_path):
    config, models, first, _ = trained_tickets
    _, target = server_process
    other = tmp_path / "models"
    shutil.copytree(first.path, other / "tickets" / first.version)
    manifest_path = other / "tickets" / first.version / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["embedder_fingerprint"] = "sha256:0000000000000000"  # trained on another encoder
    manifest_path.write_text(json.dumps(manifest))
    with head_process(config, other, target, db_url=f"sqlite:///{tmp_path / 'i.db'}", spool_dir=tmp_path / "s") as (_, url):
        ready = httpx.get(url + "/readyz")
        assert ready.status_code == 503
        assert "mismatch" in ready.json()["checks"]["fingerprint"]
        assert "sha256:0000000000000000" in ready.json()["checks"]["fingerprint"]
        r = httpx.post(url + "/predict", json={"text": "hello"})
        assert r.status_code == 503 and "fingerprint" in r.json()["error"]["message"]


def test_version_switch_under_load_fails_no_request(tickets_head, trained_tickets):
    url, _, _ = tickets_head
    _, models, first, second = trained_tickets
    failures, versions, stop = [], set(), threading.Event()

    def hammer():
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                r = client.post(url + "/predict", json={"texts": ["refund my payment", "app crashed"]})
                if r.status_code != 200:
                    failures.append((r.status_code, r.text))
                else:
                    versions.add(r.json()["version"])

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for spec in [first.version, second.version, first.version, "latest"]:
            time.sleep(0.4)
            r = httpx.post(url + "/admin/reload", json={"version": spec}, headers=ADMIN)
            assert r.status_code == 200, r.text
        time.sleep(0.4)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert versions == {first.version, second.version}
    assert httpx.get(url + "/info").json()["version"] == second.version
    assert httpx.post(url + "/admin/reload", json={"version": "20000101T000000Z"}, headers=ADMIN).status_code == 404
    # Without the admin token (or with another), nobody pins the head to an old version.
    for headers in ({}, {"authorization": "Bearer not-the-token"}):
        refused = httpx.post(url + "/admin/reload", json={"version": first.version}, headers=headers)
        assert refused.status_code == 401 and refused.json()["error"]["field"] == "authorization"
    assert httpx.get(url + "/info").json()["version"] == second.version


def test_a_promotion_written_by_another_process_is_picked_up_without_restart(trained_tickets, server_process,
                                                                             tmp_path):
    from heads import roles

    config, models, first, second = trained_tickets
    _, target = server_process
    local = tmp_path / "models"
    shutil.copytree(models, local)
    roles.rollback(local, "tickets", actor="test", reason="start from the first version")
    with head_process(config, local, target, db_url=f"sqlite:///{tmp_path / 'i.db'}", spool_dir=tmp_path / "s") as (_, url):
        assert httpx.get(url + "/info").json()["version"] == first.version
        roles.promote(local, "tickets", second.version, actor="test", reason="what `polyhead promote` does")
        deadline = time.monotonic() + 10
        while httpx.get(url + "/info").json()["version"] != second.version:
            assert time.monotonic() < deadline, "promotion not picked up"
            time.sleep(0.2)


def test_db_outage_mid_run_loses_and_duplicates_no_prediction(trained_tickets, server_process, postgres_url, tmp_path):
    config, models, _, _ = trained_tickets
    _, target = server_process
    pg = PostgresBackend(postgres_url)
    try:
        with head_process(config, models, target, db_url=pg.flaky_url, spool_dir=tmp_path / "spool",
                          log=tmp_path / "head.log") as (_, url):
            wait_ready(url)
            with httpx.Client(timeout=10) as client:
                ids = []
                for i in range(20):
                    ids.append(client.post(url + "/predict", json={"text": f"refund request {i}"}).json()["request_id"])
                pg.down()
                for i in range(30):
                    r = client.post(url + "/predict", json={"text": f"outage request {i}"})
                    assert r.status_code == 200  # a DB outage never fails a prediction
                    ids.append(r.json()["request_id"])
                time.sleep(0.5)
                pg.up()
            deadline = time.monotonic() + 30
            while count_rows(pg.url, heads=["tickets"]) < 100 and time.monotonic() < deadline:  # + shadow rows
                time.sleep(0.2)
        engine = sa.create_engine(pg.url)
        with engine.connect() as conn:
            rows = conn.execute(sa.text("select request_id, shadow from predictions where head='tickets'")).all()
        engine.dispose()
        assert sorted(r[0] for r in rows if not r[1]) == sorted(ids)  # every one, exactly once
        assert sorted(r[0] for r in rows if r[1]) == sorted(ids)  # and the challenger's shadow row of each
    finally:
        pg.close()


def test_head_process_never_loads_tensorflow(tickets_head):
    _, _, proc = tickets_head
    maps = open(f"/proc/{proc.pid}/maps").read()
    assert "tensorflow" not in maps and "libtensorflow" not in maps


def test_head_modules_do_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys, heads.http_server, heads.core, heads.servable, heads.training.run, heads.artifacts; "
            "assert not [m for m in sys.modules if m.startswith('tensorflow')], 'tensorflow imported'")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_a_head_trained_on_all6_serves_on_the_real_model(server_process, tmp_path):
    """feature_set: all6 end to end: trained on the real embedder's 2,304-d set, served by a head process."""
    _, target = server_process
    config = write_head_config(tmp_path / "configs", "tickets-all6")
    config.write_text(config.read_text() + "feature_set: all6\n")
    report = train(config, tmp_path / "models", target, seed=1)
    manifest = json.loads((report.path / "manifest.json").read_text())
    assert manifest["feature_set"] == "all6" and manifest["embedder_fingerprint"].endswith("+all6-v1+f16")
    assert report.metrics["test"]["accuracy"] >= 0.75  # as the default set's head above
    with head_process(config, tmp_path / "models", target, db_url=f"sqlite:///{tmp_path / 'i.db'}",
                      spool_dir=tmp_path / "s") as (_, url):
        wait_ready(url)
        info = httpx.get(url + "/info").json()
        assert info["feature_set"] == "all6" and info["checks"]["fingerprint"] == "match"
        r = httpx.post(url + "/predict", json={"texts": ["I was billed twice, refund me", "reset my password"]})
        assert r.status_code == 200, r.text
        assert r.json()["embedder_fingerprint"] == manifest["embedder_fingerprint"]
        assert [p["label"] for p in r.json()["predictions"]] == ["billing", "account"]
