"""The shared second-level embedding cache, in Redis: L1 (in-process LRU) -> L2 (Redis) -> model.

It survives embedder restarts and is shared by every replica (and read by heads when no embedder
answers). Keys: `<prefix><fingerprint>:<blake2b-128 of the UTF-8 text>`, the fingerprint being the
feature set's (a key never holds the text itself, and its length is bounded); values: a 5-byte header (truncated flag, token count)
then the vector as little-endian float32, or float16 for a set whose fingerprint says so
(embedder/feature_sets.py precision_of: the key alone tells a reader how to read the value). Every key gets a TTL; the memory cap is Redis's own
(`maxmemory` with `maxmemory-policy allkeys-lru`), set on the server, not by the application.

Round trips are coalesced: every lookup made in one event-loop tick goes out as one MGET and every
write as one pipeline of SET EX, so a model batch costs one read and one write, not one per text.
Redis down or slow never fails an embed: reads have a short timeout (writes, off the request path,
five times that), a failure is counted and logged once per outage, and Redis is then skipped for
`retry_s` before it is tried again.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time

import numpy as np

from embedder import metrics
from embedder.cache import CachedEmbedding
from embedder.feature_sets import precision_of
from embedder.l2keys import L2_KEY_PREFIX, l2_key

log = logging.getLogger("polyhead.embedder.l2cache")
_HEADER = struct.Struct("<BI")  # truncated, token_count
WRITE_TIMEOUT_FACTOR = 5  # a write may take this many read timeouts
MAX_PENDING_WRITES = 50_000  # writes waiting for Redis beyond this are dropped (counted), never queued forever


def pack(value: CachedEmbedding, dtype: np.dtype = np.dtype("<f4")) -> bytes:
    return _HEADER.pack(int(value.truncated), value.token_count) + value.vector.astype(dtype, copy=False).tobytes()


def unpack(raw: bytes | None, dim: int | None, dtype: np.dtype = np.dtype("<f4")) -> CachedEmbedding | None:
    """None for a miss or a value of another shape (an old format, another encoder's dimension).
    The vector comes back in `dtype`'s precision, native byte order."""
    if raw is None or len(raw) <= _HEADER.size or (len(raw) - _HEADER.size) % dtype.itemsize:
        return None
    if dim is not None and len(raw) != _HEADER.size + dtype.itemsize * dim:
        return None
    truncated, token_count = _HEADER.unpack_from(raw)
    vector = np.frombuffer(raw, dtype=dtype, offset=_HEADER.size).astype(dtype.newbyteorder("="))
    return CachedEmbedding(vector, bool(truncated), token_count)


class RedisL2Cache:
    """Create and use inside one event loop (redis.asyncio connections belong to their loop)."""

    def __init__(self, url: str, dim: int | None, *, ttl_s: float = 7 * 86400, timeout_s: float = 0.1,
                 retry_s: float = 5.0, key_prefix: str = L2_KEY_PREFIX, role: str = "embedder"):
        import redis.asyncio as redis  # only processes that enable L2 need the package
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url, self.dim, self.ttl_s, self.timeout_s, self.retry_s = url, dim, ttl_s, timeout_s, retry_s
        self.key_prefix = key_prefix
        self.role = role  # metrics label: the embedder reads and writes, a head only reads
        # Writes are off the request path: a busy host delaying one should not start a back-off of reads.
        self.write_timeout_s = WRITE_TIMEOUT_FACTOR * timeout_s
        # No client-side retries: a failed call is skipped, and Redis is retried after retry_s.
        self._redis = redis.Redis.from_url(url, socket_timeout=self.write_timeout_s, socket_connect_timeout=timeout_s,
                                           retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
                                           health_check_interval=0)
        self._down_until = 0.0
        self._outage = False
        self._reads: list[tuple[list[str], asyncio.Future, int | None, np.dtype]] = []
        self._writes: dict[str, bytes] = {}
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task] = set()
        metrics.L2_UP.labels(role).set(1)

    # -- availability -------------------------------------------------------------------------------
    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, op: str, exc: BaseException, texts: int) -> None:
        metrics.L2_ERRORS.labels(self.role, op).inc()
        metrics.L2_SKIPPED.labels(self.role, op).inc(texts)
        self._down_until = time.monotonic() + self.retry_s
        metrics.L2_UP.labels(self.role).set(0)
        if not self._outage:
            self._outage = True
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("L2 cache unreachable (%s on %s); skipping it for %.1fs at a time", error, op, self.retry_s,
                        extra={"url": _redact(self.url), "op": op, "error": error})

    def _succeeded(self) -> None:
        if self._outage:
            self._outage = False
            log.warning("L2 cache reachable again", extra={"url": _redact(self.url)})
        metrics.L2_UP.labels(self.role).set(1)

    # -- reads ----------------------------------------------------------------------------------------
    async def get_many(self, fingerprint: str, texts: list[str], dim: int | None = None) -> list[CachedEmbedding | None]:
        """One entry per text; None for a miss, and for every text while Redis is down or slow.
        `dim`: the vectors' expected dimension when not the cache's (another feature set's)."""
        if not texts:
            return []
        if not self.available:
            metrics.L2_SKIPPED.labels(self.role, "get").inc(len(texts))
            return [None] * len(texts)
        future = asyncio.get_running_loop().create_future()
        self._reads.append(([l2_key(self.key_prefix, fingerprint, t) for t in texts], future, dim or self.dim,
                            precision_of(fingerprint).dtype))
        self._schedule_flush()
        found = await future
        hits = sum(v is not None for v in found)
        metrics.L2_HITS.labels(self.role).inc(hits)
        metrics.L2_MISSES.labels(self.role).inc(len(texts) - hits)
        return found

    async def _flush_reads(self, reads: list[tuple[list[str], asyncio.Future, int | None, np.dtype]]) -> None:
        keys = [k for ks, _, _, _ in reads for k in ks]
        started = time.perf_counter()
        try:
            raw = await asyncio.wait_for(self._redis.mget(keys), self.timeout_s)
        except (Exception, asyncio.TimeoutError) as exc:  # noqa: BLE001 - any Redis failure is a miss
            self._failed("get", exc, len(keys))
            raw = [None] * len(keys)
        else:
            self._succeeded()
            metrics.L2_LATENCY.labels(self.role, "get").observe(time.perf_counter() - started)
        at = 0
        for ks, future, dim, dtype in reads:
            if not future.done():
                future.set_result([unpack(r, dim, dtype) for r in raw[at:at + len(ks)]])
            at += len(ks)

    # -- writes ---------------------------------------------------------------------------------------
    def put_later(self, fingerprint: str, text: str, value: CachedEmbedding) -> None:
        """Queue a write; the writes of one loop tick (a model batch) go out as one pipeline."""
        if not self.available or len(self._writes) >= MAX_PENDING_WRITES:
            metrics.L2_SKIPPED.labels(self.role, "set").inc()
            return
        self._writes[l2_key(self.key_prefix, fingerprint, text)] = pack(value, precision_of(fingerprint).dtype)
        self._schedule_flush()

    async def _flush_writes(self, writes: dict[str, bytes]) -> None:
        started = time.perf_counter()
        ttl_ms = max(1, int(self.ttl_s * 1000))
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, raw in writes.items():
                    pipe.set(key, raw, px=ttl_ms)
                await asyncio.wait_for(pipe.execute(), self.write_timeout_s)
        except (Exception, asyncio.TimeoutError) as exc:  # noqa: BLE001 - a lost write is only a future miss
            self._failed("set", exc, len(writes))
        else:
            self._succeeded()
            metrics.L2_WRITES.labels(self.role).inc(len(writes))
            metrics.L2_LATENCY.labels(self.role, "set").observe(time.perf_counter() - started)

    # -- coalescing -----------------------------------------------------------------------------------
    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        reads, self._reads = self._reads, []
        writes, self._writes = self._writes, {}
        for job in ((self._flush_reads(reads) if reads else None), (self._flush_writes(writes) if writes else None)):
            if job is not None:
                task = asyncio.ensure_future(job)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._flush_scheduled:
            self._flush()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=max(1.0, 2 * self.write_timeout_s))
        await self._redis.aclose()


def _redact(url: str) -> str:
    """redis://user:secret@host -> redis://user:***@host (logs never carry a password)."""
    scheme, sep, rest = url.partition("://")
    if "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
