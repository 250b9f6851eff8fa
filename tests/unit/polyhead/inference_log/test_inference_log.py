"""Inference log against real databases: a SQLite file and the shared PostgreSQL (own schema per test).

Outages are real: for PostgreSQL a TCP proxy between the log and the server is cut (listener and
every open connection closed) and restored on the same port; for SQLite another connection holds
the write lock (``BEGIN EXCLUSIVE``) so inserts fail with "database is locked" after the busy timeout.
(Renaming the file or its directory away would not fail anything: pooled connections keep writing
through their open file descriptors.)
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
import uuid
from datetime import timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from polyhead.inference_log.records import PredictionRecord
from polyhead.inference_log.schema import MIGRATIONS, count_rows, make_engine, migrate, predictions, schema_version
from polyhead.inference_log.writer import InferenceLog
from tests.helpers import PostgresBackend, TcpProxy  # noqa: F401

pytestmark = pytest.mark.timeout(60)

FAST_RETRY = {"retry_min_s": 0.05, "retry_max_s": 0.5}


class SqliteBackend:
    name = "sqlite"

    def __init__(self, tmp_path: Path):
        self.path = tmp_path / "db" / "inference.db"
        self.url = f"sqlite:///{self.path}"
        self.flaky_url = self.url + "?timeout=0.2"  # short busy timeout: the lock reads as an outage fast
        (tmp_path / "not-a-dir").write_text("")
        self.dead_url = f"sqlite:///{tmp_path / 'not-a-dir' / 'inference.db'}"
        self._locker: sqlite3.Connection | None = None

    def down(self) -> None:
        self._locker = sqlite3.connect(self.path, isolation_level=None)
        self._locker.execute("BEGIN EXCLUSIVE")

    def up(self) -> None:
        self._locker.execute("ROLLBACK")
        self._locker.close()

    def close(self) -> None:
        pass


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path):
    b = SqliteBackend(tmp_path) if request.param == "sqlite" else PostgresBackend(request.getfixturevalue("postgres_url"))
    yield b
    b.close()


def make_records(head: str, n: int, *, redact: bool = False) -> list[PredictionRecord]:
    return [
        PredictionRecord.create(
            request_id=f"req-{i}", head=head, head_version="v3", embedder_fingerprint="minilm:abc123",
            text=f"text number {i} — ünïcode", label="pos" if i % 2 else "neg", probability=0.5 + i % 50 / 100,
            top_k=[("pos", 0.7), ("neg", 0.3)], latency_ms=1.25 + i, abstained=i % 3 == 1, text_index=0,
            redact=redact,
        )
        for i in range(n)
    ]


def fetch(url: str, heads: list[str]) -> dict[str, dict]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(predictions).where(predictions.c.head.in_(heads))).mappings().all()
    finally:
        engine.dispose()
    return {r["id"]: dict(r) for r in rows}


def wait_for(cond, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def spool_files(spool_dir: Path) -> list[Path]:
    return sorted(spool_dir.glob("segment-*.jsonl"))


def spool_lines(spool_dir: Path) -> int:
    return sum(len(p.read_text().splitlines()) for p in spool_files(spool_dir))


def test_rows_land_with_all_fields_and_redaction_keeps_only_the_hash(backend, tmp_path):
    head = "h-" + uuid.uuid4().hex[:8]
    plain, pre_redacted = make_records(head, 1)[0], make_records(head, 1, redact=True)[0]
    with InferenceLog(backend.url, tmp_path / "spool") as log:
        log.record(plain)
        log.record(pre_redacted)
        assert log.flush()
    with InferenceLog(backend.url, tmp_path / "spool", redact_text=True) as log:  # log-wide redaction
        redacted_by_log = make_records(head, 1)[0]
        log.record(redacted_by_log)
        assert log.flush()

    rows = fetch(backend.url, [head])
    assert set(rows) == {plain.id, pre_redacted.id, redacted_by_log.id}
    row = rows[plain.id]
    ts = row.pop("ts")
    assert (ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts) == plain.ts  # SQLite returns naive UTC
    assert row == {
        "id": plain.id, "request_id": "req-0", "head": head, "head_version": "v3",
        "embedder_fingerprint": "minilm:abc123", "text": "text number 0 — ünïcode",
        "text_sha256": hashlib.sha256("text number 0 — ünïcode".encode()).hexdigest(),
        "label": "neg", "probability": 0.5, "top_k": [{"label": "pos", "probability": 0.7},
                                                     {"label": "neg", "probability": 0.3}],
        "latency_ms": 1.25, "abstained": False, "text_index": 0, "text_escaped": None, "issued_id": None,
        "caller": None, "shadow": None,
    }
    for rid in (pre_redacted.id, redacted_by_log.id):
        assert rows[rid]["text"] is None
        assert rows[rid]["text_sha256"] == plain.text_sha256


def test_migrations_are_idempotent_and_safe_when_processes_start_together(backend, tmp_path):
    barrier = threading.Barrier(4)
    results, errors = [], []

    def one():
        engine = make_engine(backend.url)
        try:
            barrier.wait()
            results.append(migrate(engine))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    everything = [version for version, _, _ in MIGRATIONS]
    assert sorted(results) == [[], [], [], everything]  # exactly one applied them

    for _ in range(2):  # start twice: nothing to do the second time
        with InferenceLog(backend.url, tmp_path / "spool") as log:
            assert log.healthy()
    engine = make_engine(backend.url)
    try:
        with engine.connect() as conn:
            assert sorted(conn.execute(sa.select(schema_version.c.version)).scalars().all()) == everything
        indexes = {ix["name"]: ix["column_names"] for ix in sa.inspect(engine).get_indexes("predictions")}
        assert indexes["ix_predictions_head_ts"] == ["head", "ts"]
        assert indexes["ix_predictions_request_id"] == ["request_id"]
    finally:
        engine.dispose()


def test_many_records_are_written_in_few_batches(backend, tmp_path):
    head = "h-" + uuid.uuid4().hex[:8]
    records = make_records(head, 2000)
    with InferenceLog(backend.url, tmp_path / "spool") as log:
        for r in records:
            log.record(r)
        assert log.flush()
        stats = log.stats
    assert stats.written == 2000 and stats.spooled == 2000 and stats.spool_rows == 0  # every row passes the spool
    assert 4 <= stats.batches <= 40  # batch_size 500 caps a batch; flush_interval groups the rest
    assert set(fetch(backend.url, [head])) == {r.id for r in records}


def test_db_outage_mid_run_loses_and_duplicates_nothing(backend, tmp_path):
    head = "h-" + uuid.uuid4().hex[:8]
    before, during = make_records(head, 50), make_records(head, 200)
    spooled0, replayed0 = metric("polyhead_head_db_spooled_total"), metric("polyhead_head_db_replayed_total")
    log = InferenceLog(backend.flaky_url, tmp_path / "spool", **FAST_RETRY)
    log.start()
    try:
        for r in before:
            log.record(r)
        assert log.flush() and log.healthy()
        assert count_rows(backend.url, heads=[head]) == 50

        backend.down()
        t0 = time.perf_counter()
        for r in during:
            log.record(r)
        per_call_ms = (time.perf_counter() - t0) / len(during) * 1000
        assert per_call_ms < 5, f"record() took {per_call_ms:.2f} ms per call during the outage"
        assert log.flush(timeout_s=15)
        stats = log.stats
        assert (stats.spooled, stats.spool_rows, stats.healthy) == (250, 200, False)
        assert metric("polyhead_head_db_spooled_total") - spooled0 == 250
        assert metric("polyhead_head_db_spool_rows") == 200
        assert spool_lines(tmp_path / "spool") == 200  # the 50 written before were rotated away
        assert count_rows(backend.url, heads=[head]) == 50  # nothing reached the DB meanwhile
        time.sleep(0.3)
        assert 0.3 <= log.status()["oldest_unwritten_s"] < 15  # the lag shows
        assert metric("polyhead_head_db_oldest_unwritten_seconds") >= 0.3
        assert metric("polyhead_head_db_writer_stalled") == 0  # stall_after_s is 60

        backend.up()
        wait_for(lambda: log.stats.spool_rows == 0)
        assert log.healthy()
        assert log.stats.written == 250 and log.stats.replayed == 0  # this process's own rows: not a replay
        assert metric("polyhead_head_db_replayed_total") - replayed0 == 0
        assert log.status() == {"db": "ok", "oldest_unwritten_s": 0.0, "spool_rows": 0, "dead_letters": 0,
                                "stalled": False}
        assert spool_lines(tmp_path / "spool") == 0
    finally:
        log.close()
    assert set(fetch(backend.url, [head])) == {r.id for r in before + during}
    assert count_rows(backend.url, heads=[head]) == 250


def test_flapping_db_while_recording_loses_and_duplicates_nothing(backend, tmp_path):
    """Cuts land mid-insert too: a batch whose commit went through but whose reply was lost gets
    spooled and replayed; the id + ON CONFLICT DO NOTHING keeps that from duplicating."""
    head = "h-" + uuid.uuid4().hex[:8]
    sent: list[str] = []
    stop = threading.Event()

    def producer(log: InferenceLog) -> None:
        i = 0
        while not stop.is_set():
            rec = make_records(head, 1)[0]
            log.record(rec)
            sent.append(rec.id)
            i += 1
            if i % 20 == 0:
                time.sleep(0.005)

    log = InferenceLog(backend.flaky_url, tmp_path / "spool", batch_size=50, flush_interval_s=0.05, **FAST_RETRY)
    log.start()
    try:
        t = threading.Thread(target=producer, args=(log,))
        t.start()
        for _ in range(3):
            time.sleep(0.3)
            backend.down()
            time.sleep(0.4)
            backend.up()
        time.sleep(0.3)
        stop.set()
        t.join()
        assert log.flush(timeout_s=15)
        wait_for(lambda: log.stats.spool_rows == 0 and log.stats.queue_depth == 0)
        assert log.stats.spooled > 0  # the outages really happened
    finally:
        log.close()
    assert len(sent) == len(set(sent)) > 500
    assert set(fetch(backend.url, [head])) == set(sent)
    assert count_rows(backend.url, heads=[head]) == len(sent)


def test_spool_left_by_a_previous_process_is_replayed_on_start(backend, tmp_path):
    head = "h-" + uuid.uuid4().hex[:8]
    spool = tmp_path / "spool"
    written, fresh = make_records(head, 30), make_records(head, 40)
    with InferenceLog(backend.url, tmp_path / "other-spool") as log:
        for r in written:
            log.record(r)
    assert count_rows(backend.url, heads=[head]) == 30

    # A previous process whose DB was unreachable: it spooled 10 rows that are in the DB already
    # (as after a replay interrupted between commit and truncate) and 40 that are not.
    with InferenceLog(backend.dead_url, spool, **FAST_RETRY) as dead:
        for r in written[:10] + fresh:
            dead.record(r)
        assert dead.flush()
        assert not dead.healthy()
    assert dead.stats.spooled == 50
    (last,) = spool_files(spool)
    with open(last, "a") as f:
        f.write('{"id": "torn-by-a-cra')  # the process died mid-write

    log = InferenceLog(backend.url, spool)
    log.start()
    try:
        assert log.stats.spool_rows == 51
        assert log.flush()
        # the torn line is dead-lettered with its reason, the 50 whole ones replayed
        assert (log.stats.spool_rows, log.stats.replayed, log.stats.dead_letters) == (0, 50, 1)
    finally:
        log.close()
    assert spool_files(spool) == []
    (dead_letter,) = (spool / "dead_letters.jsonl").read_text().splitlines()
    assert "unreadable spool line" in dead_letter and "torn-by-a-cra" in dead_letter
    assert set(fetch(backend.url, [head])) == {r.id for r in written + fresh}
    assert count_rows(backend.url, heads=[head]) == 70


def test_records_before_start_and_after_close_reach_the_db(tmp_path):
    url, spool = f"sqlite:///{tmp_path / 'inference.db'}", tmp_path / "spool"
    records = make_records("overflow", 10)
    log = InferenceLog(url, spool)
    for r in records[:8]:  # writer not started: held until start() opens the spool
        log.record(r)
    log.record(None)  # type: ignore[arg-type]  # never raises into the request
    assert log.stats.dropped == 1
    log.start()
    assert log.flush()
    assert count_rows(url) == 8 and log.stats.spool_rows == 0
    log.close()
    for r in records[8:]:  # after close(): kept in the spool for the next process
        log.record(r)
    assert spool_lines(spool) == 2
    with InferenceLog(url, spool) as log2:
        assert log2.flush()
    assert {r.id for r in records} == set(fetch(url, ["overflow"]))


def test_spool_dir_belongs_to_one_process(tmp_path):
    url = f"sqlite:///{tmp_path / 'inference.db'}"
    with InferenceLog(url, tmp_path / "spool"):
        with pytest.raises(RuntimeError, match="in use"):
            InferenceLog(url, tmp_path / "spool").start()


def test_memory_stays_flat_while_the_db_is_unreachable(backend, tmp_path):
    """The spool is the queue: a backlog of 30,000 rows lives on disk, not in the head's memory."""
    import tracemalloc

    head = "h-" + uuid.uuid4().hex[:8]
    n = 30_000
    log = InferenceLog(backend.flaky_url, tmp_path / "spool", **FAST_RETRY)
    log.start()
    try:
        backend.down()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for i in range(n):  # each record is dropped by the caller right away, as a request handler does
            log.record(PredictionRecord.create(
                request_id=f"r{i}", head=head, head_version="v1", embedder_fingerprint="f", text=f"text {i} " * 20,
                label="pos", probability=0.6, top_k=[("pos", 0.6)], latency_ms=1.0, abstained=False, text_index=0))
        grown = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        # the rows are ~10 MiB on disk (~40 MiB as objects); what may be held is the writer's one batch in flight
        assert grown < 8 << 20, f"{grown / 2**20:.1f} MiB held for {n} spooled rows"
        assert log.flush() and log.stats.spool_rows == n and not log.healthy()
        assert spool_lines(tmp_path / "spool") == n
        backend.up()
        wait_for(lambda: log.stats.spool_rows == 0, timeout_s=40)
    finally:
        log.close()
    assert count_rows(backend.url, heads=[head]) == n


