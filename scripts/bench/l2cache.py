"""Shared L2 cache (Redis) benchmark: a fresh replica's cold start, and what an L2 hit costs.

    .venv/bin/python -m scripts.bench.l2cache            # ~2 min on 2 shared cores
    .venv/bin/python -m scripts.bench.l2cache --quick    # smaller, for a smoke check

In-process (the real model, loaded once; the embedder's core with its micro-batcher, no gRPC) against
the real Redis at --redis-url; keys get a prefix of their own and are deleted at the end.
  cold start  Zipf traffic over real sentences: replica A serves the first half (and fills L2); then
              a fresh replica (empty L1) serves the second half with that warmed L2, and another fresh
              replica with an empty L2 serves the same half. Hit ratio (L1 + L2) over the whole half
              and over its first tenth, texts the model had to embed, wall time.
  latency     one call of the embedder's core, by where the vectors came from: L1 hit, L2 hit (L1 off),
              model (L1 and L2 miss: one Redis round trip more than no L2 at all), model without L2;
              for 1 text and for 32 texts a call.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from scripts.bench.common import machine, pct, real_sentences, table

from embedder.core import EmbeddingService
from embedder.settings import EmbedderSettings


def zipf_requests(pool: list[str], n: int, seed: int = 0) -> list[str]:
    weights = 1.0 / np.arange(1, len(pool) + 1) ** 1.1
    picks = np.random.default_rng(seed).choice(len(pool), size=n, p=weights / weights.sum())
    return [pool[i] for i in picks]


class Replica:
    """One embedder's core over the shared loaded model: its own L1, batcher and L2 connection."""

    def __init__(self, servable, redis_url: str | None, prefix: str, cache_max_entries: int = 50_000):
        settings = EmbedderSettings(model_handle=servable.handle, l2_cache_url=redis_url, l2_cache_key_prefix=prefix,
                                    cache_max_entries=cache_max_entries)
        self.service = EmbeddingService(settings, servable)

    async def __aenter__(self):
        await self.service.start()
        return self.service

    async def __aexit__(self, *exc):
        await self.service.close()


async def serve_traffic(service: EmbeddingService, requests: list[str], concurrency: int) -> dict:
    """Single-text requests, `concurrency` at a time (so the batcher has company)."""
    l2_before = _l2_hits()
    started = time.perf_counter()
    first_tenth = None
    cached_flags = []
    for i in range(0, len(requests), concurrency):
        outs = await asyncio.gather(*(service.embed([t]) for t in requests[i:i + concurrency]))
        cached_flags += [o.cached[0] for o in outs]
        if first_tenth is None and len(cached_flags) >= len(requests) // 10:
            first_tenth = sum(cached_flags) / len(cached_flags)
    wall = time.perf_counter() - started
    hits = sum(cached_flags)
    l2 = int(_l2_hits() - l2_before)
    l1 = hits - l2
    return {"hit_ratio": hits / len(requests), "first_tenth": first_tenth, "l1": l1, "l2": l2,
            "model": len(requests) - hits, "wall_s": wall}


def _l2_hits() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("polyhead_l2_cache_hits_total", {"role": "embedder"}) or 0.0


