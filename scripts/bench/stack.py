"""Stack benchmark: the architecture's claims, measured in one run on one machine.

    .venv/bin/python -m scripts.bench.stack                   # full run (~10 min on 2 cores)
    .venv/bin/python -m scripts.bench.stack --quick           # 3 heads, short phases: a smoke check
    .venv/bin/python -m scripts.bench.stack --section load    # one section: memory|load|sweep|coldstart|packing|coalesce

Sections (each prints a markdown table):
  memory     RSS and PSS of `polyhead up` (embedder + N heads + gateway) beside the alternative: one
             self-contained service per classifier, each loading the encoder itself (a few started for
             real, extrapolated linearly to N).
  load       sustained load through the gateway with real dataset texts, Zipf-repeated, spread over
             every head: latency percentiles, throughput, errors, cache hit ratio, embedder batch sizes,
             memory at start and end.
  sweep      worker and thread sizing, measured: embedder batching window and batch size, TensorFlow
             intra/inter-op threads, uvicorn workers for head and gateway (1 vs 2).
  coldstart  launch-to-ready time of the embedder, a head, the gateway and the self-contained service.
  packing    the heads packed in one process vs one process per head (`polyhead up --heads-per-process 0|1`):
             memory of each layout beside the self-contained services, throughput through the gateway at 32
             clients, and POST /v1/classify with every model vs one predict call per model.
  coalesce   one head, uncached single-text predicts at 16 and 64 clients, with and without coalescing
             of its Embed calls (`--no-coalesce`), side by side.

Everything runs as child processes (the real CLI, `polyhead up`) on free loopback ports in a throwaway
work dir under /tmp; every child is stopped at the end, on error and on Ctrl-C too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import httpx
import numpy as np
import yaml
from scripts.bench.common import (
    ROOT, cli, free_port, free_port_block, machine, mem_detail, mem_kib, pct, pick_head_configs, real_sentences, scrape_prometheus,
    spawn, stop_all, table, train_bench_heads, wait_grpc_serving, wait_http_ok, write_bench_heads,
)

from embedder.client import AsyncEmbedderClient, RetryPolicy

SECTIONS = ("memory", "load", "sweep", "coldstart", "packing", "coalesce")
NO_RATE_LIMIT = {"POLYHEAD_GATEWAY_RATE_LIMIT_PER_S": "1000000", "POLYHEAD_GATEWAY_RATE_LIMIT_BURST": "1000000"}
ZIPF_S = 1.1

# The alternative a team would otherwise deploy: one self-contained service per classifier that loads
# the encoder (the same TF SavedModel) itself, plus its head, and serves /predict with FastAPI.
MONOLITH = r'''
import os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from pathlib import Path
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (tokenizer ops)
import tensorflow_hub as hub
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from heads.artifacts import load_artifact

encoder_dir, models_dir, head, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
encoder = hub.load(encoder_dir)
embed = getattr(encoder, "embed_with_stats", None)
def vectors(texts):
    batch = tf.constant(texts, dtype=tf.string)
    return (embed(batch)["embeddings"] if embed is not None else encoder(batch)).numpy()
model = load_artifact(Path(models_dir), head).model
vectors(["warm up"])
app = FastAPI()

class Req(BaseModel):
    text: str | None = None
    texts: list[str] | None = None

@app.post("/predict")
def predict(req: Req):
    texts = req.texts or [req.text]
    proba = model.predict_proba(vectors(texts))
    return {"head": head, "predictions": [{"label": model.labels[int(p.argmax())], "probability": float(p.max())}
                                          for p in proba]}

@app.get("/healthz")
def healthz():
    return {"status": "ok"}

uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
'''

# uvicorn --workers needs an import string; the CLI builds its app from settings, so these factories
# build it from the same settings read from the environment (POLYHEAD_HEAD_* / POLYHEAD_GATEWAY_*).
FACTORIES = '''
import os

from gateway.http_server import create_app as _gateway_app
from gateway.settings import GatewaySettings
from heads.http_server import create_app as _head_app
from heads.settings import HeadSettings


def head_app():
    # A head locks its spool dir (one inference-log writer per dir): one dir per worker process.
    settings = HeadSettings()
    return _head_app(settings.model_copy(update={"spool_dir": settings.spool_dir / f"worker-{os.getpid()}"}))


def gateway_app():
    return _gateway_app(GatewaySettings())
'''


def process_memory(pid: int) -> dict[str, int]:
    """KiB: rss (/proc/<pid>/status VmRSS), pss, uss, shared (/proc/<pid>/smaps_rollup)."""
    return {**mem_detail(pid), "rss": mem_kib(pid)[0]}


def footprint(procs: list[dict]) -> int:
    """Estimated memory the set of processes takes together: private pages of each + the shared pages
    once (the largest shared set stands for their union: they map the same interpreter and libraries)."""
    return sum(p["uss"] for p in procs) + max((p["shared"] for p in procs), default=0)


def say(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def out(text: str) -> None:
    print(text, flush=True)


def mib(kib: float) -> float:
    return kib / 1024


def median(xs) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="polyhead-bench-stack-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.logs = self.workdir / "logs"
        self.models = self.workdir / "models"
        self.procs: list[subprocess.Popen] = []
        self.grandchildren: set[int] = set()  # pids `polyhead up` started: stopped by it, checked by us
        self.heads: dict[str, dict] = {}
        self.train_s = 0.0
        self.stack_ready_s: float | None = None
        self.per_head_rss: list[int] = []

    # -- children --------------------------------------------------------------------------------
    def spawn(self, argv, log_name: str, env: dict | None = None) -> subprocess.Popen:
        proc = spawn(argv, self.logs / log_name, env)
        self.procs.append(proc)
        return proc

    def stop(self, *procs: subprocess.Popen) -> None:
        stop_all(procs)
        for p in procs:
            if p in self.procs:
                self.procs.remove(p)

    def embedder(self, *flags: str, metrics_port: int = 0, log_name: str = "embedder.log"):
        port = free_port()
        proc = self.spawn(cli("embedder", "serve", "--port", str(port), "--metrics-port", str(metrics_port), *flags),
                          log_name)
        target = f"127.0.0.1:{port}"
        ready_s = wait_grpc_serving(target, proc)
        return proc, target, ready_s

    def head_argv(self, name: str, port: int, target: str) -> list[str]:
        return cli("head", "serve", str(self.heads[name]["config"]), "--port", str(port), "--models-dir", str(self.models),
                   "--embedder-target", target, "--db-url", f"sqlite:///{self.workdir / 'inference.db'}",
                   "--spool-dir", str(self.workdir / "spool"))

    def gateway_argv(self, port: int, target: str, routes: dict[str, str]) -> list[str]:
        routes_file = self.workdir / f"routes-{port}.yaml"
        routes_file.write_text(yaml.safe_dump(routes))
        return cli("gateway", "serve", "--port", str(port), "--heads-dir", str(self.workdir / "heads"),
                   "--routes-file", str(routes_file), "--embedder-target", target,
                   "--rate-limit-per-s", "1000000", "--rate-limit-burst", "1000000")

    def monolith(self, name: str) -> tuple[subprocess.Popen, str]:
        from embedder.settings import EmbedderSettings

        script = self.workdir / "monolith.py"
        script.write_text(MONOLITH)
        port = free_port()
        proc = self.spawn([sys.executable, str(script), str(ROOT / EmbedderSettings().model_handle), str(self.models),
                           name, str(port)], f"monolith-{name}.log", env={"PYTHONPATH": str(ROOT)})
        return proc, f"http://127.0.0.1:{port}"

    def close(self) -> None:
        stop_all(self.procs[::-1])
        self.procs.clear()
        for pid in self.grandchildren:  # `polyhead up` stops its children; this only catches leftovers
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"-m\x00cli\x00" in cmdline:
                os.kill(pid, signal.SIGKILL)
        if self.args.workdir is None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- heads -----------------------------------------------------------------------------------
    def prepare(self, n_heads: int) -> None:
        self.heads = write_bench_heads(self.workdir, pick_head_configs(n_heads), train_limit=self.args.train_limit,
                                       fast_training=True)
        from heads.artifacts import list_versions

        if all(list_versions(self.models, n) for n in self.heads):
            return
        say(f"training {len(self.heads)} heads (at most {self.args.train_limit} texts each) with `polyhead train`")
        proc, target, _ = self.embedder(log_name="embedder-train.log")
        try:
            self.train_s = train_bench_heads(self.heads, self.models, target, self.logs / "train.log")
        finally:
            self.stop(proc)  # the stack's embedder starts with a cold cache


# -- the stack (`polyhead up`) -------------------------------------------------------------------
class Stack:
    def __init__(self, bench: Bench, heads_per_process: int | None = None, var_name: str | None = None):
        self.b = bench
        self.heads_per_process = bench.args.heads_per_process if heads_per_process is None else heads_per_process
        self.var = bench.workdir / ("var" if var_name is None else var_name)
        if self.var.exists():
            shutil.rmtree(self.var)
        n = len(bench.heads)
        self.head_base = free_port_block(n)
        taken = set(range(self.head_base, self.head_base + n))
        ports = []
        while len(ports) < 3:
            p = free_port()
            if p not in taken and p not in ports:
                ports.append(p)
        self.gateway_port, self.embedder_port, self.metrics_port = ports
        self.gateway = f"http://127.0.0.1:{self.gateway_port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.proc: subprocess.Popen | None = None
        self.services: list[dict] = []
        self.not_ready: list[str] = []

    def up(self) -> float:
        b = self.b
        t0 = time.monotonic()
        self.proc = b.spawn(cli("up", "--heads-dir", str(b.workdir / "heads"), "--models-dir", str(b.models),
                                "--var-dir", str(self.var), "--gateway-port", str(self.gateway_port),
                                "--embedder-port", str(self.embedder_port),
                                "--embedder-metrics-port", str(self.metrics_port),
                                "--head-base-port", str(self.head_base),
                                *(("--heads-per-process", str(self.heads_per_process))
                                  if self.heads_per_process is not None else ())), "stack.log", env=NO_RATE_LIMIT)
        wait_http_ok(self.gateway + "/readyz", self.proc, timeout_s=600, interval_s=0.2)
        self.services = json.loads((self.var / "stack.json").read_text())["services"]
        b.grandchildren.update(s["pid"] for s in self.services if s["pid"])
        deadline = time.monotonic() + 180
        for s in self.services:
            if s["kind"] == "head":
                try:
                    wait_http_ok(s["url"] + "/readyz", self.proc, timeout_s=max(1.0, deadline - time.monotonic()),
                                 interval_s=0.2)
                except RuntimeError:
                    self.not_ready.append(s["name"].removeprefix("head:"))
        if self.not_ready:
            say(f"heads not ready, left out of the load: {', '.join(self.not_ready)} (see {self.var / 'logs'})")
        return time.monotonic() - t0

    @property
    def ready_heads(self) -> dict[str, dict]:
        return {n: h for n, h in self.b.heads.items() if n not in self.not_ready}

    def memory(self) -> dict[str, list[dict]]:
        """{kind: [process_memory() per process]}, plus the supervisor itself."""
        found: dict[str, list] = {"embedder": [], "head": [], "gateway": [], "supervisor": []}
        for s in self.services:
            found[s["kind"]].append(process_memory(s["pid"]))
        found["supervisor"].append(process_memory(self.proc.pid))
        return found

    def total_rss(self) -> int:
        return sum(mem_kib(s["pid"])[0] for s in self.services)

    def down(self) -> None:
        if self.proc is not None:
            self.b.stop(self.proc)
            self.proc = None


# -- load generation ------------------------------------------------------------------------------
class Workload:
    """Requests (head, text): the head uniformly at random, the text Zipf(1.1)-distributed over that head's
    own dataset (train+val+test, shuffled once), so popular texts repeat as they do in production."""

    def __init__(self, heads: dict[str, dict], seed: int = 0):
        self.names = sorted(heads)
        self.rng = np.random.default_rng(seed)
        self.pools, self.cdfs = {}, {}
        for i, name in enumerate(self.names):
            pool = list(heads[name]["texts"])
            random.Random(seed + i).shuffle(pool)
            w = 1.0 / np.arange(1, len(pool) + 1) ** ZIPF_S
            self.pools[name], self.cdfs[name] = pool, np.cumsum(w / w.sum())
        self._buf: list = []

    def next(self) -> tuple[str, str]:
        if not self._buf:
            heads = self.rng.integers(0, len(self.names), 4096)
            u = self.rng.random(4096)
            self._buf = [(self.names[h], self.pools[self.names[h]][min(int(np.searchsorted(self.cdfs[self.names[h]], x)),
                                                                       len(self.pools[self.names[h]]) - 1)])
                         for h, x in zip(heads, u)]
            self._buf.reverse()
        return self._buf.pop()


def _conn() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))


async def closed_loop(url_of, next_request, clients: int, seconds: float, max_requests: int = 10**9) -> dict:
    """`clients` clients (own keep-alive connection each) sending back to back."""
    conns = [_conn() for _ in range(clients)]
    lat, codes = [], {}
    sent = 0
    deadline = time.perf_counter() + seconds

    async def worker(conn):
        nonlocal sent
        while time.perf_counter() < deadline and sent < max_requests:
            sent += 1
            url, body = next_request()
            t0 = time.perf_counter()
            try:
                code = (await conn.post(url_of(url), json=body)).status_code
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            if code == 200:
                lat.append(time.perf_counter() - t0)
            codes[code] = codes.get(code, 0) + 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            await c.aclose()
    elapsed = time.perf_counter() - started
    return summarize(lat, codes, elapsed)


async def open_loop(url_of, next_request, rate: float, seconds: float, max_inflight: int = 128,
                    sample=None) -> dict:
    """Poisson arrivals at `rate`/s for `seconds`; latency counts from the scheduled arrival, so a
    generator or a server falling behind shows up in it (no coordinated omission)."""
    free: asyncio.Queue = asyncio.Queue()
    conns = [_conn() for _ in range(max_inflight)]
    for c in conns:
        free.put_nowait(c)
    lat, codes, tasks = [], {}, set()
    rng = random.Random(1)

    async def one(scheduled: float, url: str, body: dict):
        conn = await free.get()
        try:
            code = (await conn.post(url_of(url), json=body)).status_code
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        finally:
            free.put_nowait(conn)
        if code == 200:
            lat.append(time.perf_counter() - scheduled)
        codes[code] = codes.get(code, 0) + 1

    async def sampler():
        while sample is not None:
            sample()
            await asyncio.sleep(5)

    sampling = asyncio.create_task(sampler())
    started = time.perf_counter()
    t_next = started
    try:
        while t_next - started < seconds:
            delay = t_next - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            url, body = next_request()
            task = asyncio.create_task(one(t_next, url, body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            t_next += rng.expovariate(rate)
        await asyncio.gather(*tasks)
    finally:
        sampling.cancel()
        for c in conns:
            await c.aclose()
    return summarize(lat, codes, time.perf_counter() - started)


def summarize(lat: list[float], codes: dict, elapsed: float) -> dict:
    return {"ok": len(lat), "errors": sum(n for c, n in codes.items() if c != 200),
            "codes": {str(c): n for c, n in sorted(codes.items(), key=lambda kv: str(kv[0]))},
            "p50": pct(lat, 50) * 1e3, "p95": pct(lat, 95) * 1e3, "p99": pct(lat, 99) * 1e3,
            "rps": len(lat) / elapsed if elapsed else 0.0, "seconds": elapsed}


def warm_texts(b: Bench) -> list[tuple[str, str]]:
    return [(name, h["texts"][i % len(h["texts"])]) for name, h in b.heads.items() for i in range(5)]


# -- section: memory -------------------------------------------------------------------------------
def measure_stack_memory(b: Bench, stack: Stack) -> dict:
    say("memory: 20 requests per head through the gateway, then /proc of every process")
    with httpx.Client(timeout=30) as client:
        for name, h in stack.ready_heads.items():
            for i in range(20):
                text = h["texts"][i % len(h["texts"])]
                client.post(f"{stack.gateway}/v1/models/{name}/predict", json={"text": text}).raise_for_status()
    return stack.memory()


def section_memory(b: Bench, mem: dict) -> None:
    """`mem`: the stack's, measured before the load section ran; the stack is down by now."""
    n = len(b.heads)
    stack_procs = mem["embedder"] + mem["head"] + mem["gateway"]
    tot = lambda procs, key: sum(p[key] for p in procs)  # noqa: E731
    rows = []
    for kind in ("embedder", "head", "gateway"):
        vals, c = mem[kind], max(1, len(mem[kind]))
        rows.append([kind, len(vals), mib(tot(vals, "rss")), mib(tot(vals, "rss") / c), mib(tot(vals, "pss")),
                     mib(tot(vals, "pss") / c), mib(tot(vals, "uss") / c)])
    rows.append([f"**stack total** (embedder + {n} heads + gateway)", len(stack_procs), mib(tot(stack_procs, "rss")), "",
                 mib(tot(stack_procs, "pss")), "", ""])
    sup = mem["supervisor"][0]
    rows.append(["`polyhead up` supervisor (not counted above)", 1, mib(sup["rss"]), "", mib(sup["pss"]), "",
                 mib(sup["uss"])])

    k = min(b.args.monoliths, n)
    names, mono_mem = list(b.heads)[:k], measure_monoliths(b, k)

    N = 20
    mean = lambda procs, key: statistics.mean(p[key] for p in procs)  # noqa: E731
    if n == N:
        s_rss, s_pss, s_fp = tot(stack_procs, "rss"), tot(stack_procs, "pss"), footprint(stack_procs)
        measured = ""
    else:  # embedder + gateway + N x the mean head
        fixed = mem["embedder"] + mem["gateway"]
        s_rss = tot(fixed, "rss") + N * mean(mem["head"], "rss")
        s_pss = tot(fixed, "pss") + N * mean(mem["head"], "pss")
        s_fp = tot(fixed, "uss") + N * mean(mem["head"], "uss") + max(p["shared"] for p in stack_procs)
        measured = f" The stack is extrapolated to {N} heads from the {n} measured: embedder + gateway + {N} × the mean head."
    m_rss, m_pss = N * mean(mono_mem, "rss"), N * mean(mono_mem, "pss")
    m_fp = N * mean(mono_mem, "uss") + max(p["shared"] for p in mono_mem)
    mono_rows = [[f"self-contained service ({name}), measured", 1, mib(m["rss"]), mib(m["pss"]), mib(m["uss"])]
                 for name, m in zip(names, mono_mem)]
    out(f"## Memory: one embedder + {n} heads + gateway vs one self-contained service per classifier\n")
    out(table(["process", "count", "RSS MiB", "RSS MiB each", "PSS MiB", "PSS MiB each", "USS MiB each"], rows) + "\n")
    out(table(["alternative", "count", "RSS MiB", "PSS MiB", "USS MiB"], mono_rows + [
        [f"self-contained services, **extrapolated** linearly from the {k} measured", N, mib(m_rss), mib(m_pss), ""],
    ]) + "\n")
    out(table([f"{N} classifiers", "polyhead stack MiB", "self-contained services MiB", "ratio", "target"], [
        ["RSS (shared pages counted in every process)", mib(s_rss), mib(m_rss), f"{s_rss / m_rss:.3f}", "≤ 0.2"],
        ["PSS (shared pages split between the processes mapping them)", mib(s_pss), mib(m_pss), f"{s_pss / m_pss:.3f}", "≤ 0.2"],
        ["footprint estimate: Σ USS + shared pages once", mib(s_fp), mib(m_fp), f"{s_fp / m_fp:.3f}", "≤ 0.2"],
    ]) + "\n")
    out(f"notes: {k} self-contained services were started (concurrently) and each answered 20 requests before "
        f"measuring; {N} of them are extrapolated linearly from their mean.{measured} The stack was measured the same "
        "way (20 requests per head through the gateway), before the load section. RSS counts shared libraries once "
        "per process, which overstates both sides. PSS splits each shared page between the processes mapping it at "
        f"that moment, unrelated processes on the machine included; the self-contained services' PSS was taken with {k} "
        f"running, so scaling it to {N} overstates them. The footprint estimate counts each process's private pages "
        "(USS) plus one copy of the largest shared set, the closest of the three to what the machine actually "
        "spends. The self-contained service is written in this script: TF SavedModel via tensorflow_hub + the head's "
        "artifact + FastAPI /predict under uvicorn, one process each.\n")


