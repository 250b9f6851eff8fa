"""Inference log: every prediction a head serves, written to SQLite (default) or PostgreSQL.

``record()`` appends the prediction to the local write-ahead spool (spool.py) before the answer is
sent, and does nothing else on the request path; a writer thread reads the spool in order and
inserts batches through the DBAPI driver (sink.py: SQLAlchemy stays out of the serving process;
migrations run in a child process), rollups included, and only then moves past them. So:

- nothing answered is lost: a SIGKILL loses nothing (the spool is replayed on restart); a machine
  crash can lose the rows of the last fsync window not yet in the DB (spool.py);
- memory is bounded by one batch, however long the database is down: the backlog is on disk;
- no poison rows: a row the database refuses is dead-lettered (``dead_letters.jsonl`` in the spool
  dir, counted and logged with its reason) and the rows behind it go on; NUL is stored escaped;
- replays are idempotent: each row carries a uuid4 primary key, inserts are ON CONFLICT DO
  NOTHING and rollups count only the rows that were new.

The log's lag is visible: ``status()`` (the head's readiness details) and the metrics below give
the oldest unwritten row's age, the spool's rows and the dead letters; ``..._writer_stalled`` is 1
while the oldest unwritten row is older than ``stall_after_s`` (alert on it).

One ``spool_dir`` per process: ``start()`` takes an exclusive ``flock`` on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from polyhead.inference_log.records import PredictionRecord
from polyhead.inference_log.sink import open_sink
from polyhead.inference_log.spool import Spool

log = logging.getLogger(__name__)

WRITTEN = Counter("polyhead_head_db_written_total", "Prediction rows sent to the DB (new or already there)")
SPOOLED = Counter("polyhead_head_db_spooled_total", "Prediction rows appended to the local write-ahead spool")
REPLAYED = Counter("polyhead_head_db_replayed_total", "Rows of a previous process's spool sent to the DB")
DEAD_LETTERS = Counter("polyhead_head_db_dead_letters_total",
                       "Rows the DB refused (or unreadable spool lines), kept in dead_letters.jsonl", ["reason"])
SPOOL_ROWS = Gauge("polyhead_head_db_spool_rows", "Prediction rows in the spool not yet in the DB")
OLDEST_AGE = Gauge("polyhead_head_db_oldest_unwritten_seconds", "Age of the oldest prediction not yet in the DB")
STALLED = Gauge("polyhead_head_db_writer_stalled",
                "1 while the oldest unwritten prediction is older than stall_after_s (DB down or writer stuck)")

DEAD_LETTER_FILE = "dead_letters.jsonl"


@dataclass(frozen=True)
class InferenceLogStats:
    written: int  # rows sent to the DB (ON CONFLICT drops any already there)
    spooled: int  # rows appended to the spool by this process (every recorded row)
    replayed: int  # rows of a previous process's spool sent to the DB
    dropped: int  # rows lost: not a PredictionRecord, or the spool itself could not be written
    queue_depth: int  # rows recorded, not yet in the DB (the same as spool_rows: the spool is the queue)
    spool_rows: int
    batches: int  # successful insert transactions
    healthy: bool
    dead_letters: int = 0  # rows the DB refused, or spool lines that could not be read
    pruned: int = 0  # raw rows deleted by retention
    oldest_unwritten_s: float = 0.0


class InferenceLog:
    def __init__(
        self,
        url: str,
        spool_dir: Path,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        redact_text: bool = False,
        retry_min_s: float = 0.5,
        retry_max_s: float = 10.0,
        stall_after_s: float = 60.0,
        retention_days: float = 0.0,
        prune_batch: int = 1000,
        prune_every_s: float = 300.0,
    ):
        self.url = url
        self.spool_dir = Path(spool_dir)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.redact_text = redact_text
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self.stall_after_s = stall_after_s
        self.retention_days, self.prune_batch, self.prune_every_s = retention_days, prune_batch, prune_every_s
        self._next_prune = 0.0  # monotonic
        self._pruned = 0
        self._sink = open_sink(url)  # the DBAPI driver itself: no SQLAlchemy in a serving head (sink.py)
        self._spool = Spool(self.spool_dir)
        self._cond = threading.Condition()
        self._lock_file: Any = None
        self._thread: threading.Thread | None = None
        self._started = False
        self._stop = False
        self._stop_deadline = 0.0
        self._closed = False
        self._migrated = False
        self._healthy = False
        self._retry_delay = 0.0
        self._next_retry = 0.0  # monotonic; while the DB is down, no attempt before then
        self._first_pending = 0.0  # monotonic time the oldest row still waiting for a batch arrived
        self._oldest_unwritten: float | None = None  # wall time of the oldest row not yet in the DB
        self._passes = 0  # writer passes completed (flush() waits for one)
        self._written = self._replayed = self._dropped = self._batches = self._dead = 0
        self._pre_start: list[bytes] = []  # rows recorded before start() opened the spool

    # -- public API -------------------------------------------------------------------------------

    def start(self) -> None:
        """Take the spool dir, adopt a previous process's spool, migrate (if the DB answers), start the writer."""
        if self._started:
            return
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.spool_dir / ".lock", "w")  # held until close()
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise RuntimeError(f"spool dir {self.spool_dir} is in use by another process") from None
        backlog = self._spool.open(legacy=(self.spool_dir / "replay.jsonl", self.spool_dir / "spool.jsonl"))
        if backlog:
            log.info("inference log: %d rows in the spool of a previous process; replaying", backlog)
            self._oldest_unwritten = time.time()  # unknown until read; at least this old
        with self._cond:
            self._started = True
            early, self._pre_start = self._pre_start, []
            for data in early:
                self._spool.append(data, data.count(b"\n"))
        self._spool.sync()
        SPOOL_ROWS.set_function(lambda: self._spool.pending_rows)
        OLDEST_AGE.set_function(self._lag_s)
        STALLED.set_function(lambda: 1.0 if self._lag_s() > self.stall_after_s else 0.0)
        self._try_db(self._ensure_schema)
        self._thread = threading.Thread(target=self._run, name="inference-log-writer", daemon=True)
        self._thread.start()

    def record(self, rec: PredictionRecord) -> None:
        """Append to the spool (before the answer is sent); non-blocking on the DB, never raises."""
        self.record_many([rec])

    def record_many(self, recs: Iterable[PredictionRecord]) -> None:
        """The rows of one request in one write to the spool."""
        lines = []
        for rec in recs:
            try:
                if not isinstance(rec, PredictionRecord):
                    raise TypeError(f"expected PredictionRecord, got {type(rec).__name__}")
                if self.redact_text and rec.text is not None:
                    rec = dataclasses.replace(rec, text=None)
                # surrogatepass: a lone surrogate the API let through reaches the DB, which decides
                lines.append(rec.to_json().encode("utf-8", "surrogatepass") + b"\n")
            except Exception:  # logging must never fail a prediction
                self._dropped += 1
                log.exception("inference log: record dropped")
        if not lines:
            return
        data = b"".join(lines)
        try:
            with self._cond:
                if self._closed and not self._started:  # after close(): kept for the next process
                    self._spool.append(data, len(lines))
                    return
                if not self._started:
                    self._pre_start.append(data)
                    return
                was_empty = self._spool.pending_rows == 0
                self._spool.append(data, len(lines))
                if was_empty:
                    self._first_pending = time.monotonic()
                    if self._oldest_unwritten is None:
                        self._oldest_unwritten = time.time()
                if self._spool.pending_rows >= self.batch_size:
                    self._cond.notify()
            SPOOLED.inc(len(lines))
        except Exception:  # disk full etc.: nothing left to try
            self._dropped += len(lines)
            log.exception("inference log: could not spool %d rows; they are lost", len(lines))

    def flush(self, timeout_s: float = 10) -> bool:
        """Wait until everything recorded so far is in the DB, or (DB down) the writer has tried since
        and the rows are fsync'd in the spool. False on timeout or when the writer is not running."""
        if self._closed:
            return True
        if self._thread is None or not self._thread.is_alive():
            return False
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self._spool.appended_rows
            passes = self._passes
            self._first_pending = 0.0  # due now
            self._cond.notify()
            while self._spool.consumed_rows < target:
                if not self._healthy and (self._passes > passes or time.monotonic() < self._next_retry):
                    with contextlib.suppress(OSError):
                        self._spool.sync()
                    return True  # the DB is down: durable in the spool, written once it is back
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(min(remaining, 0.05))
        return True

    def close(self, timeout_s: float = 10) -> None:
        """Write what the DB takes within timeout_s; the rest stays in the spool for the next process."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            with self._cond:
                self._stop_deadline = time.monotonic() + timeout_s
                self._stop = True
                self._cond.notify()
            self._thread.join(timeout_s + 1)
            if self._thread.is_alive():
                log.warning("inference log: writer still busy after %.1fs; the rest stays in the spool", timeout_s)
        with self._cond:
            self._started = False
            self._spool.close()  # later record() calls still reach the spool, for the next process
            early, self._pre_start = self._pre_start, []
        for data in early:
            self._spool.append(data, data.count(b"\n"))
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
        self._sink.close()

    def healthy(self) -> bool:
        """True when the last DB write (or migration) succeeded."""
        return self._healthy

    def status(self) -> dict:
        """The log's state for readiness details: DB reachable, lag, backlog, dead letters."""
        return {"db": "ok" if self._healthy else "unavailable", "oldest_unwritten_s": round(self._lag_s(), 3),
                "spool_rows": self._spool.pending_rows, "dead_letters": self._dead,
                "stalled": self._lag_s() > self.stall_after_s}

    @property
    def stats(self) -> InferenceLogStats:
        pending = self._spool.pending_rows
        return InferenceLogStats(
            written=self._written, spooled=self._spool.appended_rows - self._spool.backlog_rows,
            replayed=self._replayed, dropped=self._dropped, queue_depth=pending, spool_rows=pending,
            batches=self._batches, healthy=self._healthy, dead_letters=self._dead,
            oldest_unwritten_s=self._lag_s(), pruned=self._pruned)

    def __enter__(self) -> InferenceLog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writer thread ----------------------------------------------------------------------------

    def _lag_s(self) -> float:
        oldest = self._oldest_unwritten
        return max(0.0, time.time() - oldest) if oldest is not None and self._spool.pending_rows else 0.0

    def _run(self) -> None:
        while True:
            stopping = self._wait()
            try:
                self._spool.sync()  # group commit: one fsync per pass
                if stopping:
                    self._drain()
                    return
                if time.monotonic() >= self._next_retry:
                    self._pass()
            except Exception:  # keep the writer alive whatever happens
                log.exception("inference log: writer error")
                self._backoff()
            finally:
                with self._cond:
                    self._passes += 1
                    self._cond.notify_all()

    def _wait(self) -> bool:
        """Until a batch is due (full, or its oldest row flush_interval_s old), a retry, or stop."""
        with self._cond:
            while not self._stop:
                pending = self._spool.pending_rows
                now = time.monotonic()
                if pending and now >= self._next_retry:
                    due = self._first_pending + self.flush_interval_s
                    if pending >= self.batch_size or now >= due:
                        return False
                    self._cond.wait(due - now)
                elif pending:  # DB down: wake each flush window all the same, to fsync what came in
                    self._cond.wait(min(self._next_retry - now, self.flush_interval_s))
                    return False
                else:
                    if self._prune_due():
                        return False
                    self._cond.wait(0.5)
                    if not self._migrated and time.monotonic() >= self._next_retry:
                        return False  # retry the migration while idle
            return True

    def _pass(self) -> None:
        """Write batches until caught up (or the DB fails)."""
        if not self._migrated and not self._try_db(self._ensure_schema):
            return
        while not self._stop:
            if not self._write_batch():
                break
        if self._healthy and self._spool.pending_rows == 0 and self._prune_due():
            self._prune_some()

    def _prune_due(self) -> bool:
        return self.retention_days > 0 and self._migrated and time.monotonic() >= self._next_prune

    def _prune_some(self, budget_s: float = 0.2) -> None:
        """Retention: batches of prune_batch rows for at most budget_s, then back to writing; the next
        pass goes on at once while old rows remain, else in prune_every_s."""
        cutoff = datetime.now(timezone.utc) - timedelta(days=self.retention_days)
        deadline = time.monotonic() + budget_s
        try:
            while time.monotonic() < deadline:
                n = self._sink.prune(cutoff, self.prune_batch)
                self._pruned += n
                if n < self.prune_batch:
                    self._next_prune = time.monotonic() + self.prune_every_s
                    return
                if self._spool.pending_rows:  # new rows first
                    break
            self._next_prune = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - retention can wait; writing must not
            log.warning("inference log: pruning old rows failed, retrying in %.0fs: %s", self.prune_every_s, exc)
            self._next_prune = time.monotonic() + self.prune_every_s

    def _drain(self) -> None:
        deadline = self._stop_deadline
        while time.monotonic() < deadline and self._spool.pending_rows and time.monotonic() >= self._next_retry:
            if not ((self._migrated or self._try_db(self._ensure_schema)) and self._write_batch()):
                return

    def _write_batch(self) -> bool:
        """One batch from the spool into the DB; False when caught up or the DB failed."""
        backlog_before = self._spool.consumed_rows < self._spool.backlog_rows
        lines, offset = self._spool.read(self.batch_size)
        if not lines:
            self._spool.commit(offset, 0)
            if self._spool.pending_rows == 0:
                self._caught_up()
            return False
        records: list[PredictionRecord] = []
        for line in lines:
            try:
                records.append(PredictionRecord.from_json(line.decode("utf-8", "surrogatepass")))
            except Exception as exc:  # noqa: BLE001 - a torn line of a crash, a hand-edited file
                self._dead_letter(line, f"unreadable spool line: {type(exc).__name__}: {exc}", "unreadable")
        if records:
            self._oldest_unwritten = records[0].ts.timestamp()
            refused = []
            if not self._try_db(lambda: refused.extend(self._sink.insert(records))):
                return False
            for rec, reason in refused:
                self._dead_letter(rec.to_json().encode("utf-8", "surrogatepass"), reason, "refused")
            self._batches += 1
            self._written += len(records)
            WRITTEN.inc(len(records))
            if backlog_before:
                self._replayed += len(records)
                REPLAYED.inc(len(records))
        with self._cond:
            self._spool.commit(offset, len(lines))
            if self._spool.pending_rows == 0:
                self._caught_up()
            else:
                self._first_pending = 0.0  # the rest is overdue already
        self._spool.rotate_if_large()
        return True

    def _caught_up(self) -> None:
        self._oldest_unwritten = None
        self._spool.rotate_if_drained()

    def _dead_letter(self, line: bytes, reason: str, kind: str) -> None:
        try:  # the line as a JSON string (\\u escapes keep even a lone surrogate): json.loads(line) reads it back
            text = line.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            text = line.decode("utf-8", "backslashreplace")
        entry = {"at": datetime.now(timezone.utc).isoformat(), "reason": reason, "line": text.rstrip("\n")}
        with open(self.spool_dir / DEAD_LETTER_FILE, "ab") as f:
            f.write(json.dumps(entry, ensure_ascii=True).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self._dead += 1
        DEAD_LETTERS.labels(kind).inc()
        log.error("inference log: row dead-lettered to %s: %s", self.spool_dir / DEAD_LETTER_FILE, reason)

    def _backoff(self) -> None:
        self._retry_delay = min(max(self._retry_delay * 2, self.retry_min_s), self.retry_max_s)
        self._next_retry = time.monotonic() + self._retry_delay

    def _try_db(self, fn: Callable[[], object]) -> bool:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - any DB failure means "keep it in the spool, retry later"
            self._backoff()
            if self._healthy or not self._passes:
                log.warning("inference DB unavailable, keeping rows in the spool %s: %s", self.spool_dir, exc)
            self._healthy = False
            return False
        if not self._healthy:
            log.info("inference DB available")
        self._healthy, self._retry_delay, self._next_retry = True, 0.0, 0.0
        return True

    def _ensure_schema(self) -> None:
        if not self._migrated:
            self._sink.ensure_schema()  # migrations, if any, run in a child process
            self._migrated = True
