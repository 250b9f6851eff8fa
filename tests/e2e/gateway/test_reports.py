"""Reports and feedback end to end: real embedder, heads and gateway processes, SQLite inference DB.

Traffic goes through the gateway, the heads log it (asynchronously), feedback arrives right after
its predict, and the report read back through the gateway must match what was sent.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone

import httpx
import pytest
import sqlalchemy as sa

from polyhead.inference_log.feedback import find_predictions, store_feedback, training_feedback_mark
from polyhead.inference_log.records import PredictionRecord
from polyhead.inference_log.schema import feedback, make_engine, predictions, training_feedback
from heads.training.evaluation import classification_report
from tests.conftest import ROOT, free_port
from tests.e2e.gateway import test_gateway
from tests.e2e.gateway.test_gateway import start_gateway, stop
from tests.e2e.heads.fixtures import TICKETS, write_head_config

pytestmark = pytest.mark.timeout(240)

stack = test_gateway.stack  # the same fixture, one instance for this module: its own heads and DB

LABELS = ["account", "billing", "technical"]


def predict(url, name, body, headers=None) -> dict:
    r = httpx.post(f"{url}/v1/models/{name}/predict", json=body, headers=headers or {})
    assert r.status_code == 200, r.text
    return r.json()


def report(url, name, **params) -> httpx.Response:
    return httpx.get(f"{url}/v1/models/{name}/report", params=params, timeout=30)


def test_traffic_and_feedback_show_in_the_report(stack):
    url = stack["url"]
    since = datetime.now(timezone.utc).isoformat()  # rows are stamped by the head, after this
    sent = []  # (prediction_id, index, predicted label, probability, version)
    for text in ["I was charged twice this month", "app crashes on start", "reset my password",
                 "refund my last invoice", "the page does not load at all"]:
        body = predict(url, "tickets", {"text": text})
        p = body["predictions"][0]
        sent.append((body["prediction_id"], 0, p["label"], p["probability"], body["version"]))
    batch = predict(url, "tickets", {"texts": ["my card was declined", "I cannot log in"]})
    sent += [(batch["prediction_id"], i, p["label"], p["probability"], batch["version"])
             for i, p in enumerate(batch["predictions"])]

    # Feedback right away (the log is still in the head's writer queue): 4 right, 2 wrong, one of
    # them for the second text of the batch request.
    truth = {0: sent[0][2], 1: sent[1][2], 2: sent[2][2], 6: sent[6][2],
             3: next(x for x in LABELS if x != sent[3][2]), 5: next(x for x in LABELS if x != sent[5][2])}
    items = [{"prediction_id": sent[i][0], "index": sent[i][1], "label": label} for i, label in truth.items()]
    r = httpx.post(f"{url}/v1/models/tickets/feedback", json={"items": items})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert (answer["stored"], answer["replaced"]) == (6, 0)
    assert [(x["prediction_id"], x["index"], x["predicted"], x["status"]) for x in answer["items"]] == \
        [(sent[i][0], sent[i][1], sent[i][2], "stored") for i in truth]

    r = report(url, "tickets", since=since)
    assert r.status_code == 200, r.text
    rep = r.json()
    s = rep["summary"]
    assert (s["requests"], s["texts"]) == (6, 7)
    assert s["label_distribution"] == dict(Counter(x[2] for x in sent))
    assert sum(s["confidence_histogram"]["counts"]) == 7
    assert s["confidence_mean"] == pytest.approx(sum(x[3] for x in sent) / 7, abs=1e-5)
    assert s["abstain_rate"] == 0.0  # abstain_threshold 0: the head never abstains
    lat = s["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    expected = classification_report([truth[i] for i in truth], [sent[i][2] for i in truth], LABELS)
    assert s["feedback"]["count"] == 6
    assert s["feedback"]["accuracy"] == pytest.approx(4 / 6)
    assert s["feedback"]["f1_weighted"] == pytest.approx(expected["f1_weighted"], abs=1e-6)
    assert [v["version"] for v in rep["versions"]] == [sent[0][4]]
    assert rep["versions"][0]["feedback"] == s["feedback"]
    assert sum(t["texts"] for t in rep["timeline"]) == 7 and rep["bucket"] == "hour"
    # The head's GET /drift, passed through (null when the head is down: the last test).
    assert rep["drift"]["head"] == "tickets" and isinstance(rep["drift"]["flagged"], bool)


def test_feedback_errors_name_the_problem_and_store_nothing(stack):
    url = stack["url"]
    fb = f"{url}/v1/models/tickets/feedback"
    rid = predict(url, "tickets", {"text": "my invoice is wrong"})["prediction_id"]

    started = time.monotonic()
    r = httpx.post(fb, json={"prediction_id": "never-sent-42", "label": "billing"})
    assert r.status_code == 404 and r.json()["error"]["field"] == "prediction_id"
    assert "never-sent-42" in r.json()["error"]["message"]
    assert 1.5 < time.monotonic() - started < 10  # waited (bounded) for a row that might still be on its way

    r = httpx.post(fb, json={"prediction_id": rid, "label": "weather"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "label"
    assert "'weather'" in r.json()["error"]["message"] and "billing" in r.json()["error"]["message"]

    r = httpx.post(fb, json={"prediction_id": rid, "label": "billing", "index": 3})
    assert r.status_code == 404 and "text index 3" in r.json()["error"]["message"]

    r = httpx.post(fb, json={"items": [{"prediction_id": rid, "label": "billing"}, {"prediction_id": rid, "label": "nope"}]})
    assert r.status_code == 422 and r.json()["error"]["field"] == "items[1].label"

    for bad in ({"prediction_id": rid}, {"items": []}, {"prediction_id": rid, "label": "billing", "items": []},
                {"prediction_id": rid, "label": "billing", "index": -1}):
        assert httpx.post(fb, json=bad).status_code == 422, bad

    # Nothing of the refused calls was stored: the first accepted feedback is "stored", the next "replaced".
    first = httpx.post(fb, json={"prediction_id": rid, "label": "billing"}).json()
    assert (first["stored"], first["replaced"], first["items"][0]["status"]) == (1, 0, "stored")
    second = httpx.post(fb, json={"prediction_id": rid, "label": "account"}).json()
    assert (second["stored"], second["replaced"], second["items"][0]["status"]) == (1, 1, "replaced")
    engine = make_engine(stack["db"])
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("select label from feedback where request_id = :r"), {"r": rid}).all()
    finally:
        engine.dispose()
    assert rows == [("account",)]  # one row, the latest label

    missing = httpx.post(f"{url}/v1/models/nope/feedback", json={"prediction_id": rid, "label": "billing"})
    assert missing.status_code == 404 and "tickets" in missing.json()["error"]["message"]


def test_feedback_and_reports_need_an_api_key_like_predict(stack, tmp_path):
    from gateway.auth import new_key

    key, digest = new_key()
    keys_file = tmp_path / "keys.yaml"
    keys_file.write_text(json.dumps([{"name": "helpdesk-team", "sha256": digest, "models": ["helpdesk"]}]))
    proc, url = start_gateway(stack["heads_dir"], stack["routes"], stack["target"], "--db-url", stack["db"],
                              "--api-keys-file", str(keys_file))
    try:
        auth = {"authorization": f"Bearer {key}"}
        rid = predict(url, "helpdesk", {"text": "refund please"}, headers=auth)["prediction_id"]
        body = {"prediction_id": rid, "label": "billing"}
        assert httpx.post(f"{url}/v1/models/helpdesk/feedback", json=body).status_code == 401
        assert httpx.post(f"{url}/v1/models/tickets/feedback", json=body, headers=auth).status_code == 403
        assert httpx.get(f"{url}/v1/models/tickets/report", headers=auth).status_code == 403
        ok = httpx.post(f"{url}/v1/models/helpdesk/feedback", json=body, headers=auth)
        assert ok.status_code == 200 and ok.json()["items"][0]["status"] == "stored"
        assert httpx.get(f"{url}/v1/models/helpdesk/report", headers=auth).json()["summary"]["feedback"]["count"] >= 1
    finally:
        stop(proc)


def test_train_with_feedback_adds_rows_skips_duplicates_and_redacted(stack, tmp_path):
    db, head = stack["db"], "tickets"
    engine = make_engine(db)
    try:
        # Two more feedbacks written the way the gateway writes them: one on a redacted prediction,
        # one on a text the training data already has.
        train_text = json.loads((TICKETS / "tickets_train.jsonl").read_text().splitlines()[0])["text"]
        records = [PredictionRecord.create(request_id=rid, head=head, head_version="v0", embedder_fingerprint="fp",
                                           text=text, label="billing", probability=0.9, top_k=[("billing", 0.9)],
                                           latency_ms=3.0, text_index=0, redact=redact, issued_id=rid)
                   for rid, text, redact in (("redacted-1", "a secret text", True), ("dup-1", train_text, False))]
        with engine.begin() as conn:
            conn.execute(predictions.insert(), [dataclasses.asdict(r) for r in records])
        found = find_predictions(engine, head, [("redacted-1", 0), ("dup-1", 0)])
        store_feedback(engine, head, [(found[("redacted-1", 0)], "billing"), (found[("dup-1", 0)], "billing")])
        with engine.connect() as conn:
            texts = conn.execute(sa.text("select p.text from feedback f join predictions p on p.id = f.prediction_id "
                                         "where f.head = :h"), {"h": head}).scalars().all()
    finally:
        engine.dispose()
    in_data = {json.loads(line)["text"] for split in ("train", "test")
               for line in (TICKETS / f"tickets_{split}.jsonl").read_text().splitlines() if line.strip()}
    new = {t for t in texts if t is not None and t not in in_data}
    assert len(new) >= 5  # from the traffic of the tests above

    models = tmp_path / "models"
    out = subprocess.run([sys.executable, "-m", "cli", "train", str(stack["configs"][head]), "--models-dir",
                          str(models), "--embedder-target", stack["target"], "--with-feedback", "--db-url", db],
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    counts = result["feedback"]
    assert counts["feedback_rows"] == len(texts)
    assert counts["redacted_skipped"] == 1
    assert counts["added"] == len(new)
    assert counts["duplicates_skipped"] == len(texts) - 1 - len(new) >= 1
    version_dir = models / head / result["version"]
    manifest = json.loads((version_dir / "manifest.json").read_text())
    metrics = json.loads((version_dir / "metrics.json").read_text())
    assert manifest["feedback"] == metrics["feedback"] == counts
    assert metrics["n_train"] == 48 + len(new)
    # retention may now prune the raw rows of the feedback this version read (all of it: no new label)
    engine = make_engine(db)
    try:
        mark = training_feedback_mark(engine, head)
        with engine.connect() as conn:
            newest = conn.execute(sa.select(sa.func.max(feedback.c.ts)).where(feedback.c.head == head)).scalar_one()
            marked_by = conn.execute(sa.select(training_feedback.c.head_version)).scalar_one()
        assert mark == (newest if newest.tzinfo else newest.replace(tzinfo=timezone.utc))
        assert marked_by == result["version"]
    finally:
        engine.dispose()

    # --feedback-from: only the labels of trusted keys (no key gave any here: 'anonymous' is everyone so far)
    out = subprocess.run([sys.executable, "-m", "cli", "train", str(stack["configs"][head]), "--models-dir",
                          str(models), "--embedder-target", stack["target"], "--with-feedback", "--db-url", db,
                          "--feedback-from", "some-labeller"], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    trusted = json.loads(out.stdout.strip().splitlines()[-1])["feedback"]
    assert (trusted["feedback_rows"], trusted["added"], trusted["trusted_keys"]) == (0, 0, ["some-labeller"])
    engine = make_engine(db)
    try:  # a run that left feedback out marks nothing
        with engine.connect() as conn:
            assert conn.execute(sa.select(training_feedback.c.head_version)).scalar_one() == result["version"]
    finally:
        engine.dispose()


def test_report_of_a_head_without_traffic_and_with_its_head_down(stack):
    url = stack["url"]
    dead = f"http://127.0.0.1:{free_port()}"
    write_head_config(stack["heads_dir"], "ghost", address=dead)
    deadline = time.monotonic() + 10
    while (r := report(url, "ghost")).status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.2)  # the gateway picks new configs up by polling
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["summary"]["requests"] == rep["summary"]["texts"] == 0
    assert rep["summary"]["latency_ms"] == {"p50": None, "p95": None, "p99": None}
    assert rep["summary"]["confidence_mean"] is None and rep["summary"]["feedback"]["accuracy"] is None
    assert rep["versions"] == [] and rep["timeline"] == [] and rep["drift"] is None

    missing = report(url, "nope")
    assert missing.status_code == 404
    assert "tickets" in missing.json()["error"]["message"] and "ghost" in missing.json()["error"]["message"]
    now = datetime.now(timezone.utc)
    # Every well-formed range is answered (the OpenAPI cannot state since < until nor a bucket count):
    # what was changed to fit is said in `adjusted`, and since/until/bucket are what was used.
    backwards = report(url, "tickets", since=now.isoformat(), until=(now - timedelta(hours=1)).isoformat())
    assert backwards.status_code == 200, backwards.text
    body = backwards.json()
    assert body["since"] == body["until"] and body["summary"]["texts"] == 0 and body["timeline"] == []
    assert "not before until" in body["adjusted"][0]
    assert report(url, "tickets", bucket="week").status_code == 422
    assert report(url, "tickets", since="1700000000").status_code == 422  # a Unix time is not ISO 8601
    year = report(url, "tickets", since=(now - timedelta(days=365)).isoformat())
    assert year.status_code == 200 and year.json()["bucket"] == "day", year.text
    assert "bucket=day" in year.json()["adjusted"][0]
    on_the_hour = (now - timedelta(days=365)).replace(minute=0, second=0, microsecond=0)
    day = report(url, "tickets", since=on_the_hour.isoformat(), bucket="day")
    assert day.status_code == 200 and day.json()["adjusted"] == []  # a default until widens silently
    off = report(url, "tickets", since=(on_the_hour + timedelta(minutes=7)).isoformat(), bucket="day").json()
    assert datetime.fromisoformat(off["since"]) == on_the_hour and "whole UTC hours" in off["adjusted"][0]
    ages = report(url, "tickets", since="0001-01-01T00:00:00+05:00", until="9999-12-31T23:59:59-05:00")
    assert ages.status_code == 200 and ages.json()["since"].startswith("9994-"), ages.text  # the last 2000 days


def test_polyhead_report_reads_the_gateway(stack):
    cli = [sys.executable, "-m", "cli", "report", "tickets", "--gateway", stack["url"]]
    out = subprocess.run([*cli, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["model"] == "tickets" and body["summary"]["requests"] >= 6 and body["drift"]["head"] == "tickets"
    table = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "160"})
    assert table.returncode == 0 and body["versions"][0]["version"] in table.stdout and "drift:" in table.stdout
    missing = subprocess.run([*cli[:4], "nope", "--gateway", stack["url"]], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 2 and "unknown model 'nope'" in missing.stderr
