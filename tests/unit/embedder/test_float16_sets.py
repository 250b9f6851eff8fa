"""all6 stored and sent as float16 (fake model, real core, real Redis, real gRPC server and clients):
one vector per text from the model, L1 and L2; half the bytes in the caches and on the wire for a
caller that accepts float16; float32 for everyone else; the default set untouched."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
import redis

from embedder import wire
from embedder.client import AsyncEmbedderClient, EmbedderClient, embed_request, feature_sets
from embedder.feature_sets import derived_fingerprint, precision_of
from embedder.l2cache import RedisL2Cache, l2_key
from embedder.v1 import embedder_pb2, embedder_pb2_grpc
from heads.fallback import EmbeddingFallback
from polyhead.errors import PolyheadError
from tests.unit.embedder.test_core import service

TEXTS = ["card declined at the shop", "where is my parcel"]


def f16(vectors: np.ndarray) -> np.ndarray:
    return vectors.astype(np.float16).astype(np.float32)


def test_the_fingerprint_carries_the_precision_and_float32_ones_stay_as_they_were():
    assert derived_fingerprint("sha256:ab", "default", 0) == "sha256:ab"
    assert derived_fingerprint("sha256:ab", "all6", 1) == "sha256:ab+all6-v1"  # a float32 all6, as before
    assert derived_fingerprint("sha256:ab", "all6", 1, "float16") == "sha256:ab+all6-v1+f16"
    assert precision_of("sha256:ab+all6-v1+f16").dtype == np.dtype("<f2")
    assert precision_of("sha256:ab+all6-v1").name == precision_of("sha256:ab").name == "float32"


async def test_all6_is_the_same_float16_vector_from_the_model_l1_and_l2(redis_url, l2_prefix):
    async with service(l2_cache_url=redis_url, l2_cache_key_prefix=l2_prefix) as (svc, model):
        fp = model.feature_sets["all6"].fingerprint
        fresh = await svc.embed(TEXTS, feature_set="all6")
        exact = model.embed(TEXTS, "all6").vectors
        assert fresh.vectors.dtype == np.float16 and fresh.cached == [False, False]
        assert np.array_equal(fresh.vectors.astype(np.float32), f16(exact)) and not np.array_equal(f16(exact), exact)
        assert np.array_equal((await svc.embed(TEXTS, bypass_cache=True, feature_set="all6")).vectors, fresh.vectors)
        l1 = await svc.embed(TEXTS, feature_set="all6")
        assert l1.cached == [True, True] and np.array_equal(l1.vectors, fresh.vectors)
        entry = svc.cache._lru[(fp, TEXTS[0])]
        assert entry.vector.dtype == np.float16 and entry.vector.nbytes == 2 * 2304  # half of float32's bytes
        await asyncio.sleep(0.2)  # the L2 write leaves after this tick
        raw = redis.Redis.from_url(redis_url).get(l2_key(l2_prefix, fp, TEXTS[0]))
        assert len(raw) == 5 + 2 * 2304
        svc.cache._lru.clear()
        model.texts_embedded = 0
        l2 = await svc.embed(TEXTS, feature_set="all6")
        assert l2.cached == [True, True] and model.texts_embedded == 0 and np.array_equal(l2.vectors, fresh.vectors)
        # A head reading Redis while no embedder answers (no dim, only its artifact's fingerprint) gets them too.
        head_l2 = RedisL2Cache(redis_url, None, key_prefix=l2_prefix, role="head")
        try:
            fallback = EmbeddingFallback(8, head_l2)
            hit = await fallback.lookup(fp, TEXTS)
            assert hit.source == "l2" and hit.vectors.dtype == np.float32
            assert np.array_equal(hit.vectors, fresh.vectors.astype(np.float32))
            assert fallback._recent[(fp, TEXTS[0])].dtype == np.float16  # the head's recent LRU keeps half too
        finally:
            await head_l2.close()
        # The default set is untouched: float32, bit for bit the model's, 4 bytes a value in L1.
        default = await svc.embed(TEXTS)
        assert default.vectors.dtype == np.float32 and np.array_equal(default.vectors, model.embed(TEXTS).vectors)
        assert svc.cache._lru[(model.fingerprint, TEXTS[0])].vector.nbytes == 4 * 384


async def test_the_wire_sends_float16_only_to_callers_that_accept_it(embedder):
    model = embedder.model
    expected = f16(model.embed(TEXTS, "all6").vectors)
    async with grpc.aio.insecure_channel(embedder.target) as channel:
        stub = embedder_pb2_grpc.EmbedderStub(channel)
        half = await stub.Embed(embedder_pb2.EmbedRequest(texts=TEXTS, feature_set="all6",
                                                          accept_encoding=embedder_pb2.FLOAT16))
        assert half.encoding == embedder_pb2.FLOAT16 and len(half.embeddings) == 2 * 2304 * 2
        assert np.array_equal(np.frombuffer(half.embeddings, "<f2").reshape(2, -1).astype(np.float32), expected)
        old = await stub.Embed(embedder_pb2.EmbedRequest(texts=TEXTS, feature_set="all6"))  # a caller before the field
        assert old.encoding == embedder_pb2.FLOAT32 and len(old.embeddings) == 2 * 2304 * 4
        assert np.array_equal(np.frombuffer(old.embeddings, "<f4").reshape(2, -1), expected)  # upcast exactly
        default = await stub.Embed(embedder_pb2.EmbedRequest(texts=TEXTS, accept_encoding=embedder_pb2.FLOAT16))
        assert default.encoding == embedder_pb2.FLOAT32  # a float32 set is never rounded for the wire
        assert np.array_equal(np.frombuffer(default.embeddings, "<f4").reshape(2, -1), model.embed(TEXTS).vectors)

        info = await stub.Info(embedder_pb2.InfoRequest())
        assert [(f.name, f.storage) for f in info.feature_sets] == [("default", embedder_pb2.FLOAT32),
                                                                      ("all6", embedder_pb2.FLOAT16)]
        assert feature_sets(info) == model.feature_sets

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Embed(embedder_pb2.EmbedRequest(texts=TEXTS, feature_set="all6", accept_encoding=7))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "accept_encoding: unknown VectorEncoding 7" in err.value.details()
        assert ("field", "accept_encoding") in tuple(err.value.trailing_metadata() or ())

        def requests():
            yield embedder_pb2.EmbedRequest(texts=TEXTS, feature_set="all6", accept_encoding=embedder_pb2.FLOAT16)
            yield embedder_pb2.EmbedRequest(texts=TEXTS, feature_set="all6")
            yield embedder_pb2.EmbedRequest(texts=TEXTS, accept_encoding=-1)

        answers = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for answer in stub.EmbedStream(requests()):
                answers.append(answer)
        assert [a.encoding for a in answers] == [embedder_pb2.FLOAT16, embedder_pb2.FLOAT32]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details().startswith("request[2].accept_encoding: unknown VectorEncoding -1")


async def test_the_clients_accept_float16_and_hand_back_float32(embedder):
    assert embed_request(TEXTS, feature_set="all6").accept_encoding == embedder_pb2.FLOAT16
    expected = f16(embedder.model.embed(TEXTS, "all6").vectors)
    client = AsyncEmbedderClient(embedder.target)
    try:
        out = await client.embed(TEXTS, feature_set="all6")
        assert out.vectors.dtype == np.float32 and np.array_equal(out.vectors, expected)
        assert out.fingerprint.endswith("+all6-v1+f16")
    finally:
        await client.close()

    def blocking():
        with EmbedderClient(embedder.target) as sync:
            return sync.embed(TEXTS, feature_set="all6"), list(sync.embed_stream([TEXTS], feature_set="all6"))

    one, (streamed,) = await asyncio.to_thread(blocking)
    for got in (one, streamed):
        assert got.vectors.dtype == np.float32 and np.array_equal(got.vectors, expected)


def test_a_client_refuses_an_encoding_it_cannot_read():
    answer = embedder_pb2.EmbedResponse(embeddings=b"\0" * 8, dim=2, cached=[False], encoding=5)
    with pytest.raises(PolyheadError, match="encoding: the embedder answered VectorEncoding 5") as err:
        wire.decode(answer.embeddings, 1, answer.dim, answer.encoding)
    assert err.value.field == "encoding"
