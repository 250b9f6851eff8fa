"""The client library against real server processes: retry across a restart, round-robin targets."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from embedder.client import EmbedderClient, RetryPolicy
from polyhead.errors import UnavailableError
from tests.conftest import free_port
from tests.e2e.embedder.fixtures import start_server_process, wait_serving


def test_client_retries_while_the_server_restarts(exported_model, tmp_path):
    port = free_port()
    target = f"127.0.0.1:{port}"
    proc = start_server_process(exported_model, port, log=tmp_path / "first.log")
    try:
        wait_serving(target)
        client = EmbedderClient(target, timeout_s=5,
                                retry=RetryPolicy(max_attempts=200, initial_backoff_s=0.1, max_backoff_s=0.5))  # ~80 s: a loaded host re-loads TF slowly
        before = client.embed(["survive a restart"]).vectors
        proc.terminate()
        proc.wait(15)
        # Restart after a pause; the call below starts while nothing listens and must succeed.
        restarted = {}
        threading.Timer(1.0, lambda: restarted.setdefault(
            "proc", start_server_process(exported_model, port, log=tmp_path / "second.log"))).start()
        started = time.monotonic()
        after = client.embed(["survive a restart"]).vectors
        assert time.monotonic() - started > 1.0  # it really had to wait and retry
        assert np.allclose(before, after, atol=1e-6)
        client.close()
    finally:
        proc.kill()
        if "proc" in restarted:
            restarted["proc"].terminate()
            restarted["proc"].wait(15)


def test_client_gives_up_with_unavailable_when_nothing_listens():
    client = EmbedderClient(f"127.0.0.1:{free_port()}", timeout_s=1,
                            retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.02))
    with pytest.raises(UnavailableError) as info:
        client.embed(["anyone there?"])
    assert info.value.retry_after_s
    client.close()


def test_dns_target_round_robins_across_replicas(server_process, servable):
    # Both 'localhost' addresses would be needed for two replicas; a dns:/// target with
    # round_robin must at least resolve and serve through the balancer.
    _, target = server_process
    port = target.rsplit(":", 1)[1]
    with EmbedderClient(f"dns:///localhost:{port}") as client:
        out = client.embed(["through the dns resolver"])
    assert out.vectors.shape == (1, 384)


async def test_an_address_list_balances_and_skips_a_replica_that_is_not_serving(servable):
    """`ipv4:a:p1,a:p2` (what `polyhead up --embedder-replicas` hands out): calls spread over every replica,
    and a replica still loading its model (listening, health NOT_SERVING) gets none of them."""
    from grpc_health.v1 import health_pb2

    from embedder.client import AsyncEmbedderClient
    from tests.e2e.embedder.fixtures import running_server

    async with running_server(servable) as (a, target_a), running_server(servable) as (b, target_b):
        ports = [target_a.rsplit(":", 1)[1], target_b.rsplit(":", 1)[1]]
        client = AsyncEmbedderClient(f"ipv4:127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}", timeout_s=30,
                                     retry=RetryPolicy(max_attempts=1))
        for i in range(8):
            await client.embed([f"spread {i}"])
        assert len(a.service.cache) > 0 and len(b.service.cache) > 0  # both replicas served

        b.servicer.ready = False  # as while a restarted replica loads its model
        await b.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await asyncio.sleep(0.5)  # the client's health watch sees it
        for i in range(20):  # one attempt each: a call picked onto b would fail
            await client.embed([f"only a {i}"])
        await client.close()
        b.servicer.ready = True