# -- section: load ---------------------------------------------------------------------------------
def histogram_diff(before: dict, after: dict, name: str) -> list[tuple[float, float]]:
    """[(le, count in this bucket)] of a histogram between two scrapes."""
    cum = []
    for (sample, labels), value in after.items():
        if sample == f"{name}_bucket":
            le = float(dict(labels)["le"])
            cum.append((le, value - before.get((sample, labels), 0.0)))
    cum.sort()
    return [(le, c - (cum[i - 1][1] if i else 0.0)) for i, (le, c) in enumerate(cum)]


def counter_diff(before: dict, after: dict, name: str) -> float:
    return sum(v - before.get(k, 0.0) for k, v in after.items() if k[0] == name)


def section_load(b: Bench, stack: Stack, out=out) -> None:
    """`out`: where the tables go (main prints them after the memory section)."""
    work = Workload(stack.ready_heads, seed=7)

    def next_request():
        name, text = work.next()
        return name, {"text": text}

    url_of = lambda name: f"{stack.gateway}/v1/models/{name}/predict"  # noqa: E731
    probe_s = 5 if b.quick else 10
    say(f"load: capacity probe, 32 clients closed loop, {probe_s}s")
    rss_start = stack.total_rss()
    m0 = scrape_prometheus(stack.metrics_url)
    probe = asyncio.run(closed_loop(url_of, next_request, 32, probe_s))
    rate = b.args.rate or max(5.0, 0.6 * probe["rps"])
    seconds = b.args.load_seconds or (20 if b.quick else 180)
    samples: list[tuple[float, int]] = []
    t0 = time.monotonic()
    say(f"load: sustained open loop at {rate:.0f} req/s for {seconds:.0f}s")
    m1 = scrape_prometheus(stack.metrics_url)
    sustained = asyncio.run(open_loop(url_of, next_request, rate, seconds,
                                      sample=lambda: samples.append((time.monotonic() - t0, stack.total_rss()))))
    m2 = scrape_prometheus(stack.metrics_url)
    rss_end = stack.total_rss()

    out(f"## Realistic load through the gateway ({len(stack.ready_heads)} heads, real dataset texts, Zipf {ZIPF_S} repetition)\n")
    rows = []
    for label, r, before, after in (("capacity probe: 32 clients, closed loop", probe, m0, m1),
                                    (f"sustained: Poisson arrivals at {rate:.0f} req/s (60% of probe)"
                                     if not b.args.rate else f"sustained: Poisson arrivals at {rate:.0f} req/s",
                                     sustained, m1, m2)):
        hits = counter_diff(before, after, "polyhead_embedder_cache_hits_total")
        misses = counter_diff(before, after, "polyhead_embedder_cache_misses_total")
        rows.append([label, f"{r['seconds']:.0f}", r["ok"], r["errors"], r["rps"], f"{r['p50']:.1f}", f"{r['p95']:.1f}",
                     f"{r['p99']:.1f}", f"{hits / max(1, hits + misses):.3f}"])
    out(table(["phase", "seconds", "ok", "errors", "req/s", "p50 ms", "p95 ms", "p99 ms", "cache hit ratio"], rows) + "\n")
    errors = {k: v for r in (probe, sustained) for k, v in r["codes"].items() if k != "200"}
    if errors:
        out(f"errors by status / exception: {json.dumps(errors)}\n")

    buckets = histogram_diff(m1, m2, "polyhead_embedder_batch_size")
    n_batches = counter_diff(m1, m2, "polyhead_embedder_batch_size_count")
    n_texts = counter_diff(m1, m2, "polyhead_embedder_batch_size_sum")
    brows, lo = [], 1
    for le, count in buckets:
        hi = le
        if count > 0:
            rng = "≥ 257" if hi == float("inf") else (f"{int(hi)}" if lo == int(hi) else f"{lo}–{int(hi)}")
            brows.append([rng, int(count), f"{count / max(1, n_batches):.3f}"])
        lo = int(hi) + 1 if hi != float("inf") else lo
    out(f"Embedder model batches during the sustained phase: {int(n_batches)} batches, {int(n_texts)} texts "
        f"(mean batch {n_texts / max(1, n_batches):.2f}; only cache misses reach the model)\n")
    out(table(["batch size", "batches", "share"], brows) + "\n")

    mem_rows = [["start (before the probe)", mib(rss_start)]]
    if samples:
        mem_rows.append([f"max of {len(samples)} samples during the sustained phase", mib(max(s[1] for s in samples))])
    mem_rows.append(["end", mib(rss_end)])
    out(table(["total RSS of the stack (embedder + heads + gateway)", "MiB"], mem_rows) + "\n")
    cache_entries = m2.get(("polyhead_embedder_cache_entries", ()), float("nan"))
    out(f"notes: each head gets texts of its own dataset (all splits); heads are picked uniformly. The embedder "
        f"cache held {cache_entries:,.0f} entries at the end (bounded by `cache_max_entries`, default 50,000), so "
        "memory stays bounded. The load generator is one asyncio process on the same cores as the stack; "
        "latency is measured from each request's scheduled arrival time. The gateway runs with its per-client rate "
        "limit raised (POLYHEAD_GATEWAY_RATE_LIMIT_PER_S=1000000): the default (50/s per key or client IP) would "
        "throttle a benchmark from one address.\n")


