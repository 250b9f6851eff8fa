"""The head's write path to the inference DB, on the DBAPI driver itself: stdlib ``sqlite3`` or psycopg.

A serving head only ever writes one statement, ``INSERT INTO predictions ... ON CONFLICT (id) DO
NOTHING``; loading SQLAlchemy for it cost ~11 MiB per head process (BENCHMARKS.md §5). SQLAlchemy
still owns the schema, the migrations and every read (schema.py): when the database is behind this
code's schema the sink runs the migrations in a short-lived child process (migrate.py), so the
serving process never imports SQLAlchemy. Values are bound exactly as SQLAlchemy binds them
(tests/unit/polyhead/inference_log/test_sink.py compares rows written both ways, field by field, on both databases).
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
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from polyhead.inference_log.records import PredictionRecord

# The latest version in schema.MIGRATIONS (a unit test keeps the two equal).
SCHEMA_VERSION = 4
# The predictions columns the head writes: PredictionRecord's fields, in order (a unit test checks
# them against schema.predictions, so a migration that adds a column must add the field too).
COLUMNS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(PredictionRecord))

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

    def ensure_schema(self) -> bool:
        """Migrate (in a child process) when the DB is behind this code; True when that ran."""
        if self._call(self._schema_version) >= SCHEMA_VERSION:
            return False
        migrate_in_child(self.url)
        return True

    def insert(self, records: Sequence[PredictionRecord]) -> None:
        """One transaction, one executemany; ON CONFLICT makes a replay of the same rows a no-op."""
        rows = [self._row(r) for r in records]
        self._call(lambda conn: self._insert(conn, rows))

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

    def _insert(self, conn: Any, rows: list[tuple]) -> None:
        conn.execute("BEGIN")
        conn.executemany(self.insert_sql, rows)
        conn.execute("COMMIT")  # on any failure the connection is closed, which rolls back

    def _row(self, rec: PredictionRecord) -> tuple:
        values = dataclasses.astuple(rec)
        ts_at, top_k_at = COLUMNS.index("ts"), COLUMNS.index("top_k")
        return tuple(sqlite_ts(v) if i == ts_at else json.dumps(v) if i == top_k_at else v
                     for i, v in enumerate(values))


class PostgresSink(Sink):
    placeholder = "%s"

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

    def _insert(self, conn: Any, rows: list[tuple]) -> None:
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(self.insert_sql, rows)

    def _row(self, rec: PredictionRecord) -> tuple:
        from psycopg.types.json import Jsonb

        top_k_at = COLUMNS.index("top_k")
        return tuple(Jsonb(v) if i == top_k_at else v for i, v in enumerate(dataclasses.astuple(rec)))


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
