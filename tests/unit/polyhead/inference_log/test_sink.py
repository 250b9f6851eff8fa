"""The head's DBAPI write path (polyhead/inference_log/sink.py) against real databases: it must store
exactly what the SQLAlchemy path stores, on SQLite and PostgreSQL, and migrate through a child process."""

from __future__ import annotations

import dataclasses
import sqlite3
import subprocess
import sys
import threading
import uuid
from datetime import datetime, timedelta, timezone

import psycopg
import pytest
import sqlalchemy as sa

from polyhead.inference_log.records import PredictionRecord
from polyhead.inference_log.reports import build_report
from polyhead.inference_log.schema import (MIGRATIONS, build_rollups, count_rows, dialect_insert, make_engine, migrate,
                                           predictions)
from polyhead.inference_log.sink import COLUMNS, SCHEMA_VERSION, InferenceDBError, open_sink, sqlite_ts
from polyhead.inference_log.writer import InferenceLog
from tests.conftest import ROOT
from tests.helpers import PostgresBackend
from tests.unit.polyhead.inference_log.test_reports import TRAFFIC

pytestmark = pytest.mark.timeout(120)


class SqliteFile:
    def __init__(self, path):
        self.url = f"sqlite:///{path}"

    def close(self):
        pass


def new_backend(kind: str, request, tmp_path):
    if kind == "sqlite":
        return SqliteFile(tmp_path / uuid.uuid4().hex[:8] / "inference.db")
    return PostgresBackend(request.getfixturevalue("postgres_url"))


@pytest.fixture(params=["sqlite", "postgresql"])
def two_dbs(request, tmp_path):
    """Two fresh databases of one kind: one written through SQLAlchemy, one through the sink."""
    backends = [new_backend(request.param, request, tmp_path) for _ in range(2)]
    yield [b.url for b in backends]
    for b in backends:
        b.close()


def sqlalchemy_write(url: str, records: list[PredictionRecord]) -> None:
    """The path heads used before sink.py: migrate, then SQLAlchemy's executemany with ON CONFLICT."""
    engine = make_engine(url)
    try:
        migrate(engine)
        stmt = dialect_insert(engine, predictions).on_conflict_do_nothing(index_elements=["id"])
        with engine.begin() as conn:
            conn.execute(stmt, [dataclasses.asdict(r) for r in records])
            build_rollups(conn)  # what migration 4 gives such rows; the sink keeps them as it writes
    finally:
        engine.dispose()


def sink_write(url: str, records: list[PredictionRecord]) -> None:
    sink = open_sink(url)
    try:
        sink.ensure_schema()
        sink.insert(records)
    finally:
        sink.close()


def through_sqlalchemy(url: str) -> dict[str, dict]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {r["id"]: dict(r) for r in conn.execute(sa.select(predictions)).mappings()}
    finally:
        engine.dispose()


def raw(url: str) -> dict[str, tuple]:
    """Rows as the database itself holds them: SQLite's stored text and types; PostgreSQL's text output."""
    cols = ", ".join(f"{c}, typeof({c})" if url.startswith("sqlite") else f"{c}::text" for c in COLUMNS)
    if url.startswith("sqlite"):
        with sqlite3.connect(open_sink(url).path) as conn:
            rows = conn.execute(f"SELECT {cols} FROM predictions").fetchall()
    else:
        with psycopg.connect(open_sink(url).conninfo) as conn:
            rows = conn.execute(f"SELECT {cols} FROM predictions").fetchall()
    return {r[0]: r for r in rows}


def varied_records(head: str = "h") -> list[PredictionRecord]:
    """Every kind of value a column can hold: redacted text, NULLs from old spools, non-ASCII, odd floats,
    a non-UTC timestamp and one with zero microseconds."""
    base = dict(head=head, head_version="v7", embedder_fingerprint="minilm:abc", latency_ms=0.1 + 0.2)
    records = [
        PredictionRecord.create(request_id="r1", text="naïve café — 東京 \"quoted\" \n tab\t", label="pos",
                                probability=0.9999999999999999, top_k=[("pos", 0.9999999999999999), ("nég", 1e-300)],
                                abstained=False, text_index=0, **base),
        PredictionRecord.create(request_id="r1", text="second", label="ünï", probability=1.0,
                                top_k=[{"label": "ünï", "probability": 1.0}], abstained=True, text_index=1, **base),
        PredictionRecord.create(request_id="r2", text="secret", label="neg", probability=0.0, top_k=[],
                                redact=True, **base),  # abstained / text_index None: a spool line from an older head
    ]
    records.append(dataclasses.replace(records[0], id=uuid.uuid4().hex,
                                       ts=datetime(2026, 3, 1, 10, 0, tzinfo=timezone(timedelta(hours=2)))))
    records.append(dataclasses.replace(records[1], id=uuid.uuid4().hex, ts=datetime(2026, 3, 1, 10, 0, 5, tzinfo=timezone.utc)))
    return records


def test_the_sink_writes_every_column_of_the_predictions_table_and_knows_the_latest_migration():
    assert sorted(COLUMNS) == sorted(c.name for c in predictions.columns)
    assert SCHEMA_VERSION == max(version for version, _, _ in MIGRATIONS)


