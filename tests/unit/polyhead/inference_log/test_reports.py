"""Reports and feedback SQL against real databases: a SQLite file and the shared PostgreSQL (own schema).

Rows are inserted directly (no head, no TensorFlow) with values chosen so every figure of the
report can be worked out by hand.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from polyhead.inference_log.feedback import feedback_examples, find_predictions, store_feedback
from polyhead.inference_log.records import PredictionRecord
from polyhead.inference_log.reports import build_report, empty_stats
from polyhead.inference_log.schema import (MIGRATIONS, _predictions_v1, build_rollups, make_engine, migrate, predictions,
                                           schema_version)
from tests.helpers import PostgresBackend

pytestmark = pytest.mark.timeout(60)

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)


class SqliteFile:
    def __init__(self, tmp_path):
        self.url = f"sqlite:///{tmp_path / 'inference.db'}"

    def close(self):
        pass


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    backend = SqliteFile(tmp_path) if request.param == "sqlite" else PostgresBackend(request.getfixturevalue("postgres_url"))
    engine = make_engine(backend.url)
    migrate(engine)
    yield engine
    engine.dispose()
    backend.close()


def row(rid, *, version="v1", index=0, label="pos", p=0.9, latency=10.0, abstained=False, minutes=0, head="h",
        text="some text", redact=False, client_rid=None, caller=None) -> dict:
    """A logged prediction whose server-issued id (what feedback names) is `rid`."""
    rec = PredictionRecord.create(request_id=client_rid or rid, head=head, head_version=version,
                                  embedder_fingerprint="fp", text=text, label=label, probability=p, top_k=[(label, p)],
                                  latency_ms=latency, abstained=abstained, text_index=index, redact=redact,
                                  issued_id=rid, caller=caller)
    return {**dataclasses.asdict(rec), "ts": T0 + timedelta(minutes=minutes)}


def within_1pct(percentiles: dict) -> dict:
    return {k: pytest.approx(v, rel=0.01) for k, v in percentiles.items()}


def insert(engine, rows, table=predictions):
    """Raw rows, as an old log holds them; then their rollups, as migration 4 builds them for such a log
    (the writer keeps them as it inserts: test_rollups.py checks the two agree)."""
    with engine.begin() as conn:
        conn.execute(table.insert(), rows)
        if table is predictions:
            build_rollups(conn)


TRAFFIC = [
    # v1 in the 10:00 hour: 4 requests, 5 texts (r1 has two), latencies 10/20/30/40 ms, one abstention
    row("r1", index=0, label="pos", p=0.05, latency=10, minutes=1, text="first"),
    row("r1", index=1, label="neg", p=0.95, latency=10, minutes=1, text="second"),
    row("r2", label="pos", p=0.55, latency=20, minutes=2, text="third"),
    row("r3", label="pos", p=1.0, latency=30, minutes=3, abstained=True, text="fourth"),
    row("r4", label="neg", p=0.3, latency=40, minutes=4, redact=True),
    # v2 in the 11:00 hour; logged before migration 2 (no abstained / text_index)
    {**row("r5", version="v2", label="neg", p=0.5, latency=5, minutes=65), "abstained": None, "text_index": None},
    # outside the window, and another head: never counted
    row("old", label="pos", minutes=-30),
    row("other", head="other-head", minutes=5),
]


def test_report_figures_are_computed_in_sql_on_both_databases(engine):
    insert(engine, TRAFFIC)
    preds = find_predictions(engine, "h", [("r1", 0), ("r1", 1), ("r2", 0), ("r1", 7), ("nope", 0)])
    assert set(preds) == {("r1", 0), ("r1", 1), ("r2", 0)}  # unknown index / request: not found
    replaced = store_feedback(engine, "h", [(preds[("r1", 0)], "pos"), (preds[("r1", 1)], "pos"),
                                            (preds[("r2", 0)], "pos")])
    assert replaced == [False, False, False]
    assert store_feedback(engine, "h", [(preds[("r2", 0)], "neg")]) == [True]  # the latest wins

    report = build_report(engine, "h", since=T0, until=T0 + timedelta(hours=2), bucket="hour")
    assert report["model"] == "h" and report["bucket"] == "hour"
    assert report["since"] == T0.isoformat() and report["until"] == (T0 + timedelta(hours=2)).isoformat()

    s = report["summary"]
    assert (s["requests"], s["texts"]) == (5, 6)
    assert s["label_distribution"] == {"neg": 3, "pos": 3}
    assert s["confidence_histogram"]["edges"] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert s["confidence_histogram"]["counts"] == [1, 0, 0, 1, 0, 2, 0, 0, 0, 2]  # 0.05 | 0.3 | 0.5 0.55 | 0.95 1.0
    assert s["confidence_mean"] == pytest.approx((0.05 + 0.95 + 0.55 + 1.0 + 0.3 + 0.5) / 6)
    assert s["abstain_rate"] == pytest.approx(1 / 5)  # the v2 row does not record it
    # request latencies 5, 10, 20, 30, 40: nearest rank ceil(p * 5) -> 3rd, 5th, 5th
    assert s["latency_ms"] == within_1pct({"p50": 20.0, "p95": 40.0, "p99": 40.0})  # log-spaced buckets
    # feedback (true, predicted): (pos, pos), (pos, neg), (neg, pos) -> accuracy 1/3; F1 pos 0.5 (support 2), neg 0
    assert s["feedback"] == {"count": 3, "accuracy": pytest.approx(1 / 3), "f1_weighted": pytest.approx(1 / 3)}

    v1, v2 = report["versions"]
    assert v1["version"] == "v1" and v2["version"] == "v2"
    assert (v1["requests"], v1["texts"], v2["requests"], v2["texts"]) == (4, 5, 1, 1)
    assert v1["latency_ms"] == within_1pct({"p50": 20.0, "p95": 40.0, "p99": 40.0})  # 10 20 30 40: 2nd, 4th, 4th
    assert v2["latency_ms"] == within_1pct({"p50": 5.0, "p95": 5.0, "p99": 5.0})
    assert v1["label_distribution"] == {"neg": 2, "pos": 3} and v2["label_distribution"] == {"neg": 1}
    assert v1["abstain_rate"] == pytest.approx(1 / 5) and v2["abstain_rate"] is None
    assert v2["feedback"] == {"count": 0, "accuracy": None, "f1_weighted": None}
    assert v1["feedback"]["count"] == 3

    assert [(t["start"], t["version"], t["requests"], t["texts"]) for t in report["timeline"]] == [
        ("2026-03-01T10:00:00+00:00", "v1", 4, 5), ("2026-03-01T11:00:00+00:00", "v2", 1, 1)]
    assert report["timeline"][0]["latency_ms"] == v1["latency_ms"]
    assert report["timeline"][1]["abstain_rate"] is None

    day = build_report(engine, "h", since=T0 - timedelta(hours=1), until=T0 + timedelta(hours=2), bucket="day")
    assert [(t["start"], t["version"], t["texts"]) for t in day["timeline"]] == [
        ("2026-03-01T00:00:00+00:00", "v1", 6), ("2026-03-01T00:00:00+00:00", "v2", 1)]  # 'old' is in range now


def test_a_head_without_traffic_gets_an_empty_report(engine):
    report = build_report(engine, "silent", since=T0, until=T0 + timedelta(hours=1))
    assert report["summary"] == empty_stats()
    assert report["summary"]["latency_ms"] == {"p50": None, "p95": None, "p99": None}
    assert report["versions"] == [] and report["timeline"] == []


def test_default_range_is_the_last_24_hours(engine):
    now = datetime.now(timezone.utc)
    insert(engine, [{**row("recent"), "ts": now - timedelta(hours=1)}, {**row("stale"), "ts": now - timedelta(hours=25)}])
    report = build_report(engine, "h")
    assert report["summary"]["requests"] == 1
    assert datetime.fromisoformat(report["until"]) - datetime.fromisoformat(report["since"]) == timedelta(hours=24)


def test_feedback_examples_carry_the_logged_text_or_none_when_redacted(engine):
    insert(engine, [row("a", text="hello there"), row("b", redact=True), row("c", text="unlabelled")])
    preds = find_predictions(engine, "h", [("a", 0), ("b", 0)])
    store_feedback(engine, "h", [(preds[("a", 0)], "neg"), (preds[("b", 0)], "pos")])
    store_feedback(engine, "h", [(preds[("a", 0)], "pos")])
    examples = feedback_examples(engine, "h")
    assert sorted((e.text or "", e.label) for e in examples) == [("", "pos"), ("hello there", "pos")]


def test_feedback_names_the_server_issued_id_never_a_clients_request_id(engine):
    # Two callers sent the same x-request-id: each prediction is found only by its own issued id.
    insert(engine, [row("issued-a", client_rid="shared-394580", label="pos", caller="alice"),
                    row("issued-b", client_rid="shared-394580", label="neg", caller="bob")])
    assert find_predictions(engine, "h", [("shared-394580", 0)]) == {}
    found = find_predictions(engine, "h", [("issued-a", 0), ("issued-b", 0)])
    assert (found[("issued-a", 0)].label, found[("issued-a", 0)].caller) == ("pos", "alice")
    assert (found[("issued-b", 0)].label, found[("issued-b", 0)].caller) == ("neg", "bob")


def test_who_gave_each_label_is_stored_and_training_can_trust_only_some(engine):
    from polyhead.inference_log.feedback import ANONYMOUS
    from polyhead.inference_log.schema import feedback

    insert(engine, [row("a", text="from alice"), row("b", text="from the labeller"), row("c", text="no key")])
    preds = find_predictions(engine, "h", [("a", 0), ("b", 0), ("c", 0)])
    store_feedback(engine, "h", [(preds[("a", 0)], "neg")], given_by="alice")
    store_feedback(engine, "h", [(preds[("b", 0)], "pos")], given_by="labeller-1")
    store_feedback(engine, "h", [(preds[("c", 0)], "pos")])
    with engine.connect() as conn:
        stored = dict(conn.execute(sa.select(feedback.c.request_id, feedback.c.given_by)).all())
    assert stored == {"a": "alice", "b": "labeller-1", "c": None}

    def texts(given_by):
        return sorted(e.text for e in feedback_examples(engine, "h", given_by=given_by))

    assert texts(None) == ["from alice", "from the labeller", "no key"]
    assert texts(["labeller-1"]) == ["from the labeller"]
    assert texts(["labeller-1", ANONYMOUS]) == ["from the labeller", "no key"]
    assert texts([]) == []


def test_migrations_upgrade_a_database_created_before_them(tmp_path, request):
    """A database with only migration 1 (and rows) gains the new columns (NULL in old rows) and tables."""
    for kind in ("sqlite", "postgresql"):
        backend = SqliteFile(tmp_path) if kind == "sqlite" else PostgresBackend(request.getfixturevalue("postgres_url"))
        engine = make_engine(backend.url)
        try:
            with engine.begin() as conn:
                _predictions_v1.create(conn)
                schema_version.create(conn)
                conn.execute(schema_version.insert().values(version=1, description="create predictions",
                                                            applied_at=datetime.now(timezone.utc)))
                old = row("old-row", minutes=5)
                conn.execute(_predictions_v1.insert().values({k: v for k, v in old.items()
                                                              if k not in ("abstained", "text_index", "issued_id",
                                                                           "caller", "shadow")}))
            assert migrate(engine) == [v for v, _, _ in MIGRATIONS if v > 1]
            assert migrate(engine) == []
            with engine.connect() as conn:
                got = conn.execute(sa.select(predictions.c.abstained, predictions.c.text_index,
                                             predictions.c.shadow)).one()
            assert tuple(got) == (None, None, None)
            report = build_report(engine, "h", since=T0, until=T0 + timedelta(hours=1))
            assert (report["summary"]["requests"], report["summary"]["abstain_rate"]) == (1, None)
            indexes = {ix["name"] for ix in sa.inspect(engine).get_indexes("predictions")}
            assert {"ix_predictions_head_ts", "ix_predictions_request_id", "ix_predictions_report",
                    "ix_predictions_head_issued_id", "ix_predictions_shadow"} <= indexes
            assert "given_by" in {c["name"] for c in sa.inspect(engine).get_columns("feedback")}
            inspect = sa.inspect(engine)  # migration 8: what reports and retention read
            assert "latency_bins" in {c["name"] for c in inspect.get_columns("rollup_hour")}
            assert "training_feedback" in inspect.get_table_names()
            assert "ix_feedback_prediction_id" in {ix["name"] for ix in inspect.get_indexes("feedback")}
            for table in ("rollup_hour", "rollup_label", "rollup_feedback"):
                assert f"ix_{table}_head_hour" in {ix["name"] for ix in inspect.get_indexes(table)}
        finally:
            engine.dispose()
            backend.close()
