"""Embedder benchmark: model vs service throughput, cache speedup, cache-size sweep.

    .venv/bin/python -m scripts.bench.embedder            # full run (~5 min on 2 cores)
    .venv/bin/python -m scripts.bench.embedder --quick    # smaller, for a smoke check

Everything is measured in one run on one machine and reported as ratios side by side. This runs the
configured backend (TF-Hub by default); backends side by side (TF, ONNX FP32 and INT8, the Infinity
peer): scripts/bench/backends.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
from scripts.bench.common import WORDS, machine, pct, real_sentences, round_workloads, start_embedder, stop, table

from embedder.client import AsyncEmbedderClient, EmbedderClient


def model_throughput(texts: list[str], batch_sizes: list[int]) -> list[tuple[int, float]]:
    from embedder.servable import TextEmbeddingServable
    from embedder.settings import EmbedderSettings

    servable = TextEmbeddingServable(EmbedderSettings())
    servable.load()
    servable.warmup()
    results = []
    for bs in batch_sizes:
        ordered = sorted(texts, key=len)  # as the batcher does
        servable.embed(ordered[:bs])
        started = time.perf_counter()
        for i in range(0, len(ordered), bs):
            servable.embed(ordered[i:i + bs])
        results.append((bs, len(texts) / (time.perf_counter() - started)))
    return results


def onednn_comparison(n_texts: int, rounds: int = 2) -> dict[bool, float]:
    """In-process texts/s at batch 32 with TensorFlow's oneDNN kernels off and on. TensorFlow reads
    the switch once, at import, so each measurement is a child process; off and on alternate."""
    results: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for enabled in (False, True):
            env = {**os.environ, "POLYHEAD_EMBEDDER_ONEDNN": "true" if enabled else "false"}
            env.pop("TF_ENABLE_ONEDNN_OPTS", None)
            out = subprocess.run([sys.executable, "-m", __spec__.name, "--child-model-throughput", str(n_texts)], env=env,
                                 capture_output=True, text=True, check=True)
            results[enabled].append(json.loads(out.stdout.strip().splitlines()[-1])["texts_per_s"])
    return {enabled: sum(v) / len(v) for enabled, v in results.items()}


async def run_clients(target: str, requests: list[list[str]], concurrency: int, bypass: bool) -> tuple[float, list[float], int]:
    """Send `requests` from `concurrency` clients (own channel each); texts/s, latencies, cached count."""
    clients = [AsyncEmbedderClient(target, timeout_s=60) for _ in range(concurrency)]
    queue = list(reversed(requests))
    latencies: list[float] = []
    cached = 0

    async def worker(client):
        nonlocal cached
        while queue:
            batch = queue.pop()
            t0 = time.perf_counter()
            out = await client.embed(batch, bypass_cache=bypass)
            latencies.append(time.perf_counter() - t0)
            cached += sum(out.cached)
    await asyncio.gather(*(c.embed(["warm the channel"]) for c in clients))
    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    elapsed = time.perf_counter() - started
    for c in clients:
        await c.close()
    return sum(len(r) for r in requests) / elapsed, latencies, cached


POLICIES = {  # (batch_window, split_overhead_chars)
    "first come, first batched; sorted within the batch (the previous policy)": (1, 0),
    "window 4 + length split": (4, 256),
    "window 16 + length split (default)": (16, 256),
}


def batching_policies(texts: list[str], rounds: int = 2) -> dict[str, tuple[float, float]]:
    """Service texts/s (singles, batches of 32; 16 clients, cache bypassed) per batching policy,
    one fresh server per measurement, the policies alternating in rounds; each round new texts."""
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in POLICIES}
    for singles, batches in round_workloads(texts, rounds):
        for name, (window, split) in POLICIES.items():
            proc, target = start_embedder("--batch-window", str(window), "--split-overhead-chars", str(split))
            try:
                s_tps, _, _ = asyncio.run(run_clients(target, singles, 16, bypass=True))
                b_tps, _, _ = asyncio.run(run_clients(target, batches, 16, bypass=True))
            finally:
                stop(proc)
            results[name].append((s_tps, b_tps))
    return {name: (sum(v[0] for v in vals) / rounds, sum(v[1] for v in vals) / rounds) for name, vals in results.items()}


def zipf_workload(n_requests: int, pool_size: int, tail_fraction: float, seed: int = 0) -> list[str]:
    """Short phrases (3-8 words) drawn Zipf-like from a pool, plus a tail of unique texts."""
    rng = random.Random(seed)
    pool = [" ".join(rng.choices(WORDS, k=rng.randint(3, 8))) for _ in range(pool_size)]
    pool = list(dict.fromkeys(pool))
    weights = 1.0 / np.arange(1, len(pool) + 1) ** 1.1
    picks = np.random.default_rng(seed).choice(len(pool), size=n_requests, p=weights / weights.sum())
    out = []
    for i, p in enumerate(picks):
        out.append(f"{pool[p]} unique {i}" if rng.random() < tail_fraction else pool[p])
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child-model-throughput", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_model_throughput:  # one side of onednn_comparison()
        (_, tps), = model_throughput(real_sentences(args.child_model_throughput), [32])
        print(json.dumps({"texts_per_s": tps}))
        return 0
    scale = 0.25 if args.quick else 1.0
    n = int(4096 * scale)
    texts = real_sentences(3 * n + 64)
    print(f"# Embedder benchmark — {machine()}\n")
    print(f"command: .venv/bin/python -m scripts.bench.embedder{' --quick' if args.quick else ''}\n")

    # 1. In-process model vs gRPC service (unique texts, cache bypassed).
    sweep = model_throughput(texts[:n], [8, 16, 32, 64, 128])
    best_bs, best = max(sweep, key=lambda r: r[1])
    print("## In-process model throughput (length-sorted batches)\n")
    print(table(["batch size", "texts/s"], [[bs, tps] for bs, tps in sweep]) + "\n")
    onednn = onednn_comparison(int(1024 * scale))
    print("## TensorFlow's oneDNN kernels (in-process, batch 32, length-sorted; off and on alternate, 2 rounds)\n")
    print(table(["onednn", "texts/s", "ratio"], [["off (TensorFlow's default on this CPU)", onednn[False], 1.0],
                                                 ["on (polyhead's default)", onednn[True], onednn[True] / onednn[False]]]) + "\n")

    proc, target = start_embedder()
    try:
        singles = [[t] for t in texts[n:2 * n]]
        batches = [texts[2 * n + i:2 * n + i + 32] for i in range(0, n, 32)]
        s_tps, s_lat, _ = asyncio.run(run_clients(target, singles, 16, bypass=True))
        b_tps, b_lat, _ = asyncio.run(run_clients(target, batches, 16, bypass=True))
        print("## gRPC service vs in-process (16 concurrent clients, unique texts, cache bypassed)\n")
        print(table(["path", "texts/s", "ratio to in-process best", "p50 ms", "p99 ms"], [
            [f"in-process, batch {best_bs}", best, 1.0, "", ""],
            ["service, single-text requests", s_tps, s_tps / best, pct(s_lat, 50) * 1e3, pct(s_lat, 99) * 1e3],
            ["service, batches of 32", b_tps, b_tps / best, pct(b_lat, 50) * 1e3, pct(b_lat, 99) * 1e3],
        ]) + "\n")
        print("target: service >= 0.9x in-process\n")

        # 2. Cache speedup on a repetitive workload: same request sequence, cache on vs bypassed.
        workload = zipf_workload(int(20000 * scale), pool_size=2000, tail_fraction=0.02)
        reqs = [[t] for t in workload]
        off_tps, _, _ = asyncio.run(run_clients(target, reqs, 16, bypass=True))
        on_tps, on_lat, cached = asyncio.run(run_clients(target, reqs, 16, bypass=False))
        breqs = [workload[i:i + 32] for i in range(0, len(workload), 32)]
        boff_tps, _, _ = asyncio.run(run_clients(target, breqs, 16, bypass=True))
        bon_tps, _, bcached = asyncio.run(run_clients(target, breqs, 16, bypass=False))
        with EmbedderClient(target) as client:
            client.embed(["a cached phrase"])
            rtts = []
            for _ in range(int(2000 * scale)):
                t0 = time.perf_counter()
                client.embed(["a cached phrase"])
                rtts.append(time.perf_counter() - t0)
        print(f"## Cache speedup (Zipf 1.1 over {2000} short phrases of 3-8 words + 2% unique tail, "
              f"{len(workload)} texts, 16 clients)\n")
        print(table(["requests", "cache bypassed texts/s", "cache on texts/s", "speedup", "hit ratio"], [
            ["single text", off_tps, on_tps, on_tps / off_tps, f"{cached / len(workload):.3f}"],
            ["batches of 32", boff_tps, bon_tps, bon_tps / boff_tps, f"{bcached / len(workload):.3f}"],
        ]) + "\n")
        print(f"cache-hit round trip, one sync client on loopback: p50 {pct(rtts, 50) * 1e3:.3f} ms, "
              f"p99 {pct(rtts, 99) * 1e3:.3f} ms (target p50 < 1 ms; speedup target >= 20x)\n")
    finally:
        stop(proc)

    # 3. Batching policies side by side (each its own server).
    policies = batching_policies(real_sentences(int(4096 * scale), seed=7))
    base_s, base_b = policies[next(iter(POLICIES))]
    print("## Batching policies (service, 16 clients, unique texts, cache bypassed; policies alternate, 2 rounds)\n")
    print(table(["policy", "single-text requests texts/s", "ratio", "batches of 32 texts/s", "ratio"],
                [[name, s_tps, s_tps / base_s, b_tps, b_tps / base_b] for name, (s_tps, b_tps) in policies.items()]) + "\n")

    # 4. Cache size sweep: a stream over a larger pool, cold start, the first half warms.
    stream = zipf_workload(int(40000 * scale), pool_size=60000, tail_fraction=0.05, seed=1)
    rows = []
    for size in [1000, 5000, 20000, 50000, 100000]:
        proc, target = start_embedder("--cache-max-entries", str(size))
        try:
            reqs = [stream[i:i + 8] for i in range(0, len(stream), 8)]
            tps, lat, cached = asyncio.run(run_clients(target, reqs, 16, bypass=False))
            rss = int(open(f"/proc/{proc.pid}/status").read().split("VmRSS:")[1].split()[0]) / 1024
            rows.append([size, f"{cached / len(stream):.3f}", tps, pct(lat, 50) * 1e3, rss])
        finally:
            stop(proc)
    print(f"## Cache size sweep (Zipf 1.1 over 60,000 phrases + 5% unique, {len(stream)} texts from cold, "
          "requests of 8 texts, 16 clients)\n")
    print(table(["cache entries", "hit ratio", "texts/s", "p50 ms", "server RSS MiB"], rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
