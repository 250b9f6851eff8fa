"""The "all6" feature set on the real model: what the service answers is the SavedModel's own output
rounded to float16 (its storage precision), 2,304 dims of six unit-norm layer blocks, equal to what
scripts/bench/features.py measured, the same from the model and the cache; the default set is
untouched (test_export.py's parity tests run on it unchanged)."""

from __future__ import annotations

import importlib.util

import grpc
import numpy as np
import pytest

from embedder.client import AsyncEmbedderClient, feature_sets
from embedder.v1 import embedder_pb2, embedder_pb2_grpc
from polyhead.errors import ValidationError
from tests.conftest import ROOT
from tests.e2e.embedder.fixtures import running_server

TEXTS = ["How do I reset my PIN?", "what a lovely day", "Book me a table for two at 7pm tonight please " * 12,
         "ß ﬁ 日本語 café"]
# float16 keeps 11 significant bits: rounding moves a value by at most half a unit in the last place.
F16_RTOL = 2.0 ** -11


async def test_all6_from_the_service_is_the_modules_output_in_six_unit_blocks(servable):
    import tensorflow as tf

    module = servable._module.embed_features(tf.constant(TEXTS))
    async with running_server(servable) as (_, target):
        client = AsyncEmbedderClient(target)
        try:
            all6 = await client.embed(TEXTS, feature_set="all6")
            cached = await client.embed(TEXTS, feature_set="all6")
            default = await client.embed(TEXTS)
            info = await client.info()
            async with grpc.aio.insecure_channel(target) as channel:  # the wire: half the bytes when accepted
                stub = embedder_pb2_grpc.EmbedderStub(channel)
                half = await stub.Embed(embedder_pb2.EmbedRequest(texts=TEXTS, feature_set="all6",
                                                                  accept_encoding=embedder_pb2.FLOAT16))
        finally:
            await client.close()
    # Every value is a float16 one, the same from the model and from the cache.
    assert all6.vectors.dtype == np.float32 and np.array_equal(all6.vectors.astype(np.float16), all6.vectors)
    assert cached.cached == [True] * len(TEXTS) and np.array_equal(cached.vectors, all6.vectors)
    assert half.encoding == embedder_pb2.FLOAT16 and len(half.embeddings) == len(TEXTS) * 2304 * 2
    assert np.array_equal(np.frombuffer(half.embeddings, "<f2").reshape(len(TEXTS), -1), all6.vectors)
    # The service batches by length: padding differs from the one-batch call in the last float bits
    # only (1e-6), then rounding to float16 moves each value by up to half its last place.
    assert np.allclose(all6.vectors, module["all6"].numpy(), rtol=F16_RTOL, atol=1e-6)
    assert all6.vectors.shape == (len(TEXTS), 2304)
    blocks = all6.vectors.reshape(len(TEXTS), 6, 384)
    assert np.allclose(np.linalg.norm(blocks, axis=2), 1.0, atol=F16_RTOL)
    # The last layer's block is the default vector (rounded); the default set is served by its own
    # function, bit for bit, in float32.
    assert np.allclose(blocks[:, -1], default.vectors, rtol=F16_RTOL, atol=1e-6)
    assert np.allclose(default.vectors, servable.embed(TEXTS).vectors, atol=1e-6)
    assert all6.truncated == default.truncated == [False, False, True, False]
    assert all6.token_counts == default.token_counts
    sets = feature_sets(info)
    assert [(s.name, s.dim) for s in sets.values()] == [("default", 384), ("all6", 2304)]
    assert sets["default"].fingerprint == servable.fingerprint == default.fingerprint
    assert sets["all6"].fingerprint == all6.fingerprint == f"{servable.fingerprint}+all6-v1+f16"
    assert (sets["default"].precision, sets["all6"].precision) == ("float32", "float16")


def test_the_benchmarks_layer_encoder_agrees_with_the_served_all6(exported_model):
    """scripts/bench/features.py measured all6 with its own implementation: the served set must be it."""
    spec = importlib.util.spec_from_file_location("bench_features", ROOT / "scripts" / "bench" / "features.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    agree = bench.parity(bench.LayerEncoder(exported_model), TEXTS)
    assert agree["mean6"] >= 0.9999 and agree["all6"] >= 0.9999, agree


class ExportedBeforeFeatureSets:
    """A loaded SavedModel as exports made before feature sets are: no embed_features."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name):
        if name in ("embed_features", "feature_set_versions"):
            raise AttributeError(name)
        return getattr(self._module, name)

    def __call__(self, texts):
        return self._module(texts)


async def test_a_model_exported_before_feature_sets_serves_default_and_refuses_all6(exported_model, monkeypatch):
    import tensorflow_hub as hub

    from embedder.servable import TextEmbeddingServable
    from embedder.settings import EmbedderSettings

    real_load = hub.load
    monkeypatch.setattr(hub, "load", lambda path: ExportedBeforeFeatureSets(real_load(path)))
    old = TextEmbeddingServable(EmbedderSettings(model_handle=str(exported_model), export_if_missing=False))
    old.load()
    assert list(old.feature_sets) == ["default"]
    async with running_server(old) as (_, target):
        client = AsyncEmbedderClient(target)
        try:
            assert [f.name for f in (await client.info()).feature_sets] == ["default"]
            out = await client.embed(TEXTS[:2])
            assert out.fingerprint == old.fingerprint and out.vectors.shape == (2, 384)
            with pytest.raises(ValidationError, match="feature_set: unknown feature set 'all6'.*serves: default") as err:
                await client.embed(TEXTS[:2], feature_set="all6")
            assert err.value.field == "feature_set"
        finally:
            await client.close()
