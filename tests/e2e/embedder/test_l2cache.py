"""The shared L2 cache with the real model and real Redis: shared by replicas, optional when down."""

from __future__ import annotations

import numpy as np
from prometheus_client import REGISTRY

from embedder.client import AsyncEmbedderClient, RetryPolicy
from tests.conftest import free_port
from tests.e2e.embedder.fixtures import running_server
from tests.helpers import TcpProxy

TEXTS = ["the parcel never arrived", "refund my order please", "great service, thank you"]


def _sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _l2_errors() -> float:
    return sum(_sample("polyhead_l2_cache_errors_total", role="embedder", op=op) for op in ("get", "set"))


async def test_a_fresh_replica_gets_l2_hits_for_what_another_embedded(servable, redis_url, l2_prefix):
    l2 = {"l2_cache_url": redis_url, "l2_cache_key_prefix": l2_prefix}
    async with running_server(servable, **l2) as (server, target):
        client = AsyncEmbedderClient(target, timeout_s=30)
        first = await client.embed(TEXTS)
        await client.close()
        assert first.cached == [False] * 3

    hits_before = _sample("polyhead_l2_cache_hits_total", role="embedder")
    async with running_server(servable, **l2) as (server, target):  # fresh L1: a restarted or new replica
        client = AsyncEmbedderClient(target, timeout_s=30)
        second = await client.embed([*TEXTS, "a text nobody embedded yet"])
        await client.close()
        assert len(server.service.cache) == 4  # L2 hits are copied into L1
    assert second.cached == [True, True, True, False]
    assert np.array_equal(second.vectors[:3], first.vectors)  # float32 bytes, bit for bit
    assert _sample("polyhead_l2_cache_hits_total", role="embedder") - hits_before == 3


async def test_bypass_cache_neither_reads_nor_writes_l2(servable, redis_url, l2_prefix):
    l2 = {"l2_cache_url": redis_url, "l2_cache_key_prefix": l2_prefix}
    async with running_server(servable, **l2) as (server, target):
        client = AsyncEmbedderClient(target, timeout_s=30)
        await client.embed(["bypassed text"], bypass_cache=True)
        await client.close()
    async with running_server(servable, **l2) as (server, target):
        client = AsyncEmbedderClient(target, timeout_s=30)
        again = await client.embed(["bypassed text"])
        await client.close()
    assert again.cached == [False]


async def test_embeds_succeed_while_redis_is_down_and_the_skip_is_counted(servable, redis_url, l2_prefix):
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(("127.0.0.1", redis_port))
    proxy.start()
    settings = {"l2_cache_url": f"redis://127.0.0.1:{proxy.port}/0", "l2_cache_key_prefix": l2_prefix,
                "l2_cache_retry_s": 60}
    errors_before = _sample("polyhead_l2_cache_errors_total", role="embedder", op="get")
    skipped_before = _sample("polyhead_l2_cache_skipped_total", role="embedder", op="get")
    async with running_server(servable, **settings) as (server, target):
        client = AsyncEmbedderClient(target, timeout_s=30, retry=RetryPolicy(max_attempts=1))
        await client.embed(["reachable redis"])
        proxy.cut()  # Redis goes away mid-life: connections reset, nothing listens
        out = await client.embed(["redis is down", "still answered"])
        out2 = await client.embed(["by the model alone"])
        await client.close()
    assert out.vectors.shape == (2, servable.dim) and out2.vectors.shape == (1, servable.dim)
    assert np.allclose(np.linalg.norm(out.vectors, axis=1), 1.0, atol=1e-3)
    # One outage, one error: the first Redis call after the cut fails (the first embed's write-back,
    # off the request path, or the next read; whichever runs first), and every later read is skipped.
    assert _l2_errors() - errors_before == 1
    assert _sample("polyhead_l2_cache_skipped_total", role="embedder", op="get") - skipped_before == 3


async def test_an_unreachable_redis_at_start_does_not_stop_the_embedder(servable, l2_prefix):
    settings = {"l2_cache_url": f"redis://127.0.0.1:{free_port()}/0", "l2_cache_key_prefix": l2_prefix}
    async with running_server(servable, **settings) as (server, target):
        client = AsyncEmbedderClient(target, timeout_s=30, retry=RetryPolicy(max_attempts=1))
        out = await client.embed(["no redis at all"])
        await client.close()
    assert out.cached == [False]
