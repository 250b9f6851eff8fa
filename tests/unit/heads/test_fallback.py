"""The heads' fallback vectors (no TensorFlow): recent texts per fingerprint, then the shared L2."""

from __future__ import annotations

import numpy as np

from embedder.cache import CachedEmbedding
from heads.fallback import EmbeddingFallback
from embedder.l2cache import RedisL2Cache


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


async def test_recent_texts_answer_all_or_nothing_per_fingerprint():
    fallback = EmbeddingFallback(max_entries=3)
    vectors = _vectors(2)
    fallback.remember("fp1", ["a", "b"], vectors)
    hit = await fallback.lookup("fp1", ["b", "a", "b"])
    assert hit.source == "recent" and np.array_equal(hit.vectors, vectors[[1, 0, 1]])
    assert await fallback.lookup("fp1", ["a", "unknown"]) is None  # one unknown text: the request is not answered
    assert await fallback.lookup("fp2", ["a"]) is None  # another encoder's vectors are never used


async def test_a_remembered_vector_does_not_pin_the_response_it_came_from():
    # As the embedder client hands them over: rows of one np.frombuffer view over the whole response.
    response = _vectors(64).tobytes()
    vectors = np.frombuffer(response, dtype="<f4").reshape(64, 4)
    fallback = EmbeddingFallback(max_entries=8)
    fallback.remember("fp", ["a"], vectors[:1])
    kept = fallback._recent[("fp", "a")]
    assert kept.base is None and kept.nbytes == 4 * 4  # its own 16 bytes, not a view of 1 KiB
    assert np.array_equal(kept, vectors[0])


async def test_recent_texts_are_bounded_and_zero_disables():
    fallback = EmbeddingFallback(max_entries=2)
    fallback.remember("fp", ["a", "b", "c"], _vectors(3))
    assert await fallback.lookup("fp", ["a"]) is None and await fallback.lookup("fp", ["c"]) is not None
    assert not EmbeddingFallback(max_entries=0).enabled


async def test_texts_another_process_embedded_come_from_l2(redis_url, l2_prefix):
    writer = RedisL2Cache(redis_url, 4, key_prefix=l2_prefix)
    stored = _vectors(1, seed=7)[0]
    writer.put_later("fp", "seen elsewhere", CachedEmbedding(stored, False, 3))
    await writer.close()  # flushes the write
    fallback = EmbeddingFallback(max_entries=8, l2=RedisL2Cache(redis_url, None, key_prefix=l2_prefix, role="head"))
    fallback.remember("fp", ["seen here"], _vectors(1))
    hit = await fallback.lookup("fp", ["seen here", "seen elsewhere"])
    assert hit.source == "l2" and np.array_equal(hit.vectors[1], stored)
    assert (await fallback.lookup("fp", ["seen elsewhere"])).source == "recent"  # remembered after the L2 read
    assert await fallback.lookup("fp", ["seen nowhere"]) is None
    await fallback.close()
