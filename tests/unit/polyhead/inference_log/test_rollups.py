"""Hourly rollups: kept by the writer in the transaction of the raw rows, exact for counts, never counted
twice on a replay, equal to what migration 4 builds from the raw rows of an old log; a report over a
range off the hour (widened to whole hours, read from rollups only) equals the figures worked out from
the raw rows of the hours it states; schema 7's JSON histograms move into latency_bins and are still read
from an old writer; latency percentiles within 1 % of the exact ones. SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from polyhead.inference_log import rollups
from polyhead.inference_log.feedback import find_predictions, store_feedback
from polyhead.inference_log.records import PredictionRecord
from polyhead.inference_log.reports import HISTOGRAM_EDGES, build_report, percentiles
from polyhead.inference_log.schema import (ROLLUP_TABLES, build_rollups, make_engine, migrate, predictions,
                                           schema_version)
from polyhead.inference_log.sink import open_sink
from polyhead.inference_log.writer import InferenceLog
from tests.unit.polyhead.inference_log.test_inference_log import backend  # noqa: F401

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2026, 5, 4, 7, 0, tzinfo=timezone.utc)


def exact_percentiles(values: list[float]) -> dict:
    ordered = sorted(values)
    return {f"p{p}": ordered[-(-len(ordered) * p // 100) - 1] for p in (50, 95, 99)}


def test_latency_histogram_percentiles_are_within_1_percent_of_the_exact_ones():
    rng = random.Random(7)
    for shape in ("lognormal", "bimodal", "uniform"):
        if shape == "lognormal":
            values = [rng.lognormvariate(math.log(8), 0.8) for _ in range(20_000)]
        elif shape == "bimodal":
            values = [rng.gauss(3, 0.2) if rng.random() < 0.9 else rng.gauss(250, 30) for _ in range(20_000)]
        else:
            values = [rng.uniform(0.05, 5000) for _ in range(20_000)]
        values = [max(v, 0.01) for v in values]
        histogram = Counter(rollups.latency_bucket(v) for v in values)
        got = percentiles({rollups.bucket_value(b): n for b, n in histogram.items()})
        for key, exact in exact_percentiles(values).items():
            assert abs(got[key] - exact) / exact <= 0.01, (shape, key, got[key], exact)


def varied_records(n: int = 1500, seed: int = 3) -> list[PredictionRecord]:
    """Six hours of traffic, two versions, requests of 1-3 texts, some rows from before migration 2."""
    rng = random.Random(seed)
    out = []
    i = 0
    while len(out) < n:
        minute = rng.uniform(0, 360)
        version = "v1" if minute < 200 else "v2"
        latency = rng.lognormvariate(math.log(6), 0.7)
        for index in range(rng.choice((1, 1, 2, 3))):
            p = rng.random()
            label = rng.choice(("billing", "shipping", "tech"))
            old = rng.random() < 0.05
            rec = PredictionRecord.create(
                request_id=f"req-{i}", head="roll", head_version=version, embedder_fingerprint="f", text=f"t{i}",
                label=label, probability=p, top_k=[(label, p)], latency_ms=latency,
                abstained=None if old else p < 0.3, text_index=None if old else index)
            out.append(dataclasses.replace(rec, ts=T0 + timedelta(minutes=minute)))
        i += 1
    return out


def rollup_snapshot(url: str) -> dict:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            snap = {}
            for table in ROLLUP_TABLES:
                keys = [c.name for c in table.primary_key.columns]
                rows = conn.execute(sa.select(table)).mappings().all()
                snap[table.name] = {tuple(str(r[k]) for k in keys): {c: (round(v, 6) if isinstance(v, float) else str(v))
                                                                     for c, v in r.items() if c not in keys}
                                    for r in rows}
            return snap
    finally:
        engine.dispose()


def test_writer_rollups_are_exact_idempotent_and_equal_to_the_migrations(backend, tmp_path):  # noqa: F811
    records = varied_records()
    with InferenceLog(backend.url, tmp_path / "spool", batch_size=200) as log:
        for rec in records:
            log.record(rec)
        assert log.flush()
    engine = make_engine(backend.url)
    try:  # feedback on 300 texts, then a second opinion on 100 of them (replaced: their count moves)
        found = find_predictions(engine, "roll", [(r.request_id, r.text_index or 0) for r in records[:300]])
        store_feedback(engine, "roll", [(p, "billing") for p in found.values()])
        store_feedback(engine, "roll", [(p, "tech") for p in list(found.values())[:100]])
    finally:
        engine.dispose()
    written = rollup_snapshot(backend.url)
    assert sum(int(v["n"]) for v in written["rollup_feedback"].values()) == len(found)
    assert sum(int(v["texts"]) for v in written["rollup_hour"].values()) == len(records)
    assert len(written["rollup_hour"]) >= 6  # per (version, hour)

    sink = open_sink(backend.url)  # a replay of rows already there (a restart after a crash) adds nothing
    try:
        assert sink.insert(records[:700]) == []
    finally:
        sink.close()
    assert rollup_snapshot(backend.url) == written

    engine = make_engine(backend.url)  # migration 4's builder over the same raw rows agrees to the row
    try:
        with engine.begin() as conn:
            assert build_rollups(conn) == len(records)
    finally:
        engine.dispose()
    assert rollup_snapshot(backend.url) == written


def test_a_report_off_the_hour_covers_its_whole_hours_and_equals_the_figures_of_their_rows(backend, tmp_path):  # noqa: F811
    """The fast path (rollups only, three queries) against the figures computed from the raw rows of the
    range the report states: since/until widened to whole UTC hours; feedback included."""
    records = [dataclasses.replace(r, issued_id=f"issued-{i}") for i, r in enumerate(varied_records(seed=11))]
    with InferenceLog(backend.url, tmp_path / "spool") as log:
        for rec in records:
            log.record(rec)
        assert log.flush()
    since, until = T0 + timedelta(minutes=17, seconds=5), T0 + timedelta(hours=5, minutes=23)
    covered = (T0, T0 + timedelta(hours=6))  # 07:00 to 13:00: the whole hours around [07:17:05, 12:23)
    inside = [r for r in records if covered[0] <= r.ts < covered[1]]
    requests = [r for r in inside if not r.text_index]
    engine = make_engine(backend.url)
    try:
        found = find_predictions(engine, "roll", [(r.issued_id, r.text_index or 0) for r in records[::7]])
        assert len(found) > 100
        labelled = {key: ("billing" if i % 3 else "tech") for i, key in enumerate(found)}
        store_feedback(engine, "roll", [(found[key], label) for key, label in labelled.items()])
        with engine.connect() as conn:  # the raw-row truth of the feedback: (true, predicted) pairs
            pairs = Counter(tuple(r) for r in conn.execute(sa.text(
                "SELECT f.label, p.label FROM feedback f JOIN predictions p ON p.id = f.prediction_id")))
        for bucket in ("hour", "day"):
            report = build_report(engine, "roll", since=since, until=until, bucket=bucket)
            assert (report["since"], report["until"]) == tuple(t.isoformat() for t in covered)
            s = report["summary"]
            assert (s["texts"], s["requests"]) == (len(inside), len(requests))
            assert s["label_distribution"] == dict(sorted(Counter(r.label for r in inside).items(),
                                                          key=lambda kv: (-kv[1], kv[0])))
            bins = [sum(1 for r in inside if (i == 0 or r.probability >= HISTOGRAM_EDGES[i])
                        and (i == 9 or r.probability < HISTOGRAM_EDGES[i + 1])) for i in range(10)]
            assert s["confidence_histogram"]["counts"] == bins
            assert s["confidence_mean"] == pytest.approx(sum(r.probability for r in inside) / len(inside), abs=1e-6)
            known = [r for r in inside if r.abstained is not None]
            assert s["abstain_rate"] == pytest.approx(sum(r.abstained for r in known) / len(known), abs=1e-6)
            for key, exact in exact_percentiles([r.latency_ms for r in requests]).items():
                assert abs(s["latency_ms"][key] - exact) / exact <= 0.01, (key, s["latency_ms"][key], exact)
            correct = sum(n for (t, p), n in pairs.items() if t == p)
            assert s["feedback"]["count"] == sum(pairs.values()) == len(found)
            assert s["feedback"]["accuracy"] == pytest.approx(correct / len(found), abs=1e-6)
            assert sum(t["texts"] for t in report["timeline"]) == len(inside)
            assert [v["version"] for v in report["versions"]] == ["v1", "v2"]
        hours = build_report(engine, "roll", since=since, until=until, bucket="hour")["timeline"]
        assert [t["start"] for t in hours][:2] == ["2026-05-04T07:00:00+00:00", "2026-05-04T08:00:00+00:00"]
        assert hours[0]["texts"] == sum(1 for r in inside if r.ts < T0 + timedelta(hours=1))  # the whole first hour
        empty = build_report(engine, "roll", since=until, until=until)  # an empty range stays empty
        assert empty["since"] == empty["until"] == until.isoformat() and empty["summary"]["texts"] == 0
    finally:
        engine.dispose()


def test_migration_8_moves_json_latency_histograms_and_readers_add_an_old_writers_meanwhile(backend, tmp_path):  # noqa: F811
    """Schema 7 stored each hour's latency histogram as JSON; migration 8 moves it into latency_bins. A
    writer of schema 7 still running during a rolling upgrade adds to the JSON column: reports add both."""
    records = varied_records(600, seed=23)
    with InferenceLog(backend.url, tmp_path / "spool") as log:
        for rec in records:
            log.record(rec)
        assert log.flush()
    engine = make_engine(backend.url)
    r = ROLLUP_TABLES[0]
    try:
        window = dict(since=T0, until=T0 + timedelta(hours=6))
        before = build_report(engine, "roll", **window)
        with engine.begin() as conn:  # back to schema 7's form: JSON histograms, no bins
            for key in conn.execute(sa.select(r.c.head, r.c.head_version, r.c.hour, r.c.latency_bins)).all():
                where = (r.c.head == key[0], r.c.head_version == key[1], r.c.hour == key[2])
                conn.execute(r.update().where(*where).values(
                    latency=rollups.encode_latency(rollups.decode_bins(key[3])), latency_bins=None))
        assert build_report(engine, "roll", **window) == before  # an old writer's rows are read too
        with engine.begin() as conn:
            conn.execute(schema_version.delete().where(schema_version.c.version == 8))
        assert migrate(engine) == [8]
        with engine.connect() as conn:
            rows = conn.execute(sa.select(r.c.latency, r.c.latency_bins)).all()
        assert {text for text, _ in rows} == {"{}"} and all(bins for _, bins in rows)
        assert build_report(engine, "roll", **window) == before
    finally:
        engine.dispose()


def test_migration_4_builds_rollups_for_a_log_written_before_them(backend):  # noqa: F811
    records = varied_records(300, seed=5)
    engine = make_engine(backend.url)
    try:
        migrate(engine)
        with engine.begin() as conn:  # an old log: raw rows, no rollups, schema at version 3
            for table in ROLLUP_TABLES:
                table.drop(conn)
            conn.execute(schema_version.delete().where(schema_version.c.version == 4))
            conn.execute(predictions.insert(), [{**{f.name: getattr(r, f.name) for f in dataclasses.fields(r)}}
                                                for r in records])
        assert migrate(engine) == [4]
        report = build_report(engine, "roll", since=T0, until=T0 + timedelta(hours=6))
        assert report["summary"]["texts"] == len(records)
        assert report["summary"]["requests"] == sum(1 for r in records if not r.text_index)
    finally:
        engine.dispose()


def test_two_processes_writing_one_head_keep_exact_rollups(backend, tmp_path):  # noqa: F811
    """Replicas of a head write the same (head, version, hour) rows at once: increments and the merged
    latency histogram stay exact (the upsert's row lock serialises the read-merge-write)."""
    import threading

    records = varied_records(2400, seed=17)
    logs = [InferenceLog(backend.url, tmp_path / f"spool{i}", batch_size=50, flush_interval_s=0.01) for i in range(2)]
    for log in logs:
        log.start()
    try:
        def produce(log, part):
            for rec in part:
                log.record(rec)

        threads = [threading.Thread(target=produce, args=(log, records[i::2])) for i, log in enumerate(logs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert all(log.flush(timeout_s=60) for log in logs)
        assert sum(log.stats.written for log in logs) == len(records)
    finally:
        for log in logs:
            log.close()
    engine = make_engine(backend.url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(ROLLUP_TABLES[0])).mappings().all()
    finally:
        engine.dispose()
    assert sum(r["texts"] for r in rows) == len(records)
    requests = [r for r in records if not r.text_index]
    assert sum(r["requests"] for r in rows) == len(requests)
    assert sum(sum(rollups.decode_bins(r["latency_bins"]).values()) for r in rows) == len(requests)