# -- section: sweep --------------------------------------------------------------------------------
async def grpc_load(target: str, texts, clients: int, seconds: float) -> dict:
    conns = [AsyncEmbedderClient(target, timeout_s=60, retry=RetryPolicy(max_attempts=1)) for _ in range(clients)]
    lat, errors = [], 0
    await asyncio.gather(*(c.embed(["warm up the channel"]) for c in conns))
    deadline = time.perf_counter() + seconds

    async def worker(c):
        nonlocal errors
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                await c.embed([next(texts)], bypass_cache=True)
                lat.append(time.perf_counter() - t0)
            except Exception:  # noqa: BLE001
                errors += 1

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    return summarize(lat, {200: len(lat), "error": errors} if errors else {200: len(lat)}, time.perf_counter() - started)


def section_sweep(b: Bench) -> None:
    T = 3.0 if b.quick else 5.0
    sentences = real_sentences(5000, seed=3)

    def text_stream():
        i = 0
        while True:
            yield sentences[i % len(sentences)]
            i += 1

    if b.quick:
        points = [("batching", 2.0, 32, 0, 0), ("batching", 0.0, 32, 0, 0), ("batching", 5.0, 32, 0, 0),
                  ("threads", 2.0, 32, 1, 1), ("threads", 2.0, 32, 2, 1)]
    else:
        points = [("batching", 2.0, 32, 0, 0), ("batching", 0.0, 32, 0, 0), ("batching", 5.0, 32, 0, 0),
                  ("batching", 2.0, 64, 0, 0), ("threads", 2.0, 32, 1, 1), ("threads", 2.0, 32, 2, 1)]
    rows, measured = [], {}
    for what, wait_ms, batch, intra, inter in points:
        say(f"sweep: embedder --max-wait-ms {wait_ms:g} --max-batch-size {batch} --intra-op-threads {intra} "
            f"--inter-op-threads {inter}")
        metrics_port = free_port()
        proc, target, _ = b.embedder("--max-wait-ms", str(wait_ms), "--max-batch-size", str(batch),
                                     "--intra-op-threads", str(intra), "--inter-op-threads", str(inter),
                                     metrics_port=metrics_port, log_name="embedder-sweep.log")
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        try:
            stream = text_stream()
            one = asyncio.run(grpc_load(target, stream, 1, T / 2))
            m0 = scrape_prometheus(metrics_url)
            many = asyncio.run(grpc_load(target, stream, 32, T))
            m1 = scrape_prometheus(metrics_url)
        finally:
            b.stop(proc)
        mean_batch = counter_diff(m0, m1, "polyhead_embedder_batch_size_sum") / max(
            1.0, counter_diff(m0, m1, "polyhead_embedder_batch_size_count"))
        default = (wait_ms, batch, intra, inter) == (2.0, 32, 0, 0)
        measured[(wait_ms, batch, intra, inter)] = (one["p50"], many["rps"])
        rows.append([what + (" (default)" if default else ""), f"{wait_ms:g}", batch,
                     "auto" if intra == 0 else intra, "auto" if inter == 0 else inter,
                     f"{one['p50']:.1f}", many["rps"], f"{many['p50']:.1f}", f"{many['p99']:.1f}",
                     f"{mean_batch:.1f}"])
    out("## Sizing: embedder batching and TensorFlow threads\n")
    out(f"Uncached single-text Embed calls (bypass_cache), real sentences; 1 client for {T / 2:g}s (latency at low "
        f"load), then 32 concurrent clients for {T:g}s (throughput). One fresh embedder per row.\n")
    out(table(["varied", "max_wait_ms", "max_batch_size", "intra-op", "inter-op", "1 client p50 ms",
               "32 clients texts/s", "32 clients p50 ms", "32 clients p99 ms", "32 clients mean model batch"],
              rows) + "\n")
    out(sizing_note_embedder(measured) + "\n")

    # Processes per service: uvicorn --workers through an app factory (the CLI runs one worker).
    say("sweep: uvicorn workers for head and gateway")
    factories = b.workdir / "bench_factories.py"
    factories.write_text(FACTORIES)
    name = next(iter(b.heads))
    emb, target, _ = b.embedder(log_name="embedder-workers.log")
    rows, workers_rps = [], {}
    try:
        pool = b.heads[name]["texts"][:200]
        asyncio.run(_embed_all(target, pool))  # cached texts: measures the HTTP layers, not the model
        env_py = {"PYTHONPATH": f"{b.workdir}{os.pathsep}{ROOT}"}
        head_env = {**env_py, "POLYHEAD_HEAD_CONFIG": str(b.heads[name]["config"]), "POLYHEAD_HEAD_MODELS_DIR": str(b.models),
                    "POLYHEAD_HEAD_EMBEDDER_TARGET": target,
                    "POLYHEAD_HEAD_DB_URL": f"sqlite:///{b.workdir / 'inference-workers.db'}",
                    "POLYHEAD_HEAD_SPOOL_DIR": str(b.workdir / "spool-workers")}

        def uvicorn(factory: str, workers: int, env: dict):
            port = free_port()
            proc = b.spawn([sys.executable, "-m", "uvicorn", "--factory", factory, "--host", "127.0.0.1",
                            "--port", str(port), "--workers", str(workers), "--no-access-log", "--log-level", "warning"],
                           f"uvicorn-{factory.split(':')[1]}-{workers}.log", env=env)
            return proc, f"http://127.0.0.1:{port}"

        counter = iter(range(10**9))

        def next_cached():
            return "", {"text": pool[next(counter) % len(pool)]}

        def run_point(path: str, gw_workers, head_workers, proc, base: str, url: str) -> None:
            try:
                wait_http_ok(base + "/readyz", proc, timeout_s=60, interval_s=0.2)
            except RuntimeError as err:
                rows.append([path, gw_workers, head_workers, "did not start", "", "", f"{err} (see logs/)"])
                return
            r = asyncio.run(closed_loop(lambda _: url, next_cached, 32, T))
            workers_rps[(path, gw_workers, head_workers)] = r["rps"]
            rows.append([path, gw_workers, head_workers, r["rps"], f"{r['p50']:.1f}", f"{r['p99']:.1f}", r["errors"]])

        for head_workers in (1, 2):
            head_proc, head_url = uvicorn("bench_factories:head_app", head_workers, head_env)
            try:
                run_point("head direct", "–", head_workers, head_proc, head_url, head_url + "/predict")
                if head_proc.poll() is not None:
                    continue
                for gw_workers in (1, 2):
                    routes = b.workdir / "routes-workers.yaml"
                    routes.write_text(yaml.safe_dump({name: head_url}))
                    gw_env = {**env_py, **NO_RATE_LIMIT, "POLYHEAD_GATEWAY_HEADS_DIR": str(b.workdir / "heads"),
                              "POLYHEAD_GATEWAY_ROUTES_FILE": str(routes), "POLYHEAD_GATEWAY_EMBEDDER_TARGET": target}
                    gw_proc, gw_url = uvicorn("bench_factories:gateway_app", gw_workers, gw_env)
                    try:
                        run_point("gateway -> head", gw_workers, head_workers, gw_proc, gw_url,
                                  f"{gw_url}/v1/models/{name}/predict")
                    finally:
                        b.stop(gw_proc)
            finally:
                b.stop(head_proc)
    finally:
        b.stop(emb)
    out("## Sizing: uvicorn worker processes for head and gateway\n")
    out(f"Cached texts (the model is not in the way: this measures the HTTP layers), 32 clients closed loop for "
        f"{T:g}s per row. Apps started with `uvicorn --factory --workers N` on the same settings the CLI uses "
        "(the CLI itself always runs 1 worker: `create_app` needs settings, so multi-worker needs a factory).\n")
    out(table(["path", "gateway workers", "head workers", "req/s", "p50 ms", "p99 ms", "errors"], rows) + "\n")
    out(sizing_note_workers(workers_rps) + "\n")


