"""Retention: raw rows older than retention_days are pruned in small batches by the writer thread, between
its writes; rollups stay (a report of those days is unchanged), rows with feedback stay. SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timedelta, timezone

import pytest

from polyhead.inference_log.feedback import find_predictions, store_feedback
from polyhead.inference_log.reports import build_report
from polyhead.inference_log.schema import count_rows, make_engine
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
