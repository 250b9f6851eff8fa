"""Inference log: every prediction a head serves, written to SQLite (default) or PostgreSQL.

Writes never sit on the request path: ``record()`` only enqueues; a writer thread inserts batches
with one executemany ``INSERT ... ON CONFLICT (id) DO NOTHING``, through the DBAPI driver itself
(sink.py: SQLAlchemy stays out of the serving process; migrations run in a child process). When the database is down the
batch goes to a local JSONL spool (fsync'd); once the database answers again the spool is replayed.
Each row carries a uuid4 primary key, so a replay that is interrupted after its insert committed,
or a spool replayed twice, cannot duplicate rows.

One ``spool_dir`` per process: ``start()`` takes an exclusive ``flock`` on it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Gauge

from polyhead.inference_log.records import PredictionRecord
from polyhead.inference_log.sink import open_sink

log = logging.getLogger(__name__)

WRITTEN = Counter("polyhead_head_db_written_total", "Prediction rows inserted by the request-path writer")
SPOOLED = Counter("polyhead_head_db_spooled_total", "Prediction rows written to the local spool (DB down or queue full)")
REPLAYED = Counter("polyhead_head_db_replayed_total", "Spooled prediction rows replayed into the DB")
SPOOL_ROWS = Gauge("polyhead_head_db_spool_rows", "Prediction rows waiting in the local spool")


@dataclass(frozen=True)
class InferenceLogStats:
    written: int  # rows inserted straight from the queue
    spooled: int  # rows appended to the spool
    replayed: int  # spool rows sent to the DB again (ON CONFLICT drops any already there)
    dropped: int  # rows lost: not a PredictionRecord, or the spool itself could not be written
    queue_depth: int
    spool_rows: int
    batches: int  # successful executemany inserts from the queue
    healthy: bool


class _Marker:
    """Queued behind records: the writer sets ``done`` once everything ahead of it is handled."""

    def __init__(self, stop: bool = False):
        self.stop = stop
        self.done = threading.Event()


class InferenceLog:
    def __init__(
        self,
        url: str,
        spool_dir: Path,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 0.2,
        max_queue: int = 10000,
        redact_text: bool = False,
        retry_min_s: float = 0.5,
        retry_max_s: float = 10.0,
    ):
        self.url = url
        self.spool_dir = Path(spool_dir)
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.redact_text = redact_text
        self.retry_min_s, self.retry_max_s = retry_min_s, retry_max_s
        self._sink = open_sink(url)  # the DBAPI driver itself: no SQLAlchemy in a serving head (sink.py)
        self._q: queue.Queue[PredictionRecord | _Marker] = queue.Queue(maxsize=max_queue)
        self._spool_path = self.spool_dir / "spool.jsonl"  # appended to
        self._replay_path = self.spool_dir / "replay.jsonl"  # being replayed (renamed from spool.jsonl)
        self._spool_lock = threading.Lock()  # record() may spool from request threads (queue full)
        self._lock_file: Any = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._migrated = False
        self._healthy = False
        self._retry_delay = 0.0
        self._next_retry = 0.0  # monotonic; while the DB is down, batches go to the spool until then
        self._written = self._spooled = self._replayed = self._dropped = self._batches = 0
        self._spool_rows = 0

    # -- public API -------------------------------------------------------------------------------

    def start(self) -> None:
        """Migrate (if the DB answers; if not, spool and retry later), start the writer, replay old spool."""
        if self._thread is not None:
            return
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.spool_dir / ".lock", "w")  # held until close()
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise RuntimeError(f"spool dir {self.spool_dir} is in use by another process") from None
        with self._spool_lock:
            rows = sum(_count_lines(p) for p in (self._spool_path, self._replay_path))
            self._spool_rows += rows
            SPOOL_ROWS.inc(rows)
        self._try_db(self._ensure_schema)
        self._thread = threading.Thread(target=self._run, name="inference-log-writer", daemon=True)
        self._thread.start()

    def record(self, rec: PredictionRecord) -> None:
        """Non-blocking, never raises. Queue full (or closed) -> straight to the spool, not dropped."""
        try:
            if not isinstance(rec, PredictionRecord):
                raise TypeError(f"expected PredictionRecord, got {type(rec).__name__}")
            if self.redact_text and rec.text is not None:
                rec = dataclasses.replace(rec, text=None)
            if self._closed:
                self._spool([rec])
                return
            try:
                self._q.put_nowait(rec)
            except queue.Full:
                self._spool([rec])
        except Exception:  # logging must never fail a prediction
            self._dropped += 1
            log.exception("inference log: record dropped")

    def flush(self, timeout_s: float = 10) -> bool:
        """Wait until everything recorded so far is in the DB or the spool (and, DB up, the spool replayed)."""
        if self._closed:
            return True
        if self._thread is None or not self._thread.is_alive():
            return False
        return self._send_marker(_Marker(), timeout_s)

    def close(self, timeout_s: float = 10) -> None:
        """Flush (to the DB, or the spool if it is down), stop the writer, release the spool dir."""
        if self._closed:
            return
        self._closed = True  # from now on record() spools directly
        deadline = time.monotonic() + timeout_s
        if self._thread is not None and self._thread.is_alive():
            self._send_marker(_Marker(stop=True), timeout_s)
            self._thread.join(max(0.0, deadline - time.monotonic()))
            if self._thread.is_alive():
                log.warning("inference log: writer still busy after %.1fs; spooling the rest", timeout_s)
        leftover = []  # records that raced close(), or everything when start() never ran
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, PredictionRecord):
                leftover.append(item)
            else:
                item.done.set()
        if leftover:
            self._spool(leftover)
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
        self._sink.close()

    def healthy(self) -> bool:
        """True when the last DB write (or migration) succeeded."""
        return self._healthy

    @property
    def stats(self) -> InferenceLogStats:
        return InferenceLogStats(
            written=self._written, spooled=self._spooled, replayed=self._replayed, dropped=self._dropped,
            queue_depth=self._q.qsize(), spool_rows=self._spool_rows, batches=self._batches,
            healthy=self._healthy,
        )

    def __enter__(self) -> InferenceLog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writer thread ----------------------------------------------------------------------------

    def _send_marker(self, marker: _Marker, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        try:
            self._q.put(marker, timeout=timeout_s)
        except queue.Full:
            return False
        return marker.done.wait(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while True:
            batch, markers, stop = self._collect()
            try:
                if batch:
                    self._write(batch)
                if (self._spool_rows or not self._migrated) and time.monotonic() >= self._next_retry:
                    self._try_db(self._replay)  # also the retry loop while idle after an outage
            except Exception:  # keep the writer alive whatever happens
                log.exception("inference log: writer error")
            for m in markers:
                m.done.set()
            if stop:
                return

    def _collect(self) -> tuple[list[PredictionRecord], list[_Marker], bool]:
        """Up to batch_size records: wait for the first, then at most flush_interval_s for more."""
        batch: list[PredictionRecord] = []
        markers: list[_Marker] = []
        wait = 0.5
        if self._spool_rows or not self._migrated:
            wait = min(wait, max(0.01, self._next_retry - time.monotonic()))
        try:
            item = self._q.get(timeout=wait)
        except queue.Empty:
            return batch, markers, False
        deadline = time.monotonic() + self.flush_interval_s
        while True:
            if isinstance(item, _Marker):  # flush/close: write what we have now
                markers.append(item)
                return batch, markers, item.stop
            batch.append(item)
            if len(batch) >= self.batch_size:
                return batch, markers, False
            remaining = deadline - time.monotonic()
            try:
                item = self._q.get(timeout=remaining) if remaining > 0 else self._q.get_nowait()
            except queue.Empty:
                return batch, markers, False

    def _write(self, batch: list[PredictionRecord]) -> None:
        if time.monotonic() < self._next_retry:  # DB known down: don't wait on it again yet
            self._spool(batch)
            return
        if self._try_db(lambda: (self._ensure_schema(), self._insert(batch))):
            self._written += len(batch)
            self._batches += 1
            WRITTEN.inc(len(batch))
        else:
            self._spool(batch)

    def _try_db(self, fn: Callable[[], object]) -> bool:
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - any DB failure means "spool and retry later"
            self._retry_delay = min(max(self._retry_delay * 2, self.retry_min_s), self.retry_max_s)
            self._next_retry = time.monotonic() + self._retry_delay
            if self._healthy:
                log.warning("inference DB unavailable, spooling to %s: %s", self.spool_dir, exc)
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

    def _insert(self, records: list[PredictionRecord]) -> None:
        self._sink.insert(records)  # one executemany; ON CONFLICT makes it idempotent

    # -- spool --------------------------------------------------------------------------------------

    def _spool(self, records: list[PredictionRecord]) -> None:
        data = "".join(r.to_json() + "\n" for r in records).encode("utf-8")
        try:
            with self._spool_lock:
                self.spool_dir.mkdir(parents=True, exist_ok=True)
                new = not self._spool_path.exists()
                with open(self._spool_path, "a+b") as f:
                    f.seek(0, os.SEEK_END)
                    if f.tell() > 0:  # a torn last line (crash mid-write) must not swallow ours
                        f.seek(-1, os.SEEK_END)
                        if f.read(1) != b"\n":
                            data = b"\n" + data
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                if new:
                    _fsync_dir(self.spool_dir)
                self._spooled += len(records)
                self._spool_rows += len(records)
            SPOOLED.inc(len(records))
            SPOOL_ROWS.inc(len(records))
        except Exception:  # disk full etc.: nothing left to try
            self._dropped += len(records)
            log.exception("inference log: could not spool %d rows; they are lost", len(records))

    def _replay(self) -> None:
        """Send the spool to the DB in batch_size chunks; remove a file only after all of it is in."""
        self._ensure_schema()
        for _ in range(4):  # a bounded number of passes, so the queue gets its turn
            with self._spool_lock:
                if not self._replay_path.exists():
                    if not self._spool_path.exists():
                        SPOOL_ROWS.dec(self._spool_rows)  # no files: the spool is empty, whatever we counted
                        self._spool_rows = 0
                        return
                    os.replace(self._spool_path, self._replay_path)  # new spool rows go to a fresh file
                    _fsync_dir(self.spool_dir)
            lines = 0
            chunk: list[PredictionRecord] = []
            with open(self._replay_path, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        continue
                    lines += 1
                    try:
                        chunk.append(PredictionRecord.from_json(line))
                    except (ValueError, TypeError, KeyError):
                        log.warning("inference log: skipping a corrupt spool line (torn write?)")
                    if len(chunk) >= self.batch_size:
                        self._replay_chunk(chunk)
                        chunk = []
            if chunk:
                self._replay_chunk(chunk)
            with self._spool_lock:
                self._replay_path.unlink()
                _fsync_dir(self.spool_dir)
                self._spool_rows -= lines
            SPOOL_ROWS.dec(lines)
            log.info("inference log: replayed %d spooled rows", lines)

    def _replay_chunk(self, chunk: list[PredictionRecord]) -> None:
        self._insert(chunk)
        self._replayed += len(chunk)
        REPLAYED.inc(len(chunk))


def _count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def _fsync_dir(path: Path) -> None:
    # Makes a file's creation/rename/removal itself durable, not only its contents.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
