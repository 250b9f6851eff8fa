"""Retention: raw rows older than retention_days are pruned in small batches by the writer thread, between
its writes; rollups stay (a report of those days is unchanged); rows with feedback stay until a training
run has read that feedback (training_feedback's mark), and a row whose feedback is newer than the mark, or
carries a label the trained version lacks, stays for the next run. SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from heads.training.run import mark_feedback_used, read_feedback
from polyhead.inference_log.feedback import find_predictions, store_feedback, training_feedback_mark
from polyhead.inference_log.reports import build_report
from polyhead.inference_log.schema import count_rows, make_engine, predictions
from polyhead.inference_log.writer import InferenceLog
from tests.unit.polyhead.inference_log.test_inference_log import backend, make_records  # noqa: F401

pytestmark = pytest.mark.timeout(90)


def test_old_raw_rows_are_pruned_in_batches_keeping_rollups_and_feedback(backend, tmp_path):  # noqa: F811
    head = "keep"
    now = datetime.now(timezone.utc)
    old_day = (now - timedelta(days=10)).replace(hour=3, minute=0, second=0, microsecond=0)
    old = [dataclasses.replace(r, ts=old_day + timedelta(minutes=i % 50), request_id=f"old-{i}",
                               issued_id=f"old-{i}")
           for i, r in enumerate(make_records(head, 95))]
    recent = make_records(head, 40)
    with InferenceLog(backend.url, tmp_path / "spool") as log:
        for r in old + recent:
            log.record(r)
        assert log.flush()
    engine = make_engine(backend.url)
    try:
        labelled = find_predictions(engine, head, [(old[7].issued_id, 0)])[(old[7].issued_id, 0)]
        store_feedback(engine, head, [(labelled, "pos")])
        before = build_report(engine, head, since=old_day, until=old_day + timedelta(hours=1))

        with InferenceLog(backend.url, tmp_path / "spool", retention_days=7, prune_batch=10) as log:
            deadline = time.monotonic() + 30
            while log.stats.pruned < 94:
                assert time.monotonic() < deadline, f"pruned {log.stats.pruned} of 94"
                fresh = make_records(head, 5)  # writes go on meanwhile
                for r in fresh:
                    log.record(r)
                recent += fresh
                time.sleep(0.05)
            assert log.flush()
            assert log.stats.pruned == 94  # the row with feedback is kept; recent rows are not touched

        assert count_rows(backend.url, heads=[head]) == 1 + len(recent)
        after = build_report(engine, head, since=old_day, until=old_day + timedelta(hours=1))
        assert after["summary"] == before["summary"] and after["summary"]["texts"] == 95  # from the rollups
        assert after["summary"]["feedback"]["count"] == 1
    finally:
        engine.dispose()


def prune_all(url, tmp_path, expected: int) -> None:
    with InferenceLog(url, tmp_path / "spool", retention_days=7, prune_batch=10) as log:
        deadline = time.monotonic() + 30
        while log.stats.pruned < expected:
            assert time.monotonic() < deadline, f"pruned {log.stats.pruned} of {expected}"
            time.sleep(0.05)
        time.sleep(0.3)  # another pass would find nothing more
        assert log.stats.pruned == expected


def test_rows_with_feedback_are_pruned_once_a_training_run_has_read_it(backend, tmp_path):  # noqa: F811
    head = "trained"
    old_day = (datetime.now(timezone.utc) - timedelta(days=10)).replace(hour=5, minute=0, second=0, microsecond=0)
    # the client's request id differs from the server-issued one, as in production: feedback names the latter
    old = [dataclasses.replace(r, ts=old_day + timedelta(minutes=i), request_id=f"client-{i}", issued_id=f"issued-{i}")
           for i, r in enumerate(make_records(head, 30))]
    with InferenceLog(backend.url, tmp_path / "spool") as log:
        for r in old:
            log.record(r)
        assert log.flush()
    engine = make_engine(backend.url)
    try:
        found = find_predictions(engine, head, [(f"issued-{i}", 0) for i in range(4)])
        store_feedback(engine, head, [(found[(f"issued-{i}", 0)], "pos") for i in range(3)])
        store_feedback(engine, head, [(found[("issued-3", 0)], "brand-new")])  # a label no version has yet
        prune_all(backend.url, tmp_path, 26)  # no training run yet: all 4 rows with feedback stay
        assert count_rows(backend.url, heads=[head]) == 4

        examples = read_feedback(backend.url, head)  # what `train --with-feedback` reads
        assert len(examples) == 4 and all(ex.ts is not None for ex in examples)
        mark_feedback_used(backend.url, head, examples, "v9", labels={"pos", "neg"})
        # the mark stops short of the pending label's feedback (the newest here), so only the rest are used
        assert training_feedback_mark(engine, head) < max(ex.ts for ex in examples)
        store_feedback(engine, head, [(found[("issued-2", 0)], "neg")])  # relabelled after the run: newer
        prune_all(backend.url, tmp_path, 2)  # issued-0 and issued-1
        with engine.connect() as conn:
            left = sorted(conn.execute(sa.select(predictions.c.issued_id).where(predictions.c.head == head)).scalars())
        assert left == ["issued-2", "issued-3"]

        mark_feedback_used(backend.url, head, read_feedback(backend.url, head), "v10", labels={"pos", "neg", "brand-new"})
        prune_all(backend.url, tmp_path, 2)
        assert count_rows(backend.url, heads=[head]) == 0
        mark = training_feedback_mark(engine, head)
        mark_feedback_used(backend.url, head, examples[:1], "v11", labels={"pos"})  # an older mark never moves it back
        assert training_feedback_mark(engine, head) == mark
        report = build_report(engine, head, since=old_day, until=old_day + timedelta(hours=1))
        assert report["summary"]["texts"] == 30 and report["summary"]["feedback"]["count"] == 4  # rollups stay
    finally:
        engine.dispose()
