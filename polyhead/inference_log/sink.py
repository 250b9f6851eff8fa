"""The head's write path to the inference DB, on the DBAPI driver itself: stdlib ``sqlite3`` or psycopg.

A serving head writes one transaction per batch: ``INSERT INTO predictions ... ON CONFLICT (id) DO
NOTHING`` plus the rollups' upsert increments of the rows that were new (rollups.py); loading
SQLAlchemy for it cost ~11 MiB per head process (BENCHMARKS.md §5). SQLAlchemy
still owns the schema, the migrations and every read (schema.py): when the database is behind this
code's schema the sink runs the migrations in a short-lived child process (migrate.py), so the
serving process never imports SQLAlchemy. Values are bound exactly as SQLAlchemy binds them
(tests/unit/polyhead/inference_log/test_sink.py compares rows written both ways, field by field, on both databases).

Poison rows: a row the database refuses (a value it cannot hold: too long, bad encoding, ...) never
blocks the rows behind it. The batch is retried row by row and ``insert`` returns the refused rows
with the reason, for the writer to dead-letter. NUL, which PostgreSQL text cannot hold, is not
refused: texts containing it are stored escaped (``\\`` -> ``\\\\``, NUL -> ``\\0``) with
``text_escaped`` set, on both databases alike; ``unescape_text`` reverses it on read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from polyhead.inference_log import rollups
from polyhead.inference_log.records import PredictionRecord

# The latest version in schema.MIGRATIONS (a unit test keeps the two equal).
SCHEMA_VERSION = 8
# The predictions columns the head writes: PredictionRecord's fields, in order, and the escape flag
# (a unit test checks them against schema.predictions, so a migration that adds a column must add the field too).
COLUMNS: tuple[str, ...] = (*(f.name for f in dataclasses.fields(PredictionRecord)), "text_escaped")

# Connection settings shared with schema.make_engine (reads and migrations use the same ones).
SQLITE_TIMEOUT_S = 5.0  # busy timeout; a ?timeout= in the URL wins
PG_CONNECT_ARGS = {"connect_timeout": 2, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                   "keepalives_count": 2, "tcp_user_timeout": 5000}  # notice an outage within seconds
MIGRATE_TIMEOUT_S = 120.0

# SQLAlchemy's DateTime on SQLite: the datetime's own fields as text, no UTC offset (reports parse it).
_SQLITE_TS = "%04d-%02d-%02d %02d:%02d:%02d.%06d"


def sqlite_wal(conn: Any, timeout_s: float) -> None:
    """PRAGMA journal_mode=WAL (readers never block the writer), retried until `timeout_s`.

    Changing the journal mode does not wait on SQLite's busy handler: when processes open a fresh
    DB together, all but one get "database is locked" at once (9 of 60 trials with 4 threads)."""
    import sqlite3

    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


class InferenceDBError(Exception):
    """The inference DB could not be reached, migrated or written; the writer spools and retries."""


def escape_text(text: str | None) -> tuple[str | None, bool | None]:
    """(stored text, text_escaped): only texts with NUL are escaped; the flag is NULL otherwise."""
    if text is None or "\x00" not in text:
        return text, None
    return text.replace("\\", "\\\\").replace("\x00", "\\0"), True


def unescape_text(text: str | None, escaped: bool | None) -> str | None:
    if not escaped or text is None:
        return text
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append("\x00" if text[i + 1] == "0" else text[i + 1])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


Refused = list[tuple[PredictionRecord, str]]  # rows the database would not take, with its reason


def open_sink(url: str) -> Sink:
    """The sink for a SQLAlchemy-style URL (``sqlite:///path`` or ``postgresql[+driver]://...``)."""
    backend = url.partition(":")[0].partition("+")[0]
    if backend == "sqlite":
        return SqliteSink(url)
    if backend == "postgresql":
        return PostgresSink(url)
    raise ValueError(f"inference DB must be sqlite or postgresql, not {backend!r}")


class Sink:
    placeholder = "?"

    def __init__(self, url: str):
        self.url = url
        self._conn: Any = None
        self._lock = threading.Lock()  # start() and the writer thread use it in turn; close() from a third
        values = ", ".join([self.placeholder] * len(COLUMNS))
        self.insert_sql = f"INSERT INTO predictions ({', '.join(COLUMNS)}) VALUES ({values}) ON CONFLICT (id) DO NOTHING"
        self.rollup_sql = rollups.upsert_statements(self.placeholder, self.least)

    def ensure_schema(self) -> bool:
        """Migrate (in a child process) when the DB is behind this code; True when that ran."""
        if self._call(self._schema_version) >= SCHEMA_VERSION:
            return False
        migrate_in_child(self.url)
        return True

    def insert(self, records: Sequence[PredictionRecord]) -> Refused:
        """One transaction: the rows (ON CONFLICT makes a replay a no-op) and the rollups of those that
        were new. Rows the DB refuses are retried one per transaction and returned with the reason;
        anything else (DB down, schema missing) raises InferenceDBError and nothing is written."""
        return self._call(lambda conn: self._insert_isolating(conn, list(records)))

    def _insert_isolating(self, conn: Any, records: list[PredictionRecord]) -> Refused:
        try:
            self._transaction(conn, records)
            return []
        except Exception as exc:
            if not self._refuses_row(exc):
                raise
        refused: Refused = []
        for rec in records:  # one bad row among many: find it, keep the others
            try:
                self._transaction(conn, [rec])
            except Exception as exc:
                if not self._refuses_row(exc):
                    raise
                refused.append((rec, f"{type(exc).__name__}: {exc}"[:500]))
        return refused

    def _transaction(self, conn: Any, records: list[PredictionRecord]) -> None:
        """Raw rows + rollup increments of the new ones, atomically."""
        raise NotImplementedError

    def _refuses_row(self, exc: BaseException) -> bool:
        """A value the database will never take (retrying cannot help), as opposed to the DB being down."""
        return isinstance(exc, (UnicodeError, ValueError, OverflowError, TypeError))

    def _add_rollups(self, cur: Any, records: list[PredictionRecord], existing: set[str]) -> None:
        """The rollup increments of the rows that were new, inside the caller's transaction."""
        new = [(r.head, r.head_version, _aware(r.ts), r.text_index, r.label, r.probability, r.latency_ms, r.abstained)
               for r in records if r.id not in existing and not r.shadow]  # rollups: what callers got
        hours, labels, latencies = rollups.upsert_rows(rollups.aggregate(new), self._ts_param)
        hour_sql, label_sql, select_latency, update_latency = self.rollup_sql
        if hours:
            cur.executemany(hour_sql, hours)  # the upsert locks these rows until commit
        if labels:
            cur.executemany(label_sql, labels)
        for head, version, hour, histogram in latencies:
            (stored,) = cur.execute(select_latency, (head, version, hour)).fetchone()
            cur.execute(update_latency, (rollups.merge_bins(stored, histogram), head, version, hour))

    def _ts_param(self, value: datetime) -> Any:
        return value

    def prune(self, cutoff: datetime, limit: int) -> int:
        """Delete up to `limit` raw rows older than `cutoff` in one short transaction; rollups stay
        (reports read them). A row with feedback stays until a training run has read that feedback
        (training_feedback: the newest feedback.ts a run consumed, per head); a row whose feedback came
        or changed after the mark stays for the next run. Returns the rows deleted."""
        return self._call(lambda conn: self._prune(conn, cutoff, limit))

    def _prune(self, conn: Any, cutoff: datetime, limit: int) -> int:
        ph = self.placeholder
        heads = [h for (h,) in conn.execute("SELECT DISTINCT head FROM rollup_hour").fetchall()]
        marks = dict(conn.execute("SELECT head, feedback_through FROM training_feedback").fetchall())
        deleted = 0
        for head in heads:  # per head: the (head, ts) index finds the old rows without a scan
            if deleted >= limit:
                break
            consumed = f" AND f.ts > {ph}" if head in marks else ""  # as stored: compared like with like
            sql = (f"DELETE FROM predictions WHERE id IN (SELECT p.id FROM predictions p WHERE p.head = {ph} "
                   f"AND p.ts < {ph} AND NOT EXISTS (SELECT 1 FROM feedback f WHERE f.prediction_id = p.id"
                   f"{consumed}) LIMIT {ph})")
            params = (head, self._ts_param(cutoff), *([marks[head]] if head in marks else []), limit - deleted)
            deleted += self._delete(conn, sql, params)
        return deleted

    def _delete(self, conn: Any, sql: str, params: tuple) -> int:
        raise NotImplementedError

    def close(self) -> None:
        if self._lock.acquire(timeout=1):  # a writer still inside an insert keeps its connection
            try:
                self._drop()
            finally:
                self._lock.release()

    def _call(self, fn: Callable[[Any], Any]) -> Any:
        with self._lock:
            reused = self._conn is not None
            try:
                if self._conn is None:
                    self._conn = self._connect()
                return fn(self._conn)
            except Exception as exc:
                stale = reused and self._broken(self._conn)
                self._drop()  # never reuse a connection that failed: the next call reconnects
                if not stale:
                    raise InferenceDBError(f"{type(exc).__name__}: {exc}") from exc
            # A pooled connection that died while idle (server restart): one retry on a new one, as
            # SQLAlchemy's pre-ping would have done.
            try:
                self._conn = self._connect()
                return fn(self._conn)
            except Exception as exc:
                self._drop()
                raise InferenceDBError(f"{type(exc).__name__}: {exc}") from exc

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection may fail; it is gone anyway
                pass

    # Per dialect: the driver's connection, its version query, its insert and how it binds a row.
    def _connect(self) -> Any:
        raise NotImplementedError

    def _broken(self, conn: Any) -> bool:
        return False

    def _schema_version(self, conn: Any) -> int:
        raise NotImplementedError

    def _insert(self, conn: Any, rows: list[tuple]) -> None:
        raise NotImplementedError

    def _row(self, rec: PredictionRecord) -> tuple:
        raise NotImplementedError


class SqliteSink(Sink):
    placeholder = "?"
    least = "min"

    def __init__(self, url: str):
        super().__init__(url)
        parts = urlsplit(url)
        self.path = unquote(parts.path[1:])  # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db
        if self.path in ("", ":memory:"):
            raise ValueError("the inference DB cannot be an in-memory SQLite: the migration runs in another process")
        query = dict(parse_qsl(parts.query))
        unknown = set(query) - {"timeout"}
        if unknown:
            raise ValueError(f"unsupported SQLite URL options for the inference DB: {sorted(unknown)}")
        self.timeout = float(query.get("timeout", SQLITE_TIMEOUT_S))

    def _connect(self) -> Any:
        import sqlite3

        Path(self.path).parent.mkdir(parents=True, exist_ok=True)  # as schema.migrate does
        # isolation_level=None: transactions are the explicit BEGIN/COMMIT below, as in schema.make_engine.
        conn = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
        sqlite_wal(conn, self.timeout)
        return conn

    def _schema_version(self, conn: Any) -> int:
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'polyhead_schema_version'")
        if found.fetchone() is None:
            return 0
        return conn.execute("SELECT max(version) FROM polyhead_schema_version").fetchone()[0] or 0

    def _transaction(self, conn: Any, records: list[PredictionRecord]) -> None:
        conn.execute("BEGIN IMMEDIATE")  # the write lock first: the read of existing ids stays true
        try:
            ids = [r.id for r in records]
            existing: set[str] = set()
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                existing |= {i for (i,) in conn.execute(
                    f"SELECT id FROM predictions WHERE id IN ({', '.join('?' * len(chunk))})", chunk)}
            conn.executemany(self.insert_sql, [self._row(r) for r in records])
            self._add_rollups(conn, records, existing)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _delete(self, conn: Any, sql: str, params: tuple) -> int:
        conn.execute("BEGIN IMMEDIATE")
        try:
            n = conn.execute(sql, params).rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return n

    def _refuses_row(self, exc: BaseException) -> bool:
        import sqlite3

        return super()._refuses_row(exc) or isinstance(exc, (sqlite3.DataError, sqlite3.IntegrityError,
                                                             sqlite3.InterfaceError))

    def _ts_param(self, value: datetime) -> Any:
        return sqlite_ts(value)

    def _row(self, rec: PredictionRecord) -> tuple:
        values = _values(rec)
        ts_at, top_k_at, text_at = COLUMNS.index("ts"), COLUMNS.index("top_k"), COLUMNS.index("text")
        text, escaped = escape_text(rec.text)
        return (*(sqlite_ts(v) if i == ts_at else json.dumps(v) if i == top_k_at else text if i == text_at else v
                  for i, v in enumerate(values)), escaped)


class PostgresSink(Sink):
    placeholder = "%s"
    least = "LEAST"

    def __init__(self, url: str):
        super().__init__(url)
        # libpq reads the same URL once the SQLAlchemy driver suffix is gone (query options included).
        self.conninfo = "postgresql" + url[url.index("://"):]

    def _connect(self) -> Any:
        import psycopg

        # autocommit: the version check leaves no open transaction; inserts use conn.transaction().
        return psycopg.connect(self.conninfo, autocommit=True, **PG_CONNECT_ARGS)

    def _broken(self, conn: Any) -> bool:
        return conn is not None and conn.broken

    def _schema_version(self, conn: Any) -> int:
        if conn.execute("SELECT to_regclass('polyhead_schema_version')").fetchone()[0] is None:
            return 0
        return conn.execute("SELECT max(version) FROM polyhead_schema_version").fetchone()[0] or 0

    def _transaction(self, conn: Any, records: list[PredictionRecord]) -> None:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT id FROM predictions WHERE id = ANY(%s)", ([r.id for r in records],))
            existing = {i for (i,) in cur.fetchall()}
            cur.executemany(self.insert_sql, [self._row(r) for r in records])
            self._add_rollups(cur, records, existing)

    def _delete(self, conn: Any, sql: str, params: tuple) -> int:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.rowcount

    def _refuses_row(self, exc: BaseException) -> bool:
        import psycopg
        from psycopg import errors

        return super()._refuses_row(exc) or isinstance(exc, (psycopg.DataError, psycopg.IntegrityError,
                                                             errors.ProgramLimitExceeded))

    def _row(self, rec: PredictionRecord) -> tuple:
        from psycopg.types.json import Jsonb

        top_k_at, text_at = COLUMNS.index("top_k"), COLUMNS.index("text")
        text, escaped = escape_text(rec.text)
        return (*(Jsonb(v) if i == top_k_at else text if i == text_at else v
                  for i, v in enumerate(_values(rec))), escaped)


def _values(rec: PredictionRecord) -> tuple:
    # Not dataclasses.astuple: its deep copy of top_k cost more than the insert itself.
    return tuple(getattr(rec, name) for name in COLUMNS[:-1])


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def sqlite_ts(value: datetime) -> str:
    return _SQLITE_TS % (value.year, value.month, value.day, value.hour, value.minute, value.second, value.microsecond)


def migrate_in_child(url: str, timeout_s: float = MIGRATE_TIMEOUT_S) -> None:
    """``python -m polyhead.inference_log.migrate``: SQLAlchemy's migrations, loaded in a process that exits."""
    root = str(Path(__file__).resolve().parents[2])  # this tree's `heads`, whatever the child's sys.path
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    try:
        done = subprocess.run([sys.executable, "-m", "polyhead.inference_log.migrate"], input=url,  # stdin: no password in ps
                              capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise InferenceDBError(f"migration did not finish within {timeout_s:.0f}s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise InferenceDBError(f"migration failed (exit {done.returncode}): {last}")