NOISE = 0.10  # differences under 10% are within run-to-run noise on a shared 2-core machine


def sizing_note_embedder(measured: dict) -> str:
    default = measured.get((2.0, 32, 0, 0))
    if default is None:
        return ""
    d_p50, d_rps = default
    best_key, (b_p50, b_rps) = max(measured.items(), key=lambda kv: kv[1][1])
    desc = lambda k: f"max_wait_ms {k[0]:g}, max_batch_size {k[1]}, intra/inter {k[2] or 'auto'}/{k[3] or 'auto'}"  # noqa: E731
    lines = [f"notes (embedder): default ({desc((2.0, 32, 0, 0))}): {d_rps:.0f} texts/s at 32 clients, "
             f"1-client p50 {d_p50:.1f} ms."]
    if best_key == (2.0, 32, 0, 0) or b_rps < d_rps * (1 + NOISE):
        lines.append(f"No point beats it by more than {NOISE:.0%} (best: {desc(best_key)}, {b_rps:.0f} texts/s): "
                     "the defaults are kept.")
    else:
        lines.append(f"{desc(best_key)} did {b_rps / d_rps:.2f}x its throughput ({b_rps:.0f} texts/s; 1-client p50 "
                     f"{b_p50:.1f} ms): a candidate default if a re-run on a quiet machine confirms it.")
    no_wait = measured.get((0.0, 32, 0, 0))
    if no_wait:
        lines.append(f"With the 2 ms window vs none: 1-client p50 {d_p50:.1f} vs {no_wait[0]:.1f} ms (the window is "
                     f"at most 2 ms of extra latency at low load), 32-client throughput {d_rps / no_wait[1]:.2f}x.")
    lines.append("'auto' lets TensorFlow size its thread pools from the core count; explicit counts only matter when other processes "
                 "(heads, gateway) need cores at the same time.")
    return " ".join(lines)


