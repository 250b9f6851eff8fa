"""The embedder's core, independent of any front end: validate -> L1 cache -> L2 cache (Redis, optional)
-> in-flight dedup -> batcher -> servable.

Every key (L1, L2, in flight) is (the feature set's fingerprint, text): sets never share an entry.
Vectors are held in their set's storage precision (float16 for all6) from the model pass on.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from embedder import metrics
from embedder.batching import BatchItem, MicroBatcher
from embedder.cache import EmbeddingCache
from embedder.feature_sets import FeatureSet, resolve
from embedder.l2cache import RedisL2Cache
from embedder.servable import TextEmbeddingServable
from embedder.servable_api import EmbedBatchResult
from embedder.settings import EmbedderSettings
from polyhead.validation import check_texts

# The servable's batch_lengths (the ONNX tokenizer: ~0.5 us a character) runs inline up to this many
# characters a request (a request of 32 sentences: ~1 ms), in a thread beyond, so that a request of
# 1,024 long texts never stalls the event loop.
INLINE_LENGTHS_MAX_CHARS = 8192


@dataclass(frozen=True)
class EmbedOutcome:
    vectors: np.ndarray  # [N, D] of feature_set.dtype (float32, or float16 for a float16 set)
    cached: list[bool]
    truncated: list[bool]
    token_counts: list[int]
    feature_set: FeatureSet  # what the vectors are: name, dim, fingerprint


class EmbeddingService:
    def __init__(self, settings: EmbedderSettings, servable: TextEmbeddingServable):
        self.settings = settings
        self.servable = servable
        self.cache = EmbeddingCache(settings.cache_max_entries)
        self.batcher: MicroBatcher | None = None
        self.l2: RedisL2Cache | None = None
        # (fingerprint, text) -> the queued item computing it: concurrent requests share one row.
        self._inflight: dict[tuple[str, str], BatchItem] = {}

    async def start(self) -> None:
        self.batcher = MicroBatcher(
            self._run_batch, self.settings.max_batch_size, self.settings.max_wait_ms, self.settings.max_queue_size,
            batch_window=self.settings.batch_window, split_overhead_chars=self.settings.split_overhead_chars,
        )
        self.batcher.start()
        s = self.settings
        if s.l2_cache_url:
            self.l2 = RedisL2Cache(s.l2_cache_url, self.servable.dim, ttl_s=s.l2_cache_ttl_s,
                                   timeout_s=s.l2_cache_timeout_ms / 1000, retry_s=s.l2_cache_retry_s,
                                   key_prefix=s.l2_cache_key_prefix)

    def _run_batch(self, texts: list[str], feature_set: str) -> EmbedBatchResult:
        """One model pass (a worker thread), its vectors rounded once to the set's precision: so a text's
        vector is the same whether it comes from the model, L1 or L2, and the caches hold that many bytes."""
        result = self.servable.embed(texts, feature_set)
        dtype = self.servable.feature_sets[feature_set].dtype
        return result if result.vectors.dtype == dtype else dataclasses.replace(result, vectors=result.vectors.astype(dtype))

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        if self.l2 is not None:
            await self.l2.close()

    def validate(self, texts: list[str], feature_set: str = "") -> FeatureSet:
        check_texts(texts, max_texts=self.settings.max_texts_per_request, max_chars=self.settings.max_text_chars)
        return resolve(self.servable.feature_sets, feature_set)

    async def embed(self, texts: list[str], bypass_cache: bool = False, timeout_s: float | None = None,
                    feature_set: str = "") -> EmbedOutcome:
        """`feature_set`: a name of `servable.feature_sets`; "" is the default set."""
        fs = self.validate(texts, feature_set)
        metrics.TEXTS.inc(len(texts))
        fp = fs.fingerprint
        deadline = time.monotonic() + timeout_s if timeout_s else None
        vectors = np.empty((len(texts), fs.dim), dtype=fs.dtype)
        cached = [False] * len(texts)
        truncated = [False] * len(texts)
        token_counts = [0] * len(texts)

        # Texts still needed, each once (a request may repeat a text).
        needed: dict[str, list[int]] = {}
        for i, text in enumerate(texts):
            hit = None if bypass_cache else self.cache.get((fp, text))
            if hit is not None:
                vectors[i], cached[i], truncated[i], token_counts[i] = hit.vector, True, hit.truncated, hit.token_count
            else:
                needed.setdefault(text, []).append(i)

        if needed and self.l2 is not None and not bypass_cache:
            # One MGET for every L1 miss of this request (and of the other requests of this loop tick).
            for text, hit in zip(list(needed), await self.l2.get_many(fp, list(needed), dim=fs.dim)):
                if hit is not None:
                    self.cache.put((fp, text), hit)
                    for i in needed.pop(text):
                        vectors[i], cached[i], truncated[i], token_counts[i] = (
                            hit.vector, True, hit.truncated, hit.token_count)

        if needed:
            lengths = await self._batch_lengths(list(needed))
            items = self._enqueue(list(needed), lengths, fs, bypass_cache, deadline)
            for it in items:
                it.waiters += 1
            try:
                results = await asyncio.gather(*(asyncio.shield(it.future) for it in items))
            finally:
                for it in items:
                    it.waiters -= 1  # a cancelled caller leaves; an item nobody awaits is dropped
            for indices, result in zip(needed.values(), results):
                for i in indices:
                    vectors[i], truncated[i], token_counts[i] = result.vector, result.truncated, result.token_count
        return EmbedOutcome(vectors, cached, truncated, token_counts, fs)

    async def _batch_lengths(self, texts: list[str]) -> list[int]:
        """What each text costs in a padded batch (the batcher groups by it)."""
        if sum(map(len, texts)) <= INLINE_LENGTHS_MAX_CHARS:
            return self.servable.batch_lengths(texts)
        return await asyncio.to_thread(self.servable.batch_lengths, texts)

    def _enqueue(self, texts: list[str], lengths: list[int], fs: FeatureSet, bypass_cache: bool,
                 deadline: float | None) -> list[BatchItem]:
        """Synchronous from the in-flight check to the last submit: two requests never queue one text twice."""
        assert self.batcher is not None, "start() first"
        fp = fs.fingerprint
        joined = {} if bypass_cache else {t: self._inflight[(fp, t)] for t in texts if (fp, t) in self._inflight}
        self.batcher.ensure_capacity(len(texts) - len(joined))
        items = []
        for text, length in zip(texts, lengths):
            item = joined.get(text)
            if item is not None:
                metrics.INFLIGHT_JOINS.inc()
                item.extend_deadline(deadline)
            else:
                item = self.batcher.submit(text, deadline, fs.name, length)
                if not bypass_cache:
                    key = (fp, text)
                    self._inflight[key] = item
                    item.future.add_done_callback(lambda fut, key=key, item=item: self._settle(key, item, fut))
            items.append(item)
        return items

    def _settle(self, key: tuple[str, str], item: BatchItem, fut: asyncio.Future) -> None:
        if self._inflight.get(key) is item:
            del self._inflight[key]
        if not fut.cancelled() and fut.exception() is None:
            result = fut.result()
            self.cache.put(key, result)
            if self.l2 is not None:
                # The texts of one model batch settle in one loop tick: one pipelined write for all.
                self.l2.put_later(key[0], key[1], result)

    def info(self) -> dict:
        s = self.settings
        return {
            "model": self.servable.name,
            "fingerprint": self.servable.fingerprint,
            "dim": self.servable.dim,
            "max_seq_length": self.servable.max_seq_length,
            "limits": {
                "max_texts_per_request": s.max_texts_per_request,
                "max_text_chars": s.max_text_chars,
                "max_batch_size": s.max_batch_size,
                "max_queue_size": s.max_queue_size,
            },
            "cache_max_entries": s.cache_max_entries,
            "feature_sets": list(self.servable.feature_sets.values()),  # default first
        }
