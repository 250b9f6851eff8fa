"""The response cache: an LRU of (fingerprint, text) -> (vector, truncated), from cachetools."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cachetools import LRUCache

from embedder import metrics


@dataclass(frozen=True, slots=True)
class CachedEmbedding:
    vector: np.ndarray
    truncated: bool
    token_count: int = 0


class _CountingLRU(LRUCache):
    def popitem(self):
        item = super().popitem()  # only called by cachetools to evict
        metrics.CACHE_EVICTIONS.inc()
        return item


class EmbeddingCache:
    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self._lru = _CountingLRU(maxsize=max_entries) if max_entries > 0 else None
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str]) -> CachedEmbedding | None:
        found = self._lru.get(key) if self._lru is not None else None
        if found is None:
            self.misses += 1
            metrics.CACHE_MISSES.inc()
        else:
            self.hits += 1
            metrics.CACHE_HITS.inc()
        metrics.CACHE_HIT_RATIO.set(self.hits / (self.hits + self.misses))
        return found

    def put(self, key: tuple[str, str], value: CachedEmbedding) -> None:
        if self._lru is None:
            return
        self._lru[key] = value
        metrics.CACHE_SIZE.set(len(self._lru))

    def __len__(self) -> int:
        return len(self._lru) if self._lru is not None else 0