def sizing_note_workers(rps: dict) -> str:
    def ratio(a, b_):
        return rps[a] / rps[b_] if rps.get(a) and rps.get(b_) else float("nan")

    head = ratio(("head direct", "–", 2), ("head direct", "–", 1))
    gw = ratio(("gateway -> head", 2, 1), ("gateway -> head", 1, 1))
    both = ratio(("gateway -> head", 2, 2), ("gateway -> head", 1, 1))
    gw_share = ratio(("gateway -> head", 1, 1), ("head direct", "–", 1))
    bottleneck = (f"it is here: through the gateway {gw_share:.2f}x of the head's own throughput" if gw_share < 0.7
                  else f"through the gateway {gw_share:.2f}x of the head's own throughput")
    verdict = lambda r: "a gain" if r > 1 + NOISE else ("no gain" if r == r else "not measured")  # noqa: E731
    return (f"notes (workers): head 2 vs 1 worker: {head:.2f}x throughput ({verdict(head)}); gateway 2 vs 1 worker "
            f"(head 1): {gw:.2f}x ({verdict(gw)}); both at 2: {both:.2f}x. These are cached requests at 32 clients, "
            f"the HTTP layers' ceiling; with {os.cpu_count()} cores shared by every process, a second worker can only "
            "take CPU time from the others. Cost: one more process each (see the memory section for per-process RSS); "
            "for heads that is per classifier (20 heads -> 20 more processes), for the gateway a single one. The CLI "
            "keeps 1 worker per service: a gateway with 2 workers is the cheap lever when the gateway is the "
            f"bottleneck ({bottleneck}). Multi-worker needs an app factory "
            "(`create_app` takes settings), and multi-worker heads one spool dir per worker (the inference log locks "
            "its spool dir), both provided by the factory this script writes.\n")


