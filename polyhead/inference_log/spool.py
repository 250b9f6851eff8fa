"""The head's write-ahead spool: every logged prediction is appended here before its answer is sent.

Append-only segments ``segment-<n>.jsonl`` (one PredictionRecord JSON line each) in ``spool_dir``.
Request threads append (one ``os.write`` per request: in the kernel once it returns, so a SIGKILL
of the process loses nothing); the writer thread reads the segments in order, inserts, and only
then moves its cursor on. A segment is deleted once the cursor has passed its end and a newer one
is active; when the writer has caught up the active segment is rotated away, so the spool holds
what is not yet in the database (plus at most one batch). On restart every segment is replayed
from its start: rows already in the database are skipped (ON CONFLICT on the row id).

Durability (fsync): ``sync()`` runs once per writer pass (group commit, at most ``flush_interval_s``
apart), not per request: an fsync per request costs a disk flush on the request path, one per
pass costs one per batch (README, "Inference log"). A machine crash (power loss, kernel panic)
can therefore lose the predictions answered in the last flush window that had not reached the
database yet; a process crash or SIGKILL loses none.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path

_SEGMENT = re.compile(r"^segment-(\d{12})\.jsonl$")
ROTATE_BYTES = 16 << 20  # a long outage still leaves segments the writer can delete one by one


def segment_name(n: int) -> str:
    return f"segment-{n:012d}.jsonl"


class Spool:
    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self._lock = threading.Lock()
        self._segments: list[int] = []  # existing, oldest first; the last one is active
        self._fd: int | None = None  # the active segment, O_APPEND
        self._active_size = 0
        self._unsynced = False
        self._dir_unsynced = False
        self._reader: tuple[int, object] | None = None  # (segment number, open file) of the cursor
        self._offset = 0  # cursor: byte offset in the oldest segment
        self.appended_rows = 0  # rows appended since open(), including the backlog found then
        self.consumed_rows = 0  # rows the writer has handled (written or dead-lettered)
        self.backlog_rows = 0  # rows found at open(): a previous process's spool

    # -- appending (request threads) -----------------------------------------------------------

    def open(self, legacy: tuple[Path, ...] = ()) -> int:
        """Adopt the segments a previous process left (and its older single-file spool), repair a torn
        last line, start a new active segment. Returns the rows waiting."""
        self.dir.mkdir(parents=True, exist_ok=True)
        found = sorted(int(m.group(1)) for p in self.dir.iterdir() if (m := _SEGMENT.match(p.name)))
        older = [p for p in legacy if p.exists()]
        if older:  # they precede every segment: numbered below the first
            first = found[0] - len(older) if found else 1
            if first < 0:
                raise RuntimeError(f"spool dir {self.dir}: cannot order legacy spool files")
            for i, p in enumerate(older):
                os.replace(p, self.dir / segment_name(first + i))
            found = list(range(first, first + len(older))) + found
        n = found[-1] + 1 if found else 1
        rows = 0
        for seg in found:
            path = self.dir / segment_name(seg)
            with open(path, "r+b") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):  # torn by a crash: end it, so what follows is whole
                    f.write(b"\n")
                    os.fsync(f.fileno())
            rows += sum(1 for line in data.splitlines() if line.strip())
        self._segments = found
        self._new_segment(n)
        self.appended_rows = self.backlog_rows = rows
        return rows

    def append(self, data: bytes, rows: int) -> None:
        with self._lock:
            if self._fd is None:  # closed: still keep the rows for the next process
                self.dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.dir / segment_name((self._segments or [0])[-1] + 1), os.O_WRONLY | os.O_APPEND
                             | os.O_CREAT, 0o600)
                try:
                    _write_all(fd, data)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                return
            _write_all(self._fd, data)
            self._active_size += len(data)
            self.appended_rows += rows
            self._unsynced = True

    def sync(self) -> bool:
        """fsync what was appended since the last call (the group commit); True when there was any."""
        with self._lock:
            fd, unsynced, dir_unsynced = self._fd, self._unsynced, self._dir_unsynced
            self._unsynced = self._dir_unsynced = False
        if fd is not None and unsynced:
            os.fsync(fd)  # outside the lock: appends go on meanwhile (and are synced next time)
        if dir_unsynced:
            _fsync_dir(self.dir)
        return unsynced

    @property
    def pending_rows(self) -> int:
        return self.appended_rows - self.consumed_rows

    # -- reading (the writer thread) ------------------------------------------------------------

    def read(self, max_rows: int) -> tuple[list[bytes], int]:
        """Up to max_rows whole lines from the cursor on, and the offset after them (for commit).
        Never spans segments; moves past (and deletes) finished segments."""
        while True:
            seg = self._segments[0]
            if self._reader is None or self._reader[0] != seg:
                self._close_reader()
                self._reader = (seg, open(self.dir / segment_name(seg), "rb"))
            f = self._reader[1]
            f.seek(self._offset)
            lines: list[bytes] = []
            pos = self._offset
            while len(lines) < max_rows:
                line = f.readline()
                if not line.endswith(b"\n"):  # EOF, or an append still under way
                    break
                pos += len(line)
                if line.strip():
                    lines.append(line)
            if lines or pos != self._offset:
                return lines, pos
            with self._lock:
                if seg == self._segments[-1]:
                    return [], pos  # caught up with the active segment
            self._drop_oldest()  # read to its end and committed: gone

    def commit(self, offset: int, rows: int) -> None:
        self._offset = offset
        self.consumed_rows += rows

    def rotate_if_drained(self) -> None:
        """Caught up with a non-empty active segment: start a fresh one and delete the old one."""
        with self._lock:
            if (self._fd is None or len(self._segments) != 1 or self._offset != self._active_size
                    or self._active_size == 0):
                return
            self._new_segment(self._segments[-1] + 1)
        self._drop_oldest()

    def rotate_if_large(self) -> None:
        with self._lock:
            if self._fd is not None and self._active_size >= ROTATE_BYTES:
                self._new_segment(self._segments[-1] + 1)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
            if self._segments and self._active_size == 0 and (len(self._segments) > 1 or self._offset == 0):
                # an empty active segment is noise for the next process
                os.unlink(self.dir / segment_name(self._segments.pop()))
        self._close_reader()

    def files(self) -> list[Path]:
        return [self.dir / segment_name(s) for s in self._segments]

    # -- internals ------------------------------------------------------------------------------

    def _new_segment(self, n: int) -> None:  # under the lock (or before any thread uses the spool)
        if self._fd is not None:
            if self._unsynced:
                os.fsync(self._fd)
                self._unsynced = False
            os.close(self._fd)
        self._fd = os.open(self.dir / segment_name(n), os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        self._segments.append(n)
        self._active_size = 0
        self._dir_unsynced = True  # the new name must be durable before the rows in it count as spooled

    def _drop_oldest(self) -> None:
        self._close_reader()
        with self._lock:
            seg = self._segments.pop(0)
        self._offset = 0
        try:
            os.unlink(self.dir / segment_name(seg))  # not fsync'd: if it comes back, a replay is a no-op
        except FileNotFoundError:
            pass

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader[1].close()
            self._reader = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(path: Path) -> None:
    # Makes a file's creation/rename itself durable, not only its contents.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