def test_a_spool_left_by_the_previous_writer_version_is_adopted_and_replayed(tmp_path):
    """Heads upgraded in place: the old single-file spool (replay.jsonl, then spool.jsonl) is replayed first."""
    url, spool = f"sqlite:///{tmp_path / 'inference.db'}", tmp_path / "spool"
    older, newer = make_records("legacy", 3), make_records("legacy", 4)
    spool.mkdir()
    (spool / "replay.jsonl").write_text("".join(r.to_json() + "\n" for r in older))
    (spool / "spool.jsonl").write_text("".join(r.to_json() + "\n" for r in newer))
    with InferenceLog(url, spool) as log:
        assert log.stats.spool_rows == 7
        assert log.flush()
        assert (log.stats.replayed, log.stats.spool_rows) == (7, 0)
    assert set(fetch(url, ["legacy"])) == {r.id for r in older + newer}
    assert not (spool / "spool.jsonl").exists() and not (spool / "replay.jsonl").exists()


def test_a_writer_that_cannot_write_raises_the_stalled_metric(backend, tmp_path):
    log = InferenceLog(backend.dead_url, tmp_path / "spool", stall_after_s=0.3, **FAST_RETRY)
    log.start()
    try:
        assert metric("polyhead_head_db_writer_stalled") == 0
        log.record(make_records("stall", 1)[0])
        time.sleep(0.5)
        status = log.status()
        assert status["db"] == "unavailable" and status["stalled"] is True and status["spool_rows"] == 1
        assert status["oldest_unwritten_s"] >= 0.3
        assert metric("polyhead_head_db_writer_stalled") == 1
        assert metric("polyhead_head_db_oldest_unwritten_seconds") >= 0.3
    finally:
        log.close()
