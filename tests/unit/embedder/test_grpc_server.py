"""The gRPC front end in-process (real grpc.aio server on loopback, fake model) with the real clients."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from embedder.client import AsyncEmbedderClient, EmbedderClient
from polyhead.errors import ValidationError
from tests.unit.conftest import running_embedder


async def test_embed_info_and_health_over_grpc(embedder):
    client = AsyncEmbedderClient(embedder.target)
    try:
        texts = ["grpc unit one", "grpc unit two"]
        out = await client.embed(texts)
        assert np.array_equal(out.vectors, embedder.model.embed(texts).vectors)  # bytes on the wire, exactly
        assert (out.fingerprint, out.model) == (embedder.model.fingerprint, embedder.model.name)
        assert out.cached == [False, False] and out.token_counts == [3, 3]
        assert (await client.embed(texts[:1])).cached == [True]

        info = await client.info()
        assert (info.fingerprint, info.dim, info.max_seq_length) == (embedder.model.fingerprint, 384, 128)
        assert info.limits.max_texts_per_request == embedder.server.settings.max_texts_per_request
        assert await client.health() == "SERVING"
    finally:
        await client.close()


async def test_invalid_argument_comes_back_as_a_validation_error_naming_the_field(embedder):
    client = AsyncEmbedderClient(embedder.target)
    try:
        with pytest.raises(ValidationError, match=r"texts\[1\]: empty or whitespace-only"):
            await client.embed(["fine", " "])
    finally:
        await client.close()


async def test_stream_answers_in_order_and_a_blocking_client_works_from_a_thread():
    async with running_embedder() as running:
        batches = [[f"stream {i} {j}" for j in range(3)] for i in range(6)]

        def stream():  # the blocking client must not run on the loop that serves it
            with EmbedderClient(running.target) as client:
                return list(client.embed_stream(batches))

        outs = await asyncio.to_thread(stream)
        assert running.model.texts_embedded == 18
        assert [len(o.vectors) for o in outs] == [3] * 6
        for batch, out in zip(batches, outs):
            assert np.array_equal(out.vectors, running.model.embed(batch).vectors)
