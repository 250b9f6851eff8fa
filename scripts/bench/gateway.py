"""Gateway benchmark: what each hop costs. The same single-text call made to the embedder (gRPC),
to a head (HTTP; head -> embedder), and through the gateway (HTTP; gateway -> head -> embedder), at
1, 16 and 64 concurrent clients, for cached and uncached texts.

    .venv/bin/python -m scripts.bench.gateway            # full run (~5 min on 2 cores)
    .venv/bin/python -m scripts.bench.gateway --quick    # smaller, for a smoke check

Every service is a child process started with the real CLI on free loopback ports, in a throwaway
work dir under /tmp (one head config, trained with `polyhead train`); all are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import httpx
import yaml
from scripts.bench.common import (
    cli, free_port, machine, pct, pick_head_configs, real_sentences, spawn, stop_all, table, train_bench_heads,
    wait_grpc_serving, wait_http_ok, write_bench_heads,
)

from embedder.client import AsyncEmbedderClient, RetryPolicy

CONCURRENCY = (1, 16, 64)
PATHS = ("embedder gRPC", "head HTTP", "gateway HTTP")


class Texts:
    """Cached: a small pool of real sentences, embedded once before each cached cell. Uncached: a real
    sentence plus a suffix unique to this run, so the embedder has never seen it."""

    def __init__(self, sentences: list[str], pool_size: int = 256):
        self.pool = sentences[:pool_size]
        self.rest = sentences[pool_size:]
        self.counter = itertools.count()
        self.run = os.urandom(3).hex()

    def cached(self, i: int) -> str:
        return self.pool[i % len(self.pool)]

    def fresh(self) -> str:
        n = next(self.counter)
        return f"{self.rest[n % len(self.rest)]} (ref {self.run}-{n})"


async def measure(path: str, cached: bool, clients: int, texts: Texts, urls: dict, seconds: float,
                  max_requests: int) -> dict:
    """`clients` simulated clients, each with its own connection (httpx keep-alive / gRPC channel),
    sending one single-text request after another until `seconds` or `max_requests` is reached."""
    if path == "embedder gRPC":
        conns = [AsyncEmbedderClient(urls["embedder"], timeout_s=30, retry=RetryPolicy(max_attempts=1))
                 for _ in range(clients)]

        async def call(conn, text):
            await conn.embed([text])
            return True
    else:
        url = urls["head"] + "/predict" if path == "head HTTP" else f"{urls['gateway']}/v1/models/{urls['model']}/predict"
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        conns = [httpx.AsyncClient(timeout=30, limits=limits) for _ in range(clients)]

        async def call(conn, text):
            r = await conn.post(url, json={"text": text})
            return r.status_code == 200

    latencies: list[float] = []
    errors = 0
    sent = 0
    try:
        await asyncio.gather(*(call(c, texts.cached(i)) for i, c in enumerate(conns)))  # connect + warm
        deadline = time.perf_counter() + seconds

        async def worker(conn, k):
            nonlocal errors, sent
            i = k
            while sent < max_requests and time.perf_counter() < deadline:
                sent += 1
                text = texts.cached(i) if cached else texts.fresh()
                i += clients
                t0 = time.perf_counter()
                try:
                    ok = await call(conn, text)
                except Exception:  # noqa: BLE001  counted, not fatal: the table shows it
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker(c, k) for k, c in enumerate(conns)))
        elapsed = time.perf_counter() - started
    finally:
        for c in conns:
            await (c.close() if path == "embedder gRPC" else c.aclose())
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed}


def pooled(rounds: list[dict]) -> dict:
    """One cell from its rounds: latencies pooled, throughput over the rounds' summed time."""
    latencies = [x for r in rounds for x in r["latencies"]]
    elapsed = sum(r["elapsed"] for r in rounds)
    return {"n": len(latencies), "errors": sum(r["errors"] for r in rounds), "p50": pct(latencies, 50) * 1e3,
            "p99": pct(latencies, 99) * 1e3, "rps": len(latencies) / elapsed if elapsed else 0.0}


