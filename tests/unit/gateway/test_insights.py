"""Reports and feedback through the gateway app (ASGITransport) on the in-process head and fake model.

The e2e layer (tests/e2e/gateway/test_reports.py) runs the same paths on the real model and
real processes; this is the fast version, including the wait for rows the head has not written yet.
"""

from __future__ import annotations

from datetime import datetime, timezone

from tests.unit.conftest import HEAD, OFFLINE_HEAD


async def test_feedback_right_after_predict_then_the_report(gateway, trained_head):
    since = datetime.now(timezone.utc).isoformat()  # rows are stamped by the head, after this
    # A report covers whole UTC hours: other tests' rows of this hour are in it too, so compare with before.
    before = (await gateway.get(f"/v1/models/{HEAD}/report", params={"since": since, "bucket": "day"})).json()
    b = before["summary"]
    batch = (await gateway.post(f"/v1/models/{HEAD}/predict", json={"texts": [
        "I need a copy of last month's invoice", "the app crashes when I log in", "where is my parcel"]})).json()
    single = (await gateway.post(f"/v1/models/{HEAD}/predict", json={"text": "please close my account"})).json()
    predicted = [p["label"] for p in batch["predictions"]] + [single["predictions"][0]["label"]]
    wrong = next(label for label in trained_head.labels if label != predicted[3])

    # No flush of the head's log: the gateway waits for the rows (feedback_wait_s).
    reply = await gateway.post(f"/v1/models/{HEAD}/feedback", json={"items": [
        {"prediction_id": batch["prediction_id"], "index": 2, "label": predicted[2]},
        {"prediction_id": single["prediction_id"], "label": wrong}]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["stored"], body["replaced"]) == (2, 0)
    assert [(i["index"], i["predicted"], i["version"]) for i in body["items"]] == [
        (2, predicted[2], trained_head.version), (0, predicted[3], trained_head.version)]

    again = (await gateway.post(f"/v1/models/{HEAD}/feedback",
                                json={"prediction_id": single["prediction_id"], "label": predicted[3]})).json()
    assert again["items"][0]["status"] == "replaced" and again["replaced"] == 1

    reply = await gateway.get(f"/v1/models/{HEAD}/report", params={"since": since, "bucket": "day"})
    assert reply.status_code == 200, reply.text
    report = reply.json()
    s = report["summary"]
    assert report["since"] <= since and report["adjusted"]  # widened to the hour, and says so
    assert (s["requests"] - b["requests"], s["texts"] - b["texts"]) == (2, 4)
    assert sum(s["label_distribution"].values()) - sum(b["label_distribution"].values()) == 4
    assert sum(s["confidence_histogram"]["counts"]) - sum(b["confidence_histogram"]["counts"]) == 4
    assert s["feedback"]["count"] - b["feedback"]["count"] == 2
    if b["feedback"]["count"] == 0:
        assert s["feedback"] == {"count": 2, "accuracy": 1.0, "f1_weighted": 1.0}  # the wrong label was replaced
    assert trained_head.version in [v["version"] for v in report["versions"]]
    assert len(report["timeline"]) == 1
    assert report["timeline"][0]["texts"] - sum(t["texts"] for t in before["timeline"]) == 4
    assert report["drift"]["head"] == HEAD and isinstance(report["drift"]["flagged"], bool)  # the head's GET /drift


async def test_feedback_with_a_label_the_model_does_not_have_is_a_422(gateway, trained_head):
    pid = (await gateway.post(f"/v1/models/{HEAD}/predict", json={"text": "refund please"})).json()["prediction_id"]
    reply = await gateway.post(f"/v1/models/{HEAD}/feedback", json={"prediction_id": pid, "label": "not-a-label"})
    assert reply.status_code == 422 and reply.json()["error"]["field"] == "label"
    assert "'not-a-label'" in reply.json()["error"]["message"]
    assert all(label in reply.json()["error"]["message"] for label in trained_head.labels)


async def test_report_of_a_head_that_is_down_and_has_no_traffic(gateway):
    reply = await gateway.get(f"/v1/models/{OFFLINE_HEAD}/report")
    assert reply.status_code == 200, reply.text
    report = reply.json()
    assert report["summary"]["texts"] == 0 and report["versions"] == [] and report["drift"] is None


# -- what the OpenAPI states and what the server enforces agree (the fuzzer relies on it) ---------------
def test_report_range_is_fitted_and_said_never_refused():
    from datetime import timedelta

    from gateway.insights import EARLIEST, LATEST, MAX_REPORT_BUCKETS, fit_report_range

    now = datetime(2026, 12, 2, 12, tzinfo=timezone.utc)
    assert fit_report_range(None, None, "hour", now=now) == (now - timedelta(hours=24), now, "hour", [])
    since, until, bucket, adjusted = fit_report_range(now, now - timedelta(hours=1), "hour")
    assert (since, until, bucket) == (now - timedelta(hours=1),) * 2 + ("hour",) and "not before" in adjusted[0]
    since, until, bucket, adjusted = fit_report_range(now - timedelta(days=365), now, "hour")
    assert (since, bucket) == (now - timedelta(days=365), "day") and adjusted == [
        f"bucket=day: the range holds more than {MAX_REPORT_BUCKETS} hour buckets"]
    since, until, bucket, adjusted = fit_report_range(datetime(1, 1, 1), None, "day", now=now)
    assert since == now - timedelta(days=MAX_REPORT_BUCKETS) and "last 2000 days" in adjusted[0]
    # The ends of datetime's range, pushed past them by an offset, clamp instead of overflowing (a 500).
    plus5, minus5 = timezone(timedelta(hours=5)), timezone(timedelta(hours=-5))
    since, until, _, _ = fit_report_range(datetime(1, 1, 1, tzinfo=plus5), datetime(9999, 12, 31, 23, tzinfo=minus5),
                                          "day")
    assert until == LATEST and since == (LATEST - timedelta(days=MAX_REPORT_BUCKETS)).replace(minute=0, second=0,
                                                                                             microsecond=0)
    assert fit_report_range(None, datetime(1, 1, 1, 3), "hour")[0] == EARLIEST
    # Ends off the hour widen to whole UTC hours (what the rollups hold), and the caller is told; a default
    # end (until = now) widens silently.
    since, until, _, adjusted = fit_report_range(now - timedelta(hours=2, minutes=30), now + timedelta(minutes=1),
                                                 "hour")
    assert (since, until) == (now - timedelta(hours=3), now + timedelta(hours=1))
    assert adjusted == [f"since={since.isoformat()}, until={until.isoformat()}: widened to whole UTC hours "
                        "(reports read hourly rollups; every count is exact over this range)"]
    since, until, _, adjusted = fit_report_range(None, None, "hour", now=now + timedelta(minutes=20))
    assert (since, until, adjusted) == (now - timedelta(hours=23), now + timedelta(hours=1), [])


def test_feedback_schema_states_one_form_and_the_model_enforces_it():
    from gateway.insights import MAX_FEEDBACK_ITEMS, FeedbackRequest

    schema = FeedbackRequest.model_json_schema()
    assert schema["additionalProperties"] is False
    first, second = schema["oneOf"]
    assert first == {"required": ["prediction_id", "label"], "not": {"required": ["items"]}}
    assert second["required"] == ["items"]
    assert {"required": ["index"]} in second["not"]["anyOf"]
    assert all("default" not in prop for prop in schema["properties"].values())  # absent, never null
    assert schema["properties"]["items"]["maxItems"] == MAX_FEEDBACK_ITEMS
    assert schema["properties"]["label"]["minLength"] == 1 and "pattern" in schema["properties"]["label"]
    item = {"prediction_id": "r", "label": "billing"}
    assert not FeedbackRequest.model_validate(item).batch
    assert FeedbackRequest.model_validate({"items": [item]}).batch


async def test_feedback_bodies_the_schema_rules_out_are_422_naming_the_field(gateway):
    item = {"prediction_id": "r1", "label": "billing"}
    cases = [({"prediction_id": None, "label": "billing"}, "prediction_id"),
             ({**item, "items": [item]}, None),
             ({"items": [item], "index": 0}, None),
             ({"items": None}, "items"),
             ({"prediction_id": "r1"}, None),
             ({"prediction_id": " \t", "label": "billing"}, "prediction_id"),
             ({**item, "extra": 1}, "extra"),
             ({"items": [item] * 1001}, "items"),
             ({"items": [{**item, "label": ""}]}, "items[0].label"),
             ({"request_id": "r\u0000x", "label": "billing"}, "request_id"),  # PostgreSQL cannot hold NUL
             ({"items": [{**item, "label": "bill\u0000ing"}]}, "items[0].label")]
    for body, field in cases:
        reply = await gateway.post(f"/v1/models/{HEAD}/feedback", json=body)
        assert reply.status_code == 422, (body, reply.text)
        if field is not None:
            assert reply.json()["error"].get("field") == field, (body, reply.text)
