"""The micro-batcher's length policy, with a recording stand-in for the model (the real model's
batching is covered end to end in test_grpc_server.py)."""

from __future__ import annotations

import asyncio

import numpy as np

from embedder.batching import BatchItem, MicroBatcher
from embedder.servable_api import EmbedBatchResult


def recording_batcher(**kwargs) -> tuple[MicroBatcher, list[list[str]]]:
    calls: list[list[str]] = []
    sets: list[str] = []

    def run_batch(texts, feature_set):
        calls.append(list(texts))
        sets.append(feature_set)
        n = len(texts)
        return EmbedBatchResult(np.zeros((n, 2), np.float32), np.zeros(n, bool), np.zeros(n, np.int64))

    defaults = {"max_wait_ms": 0, "max_queue_size": 1000, "batch_window": 16, "split_overhead_chars": 256}
    batcher = MicroBatcher(run_batch, **{**defaults, **kwargs})
    batcher.recorded_sets = sets  # the feature set of each call, beside `calls`
    return batcher, calls


def items(*lengths: int) -> list[BatchItem]:
    return [BatchItem(f"{i:02d}".ljust(n, "x"), None) for i, n in enumerate(lengths)]


def test_a_batch_is_cut_into_runs_of_similar_length_when_that_saves_work():
    batcher, _ = recording_batcher(max_batch_size=8, split_overhead_chars=20)
    runs = batcher.split_by_length(items(100, 3, 98, 4, 3, 101))
    assert [[len(it.text) for it in run] for run in runs] == [[3, 3, 4], [98, 100, 101]]
    # Similar lengths: one call (a second would cost more than the padding it saves).
    assert len(batcher.split_by_length(items(30, 31, 29, 33))) == 1
    # Splitting off: one sorted call.
    batcher.split_overhead_chars = 0
    (run,) = batcher.split_by_length(items(100, 3, 98))
    assert [len(it.text) for it in run] == [3, 98, 100]


async def test_a_deep_queue_groups_texts_around_the_oldest_and_loses_none():
    batcher, calls = recording_batcher(max_batch_size=4, batch_window=4, split_overhead_chars=0)
    lengths = [60] + [5, 60] * 8  # the oldest is long; short and long texts alternate behind it
    queued = []
    for n in lengths:
        item = batcher.submit(f"{len(queued):02d}".ljust(n, "x"), None)
        item.waiters = 1
        queued.append(item)
    batcher.start()
    await asyncio.wait_for(asyncio.gather(*(it.future for it in queued)), 5)
    await batcher.close()
    assert queued[0].text in calls[0]  # the oldest always goes first: nobody starves
    assert all(len({len(t) for t in call}) == 1 for call in calls), calls  # no short text padded to 60
    assert sorted(t for call in calls for t in call) == sorted(it.text for it in queued)  # each once
    assert len(calls) == len(lengths) // 4 + (len(lengths) % 4 > 0)


async def test_a_batch_holds_one_feature_set_and_the_others_keep_their_turn():
    batcher, calls = recording_batcher(max_batch_size=8, batch_window=4, split_overhead_chars=0)
    sets = ["default", "all6", "default", "all6", "all6", "default"]
    queued = []
    for i, name in enumerate(sets):
        item = batcher.submit(f"text {i}", None, name)
        item.waiters = 1
        queued.append(item)
    batcher.start()
    await asyncio.wait_for(asyncio.gather(*(it.future for it in queued)), 5)
    await batcher.close()
    assert batcher.recorded_sets == ["default", "all6"]  # one model pass per set, the oldest's first
    assert calls == [["text 0", "text 2", "text 5"], ["text 1", "text 3", "text 4"]]


async def test_texts_are_grouped_by_the_length_the_servable_gives_not_by_characters():
    # Same characters, very different costs (say "1234567890" is ten tokens, "abcdefghij" one word):
    # the batcher follows `length`, so the costly texts share a batch and the cheap ones another.
    batcher, calls = recording_batcher(max_batch_size=2, batch_window=4, split_overhead_chars=0)
    queued = []
    for i, length in enumerate([40, 4, 40, 4]):
        item = batcher.submit(f"text {i:04d}", None, length=length)
        item.waiters = 1
        queued.append(item)
    batcher.start()
    await asyncio.wait_for(asyncio.gather(*(it.future for it in queued)), 5)
    await batcher.close()
    assert calls == [["text 0000", "text 0002"], ["text 0001", "text 0003"]]
    # Without a length, an item costs its characters.
    assert BatchItem("four", None).length == 4