async def upstream_client_cost(head_url: str, text: str, calls: int) -> dict[str, dict]:
    """The gateway -> head hop's client, side by side: the same sequential calls to the head with
    httpx (the general-purpose client) and with aiohttp (what the gateway uses), alternating in rounds
    so machine noise hits both; CPU is this process's own time, i.e. what the gateway would spend."""
    import aiohttp

    body = json.dumps({"text": text}).encode()
    headers = {"content-type": "application/json"}
    wall: dict[str, list[float]] = {"httpx": [], "aiohttp": []}
    cpu = {"httpx": 0.0, "aiohttp": 0.0}
    async with httpx.AsyncClient(base_url=head_url) as hx, aiohttp.ClientSession(head_url) as aio:
        async def via_httpx():
            (await hx.post("/predict", content=body, headers=headers)).raise_for_status()

        async def via_aiohttp():
            async with aio.post("/predict", data=body, headers=headers) as r:
                r.raise_for_status()
                await r.read()

        for call in (via_httpx, via_aiohttp):  # connect and warm up
            for _ in range(20):
                await call()
        for _ in range(10):
            for name, call in (("httpx", via_httpx), ("aiohttp", via_aiohttp)):
                c0 = time.process_time()
                for _ in range(calls // 10):
                    t0 = time.perf_counter()
                    await call()
                    wall[name].append(time.perf_counter() - t0)
                cpu[name] += time.process_time() - c0
    return {name: {"n": len(wall[name]), "p50": pct(wall[name], 50) * 1e3,
                   "cpu": cpu[name] / len(wall[name]) * 1e3} for name in wall}


async def warm_pool(target: str, texts: Texts) -> None:
    client = AsyncEmbedderClient(target, timeout_s=60)
    try:
        await client.embed(texts.pool)
    finally:
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 s per cell instead of 10")
    parser.add_argument("--seconds", type=float, help="time bound per cell (default 10, --quick 2)")
    parser.add_argument("--max-requests", type=int, help="request bound per cell (default 20000, --quick 3000)")
    parser.add_argument("--rounds", type=int, default=5, help="each cell's time is split into this many turns, "
                        "the three paths alternating (default 5)")
    parser.add_argument("--workdir", type=Path, help="keep configs/artifacts/logs here (default: a temp dir, removed)")
    args = parser.parse_args()

    def on_sigterm(*_):
        raise KeyboardInterrupt  # -> the finally below stops every child

    signal.signal(signal.SIGTERM, on_sigterm)
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    max_requests = args.max_requests or (3000 if args.quick else 20000)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="polyhead-bench-gateway-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    procs = []
    try:
        # One head is enough: each request touches exactly one. Trained on a capped sample (serving
        # cost does not depend on how many texts a head was trained on).
        cfg = pick_head_configs(1)
        heads = write_bench_heads(workdir, cfg, train_limit=300, fast_training=True)
        name = next(iter(heads))
        emb_port, head_port, gw_port = free_port(), free_port(), free_port()
        target = f"127.0.0.1:{emb_port}"
        emb = spawn(cli("embedder", "serve", "--port", str(emb_port), "--metrics-port", "0"), logs / "embedder.log")
        procs.append(emb)
        wait_grpc_serving(target, emb)
        train_s = train_bench_heads(heads, workdir / "models", target, logs / "train.log")
        head = spawn(cli("head", "serve", str(heads[name]["config"]), "--port", str(head_port),
                         "--models-dir", str(workdir / "models"), "--embedder-target", target,
                         "--db-url", f"sqlite:///{workdir / 'inference.db'}", "--spool-dir", str(workdir / "spool")),
                     logs / "head.log")
        procs.append(head)
        (workdir / "routes.yaml").write_text(yaml.safe_dump({name: f"http://127.0.0.1:{head_port}"}))
        # The default per-client rate limit (50/s per key or IP) would be the bottleneck of a benchmark
        # from one address: raised out of the way, everything else is the CLI's default.
        gw = spawn(cli("gateway", "serve", "--port", str(gw_port), "--heads-dir", str(workdir / "heads"),
                       "--routes-file", str(workdir / "routes.yaml"), "--embedder-target", target,
                       "--rate-limit-per-s", "1000000", "--rate-limit-burst", "1000000"), logs / "gateway.log")
        procs.append(gw)
        head_url, gw_url = f"http://127.0.0.1:{head_port}", f"http://127.0.0.1:{gw_port}"
        wait_http_ok(head_url + "/readyz", head)
        wait_http_ok(gw_url + "/readyz", gw)
        urls = {"embedder": target, "head": head_url, "gateway": gw_url, "model": name}

        texts = Texts(real_sentences(20000, seed=1))
        results = {}
        for cached in (True, False):
            for clients in CONCURRENCY:
                if cached:
                    asyncio.run(warm_pool(target, texts))
                # The three paths take turns, `rounds` times, so a noisy moment hits all of them alike.
                rounds = {path: [] for path in PATHS}
                for _ in range(args.rounds):
                    for path in PATHS:
                        rounds[path].append(asyncio.run(measure(path, cached, clients, texts, urls,
                                                                seconds / args.rounds, max_requests // args.rounds)))
                for path in PATHS:
                    r = results[path, cached, clients] = pooled(rounds[path])
                    print(f"  .. {path:14s} {'cached' if cached else 'uncached':8s} {clients:3d} clients: "
                          f"p50 {r['p50']:.2f} ms, {r['rps']:.0f} req/s", file=sys.stderr, flush=True)

        asyncio.run(warm_pool(target, texts))
        clients_cost = asyncio.run(upstream_client_cost(head_url, texts.cached(0), 400 if args.quick else 2000))

        print(f"# Gateway benchmark — {machine()}\n")
        print(f"command: .venv/bin/python -m scripts.bench.gateway{' --quick' if args.quick else ''}\n")
        print(f"head `{name}` (trained on {heads[name]['n_train']} texts in {train_s:.0f}s); each cell: "
              f"single-text requests for {seconds:g}s or {max_requests} requests, whichever first, in "
              f"{args.rounds} turns alternating with the other paths; one "
              "connection per simulated client (httpx keep-alive / own gRPC channel), all clients in one "
              "asyncio load generator on the same machine.\n")
        rows = []
        for cached in (True, False):
            for clients in CONCURRENCY:
                prev = None
                for path in PATHS:
                    r = results[path, cached, clients]
                    added = "" if prev is None else f"{r['p50'] - prev['p50']:+.2f}"
                    rows.append([path, "cached" if cached else "uncached", clients, r["n"], r["errors"],
                                 f"{r['p50']:.2f}", f"{r['p99']:.2f}", r["rps"], added])
                    prev = r
        print(table(["path", "texts", "clients", "requests", "errors", "p50 ms", "p99 ms", "req/s",
                     "added p50 ms vs previous hop"], rows) + "\n")
        print("Hops: embedder gRPC = client -> embedder; head HTTP = client -> head -> embedder; "
              "gateway HTTP = client -> gateway -> head -> embedder. `added p50` is head − embedder on head rows, "
              "gateway − head on gateway rows.\n")
        one = results["gateway HTTP", True, 1]
        print(f"target: gateway p50 < 5 ms for a cached text with one client: {one['p50']:.2f} ms -> "
              f"{'met' if one['p50'] < 5 else 'NOT met'}\n")
        print("Under saturation (uncached texts at 16 and 64 clients) every path waits in the embedder's queue, "
              "so the per-hop differences there are noise, not hop costs.\n")
        print("Upstream client: the gateway -> head hop made with each client from this process, "
              "sequential cached calls to the head, alternating rounds:\n")
        print(table(["client", "calls", "p50 ms (client -> head -> embedder)", "client CPU ms/call"],
                    [[name, r["n"], f"{r['p50']:.2f}", f"{r['cpu']:.3f}"] for name, r in clients_cost.items()]))
        ratio = clients_cost["httpx"]["cpu"] / clients_cost["aiohttp"]["cpu"]
        print(f"\nhttpx / aiohttp CPU per call: {ratio:.2f}x (the gateway forwards with aiohttp)\n")
        print("notes: uncached = a real sentence + a suffix unique to this run (never seen by the embedder's "
              "cache); cached = a pool of 256 real sentences embedded right before the cell. The gateway runs with "
              "its rate limit raised (--rate-limit-per-s 1000000); at 64 clients the load generator shares the "
              "machine's cores with the services, so throughput there is a lower bound.\n")
    finally:
        stop_all(procs[::-1])
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