async def _embed_all(target: str, texts: list[str]) -> None:
    c = AsyncEmbedderClient(target, timeout_s=120)
    try:
        for i in range(0, len(texts), 64):
            await c.embed(texts[i:i + 64])
    finally:
        await c.close()


# -- section: cold start ---------------------------------------------------------------------------
def section_coldstart(b: Bench) -> None:
    reps = {"embedder": 2, "head": 3, "gateway": 2, "monolith": 1} if b.quick else \
           {"embedder": 2, "head": 3, "gateway": 3, "monolith": 1}
    times: dict[str, list[float]] = {k: [] for k in reps}
    for _ in range(reps["embedder"]):
        say("coldstart: embedder")
        t0 = time.monotonic()
        proc, target, _ = b.embedder(log_name="embedder-cold.log")
        times["embedder"].append(time.monotonic() - t0)
        b.stop(proc)
    emb, target, _ = b.embedder(log_name="embedder-cold.log")
    name = next(iter(b.heads))
    try:
        for _ in range(reps["head"]):
            say("coldstart: head")
            port = free_port()
            t0 = time.monotonic()
            proc = b.spawn(b.head_argv(name, port, target), "head-cold.log")
            try:
                wait_http_ok(f"http://127.0.0.1:{port}/readyz", proc, interval_s=0.02)
                times["head"].append(time.monotonic() - t0)
            finally:
                b.stop(proc)
        for _ in range(reps["gateway"]):
            say("coldstart: gateway")
            port = free_port()
            t0 = time.monotonic()
            proc = b.spawn(b.gateway_argv(port, target, {name: "http://127.0.0.1:9"}), "gateway-cold.log")
            try:
                wait_http_ok(f"http://127.0.0.1:{port}/readyz", proc, interval_s=0.02)
                times["gateway"].append(time.monotonic() - t0)
            finally:
                b.stop(proc)
    finally:
        b.stop(emb)
    for _ in range(reps["monolith"]):
        say("coldstart: self-contained service")
        t0 = time.monotonic()
        proc, url = b.monolith(name)
        try:
            wait_http_ok(url + "/healthz", proc, timeout_s=300, interval_s=0.05)
            times["monolith"].append(time.monotonic() - t0)
        finally:
            b.stop(proc)
    labels = {"embedder": "embedder (`polyhead embedder serve`): launch -> gRPC health SERVING",
              "head": "head (`polyhead head serve`, embedder running): launch -> /readyz 200",
              "gateway": "gateway (`polyhead gateway serve`): launch -> /readyz 200",
              "monolith": "self-contained service (encoder + head): launch -> /healthz 200"}
    rows = [[labels[k], len(v), f"{median(v):.2f}", f"{min(v):.2f}", f"{max(v):.2f}"] for k, v in times.items() if v]
    if b.stack_ready_s is not None:
        rows.append([f"whole stack (`polyhead up`, {len(b.heads)} heads, artifacts present): launch -> gateway and "
                     "every head ready", 1, f"{b.stack_ready_s:.2f}", "", ""])
    out("## Cold start\n")
    out(table(["service", "runs", "median s", "min s", "max s"], rows) + "\n")
    out("notes: the embedder's time includes importing TensorFlow, loading the SavedModel (already exported) and "
        "warm-up; it is paid once per machine, a head's is paid per classifier. Polled every 20-50 ms.\n")


# -- section: packing ------------------------------------------------------------------------------
def measure_monoliths(b: Bench, k: int) -> list[dict]:
    """Start k self-contained services (encoder + one head each), 20 requests each, then their memory."""
    names = list(b.heads)[:k]
    say(f"starting {k} self-contained services (encoder + one head each)")
    monos = [b.monolith(name) for name in names]
    try:
        for proc, url in monos:
            wait_http_ok(url + "/healthz", proc, timeout_s=300, interval_s=0.2)
        with httpx.Client(timeout=60) as client:
            for (_proc, url), name in zip(monos, names):
                for i in range(20):
                    text = b.heads[name]["texts"][i % len(b.heads[name]["texts"])]
                    client.post(url + "/predict", json={"text": text}).raise_for_status()
        return [process_memory(p.pid) for p, _ in monos]
    finally:
        b.stop(*(p for p, _ in monos))


