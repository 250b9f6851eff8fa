"""What a head answers with while no embedder does: vectors of texts it has seen, then the shared L2.

A killed embedder used to cost every model ~12 s of 503, even for texts embedded a moment before.
The head knows the fingerprint its artifact was trained on, so a vector from its own recent
answers, or from the embedders' shared L2 cache in Redis, is exactly what the embedder would have
returned. Only when every text of a request is found is the request answered; otherwise the
embedder's UNAVAILABLE stands (503 with Retry-After). No TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from cachetools import LRUCache

from embedder.feature_sets import precision_of

if TYPE_CHECKING:  # imported by the head only when an L2 URL is set (it brings redis and metrics)
    from embedder.l2cache import RedisL2Cache


@dataclass(frozen=True)
class FallbackHit:
    vectors: np.ndarray  # [N, dim] float32
    source: str  # "recent" (this process) or "l2" (at least one text came from Redis)


class EmbeddingFallback:
    def __init__(self, max_entries: int, l2: RedisL2Cache | None = None):
        # (fingerprint, text) -> vector in the set's precision; ~1.5 KiB an entry for a 384-d encoder, 4.5 KiB for
        # all6 (float16: its vectors are float16 values, so nothing is lost).
        self._recent: LRUCache | None = LRUCache(maxsize=max_entries) if max_entries > 0 else None
        self.l2 = l2

    @property
    def enabled(self) -> bool:
        return self._recent is not None or self.l2 is not None

    def remember(self, fingerprint: str, texts: list[str], vectors: np.ndarray) -> None:
        if self._recent is not None:
            dtype = precision_of(fingerprint).dtype.newbyteorder("=")
            for text, vector in zip(texts, vectors):
                # A copy of the row: the batch is a view of the whole gRPC response (np.frombuffer), and a
                # row view kept here would pin all of it until the entry is evicted (the soak's packed
                # head grew ~190 MiB that way: 2,048 entries x 20 heads, each holding a response).
                self._recent[(fingerprint, text)] = np.array(vector, dtype=dtype, copy=True)

    async def lookup(self, fingerprint: str, texts: list[str]) -> FallbackHit | None:
        """Vectors for every text, or None when any one is unknown."""
        found: dict[str, np.ndarray] = {}
        for text in texts:
            vector = self._recent.get((fingerprint, text)) if self._recent is not None else None
            if vector is not None:
                found[text] = vector
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        source = "recent"
        if missing and self.l2 is not None:
            for text, hit in zip(missing, await self.l2.get_many(fingerprint, missing)):
                if hit is not None:
                    found[text] = hit.vector
                    self.remember(fingerprint, [text], hit.vector[None, :])
            source = "l2"
        if len(found) < len(set(texts)):
            return None
        return FallbackHit(np.stack([found[t] for t in texts]).astype(np.float32, copy=False), source)

    async def close(self) -> None:
        if self.l2 is not None:
            await self.l2.close()
