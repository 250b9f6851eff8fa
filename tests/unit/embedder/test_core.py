"""The embedder core (validate -> cache -> in-flight dedup -> batcher -> servable) on the fake model."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from embedder.core import EmbeddingService
from embedder.fake import FakeEmbeddingServable
from embedder.settings import EmbedderSettings
from polyhead.errors import ValidationError


@contextlib.asynccontextmanager
async def service(**overrides):
    model = FakeEmbeddingServable()
    model.load()
    svc = EmbeddingService(EmbedderSettings(model_handle="fake://", **{"max_wait_ms": 1, **overrides}), model)
    await svc.start()
    try:
        yield svc, model
    finally:
        await svc.close()


async def test_vectors_are_the_models_and_a_repeat_is_served_from_the_cache():
    async with service() as (svc, model):
        first = await svc.embed(["card declined", "parcel lost"])
        assert np.array_equal(first.vectors, model.embed(["card declined", "parcel lost"]).vectors)
        assert first.cached == [False, False] and first.token_counts == [2, 2]
        seen = model.texts_embedded
        second = await svc.embed(["parcel lost", "refund please"])
        assert second.cached == [True, False]
        assert model.texts_embedded == seen + 1  # only the new text reached the model
        assert np.array_equal(second.vectors[0], first.vectors[1])


async def test_a_text_repeated_in_one_request_is_embedded_once():
    async with service() as (svc, model):
        out = await svc.embed(["same text", "other", "same text"])
        assert model.texts_embedded == 2
        assert np.array_equal(out.vectors[0], out.vectors[2]) and out.cached == [False, False, False]


async def test_concurrent_requests_share_one_in_flight_computation():
    async with service(max_wait_ms=20) as (svc, model):
        requests = [["shared a", "shared b", f"own {i}"] for i in range(5)]
        outs = await asyncio.gather(*(svc.embed(texts) for texts in requests))
        assert model.texts_embedded == 2 + 5  # each shared text once, not five times
        for out in outs[1:]:
            assert np.array_equal(out.vectors[:2], outs[0].vectors[:2])
        assert not any(any(out.cached) for out in outs)  # joined in flight, not read from the cache


async def test_bypass_cache_recomputes_and_a_disabled_cache_never_hits():
    async with service() as (svc, model):
        await svc.embed(["hello there"])
        out = await svc.embed(["hello there"], bypass_cache=True)
        assert out.cached == [False] and model.texts_embedded == 2
    async with service(cache_max_entries=0) as (svc, model):
        await svc.embed(["hello there"])
        assert (await svc.embed(["hello there"])).cached == [False] and model.texts_embedded == 2


@pytest.mark.parametrize(("texts", "field", "message"), [
    ([], "texts", "at least 1 text"),
    (["ok", "a"] * 3, "texts", "6 texts exceed the limit of max_texts_per_request=5"),
    (["ok", "  "], "texts[1]", "empty or whitespace-only"),
    (["x" * 41], "texts[0]", "41 characters exceed the limit of max_text_chars=40"),
])
async def test_bad_input_names_the_field_and_the_limit(texts, field, message):
    async with service(max_texts_per_request=5, max_text_chars=40) as (svc, model):
        with pytest.raises(ValidationError, match=message.replace("[", r"\[")) as err:
            await svc.embed(texts)
        assert err.value.field == field and model.texts_embedded == 0


async def test_info_reports_the_fake_model_and_the_limits():
    async with service(max_texts_per_request=7) as (svc, model):
        info = svc.info()
    assert (info["model"], info["fingerprint"], info["dim"]) == (model.name, model.fingerprint, 384)
    assert info["limits"]["max_texts_per_request"] == 7


async def test_the_batcher_orders_new_texts_by_the_length_the_servable_gives():
    async with service() as (svc, model):
        await svc.embed(["cached one"])
        asked, items = [], []
        model.batch_lengths = lambda texts: asked.append(list(texts)) or [10 * (i + 1) for i in range(len(texts))]
        submit = svc.batcher.submit
        svc.batcher.submit = lambda *args, **kwargs: items.append(submit(*args, **kwargs)) or items[-1]
        await svc.embed(["cached one", "new a", "new b", "new a"])
        assert asked == [["new a", "new b"]]  # once per request, only texts bound for the model
        assert [(it.text, it.length) for it in items] == [("new a", 10), ("new b", 20)]


async def test_a_big_requests_lengths_are_counted_off_the_event_loop():
    import threading

    from embedder.core import INLINE_LENGTHS_MAX_CHARS

    async with service() as (svc, model):
        threads = []
        lengths = model.batch_lengths
        model.batch_lengths = lambda texts: threads.append(threading.current_thread()) or lengths(texts)
        await svc.embed(["a sentence of the usual size"] * 2 + ["another one"])
        await svc.embed([f"long {i} " + "x" * 1000 for i in range(INLINE_LENGTHS_MAX_CHARS // 1000 + 1)])
        assert threads[0] is threading.main_thread() and threads[1] is not threading.main_thread()