async def classify_vs_predicts(gateway: str, names: list[str], texts: list[str]) -> dict[str, list[float]]:
    """Per fresh (uncached) text: one /v1/classify for every model, N predicts at once, N predicts in turn."""
    lat: dict[str, list[float]] = {"classify": [], "concurrent": [], "sequential": []}
    limits = httpx.Limits(max_connections=len(names) + 4, max_keepalive_connections=len(names) + 4)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        for i, text in enumerate(texts):
            mode = ("classify", "concurrent", "sequential")[i % 3]
            t0 = time.perf_counter()
            if mode == "classify":
                r = await client.post(f"{gateway}/v1/classify", json={"text": text, "models": names})
                r.raise_for_status()
                assert all("predictions" in v for v in r.json()["results"].values()), r.text[:300]
            elif mode == "concurrent":
                rs = await asyncio.gather(*(client.post(f"{gateway}/v1/models/{n}/predict", json={"text": text})
                                            for n in names))
                for r in rs:
                    r.raise_for_status()
            else:
                for n in names:
                    (await client.post(f"{gateway}/v1/models/{n}/predict", json={"text": text})).raise_for_status()
            lat[mode].append(time.perf_counter() - t0)
    return lat


def section_packing(b: Bench) -> None:
    T = 5 if b.quick else 15
    reps = 15 if b.quick else 60
    n = len(b.heads)
    fresh = real_sentences(5000, seed=17)
    layouts = {0: f"packed: {n} heads in 1 process"}
    if n >= 4:  # one pool per core of this 2-core machine: every head's HTTP work can use both cores
        layouts[math.ceil(n / 2)] = f"2 pools of {math.ceil(n / 2)} heads"
    layouts[1] = f"one process per head ({n} processes)"
    # Every layout is up at once (each its own embedder, cache and DB) and the load alternates between
    # them in rounds, so a change in the machine's background load hits every layout alike.
    rounds = 1 if b.quick else 3
    mem, cls, stacks = {}, {}, {}
    load: dict[int, list[dict]] = {hpp: [] for hpp in layouts}
    for hpp in layouts:  # memory: each layout alone, so PSS does not count another stack's shared pages
        stack = Stack(b, heads_per_process=hpp, var_name=f"var-mem{hpp}")
        say(f"packing: `polyhead up --heads-per-process {hpp}` with {n} heads (memory)")
        try:
            stack.up()
            mem[hpp] = measure_stack_memory(b, stack)
        finally:
            stack.down()
    try:
        for hpp in layouts:
            stacks[hpp] = stack = Stack(b, heads_per_process=hpp, var_name=f"var-hpp{hpp}")
            say(f"packing: `polyhead up --heads-per-process {hpp}` with {n} heads (load)")
            stack.up()
        names = sorted(set.intersection(*(set(st.ready_heads) for st in stacks.values())))
        work = Workload({k: b.heads[k] for k in names}, seed=11)

        def next_request():
            name, text = work.next()
            return name, {"text": text}

        for stack in stacks.values():  # warm-up: connections, caches
            asyncio.run(closed_loop(lambda name, gw=stack.gateway: f"{gw}/v1/models/{name}/predict", next_request, 32, 2))
        for r in range(rounds):
            for hpp, stack in stacks.items():
                say(f"packing: round {r + 1}/{rounds}, layout {hpp}: 32 clients closed loop through the gateway, {T}s")
                url_of = lambda name, gw=stack.gateway: f"{gw}/v1/models/{name}/predict"  # noqa: E731
                load[hpp].append(asyncio.run(closed_loop(url_of, next_request, 32, T)))
        for hpp, stack in stacks.items():
            texts = [f"{fresh[(hpp * reps + i) % len(fresh)]} (#{hpp}-{i})" for i in range(3 * reps)]
            say(f"packing: /v1/classify over {len(names)} models vs {len(names)} predict calls, {reps} texts each")
            cls[hpp] = asyncio.run(classify_vs_predicts(stack.gateway, names, texts))
    finally:
        for stack in stacks.values():
            stack.down()
    mono = measure_monoliths(b, min(b.args.monoliths, n))

    N = 20
    tot = lambda procs, key: sum(p[key] for p in procs)  # noqa: E731
    m_rss = N * statistics.mean(p["rss"] for p in mono)
    m_pss = N * statistics.mean(p["pss"] for p in mono)
    rows = []
    for hpp, label in layouts.items():
        m = mem[hpp]
        procs = m["embedder"] + m["head"] + m["gateway"]
        if n == N:
            s_rss, s_pss = tot(procs, "rss"), tot(procs, "pss")
        else:  # one per head: N x the mean head; packed: the head process as measured (grows ~0.5 MiB/head)
            fixed = m["embedder"] + m["gateway"]
            scale = N / n if hpp == 1 else 1
            s_rss = tot(fixed, "rss") + scale * tot(m["head"], "rss")
            s_pss = tot(fixed, "pss") + scale * tot(m["head"], "pss")
        rows.append([label, len(m["head"]), mib(tot(m["head"], "rss")), mib(max(p["rss"] for p in m["head"])),
                     mib(tot(m["embedder"], "rss")), mib(tot(m["gateway"], "rss")), mib(s_rss),
                     f"{s_rss / m_rss:.3f}", f"{s_pss / m_pss:.3f}"])
    out(f"## Packed heads vs one process per head ({n} heads)\n")
    out(f"Memory after 20 requests per head through the gateway; ratios against {N} self-contained services "
        f"(encoder + one head each; {len(mono)} started, mean {mib(statistics.mean(p['rss'] for p in mono)):.0f} MiB "
        f"RSS, extrapolated to {N}: {mib(m_rss):.0f} MiB RSS)"
        + ("." if n == N else f"; the stack is scaled to {N} heads (one-per-process: {N} × the mean head).") + "\n")
    out(table(["layout", "head processes", "heads RSS MiB", "largest head process RSS MiB", "embedder RSS MiB",
               "gateway RSS MiB", f"stack RSS MiB ({N} heads)", "stack / self-contained (RSS)",
               "stack / self-contained (PSS)"], rows) + "\n")
    rows = []
    rps = {hpp: sum(r["rps"] for r in runs) / len(runs) for hpp, runs in load.items()}
    for hpp, label in layouts.items():
        for r_i, r in enumerate(load[hpp]):
            rows.append([label, r_i + 1, r["ok"], r["errors"], r["rps"], f"{r['p50']:.1f}", f"{r['p99']:.1f}",
                         f"{r['rps'] / load[1][r_i]['rps']:.2f}x" if load[1][r_i]["rps"] else "-"])
    out(f"Throughput through the gateway: 32 clients, closed loop, {T}s per run, Zipf-repeated dataset texts over "
        f"every head; layouts alternate in {rounds} round(s), all stacks up at once.\n")
    out(table(["layout", "round", "ok", "errors", "req/s", "p50 ms", "p99 ms", "vs one-per-process (same round)"],
              rows) + "\n")
    for hpp, label in layouts.items():
        if hpp != 1:
            out(f"{label} / one-per-process throughput (mean of rounds): {rps[hpp] / rps[1]:.2f}x\n")
    rows = []
    for hpp, label in layouts.items():
        for mode, what in (("classify", f"POST /v1/classify, {n} models, 1 call"),
                           ("concurrent", f"{n} × POST /v1/models/{{name}}/predict, all at once"),
                           ("sequential", f"{n} × POST /v1/models/{{name}}/predict, one after another")):
            v = cls[hpp][mode]
            rows.append([label, what, len(v), f"{pct(v, 50) * 1e3:.1f}", f"{pct(v, 95) * 1e3:.1f}"])
    out("One fresh (uncached) text answered by every model, one client:\n")
    out(table(["layout", "request", "texts", "p50 ms", "p95 ms"], rows) + "\n")


