"""The L2 cache class against a real Redis (no TensorFlow): round trip, TTL, coalescing, outages."""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np
import redis

from embedder.cache import CachedEmbedding
from embedder.l2cache import RedisL2Cache, l2_key, pack, unpack
from prometheus_client import REGISTRY
from tests.conftest import free_port
from tests.helpers import TcpProxy

DIM = 8


def _value(seed: int) -> CachedEmbedding:
    return CachedEmbedding(np.random.default_rng(seed).standard_normal(DIM).astype(np.float32), seed % 2 == 0, seed)


def _sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_pack_round_trip_and_shape_check():
    value = _value(3)
    back = unpack(pack(value), DIM)
    assert np.array_equal(back.vector, value.vector) and back.truncated is False and back.token_count == 3
    assert unpack(pack(value), DIM + 1) is None  # another encoder's dimension is a miss, not garbage
    assert unpack(None, DIM) is None
    key = l2_key("p:", "fp", "x" * 100_000)
    assert key.startswith("p:fp:") and len(key) == len("p:fp:") + 32  # the text is hashed, never stored


async def test_a_second_instance_reads_what_the_first_wrote_with_a_ttl(redis_url, l2_prefix):
    writer = RedisL2Cache(redis_url, DIM, ttl_s=60, key_prefix=l2_prefix)
    for i in range(5):
        writer.put_later("fp1", f"text {i}", _value(i))
    await asyncio.sleep(0.2)  # the write is flushed after this tick
    await writer.close()

    reader = RedisL2Cache(redis_url, DIM, key_prefix=l2_prefix)
    found = await reader.get_many("fp1", ["text 0", "unknown", "text 4"])
    other_fp = await reader.get_many("fp2", ["text 0"])
    await reader.close()
    assert found[1] is None and other_fp == [None]  # keyed by (fingerprint, text)
    assert np.array_equal(found[0].vector, _value(0).vector) and found[0].truncated is True
    assert np.array_equal(found[2].vector, _value(4).vector) and found[2].token_count == 4
    ttl_ms = redis.Redis.from_url(redis_url).pttl(l2_key(l2_prefix, "fp1", "text 0"))
    assert 0 < ttl_ms <= 60_000


async def test_lookups_of_one_loop_tick_share_one_round_trip(redis_url, l2_prefix):
    cache = RedisL2Cache(redis_url, DIM, key_prefix=l2_prefix, role="test-coalesce")
    for i in range(10):
        cache.put_later("fp", f"t{i}", _value(i))
    await asyncio.sleep(0.1)
    before = _sample("polyhead_l2_cache_seconds_count", role="test-coalesce", op="get")
    results = await asyncio.gather(*(cache.get_many("fp", [f"t{i}", f"t{i + 1}"]) for i in range(8)))
    after = _sample("polyhead_l2_cache_seconds_count", role="test-coalesce", op="get")
    writes = _sample("polyhead_l2_cache_seconds_count", role="test-coalesce", op="set")
    await cache.close()
    assert after - before == 1  # 8 callers, 16 keys, one MGET
    assert writes == 1  # 10 writes of one tick, one pipeline
    assert all(r[0] is not None and r[1] is not None for r in results)


async def test_redis_down_is_skipped_counted_logged_once_and_retried(redis_url, l2_prefix, caplog):
    proxy = TcpProxy(("127.0.0.1", int(redis_url.rsplit(":", 1)[1].split("/")[0])))
    proxy.start()
    cache = RedisL2Cache(f"redis://127.0.0.1:{proxy.port}/0", DIM, key_prefix=l2_prefix, retry_s=0.3,
                         timeout_s=0.1, role="test-outage")
    cache.put_later("fp", "seen", _value(1))
    await asyncio.sleep(0.1)
    assert (await cache.get_many("fp", ["seen"]))[0] is not None

    proxy.cut()
    caplog.set_level(logging.WARNING, logger="polyhead.embedder.l2cache")
    started = time.monotonic()
    for _ in range(5):  # the first fails fast; the others are skipped without touching Redis
        assert await cache.get_many("fp", ["seen", "other"]) == [None, None]
    cache.put_later("fp", "during", _value(2))
    assert time.monotonic() - started < 1.0
    assert _sample("polyhead_l2_cache_errors_total", role="test-outage", op="get") == 1
    assert _sample("polyhead_l2_cache_skipped_total", role="test-outage", op="get") == 10
    assert _sample("polyhead_l2_cache_skipped_total", role="test-outage", op="set") == 1
    assert _sample("polyhead_l2_cache_up", role="test-outage") == 0
    warnings = [r for r in caplog.records if r.name == "polyhead.embedder.l2cache"]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()

    proxy.start()  # Redis is back: after the back-off, L2 is used again
    deadline = time.monotonic() + 5
    while (await cache.get_many("fp", ["seen"]))[0] is None:
        assert time.monotonic() < deadline, "L2 was not used again after Redis came back"
        await asyncio.sleep(0.1)
    assert _sample("polyhead_l2_cache_up", role="test-outage") == 1
    assert "reachable again" in caplog.records[-1].getMessage()
    await cache.close()
    proxy.cut()


async def test_a_closed_port_never_blocks(l2_prefix):
    cache = RedisL2Cache(f"redis://127.0.0.1:{free_port()}/0", DIM, key_prefix=l2_prefix, role="test-closed")
    started = time.monotonic()
    assert await cache.get_many("fp", ["a"]) == [None]
    cache.put_later("fp", "a", _value(0))
    await cache.close()
    assert time.monotonic() - started < 1.0
    assert _sample("polyhead_l2_cache_errors_total", role="test-closed", op="get") == 1
