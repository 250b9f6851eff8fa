"""Named feature sets on the fake model: routing, fingerprints, cache keys, Info, unknown names."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest

from embedder.client import AsyncEmbedderClient, EmbedderClient, feature_sets
from embedder.fake import FakeEmbeddingServable
from embedder.feature_sets import derived_fingerprint
from embedder.l2cache import l2_key
from embedder.v1 import embedder_pb2, embedder_pb2_grpc
from polyhead.errors import ValidationError
from tests.unit.conftest import running_embedder
from tests.unit.embedder.test_core import service

TEXTS = ["card declined at the shop", "where is my parcel"]


def test_the_fake_serves_all6_as_six_unit_blocks_ending_with_the_default_vector():
    model = FakeEmbeddingServable(dim=16)
    model.load()
    assert list(model.feature_sets) == ["default", "all6"]
    default, all6 = model.feature_sets["default"], model.feature_sets["all6"]
    assert (default.dim, default.fingerprint) == (16, model.fingerprint)  # default's fingerprint is the model's
    assert all6.dim == 96 and all6.precision == "float16"
    assert all6.fingerprint == derived_fingerprint(model.fingerprint, "all6", 1, "float16") == model.fingerprint + "+all6-v1+f16"
    assert default.precision == "float32"
    vectors = model.embed(TEXTS, "all6").vectors
    blocks = vectors.reshape(len(TEXTS), 6, 16)
    assert np.allclose(np.linalg.norm(blocks, axis=2), 1.0, atol=1e-6)
    assert np.array_equal(blocks[:, -1], model.embed(TEXTS).vectors)
    assert np.array_equal(vectors, model.embed(TEXTS, "all6").vectors)  # deterministic
    old = FakeEmbeddingServable(dim=16, feature_sets=("default",))
    old.load()
    assert list(old.feature_sets) == ["default"] and old.fingerprint == model.fingerprint


async def test_each_set_has_its_own_cache_entries_and_in_flight_rows():
    async with service() as (svc, model):
        default = await svc.embed(TEXTS)
        all6 = await svc.embed(TEXTS, feature_set="all6")
        assert all6.cached == [False, False] and model.texts_embedded == 4  # default's entries are not all6's
        assert all6.vectors.shape == (2, 6 * 384) and all6.feature_set.fingerprint != default.feature_set.fingerprint
        again = await svc.embed([TEXTS[1], TEXTS[0]], feature_set="all6")
        assert again.cached == [True, True] and np.array_equal(again.vectors, all6.vectors[::-1])
        assert (await svc.embed(TEXTS, feature_set="default")).cached == [True, True]  # "default" == ""
        assert {fp for fp, _ in svc.cache._lru} == {default.feature_set.fingerprint, all6.feature_set.fingerprint}
        # Concurrent callers of both sets: one row per (set, text), each set in its own model pass.
        model.texts_embedded = model.batches_embedded = 0
        outs = await asyncio.gather(*(svc.embed(["brand new text"], feature_set=fs) for fs in ["all6", "", "all6", ""]))
        assert model.texts_embedded == 2 and model.batches_embedded == 2
        assert [o.vectors.shape[1] for o in outs] == [2304, 384, 2304, 384]


async def test_an_unknown_set_is_a_validation_error_naming_the_field_and_the_served_sets():
    async with service() as (svc, model):
        with pytest.raises(ValidationError, match=r"feature_set: unknown feature set 'all7'.*default, all6") as err:
            await svc.embed(TEXTS, feature_set="all7")
        assert err.value.field == "feature_set" and model.texts_embedded == 0


async def test_grpc_routes_the_set_and_info_lists_every_set_default_first(embedder):
    client = AsyncEmbedderClient(embedder.target)
    try:
        out = await client.embed(TEXTS, feature_set="all6")
        # all6 is served rounded to float16 (the model's own float32 vectors are not).
        assert np.array_equal(out.vectors, embedder.model.embed(TEXTS, "all6").vectors.astype(np.float16).astype(np.float32))
        assert out.fingerprint == embedder.model.feature_sets["all6"].fingerprint
        default = await client.embed(TEXTS)
        assert default.fingerprint == embedder.model.fingerprint and default.vectors.shape == (2, 384)
        info = await client.info()
        assert [(f.name, f.dim, f.fingerprint) for f in info.feature_sets] == [
            (f.name, f.dim, f.fingerprint) for f in embedder.model.feature_sets.values()]
        assert info.feature_sets[0].fingerprint == info.fingerprint and info.feature_sets[0].dim == info.dim
        assert feature_sets(info) == embedder.model.feature_sets
        # An embedder older than feature sets lists none: it serves "default" only.
        old = embedder_pb2.InfoResponse(fingerprint="fp", dim=3)
        assert [(f.name, f.dim, f.fingerprint) for f in feature_sets(old).values()] == [("default", 3, "fp")]
        with pytest.raises(ValidationError, match="feature_set: unknown feature set 'nope'") as err:
            await client.embed(TEXTS, feature_set="nope")
        assert err.value.field == "feature_set"
    finally:
        await client.close()


async def test_a_model_without_feature_sets_serves_default_and_refuses_all6_with_invalid_argument():
    async with running_embedder(model_handle="fake://?feature_sets=default") as running:
        async with grpc.aio.insecure_channel(running.target) as channel:
            stub = embedder_pb2_grpc.EmbedderStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Embed(embedder_pb2.EmbedRequest(texts=TEXTS, feature_set="all6"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "feature_set" in err.value.details() and "serves: default" in err.value.details()
            assert ("field", "feature_set") in tuple(err.value.trailing_metadata() or ())
            info = await stub.Info(embedder_pb2.InfoRequest())
            assert [f.name for f in info.feature_sets] == ["default"]

        def blocking():
            with EmbedderClient(running.target) as client:
                return client.embed(TEXTS, feature_set="default"), list(client.embed_stream([TEXTS], feature_set="default"))

        one, (streamed,) = await asyncio.to_thread(blocking)
        assert np.array_equal(one.vectors, streamed.vectors) and one.fingerprint == running.model.fingerprint


async def test_l2_keys_carry_the_sets_fingerprint(redis_url, l2_prefix):
    async with service(l2_cache_url=redis_url, l2_cache_key_prefix=l2_prefix) as (svc, model):
        await svc.embed(TEXTS[:1], feature_set="all6")
        await asyncio.sleep(0.2)  # the write leaves after this tick
        fresh = await svc.l2.get_many(model.feature_sets["all6"].fingerprint, TEXTS[:1], dim=2304)
        assert fresh[0] is not None and fresh[0].vector.shape == (2304,)
        assert await svc.l2.get_many(model.fingerprint, TEXTS[:1]) == [None]
    assert l2_key(l2_prefix, model.feature_sets["all6"].fingerprint, "x") != l2_key(l2_prefix, model.fingerprint, "x")


def test_the_client_refuses_default_vectors_answered_for_another_set():
    """An embedder older than feature sets ignores the request's feature_set and answers default."""
    from embedder.client import decode_set

    old_answer = embedder_pb2.EmbedResponse(embeddings=np.ones((1, 2), "<f4").tobytes(), dim=2, cached=[False],
                                            truncated=[False], token_counts=[1], fingerprint="sha256:0123")
    assert decode_set(old_answer, "default").vectors.shape == (1, 2)
    with pytest.raises(ValidationError, match="predates feature sets") as err:
        decode_set(old_answer, "all6")
    assert err.value.field == "feature_set"
    old_answer.fingerprint = derived_fingerprint("sha256:0123", "all6", 1)
    assert decode_set(old_answer, "all6").fingerprint == "sha256:0123+all6-v1"