# -- section: coalesce -----------------------------------------------------------------------------
COALESCE_VARIANTS = {  # label: head flags
    "off": ["--no-coalesce"],
    "on, max_inflight 2": ["--coalesce", "--coalesce-max-inflight", "2"],
    "on, max_inflight 4 (default)": ["--coalesce", "--coalesce-max-inflight", "4"],
    "on, max_inflight 8": ["--coalesce", "--coalesce-max-inflight", "8"],
}


def section_coalesce(b: Bench) -> None:
    T = 4 if b.quick else 8
    name = next(iter(b.heads))
    sentences = real_sentences(20000, seed=23)
    counter = iter(range(10**9))

    def next_uncached():
        i = next(counter)
        return "", {"text": f"{sentences[i % len(sentences)]} ({i})"}  # never seen: the embedder's model runs

    emb, target, _ = b.embedder(log_name="embedder-coalesce.log")
    heads: dict[str, tuple] = {}
    results: dict[tuple, tuple] = {}
    try:
        for k, (label, flags) in enumerate(COALESCE_VARIANTS.items()):
            port = free_port()
            argv = [*b.head_argv(name, port, target), *flags, "--spool-dir", str(b.workdir / f"spool-coalesce-{k}")]
            proc = b.spawn(argv, f"head-coalesce-{k}.log")
            heads[label] = (proc, f"http://127.0.0.1:{port}")
        for proc, url in heads.values():
            wait_http_ok(url + "/readyz", proc, timeout_s=60, interval_s=0.1)
            asyncio.run(closed_loop(lambda _, u=url: u + "/predict", next_uncached, 16, 1))  # warm-up
        # Interleaved (every variant at 16 clients, then at 64): the shared machine's drift hits them alike.
        for clients in (16, 64):
            for label, (_proc, url) in heads.items():
                say(f"coalesce: {label}, {clients} clients, {T}s")
                m0 = scrape_prometheus(url + "/metrics")
                r = asyncio.run(closed_loop(lambda _, u=url: u + "/predict", next_uncached, clients, T))
                m1 = scrape_prometheus(url + "/metrics")
                rpcs = counter_diff(m0, m1, "polyhead_head_embed_rpcs_total")
                results[(label, clients)] = (r, r["ok"] / rpcs if rpcs else None)
    finally:
        b.stop(*(p for p, _ in heads.values()))
        b.stop(emb)
    rows = []
    for clients in (16, 64):
        base = results[("off", clients)][0]["rps"]
        for label in COALESCE_VARIANTS:
            r, per_rpc = results[(label, clients)]
            rows.append([clients, label, r["rps"], f"{r['p50']:.1f}", f"{r['p99']:.1f}",
                         f"{per_rpc:.1f}" if per_rpc else "1 (not coalesced)", f"{r['rps'] / base:.2f}x", r["errors"]])
    out("## Head under concurrency: coalescing concurrent Embed calls\n")
    out(f"One head (`polyhead head serve`) per variant, all running against the same embedder; single-text "
        f"predicts straight to the head, every text new to the embedder (uncached), closed loop for {T}s per row, "
        "variants interleaved. off = `--no-coalesce` (one Embed call per predict).\n")
    out(table(["clients", "coalescing", "req/s", "p50 ms", "p99 ms", "predicts per Embed call", "vs off",
               "errors"], rows) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 heads, 2 self-contained services, short phases")
    parser.add_argument("--section", choices=SECTIONS + ("all",), default="all")
    parser.add_argument("--heads", type=int, help="heads in the stack (default 20, --quick 3)")
    parser.add_argument("--monoliths", type=int, help="self-contained services started for real (default 3, --quick 2)")
    parser.add_argument("--load-seconds", type=float, help="sustained load duration (default 180, --quick 20)")
    parser.add_argument("--rate", type=float, help="sustained request rate (default: 60%% of the measured capacity)")
    parser.add_argument("--train-limit", type=int, default=300,
                        help="train each head on at most this many texts (class-balanced sample; 0 = all). Serving "
                             "cost does not depend on it; it keeps the setup short")
    parser.add_argument("--heads-per-process", type=int, help="`polyhead up --heads-per-process` for the memory and "
                        "load sections (default: the stack's own default)")
    parser.add_argument("--workdir", type=Path, help="keep configs/artifacts/logs here and reuse trained heads "
                                                      "(default: a temp dir, removed at the end)")
    args = parser.parse_args()
    args.heads = args.heads or (3 if args.quick else 20)
    args.monoliths = args.monoliths or (2 if args.quick else 3)
    wanted = SECTIONS if args.section == "all" else (args.section,)

    def on_sigterm(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    b = Bench(args)
    started = time.monotonic()
    try:
        out(f"# Stack benchmark — {machine()}\n")
        flags = " ".join(a for a in sys.argv[1:])
        out(f"command: .venv/bin/python -m scripts.bench.stack{' ' + flags if flags else ''}\n")
        b.prepare(args.heads if {"memory", "load", "packing"} & set(wanted) else 1)
        out(f"heads: {', '.join(b.heads)} (each trained on at most {args.train_limit or 'all'} texts"
            + (f"; training took {b.train_s:.0f}s" if b.train_s else "; artifacts reused") + ")\n")
        if {"memory", "load"} & set(wanted):
            stack, load_report = Stack(b), []
            say(f"`polyhead up` with {len(b.heads)} heads")
            try:
                b.stack_ready_s = stack.up()
                mem = measure_stack_memory(b, stack) if "memory" in wanted else None
                if "load" in wanted:
                    section_load(b, stack, out=load_report.append)
            finally:
                stack.down()
            if mem is not None:
                section_memory(b, mem)  # the alternative gets the machine to itself
            for text in load_report:
                out(text)
        if "packing" in wanted:
            section_packing(b)
        if "coalesce" in wanted:
            section_coalesce(b)
        if "sweep" in wanted:
            section_sweep(b)
        if "coldstart" in wanted:
            section_coldstart(b)
        out(f"total time: {time.monotonic() - started:.0f}s\n")
    except KeyboardInterrupt:
        print("interrupted; stopping every child process", file=sys.stderr)
        return 130
    finally:
        b.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
