"""Coalesce concurrent Embed calls of a head process into fewer, larger ones.

Under concurrency, a head's ceiling is the per-call cost of gRPC in its own event loop, not the
embedder: 64 single-text predicts make 64 Embed calls. This wraps `AsyncEmbedderClient.embed`
like a group commit: at most `max_inflight` Embed calls are on the wire; callers that arrive
meanwhile queue, and when a slot frees, everything queued (up to `max_texts`, duplicates sent
once) goes in ONE call. At low load nothing waits (a free slot sends at once, unless `window_ms`
asks for a short wait); under load the batches form by themselves. Every caller gets its own rows
back; a failure reaches every caller of that call, except a ValidationError, which is retried
per caller so that only the caller whose text was refused sees it. The merged call carries the
callers' request ids (comma-separated, in x-request-id) so the embedder's logs still name them.
One call carries one feature set: callers of another set wait for the next free slot, in order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from embedder.client import AsyncEmbedderClient, Embeddings
from embedder.feature_sets import DEFAULT
from heads import metrics
from polyhead.errors import ValidationError

MAX_REQUEST_ID_CHARS = 2048  # gRPC metadata stays far below its 8 KiB default limit


@dataclass
class _Waiter:
    texts: list[str]
    request_id: str | None
    future: asyncio.Future = field(default=None)
    feature_set: str = DEFAULT


@dataclass(frozen=True)
class CoalescerStats:
    calls: int  # embed() calls answered
    rpcs: int  # Embed RPCs sent for them
    texts_sent: int  # texts in those RPCs (after de-duplication)


class CoalescingEmbedder:
    """Drop-in for the `embed`/`info`/`health`/`close` of an AsyncEmbedderClient (same loop)."""

    def __init__(self, client: AsyncEmbedderClient, *, max_inflight: int = 4, max_texts: int = 256,
                 window_ms: float = 0.0):
        self.client = client
        self.max_inflight = max_inflight
        self.max_texts = max_texts
        self.window_s = window_ms / 1000
        self._queue: list[_Waiter] = []
        self._inflight = 0
        self._pump_scheduled = False
        self._calls = self._rpcs = self._texts_sent = 0

    @property
    def target(self) -> str:
        return self.client.target

    @property
    def stats(self) -> CoalescerStats:
        return CoalescerStats(self._calls, self._rpcs, self._texts_sent)

    async def embed(self, texts: Sequence[str], *, bypass_cache: bool = False, timeout_s: float | None = None,
                    request_id: str | None = None, feature_set: str = DEFAULT) -> Embeddings:
        if bypass_cache or timeout_s is not None or len(texts) >= self.max_texts:
            self._calls += 1
            self._count_rpc(len(texts))
            return await self.client.embed(texts, bypass_cache=bypass_cache, timeout_s=timeout_s,
                                           request_id=request_id, feature_set=feature_set)
        waiter = _Waiter(list(texts), request_id, asyncio.get_running_loop().create_future(), feature_set)
        self._queue.append(waiter)
        self._schedule()
        return await waiter.future

    def _schedule(self) -> None:
        if self._pump_scheduled or self._inflight >= self.max_inflight or not self._queue:
            return
        self._pump_scheduled = True
        loop = asyncio.get_running_loop()
        if self.window_s > 0:
            loop.call_later(self.window_s, self._pump)
        else:
            loop.call_soon(self._pump)  # after the callers already runnable in this turn have queued

    def _pump(self) -> None:
        self._pump_scheduled = False
        while self._queue and self._inflight < self.max_inflight:
            # The oldest caller, then the next ones of its feature set while they fit; the others keep their order.
            batch, n, rest, full = [], 0, [], False
            for waiter in self._queue:
                if batch and (full or waiter.feature_set != batch[0].feature_set):
                    rest.append(waiter)
                elif batch and n + len(waiter.texts) > self.max_texts:
                    full = True
                    rest.append(waiter)
                else:
                    batch.append(waiter)
                    n += len(waiter.texts)
            self._queue = rest
            self._inflight += 1
            asyncio.get_running_loop().create_task(self._send(batch))

    async def _send(self, batch: list[_Waiter]) -> None:
        try:
            unique = list(dict.fromkeys(t for w in batch for t in w.texts))
            ids = ",".join(w.request_id for w in batch if w.request_id)[:MAX_REQUEST_ID_CHARS] or None
            self._count_rpc(len(unique))
            try:
                result = await self.client.embed(unique, request_id=ids, feature_set=batch[0].feature_set)
            except ValidationError:
                if len(batch) == 1:
                    raise
                await self._one_by_one(batch)  # only the caller whose text was refused gets the error
                return
            row = {t: i for i, t in enumerate(unique)}
            for w in batch:
                idx = [row[t] for t in w.texts]
                part = Embeddings(result.vectors[idx] if idx else np.zeros((0, result.vectors.shape[1]), np.float32),
                                  [result.cached[i] for i in idx], [result.truncated[i] for i in idx],
                                  result.fingerprint, result.model, [result.token_counts[i] for i in idx])
                self._deliver(w, part)
        except BaseException as exc:  # every caller of this call gets the error (or the cancellation)
            for w in batch:
                self._deliver(w, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._inflight -= 1
            self._schedule()

    async def _one_by_one(self, batch: list[_Waiter]) -> None:
        async def one(w: _Waiter):
            self._count_rpc(len(w.texts))
            try:
                self._deliver(w, await self.client.embed(w.texts, request_id=w.request_id,
                                                         feature_set=w.feature_set))
            except Exception as exc:  # noqa: BLE001
                self._deliver(w, exc)

        await asyncio.gather(*(one(w) for w in batch))

    def _count_rpc(self, texts: int) -> None:
        self._rpcs += 1
        self._texts_sent += texts
        metrics.EMBED_RPCS.inc()
        metrics.EMBED_RPC_TEXTS.inc(texts)

    def _deliver(self, waiter: _Waiter, outcome) -> None:
        if waiter.future.done():  # the caller went away (cancelled)
            return
        self._calls += 1
        if isinstance(outcome, asyncio.CancelledError):
            waiter.future.cancel()
        elif isinstance(outcome, BaseException):
            waiter.future.set_exception(outcome)
        else:
            waiter.future.set_result(outcome)

    async def info(self, timeout_s: float | None = None):
        return await self.client.info(timeout_s=timeout_s)

    async def health(self, timeout_s: float = 2.0, service: str = "") -> str:
        return await self.client.health(timeout_s=timeout_s, service=service)

    async def close(self) -> None:
        await self.client.close()