async def timed_calls(service: EmbeddingService, calls: list[list[str]]) -> list[float]:
    out = []
    for texts in calls:
        t0 = time.perf_counter()
        await service.embed(texts)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def cold_start(servable, redis_url: str, prefix: str, args) -> list[list]:
    pool = real_sentences(args.pool)
    requests = zipf_requests(pool, args.requests)
    first, second = requests[: len(requests) // 2], requests[len(requests) // 2:]
    async with Replica(servable, redis_url, prefix + "warm:") as a:
        warm = await serve_traffic(a, first, args.concurrency)
    await asyncio.sleep(0.2)  # the last pipelined writes land
    rows = [["A (first half)", "empty", warm]]
    async with Replica(servable, redis_url, prefix + "warm:") as b:
        rows.append(["fresh B (second half)", "warmed by A", await serve_traffic(b, second, args.concurrency)])
    async with Replica(servable, redis_url, prefix + "empty:") as c:
        rows.append(["fresh C (second half)", "empty", await serve_traffic(c, second, args.concurrency)])
    return [[name, l2, len(first if name.startswith("A") else second), f"{r['hit_ratio']:.3f}",
             f"{r['first_tenth']:.3f}", r["l1"], r["l2"], r["model"], round(r["wall_s"], 1)] for name, l2, r in rows]


async def latency(servable, redis_url: str, prefix: str, args) -> list[list]:
    n = args.latency_calls
    texts = real_sentences(args.pool + 4 * n * 33)[args.pool:]  # none of these were in the cold-start traffic
    singles = [[t] for t in texts[:n]]
    batches = [texts[n + i * 32: n + (i + 1) * 32] for i in range(n // 4)]
    unseen_singles = [[t] for t in texts[n + n * 8: n + n * 8 + n // 2]]
    unseen_batches = [texts[n * 10 + i * 32: n * 10 + (i + 1) * 32] for i in range(n // 8)]
    unseen_singles_2 = [[t] for t in texts[n * 14: n * 14 + n // 2]]
    unseen_batches_2 = [texts[n * 15 + i * 32: n * 15 + (i + 1) * 32] for i in range(n // 8)]
    rows = []
    async with Replica(servable, redis_url, prefix + "lat:") as warm:  # fills L1 and L2 with the measured texts
        for chunk in [*singles, *batches]:
            await warm.embed(chunk)
        await asyncio.sleep(0.2)
        l1_single, l1_batch = await timed_calls(warm, singles), await timed_calls(warm, batches)
        model_single, model_batch = await timed_calls(warm, unseen_singles), await timed_calls(warm, unseen_batches)
    async with Replica(servable, redis_url, prefix + "lat:", cache_max_entries=0) as l2_only:
        l2_single, l2_batch = await timed_calls(l2_only, singles), await timed_calls(l2_only, batches)
    async with Replica(servable, None, prefix) as no_l2:
        plain_single, plain_batch = await timed_calls(no_l2, unseen_singles_2), await timed_calls(no_l2, unseen_batches_2)
    for source, single, batch in (("L1 hit", l1_single, l1_batch), ("L2 hit (L1 off)", l2_single, l2_batch),
                                  ("model (L1 + L2 miss)", model_single, model_batch),
                                  ("model (no L2)", plain_single, plain_batch)):
        rows.append([source, *(f"{pct(xs, q):.3f}" for xs in (single, batch) for q in (50, 99))])
    return rows


async def main_async(args) -> int:
    import redis

    from embedder.servable import TextEmbeddingServable

    client = redis.Redis.from_url(args.redis_url, socket_timeout=2)
    client.ping()
    servable = TextEmbeddingServable(EmbedderSettings())
    servable.load()
    servable.warmup()
    prefix = f"polyhead-bench:{uuid.uuid4().hex[:8]}:"
    try:
        print(f"machine: {machine()}; Redis {client.info('server')['redis_version']} at {args.redis_url}\n")
        print(f"cold start: {args.requests} single-text requests, Zipf(1.1) over {args.pool} real sentences, "
              f"{args.concurrency} concurrent\n")
        print(table(["replica", "L2", "requests", "hit ratio", "hit ratio, first 10%", "L1 hits", "L2 hits",
                     "not cached", "wall s"], await cold_start(servable, args.redis_url, prefix, args)))
        print(f"\nlatency of one call of the embedder's core, ms ({args.latency_calls} single-text calls, "
              f"{args.latency_calls // 4} calls of 32 texts for hits)\n")
        print(table(["vectors from", "1 text p50", "1 text p99", "32 texts p50", "32 texts p99"],
                    await latency(servable, args.redis_url, prefix, args)))
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])
        client.close()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--pool", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency-calls", type=int, default=200)
    args = ap.parse_args()
    if args.quick:
        args.requests, args.pool, args.latency_calls = 800, 600, 40
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