def test_sink_rows_equal_sqlalchemy_rows_field_by_field(two_dbs):
    via_sa, via_sink = two_dbs
    records = varied_records()
    sqlalchemy_write(via_sa, records)
    sink_write(via_sink, records)
    assert raw(via_sink) == raw(via_sa) and len(raw(via_sa)) == len(records)  # the stored bytes, types included
    read_back = through_sqlalchemy(via_sink)
    assert read_back == through_sqlalchemy(via_sa)
    assert read_back[records[2].id]["text"] is None and read_back[records[2].id]["abstained"] is None


def test_sqlite_timestamps_are_stored_in_sqlalchemys_format():
    assert sqlite_ts(datetime(2026, 3, 1, 9, 5, 7, tzinfo=timezone.utc)) == "2026-03-01 09:05:07.000000"
    assert sqlite_ts(datetime(2026, 12, 31, 23, 59, 59, 123456)) == "2026-12-31 23:59:59.123456"


def test_a_report_over_sink_rows_equals_one_over_sqlalchemy_rows(two_dbs):
    via_sa, via_sink = two_dbs
    records = [PredictionRecord(**row) for row in TRAFFIC]
    sqlalchemy_write(via_sa, records)
    sink_write(via_sink, records)
    t0 = min(r.ts for r in records)
    reports = []
    for url in (via_sa, via_sink):
        engine = make_engine(url)
        try:
            reports.append([build_report(engine, "h", since=t0 - timedelta(hours=1), until=t0 + timedelta(hours=3),
                                         bucket=bucket) for bucket in ("hour", "day")])
        finally:
            engine.dispose()
    assert reports[0] == reports[1]
    assert reports[1][0]["summary"]["texts"] == 7  # the rows really were there: 'old' is in range, 'other' is not


def test_replaying_rows_already_written_duplicates_nothing(two_dbs):
    url = two_dbs[1]
    records = varied_records()
    sink = open_sink(url)
    try:
        assert sink.ensure_schema() is True  # fresh DB: the child migration ran
        assert sink.ensure_schema() is False  # current now: nothing to run
        sink.insert(records[:3])
        sink.insert(records)  # a replay overlapping what is in already
        sink.insert(records)
    finally:
        sink.close()
    assert count_rows(url) == len(records)
    assert set(through_sqlalchemy(url)) == {r.id for r in records}


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_heads_starting_together_on_a_fresh_db_migrate_once(kind, request, tmp_path):
    backend = new_backend(kind, request, tmp_path)
    barrier, logs = threading.Barrier(3), []

    def start(i):
        log = InferenceLog(backend.url, tmp_path / f"spool-{i}")
        barrier.wait()
        log.start()  # each one finds the DB behind and runs its own migration child; the lock orders them
        logs.append(log)

    try:
        threads = [threading.Thread(target=start, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(logs) == 3 and all(log.healthy() for log in logs)
        for log in logs:
            log.close()
        engine = make_engine(backend.url)
        try:
            with engine.connect() as conn:
                versions = conn.execute(sa.text("SELECT version FROM polyhead_schema_version")).scalars().all()
        finally:
            engine.dispose()
        assert sorted(versions) == [v for v, _, _ in MIGRATIONS]
    finally:
        backend.close()


def test_a_failed_migration_is_an_inference_db_error_and_the_log_spools(postgres_url, tmp_path):
    # A reachable server whose search_path names no schema: the version check works, CREATE TABLE fails.
    url = sa.make_url(postgres_url).update_query_dict({"options": "-csearch_path=no_such_schema_" + uuid.uuid4().hex[:8]})
    url = url.render_as_string(hide_password=False)
    with pytest.raises(InferenceDBError, match="migration failed"):
        open_sink(url).ensure_schema()
    with InferenceLog(url, tmp_path / "spool", retry_min_s=5) as log:
        log.record(varied_records()[0])
        assert log.flush() and not log.healthy()
        assert log.stats.spooled == 1 and log.stats.written == 0


def test_urls_are_read_as_sqlalchemy_reads_them(tmp_path):
    for url in (f"sqlite:///{tmp_path}/a%20b/i.db", "sqlite:///var/inference.db?timeout=0.2"):
        sink, parsed = open_sink(url), sa.make_url(url)
        assert sink.path == parsed.database
        assert sink.timeout == float(parsed.query.get("timeout", 5.0))
    pg = open_sink("postgresql+psycopg://u:p%40ss@db.example:6543/test?options=-csearch_path%3Dx")
    assert pg.conninfo == "postgresql://u:p%40ss@db.example:6543/test?options=-csearch_path%3Dx"
    for bad in ("sqlite://", "sqlite:///:memory:", "sqlite:///x.db?uri=true", "mysql://x/y"):
        with pytest.raises(ValueError):
            open_sink(bad)


def test_a_serving_head_on_a_fresh_postgresql_never_loads_sqlalchemy(postgres_url, tmp_path):
    backend = PostgresBackend(postgres_url)
    try:
        code = f"""
import sys
from polyhead.inference_log.records import PredictionRecord
from polyhead.inference_log.writer import InferenceLog
with InferenceLog({backend.url!r}, {str(tmp_path / 'spool')!r}) as log:
    log.record(PredictionRecord.create(request_id="r", head="h", head_version="1", embedder_fingerprint="f",
                                       text="t", label="a", probability=0.5, top_k=[("a", 0.5)], latency_ms=1.0))
    assert log.flush() and log.healthy() and log.stats.written == 1, log.stats
assert not [m for m in sys.modules if m.startswith("sqlalchemy")]
"""
        done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr[-2000:]
        assert count_rows(backend.url) == 1  # the child migrated the fresh schema, the head wrote its row
    finally:
        backend.close()
