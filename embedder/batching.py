"""Dynamic micro-batching: coalesce texts from concurrent requests into model batches.

One asyncio task collects queued texts for up to `max_wait_ms` (or until `max_batch_size`),
drops those nobody waits for any more (cancelled) or whose deadline passed, and runs the model on
a worker thread so the event loop keeps serving gRPC I/O meanwhile. The queue is bounded: a full
queue rejects new work with OverloadedError instead of growing memory. A batch holds texts of one
feature set only (one model pass answers one set); the others wait at the front of the queue.

Every batch is padded to its longest text, so padding is what length-mixed traffic wastes (random
real sentences in batches of 16: 0.6x the throughput of length-sorted ones). A text's length is what
the servable says it costs (`batch_lengths`: its token count where the servable can count tokens,
in characters at ~4 per token; otherwise its characters). Two cures:
- a deep queue is read through a window: the oldest text (nobody starves) plus the texts nearest
  its length among the next `batch_window` batches' worth;
- a collected batch is sorted and cut into runs of similar length where the padding saved outweighs
  a model call's fixed cost (`split_overhead_chars`).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from embedder import metrics
from embedder.cache import CachedEmbedding
from embedder.feature_sets import DEFAULT
from embedder.servable_api import EmbedBatchResult
from polyhead.errors import DeadlineExceededError, OverloadedError, UnavailableError

log = logging.getLogger("polyhead.embedder.batching")


@dataclass(eq=False)
class BatchItem:
    text: str
    future: asyncio.Future
    deadline: float | None = None  # time.monotonic() seconds; None = no deadline
    waiters: int = 0  # requests awaiting this text (in-flight dedup shares one item)
    enqueued_at: float = field(default_factory=time.monotonic)
    feature_set: str = DEFAULT
    length: int = -1  # padded cost in characters (the servable's batch_lengths); -1 = len(text)

    def __post_init__(self) -> None:
        if self.length < 0:
            self.length = len(self.text)

    def extend_deadline(self, deadline: float | None) -> None:
        if self.deadline is None or deadline is None:
            self.deadline = None
        else:
            self.deadline = max(self.deadline, deadline)


class MicroBatcher:
    def __init__(
        self,
        run_batch: Callable[[list[str], str], EmbedBatchResult],  # (texts, feature set)
        max_batch_size: int,
        max_wait_ms: float,
        max_queue_size: int,
        *,
        batch_window: int,
        split_overhead_chars: int,
    ):
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.batch_window = batch_window
        self.split_overhead_chars = split_overhead_chars
        self._queue: deque[BatchItem] = deque()
        self._wakeup = asyncio.Event()
        # One model thread: TensorFlow parallelises inside a batch; two batches at once only contend.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._task: asyncio.Task | None = None
        self._closing = False
        self.batches_run = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="micro-batcher")

    def ensure_capacity(self, n: int) -> None:
        """All-or-nothing admission: a request is refused whole, never half-queued."""
        if self._closing:
            raise UnavailableError("embedder is shutting down", retry_after_s=1)
        if len(self._queue) + n > self.max_queue_size:
            raise OverloadedError(
                f"queue full: {len(self._queue)} texts waiting, limit max_queue_size={self.max_queue_size}",
                retry_after_s=0.5,
            )

    def submit(self, text: str, deadline: float | None, feature_set: str = DEFAULT, length: int = -1) -> BatchItem:
        item = BatchItem(text, asyncio.get_running_loop().create_future(), deadline, feature_set=feature_set,
                         length=length)
        self._queue.append(item)
        metrics.QUEUE_DEPTH.set(len(self._queue))
        self._wakeup.set()
        return item

    async def close(self) -> None:
        """Stop admitting, finish everything queued, then stop the loop."""
        self._closing = True
        while self._queue:
            await asyncio.sleep(0.01)
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    async def _collect(self) -> list[BatchItem]:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        # Wait briefly for company, unless a full batch is already there.
        first_at = self._queue[0].enqueued_at
        while len(self._queue) < self.max_batch_size:
            remaining = first_at + self.max_wait_s - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return self._take()

    def _take(self) -> list[BatchItem]:
        """Up to max_batch_size live items: the oldest, then those of its feature set nearest its
        length within the window; the others keep their order at the front of the queue."""
        live: list[BatchItem] = []
        now = time.monotonic()
        while self._queue and len(live) < self.max_batch_size * self.batch_window:
            item = self._queue.popleft()
            if item.future.done() or item.waiters <= 0:
                metrics.DROPPED.labels("cancelled").inc()
                if not item.future.done():
                    item.future.cancel()
                continue
            if item.deadline is not None and item.deadline <= now:
                metrics.DROPPED.labels("deadline").inc()
                item.future.set_exception(DeadlineExceededError("deadline passed while queued"))
                continue
            live.append(item)
        # One model pass answers one feature set: the oldest text's.
        window = [it for it in live if it.feature_set == live[0].feature_set] if live else []
        if len(window) > self.max_batch_size:
            anchor = window[0].length
            nearest = heapq.nsmallest(self.max_batch_size - 1, range(1, len(window)),
                                      key=lambda i: (abs(window[i].length - anchor), i))
            window = [window[0]] + [window[i] for i in sorted(nearest)]
        chosen = {id(it) for it in window}
        self._queue.extendleft(reversed([it for it in live if id(it) not in chosen]))
        metrics.QUEUE_DEPTH.set(len(self._queue))
        return window

    def split_by_length(self, batch: list[BatchItem]) -> list[list[BatchItem]]:
        """Sort by length and cut into contiguous runs minimising sum(run size x its longest text
        + split_overhead_chars): the padded work plus each model call's fixed cost."""
        batch = sorted(batch, key=lambda it: it.length)
        if not batch:
            return []
        if self.split_overhead_chars <= 0 or len(batch) < 2:
            return [batch]
        lengths = [it.length for it in batch]
        cost, cut = [0.0] + [float("inf")] * len(batch), [0] * (len(batch) + 1)
        for end in range(1, len(batch) + 1):
            for start in range(end):
                c = cost[start] + (end - start) * lengths[end - 1] + self.split_overhead_chars
                if c < cost[end]:
                    cost[end], cut[end] = c, start
        runs, end = [], len(batch)
        while end > 0:
            runs.append(batch[cut[end]:end])
            end = cut[end]
        return runs[::-1]

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            for run in self.split_by_length(batch):
                await self._run(run)

    async def _run(self, batch: list[BatchItem]) -> None:
        started = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_batch, [it.text for it in batch], batch[0].feature_set)
        except Exception as exc:  # a model failure fails this batch only
            log.exception("model batch failed", extra={"size": len(batch)})
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.BATCH_LATENCY.observe(time.perf_counter() - started)
        self.batches_run += 1
        for i, it in enumerate(batch):
            if not it.future.done():
                it.future.set_result(CachedEmbedding(result.vectors[i], bool(result.truncated[i]),
                                                     int(result.token_counts[i])))
