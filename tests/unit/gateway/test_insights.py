"""Reports and feedback through the gateway app (ASGITransport) on the in-process head and fake model.

The e2e layer (tests/e2e/gateway/test_reports.py) runs the same paths on the real model and
real processes; this is the fast version, including the wait for rows the head has not written yet.
"""

from __future__ import annotations

from datetime import datetime, timezone

from tests.unit.conftest import HEAD, OFFLINE_HEAD


async def test_feedback_right_after_predict_then_the_report(gateway, trained_head):
    since = datetime.now(timezone.utc).isoformat()  # rows are stamped by the head, after this
    batch = (await gateway.post(f"/v1/models/{HEAD}/predict", json={"texts": [
        "I need a copy of last month's invoice", "the app crashes when I log in", "where is my parcel"]})).json()
    single = (await gateway.post(f"/v1/models/{HEAD}/predict", json={"text": "please close my account"})).json()
    predicted = [p["label"] for p in batch["predictions"]] + [single["predictions"][0]["label"]]
    wrong = next(label for label in trained_head.labels if label != predicted[3])

    # No flush of the head's log: the gateway waits for the rows (feedback_wait_s).
    reply = await gateway.post(f"/v1/models/{HEAD}/feedback", json={"items": [
        {"request_id": batch["request_id"], "index": 2, "label": predicted[2]},
        {"request_id": single["request_id"], "label": wrong}]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["stored"], body["replaced"]) == (2, 0)
    assert [(i["index"], i["predicted"], i["version"]) for i in body["items"]] == [
        (2, predicted[2], trained_head.version), (0, predicted[3], trained_head.version)]

    again = (await gateway.post(f"/v1/models/{HEAD}/feedback",
                                json={"request_id": single["request_id"], "label": predicted[3]})).json()
    assert again["items"][0]["status"] == "replaced" and again["replaced"] == 1

    reply = await gateway.get(f"/v1/models/{HEAD}/report", params={"since": since, "bucket": "day"})
    assert reply.status_code == 200, reply.text
    report = reply.json()
    s = report["summary"]
    assert (s["requests"], s["texts"]) == (2, 4)
    assert sum(s["label_distribution"].values()) == 4 and sum(s["confidence_histogram"]["counts"]) == 4
    assert s["feedback"] == {"count": 2, "accuracy": 1.0, "f1_weighted": 1.0}  # the wrong label was replaced
    assert [v["version"] for v in report["versions"]] == [trained_head.version]
    assert len(report["timeline"]) == 1 and report["timeline"][0]["texts"] == 4
    assert report["drift"]["head"] == HEAD and isinstance(report["drift"]["flagged"], bool)  # the head's GET /drift


async def test_feedback_with_a_label_the_model_does_not_have_is_a_422(gateway, trained_head):
    rid = (await gateway.post(f"/v1/models/{HEAD}/predict", json={"text": "refund please"})).json()["request_id"]
    reply = await gateway.post(f"/v1/models/{HEAD}/feedback", json={"request_id": rid, "label": "not-a-label"})
    assert reply.status_code == 422 and reply.json()["error"]["field"] == "label"
    assert "'not-a-label'" in reply.json()["error"]["message"]
    assert all(label in reply.json()["error"]["message"] for label in trained_head.labels)


async def test_report_of_a_head_that_is_down_and_has_no_traffic(gateway):
    reply = await gateway.get(f"/v1/models/{OFFLINE_HEAD}/report")
    assert reply.status_code == 200, reply.text
    report = reply.json()
    assert report["summary"]["texts"] == 0 and report["versions"] == [] and report["drift"] is None
