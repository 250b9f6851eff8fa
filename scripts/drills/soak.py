"""Soak test: a `polyhead up` stack under mixed valid and hostile traffic for a while, the head
process serving the first model SIGKILLed mid-way; then requests, errors by class, p99, how long
each model of the killed process failed, and the RSS/PSS of every process at start and end.

    PYTHONPATH=. .venv/bin/python -m scripts.drills.soak                 # 10 minutes (the recorded run)
    PYTHONPATH=. .venv/bin/python -m scripts.drills.soak --duration 120  # a short one
    PYTHONPATH=. .venv/bin/python -m scripts.drills.soak --layout packed # no standby: the supervisor restarts it
    PYTHONPATH=. .venv/bin/python -m scripts.drills.soak --heads 20 --database postgresql --db-outage 120
        # the log on a private PostgreSQL cluster, stopped (pg_ctl -m fast) for 2 minutes from t=20 %
    ... --redis-outage 60   # the embedders' shared L2 cache on a private Redis, stopped for 60 s from t=75 %

After the stack has stopped, every predict answered 200 is looked up in the inference DB by its
prediction_id: a text missing from the log (or logged twice) fails the run; with --db-outage the
memory of every process just before, at the end of and after the outage is printed (the spool, not
memory, must take what the database cannot).

Layouts (`--layout`): `standby` (the default of `polyhead up`: every head packed in one process
with a forked warm standby worker, heads/standby.py; the SIGKILL hits the worker that serves),
`packed` (every head in one process, no standby: the supervisor restarts it), `solo` (one process
per head). The victim is found in `var/stack.json` by the model it serves (a packed process is
`heads:pool-1`, a solo one `head:<name>`) and the serving worker by the pid its /healthz reports;
the run fails if the kill did not happen.

Traffic (through the gateway): predictions of Zipf-distributed real texts (a few texts are very
hot, most are rare, as in production), embeddings, and hostile requests: unpaired surrogates and
invalid UTF-8 in texts, blank / too many / too long texts, both text and texts, malformed JSON,
wrong content type, unknown model / path / method, oversized bodies. Every kind has the statuses
it should get; anything else counts as unexpected, and any 5xx other than 503 while the killed
head is down fails the run (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from scripts.bench.common import (
    ROOT, cli, free_port_block, machine, mem_kib, pct, pick_head_configs, spawn, table, write_bench_heads,
)
from scripts.drills.private_servers import PrivatePostgres, PrivateRedis

JSON = {"content-type": "application/json"}


@dataclass
class Kind:
    name: str
    weight: float
    expected: frozenset[int]
    valid: bool = False


KINDS = [
    Kind("predict one", 40, frozenset({200}), valid=True),
    Kind("predict batch", 15, frozenset({200}), valid=True),
    Kind("embeddings", 10, frozenset({200}), valid=True),
    Kind("lone surrogate", 4, frozenset({422})),
    Kind("invalid UTF-8", 4, frozenset({422})),
    Kind("surrogate in embeddings", 2, frozenset({422})),
    Kind("text and texts", 3, frozenset({422})),
    Kind("blank text", 3, frozenset({422})),
    Kind("too many texts", 2, frozenset({422})),
    Kind("too long text", 2, frozenset({422})),
    Kind("malformed JSON", 2, frozenset({422})),
    Kind("wrong content type", 2, frozenset({415})),
    Kind("unknown model", 2, frozenset({404})),
    Kind("unknown path", 2, frozenset({404})),
    Kind("wrong method", 1, frozenset({405})),
    Kind("oversized body", 1, frozenset({413})),
]


@dataclass
class Stats:
    statuses: Counter = field(default_factory=Counter)
    latencies_ms: list = field(default_factory=list)
    unexpected: Counter = field(default_factory=Counter)


class Traffic:
    def __init__(self, models: list[str], texts: list[str], zipf_s: float, seed: int):
        self.models = models
        self.texts = texts
        self.rng = random.Random(seed)
        weights = [1 / (rank ** zipf_s) for rank in range(1, len(texts) + 1)]
        total, acc = sum(weights), 0.0
        self.cum = []
        for w in weights:
            acc += w / total
            self.cum.append(acc)
        self.kinds = KINDS
        self.kind_weights = [k.weight for k in KINDS]

    def text(self) -> str:
        return self.rng.choices(self.texts, cum_weights=self.cum)[0]

    def request(self) -> tuple[Kind, str, str, str, dict, bytes]:
        """(kind, model, method, path, headers, body)"""
        kind = self.rng.choices(self.kinds, weights=self.kind_weights)[0]
        model = self.rng.choice(self.models)
        path = f"/v1/models/{model}/predict"
        many = [self.text() for _ in range(self.rng.randint(2, 8))]
        bad_at = self.rng.randrange(len(many))
        body: bytes
        match kind.name:
            case "predict one":
                body = json.dumps({"text": self.text()}).encode()
            case "predict batch":
                body = json.dumps({"texts": many}).encode()
            case "embeddings":
                path, body = "/v1/embeddings", json.dumps({"model": "default", "input": many[:3]}).encode()
            case "lone surrogate":
                many[bad_at] = many[bad_at][:5] + "\ud800" + many[bad_at][5:]
                body = json.dumps({"texts": many}).encode()  # ensure_ascii: the escape "\ud800" travels
            case "invalid UTF-8":
                encoded = [json.dumps(t, ensure_ascii=False).encode() for t in many]
                encoded[bad_at] = encoded[bad_at][:-1] + b"\xff\xfe" + b'"'
                body = b'{"texts": [' + b", ".join(encoded) + b"]}"
            case "surrogate in embeddings":
                path = "/v1/embeddings"
                body = json.dumps({"model": "default", "input": [*many[:2], "x\udfff"]}).encode()
            case "text and texts":
                body = json.dumps({"text": many[0], "texts": many}).encode()
            case "blank text":
                body = json.dumps({"texts": [*many[:2], " \t\u3000"]}).encode()
            case "too many texts":
                body = json.dumps({"texts": [self.text() for _ in range(65)]}).encode()
            case "too long text":
                body = json.dumps({"text": "word " * 2001}).encode()
            case "malformed JSON":
                body = b'{"text": "unterminated'
            case "wrong content type":
                return kind, model, "POST", path, {"content-type": "text/plain"}, b"text=hello"
            case "unknown model":
                path, body = f"/v1/models/no-such-model-{self.rng.randrange(10**6)}/predict", b'{"text": "hi"}'
            case "unknown path":
                return kind, model, "GET", f"/v2/nothing/{self.rng.randrange(10**6)}", {}, b""
            case "wrong method":
                return kind, model, "DELETE", path, {}, b""
            case "oversized body":
                body = json.dumps({"text": "x" * 1_100_000}).encode()
            case _:
                raise AssertionError(kind.name)
        return kind, model, "POST", path, JSON, body


class Stack:
    """`polyhead up` in a work dir: the real supervisor, which restarts what dies."""

    def __init__(self, workdir: Path, heads: int, log, layout: str = "standby", db_url: str | None = None,
                 l2_url: str | None = None):
        self.workdir, self.log, self.layout, self.db_url, self.l2_url = workdir, log, layout, db_url, l2_url
        configs = pick_head_configs(heads)
        self.heads = write_bench_heads(workdir, configs, train_limit=1500, fast_training=True)
        self.base = free_port_block(4 + heads)
        self.url = f"http://127.0.0.1:{self.base}"
        self.proc = None

    def start(self) -> float:
        t0 = time.monotonic()
        w = self.workdir
        argv = cli("up", "--heads-dir", str(w / "heads"), "--models-dir", str(w / "models"), "--var-dir", str(w / "var"),
                   "--gateway-port", str(self.base), "--embedder-port", str(self.base + 1),
                   "--embedder-metrics-port", str(self.base + 2), "--head-base-port", str(self.base + 3),
                   "--heads-per-process", "1" if self.layout == "solo" else "0",
                   "--head-standby" if self.layout == "standby" else "--no-head-standby")
        (w / "var").mkdir(parents=True, exist_ok=True)
        (w / "var" / "ports.json").unlink(missing_ok=True)  # fresh ports each run
        env = {"POLYHEAD_EMBEDDER_MODEL_HANDLE": str(w / "encoder"), "PYTHONPATH": str(ROOT)}
        if self.db_url:
            env["POLYHEAD_STACK_DB_URL"] = self.db_url
        if self.l2_url:
            env["POLYHEAD_STACK_L2_CACHE_URL"] = self.l2_url
        self.proc = spawn(argv, w / "up.log", env=env)
        deadline = time.monotonic() + 1200
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"polyhead up exited ({self.proc.returncode}); see {w / 'up.log'}")
            try:
                models = httpx.get(self.url + "/v1/models", timeout=5).json()["data"]
                if len(models) == len(self.heads) and all(m["ready"] for m in models):
                    return time.monotonic() - t0
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(1)
        raise TimeoutError("the stack did not become ready")

    def services(self) -> list[dict]:
        return json.loads((self.workdir / "var" / "stack.json").read_text())["services"]

    def rss_mib(self) -> dict[str, float]:
        """RSS per process; a head process with a standby is its parent plus its workers (each its own row),
        and `<name> (PSS, all)` sums their PSS: shared pages counted once, the memory they really take."""
        out = {"supervisor (polyhead up)": mem_kib(self.proc.pid)[0] / 1024}
        for svc in self.services():
            pid = svc["pid"]
            if not pid:
                out[svc["name"]] = 0.0
                continue
            out[svc["name"]] = mem_kib(pid)[0] / 1024
            workers = child_pids(pid) if svc["kind"] == "head" else []
            for i, worker in enumerate(workers):
                out[f"{svc['name']} worker {i + 1}"] = mem_kib(worker)[0] / 1024
            if svc["kind"] == "head":
                out[f"{svc['name']} (PSS, all)"] = sum(mem_kib(p)[1] for p in [pid, *workers]) / 1024
        return out

    def victim_of(self, model: str) -> tuple[dict, int]:
        """(the service serving `model`, the pid that serves its requests): for a process with a standby,
        the worker its /healthz names; otherwise the process itself."""
        svc = next((s for s in self.services() if s["kind"] == "head" and model in s.get("heads", [])), None)
        if svc is None or not svc["pid"]:
            raise RuntimeError(f"no running head process serves {model!r}: {self.services()}")
        serving = httpx.get(svc["url"] + "/healthz", timeout=5).json().get("pid", svc["pid"])
        return svc, serving

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except Exception:  # noqa: BLE001
                self.proc.kill()


def child_pids(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


async def run_load(stack: Stack, traffic: Traffic, duration_s: float, concurrency: int, kill_at_s: float,
                   victim: str, say, db_outage: tuple[float, float, "PrivatePostgres"] | None = None,
                   redis_outage: tuple[float, float, "PrivateRedis"] | None = None) -> dict:
    stats: dict[str, Stats] = defaultdict(Stats)
    answered: dict[str, int] = {}  # prediction_id of every predict answered 200 -> texts in it (rows owed to the log)
    db_window: dict[str, float] = {}
    by_status: Counter = Counter()
    outage = {"killed_at": None, "back_at": None, "503s": 0, "other_503": 0, "other_5xx": 0, "killed": None,
              "models": {victim}, "failed_at": defaultdict(list), "victim_requests": 0}
    rss_samples: list[dict] = []
    stop_at = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient):
        while time.monotonic() < stop_at:
            kind, model, method, path, headers, body = traffic.request()
            t0 = time.perf_counter()
            try:
                r = await client.request(method, path, headers=headers, content=body or None)
                status = r.status_code
                if status == 200 and kind.valid and path.endswith("/predict"):
                    answer = r.json()
                    answered[answer["prediction_id"]] = len(answer["predictions"])
                if status >= 400:
                    error = r.json().get("error", {})  # every error in polyhead's shape
                    assert "type" in error and "message" in error, r.text
            except httpx.HTTPError as exc:
                status = f"transport:{type(exc).__name__}"
            except (ValueError, AssertionError):
                status = f"{status}:not-polyhead-shape"
            ms = (time.perf_counter() - t0) * 1000
            s = stats[kind.name]
            s.statuses[status] += 1
            by_status[status] += 1
            if kind.valid and status == 200:
                s.latencies_ms.append(ms)
            started = time.monotonic() - ms / 1000
            killed, back = outage["killed_at"], outage["back_at"]
            # Sent to the killed head's model after the kill and before it answered again: the gateway
            # cannot validate for a head (the head does), so even a hostile body gets 503 then, by design.
            target = path.split("/")[3] if path.startswith("/v1/models/") and path.count("/") == 4 else None
            to_victim = target in outage["models"] and path.endswith("/predict")
            if to_victim and killed is not None:
                outage["victim_requests"] += 1
                if status == 503 or not isinstance(status, int):
                    outage["failed_at"][target].append(time.monotonic())
            in_outage = to_victim and killed is not None and started >= killed - 0.5 and (back is None or started <= back)
            if status not in kind.expected:
                if status == 503 and in_outage:
                    outage["503s"] += 1
                else:
                    s.unexpected[status] += 1
                    if isinstance(status, int) and status >= 500:
                        outage["other_5xx" if status != 503 else "other_503"] += 1
            elif to_victim and kind.valid and killed is not None and back is None and started > killed:
                outage["back_at"] = time.monotonic()

    async def killer():
        await asyncio.sleep(kill_at_s)
        svc, pid = await asyncio.to_thread(stack.victim_of, victim)
        outage["models"] = set(svc["heads"])
        outage["killed_at"] = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        outage["killed"] = {"service": svc["name"], "pid": pid, "worker": pid != svc["pid"]}
        who = f"the serving worker {pid} of {svc['name']}" if pid != svc["pid"] else f"{svc['name']} (pid {pid})"
        say(f"  t={kill_at_s:.0f}s: SIGKILL {who}, serving {len(svc['heads'])} model(s)")

    async def database_outage():
        start_s, length_s, pg = db_outage
        await asyncio.sleep(start_s)
        db_window["stopped_at"] = time.monotonic()
        await asyncio.to_thread(pg.stop)
        say(f"  t={start_s:.0f}s: PostgreSQL stopped for {length_s:.0f}s")
        await asyncio.sleep(length_s)
        await asyncio.to_thread(pg.start)
        db_window["started_at"] = time.monotonic()
        say(f"  t={start_s + length_s:.0f}s: PostgreSQL started again")

    async def l2_outage():
        start_s, length_s, redis = redis_outage
        await asyncio.sleep(start_s)
        await asyncio.to_thread(redis.stop)
        say(f"  t={start_s:.0f}s: Redis (the shared L2 cache) stopped for {length_s:.0f}s")
        await asyncio.sleep(length_s)
        await asyncio.to_thread(redis.start)
        say(f"  t={start_s + length_s:.0f}s: Redis started again (empty)")

    async def sampler():
        while time.monotonic() < stop_at:
            sample = await asyncio.to_thread(stack.rss_mib)
            rss_samples.append({**sample, "_t": time.monotonic()})
            await asyncio.sleep(10)

    async with httpx.AsyncClient(base_url=stack.url, timeout=30, limits=limits) as client:
        started = time.monotonic()
        tasks = [asyncio.create_task(worker(client)) for _ in range(concurrency)]
        side = [asyncio.create_task(killer()), asyncio.create_task(sampler())]
        if db_outage:
            side.append(asyncio.create_task(database_outage()))
        if redis_outage:
            side.append(asyncio.create_task(l2_outage()))
        await asyncio.gather(*tasks)
        for t in side:
            t.cancel()
        elapsed = time.monotonic() - started
    return {"stats": stats, "by_status": by_status, "outage": outage, "elapsed": elapsed, "rss_samples": rss_samples,
            "answered": answered, "db_window": db_window, "started": started}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=600, help="seconds of traffic (default 600)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--heads", type=int, default=3, help="heads in the stack")
    p.add_argument("--kill-at", type=float, default=0.5, help="when to SIGKILL a head, as a fraction of the run")
    p.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent of the text popularity")
    p.add_argument("--pool", type=int, default=5000, help="distinct valid texts")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/polyhead-soak"),
                   help="stack files (kept: a second run reuses the exported encoder and trained heads)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layout", choices=("standby", "packed", "solo"), default="standby",
                   help="head processes: packed with a warm standby (polyhead up's default), packed, or one per head")
    p.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite",
                   help="the inference log: SQLite in the work dir, or a private PostgreSQL cluster the drill may stop")
    p.add_argument("--db-outage", type=float, default=0.0, help="seconds PostgreSQL is stopped mid-run (0: none)")
    p.add_argument("--db-outage-at", type=float, default=0.2, help="when it stops, as a fraction of the run")
    p.add_argument("--redis-outage", type=float, default=0.0,
                   help="seconds a private Redis (the embedder's shared L2 cache) is stopped mid-run (0: no L2)")
    p.add_argument("--redis-outage-at", type=float, default=0.75, help="when it stops, as a fraction of the run")
    args = p.parse_args()
    if args.db_outage and args.database != "postgresql":
        p.error("--db-outage needs --database postgresql")

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    args.workdir.mkdir(parents=True, exist_ok=True)
    pg = db_url = None
    if args.database == "postgresql":
        pg = PrivatePostgres(args.workdir / "pgdata", free_port_block(1))
        pg.init()
        pg.start()
        pg.reset()
        db_url = pg.url
    redis = PrivateRedis(free_port_block(1)) if args.redis_outage else None
    if redis:
        redis.start()
    stack = Stack(args.workdir, args.heads, say, args.layout, db_url, redis.url if redis else None)
    say(f"starting `polyhead up` in {args.workdir} with {len(stack.heads)} heads ({', '.join(stack.heads)})")
    try:
        startup_s = stack.start()
        say(f"stack ready in {startup_s:.0f}s; warming up for 5 s")
        texts = list(dict.fromkeys(t for h in stack.heads.values() for t in h["texts"] if t.strip()))
        random.Random(args.seed).shuffle(texts)
        traffic = Traffic(sorted(stack.heads), texts[:args.pool], args.zipf, args.seed)
        victim = sorted(stack.heads)[0]
        asyncio.run(run_load(stack, traffic, 5, 4, 10**9, victim, say))  # warm-up: no kill
        rss_start = stack.rss_mib()
        say(f"soaking for {args.duration:.0f}s at concurrency {args.concurrency}")
        outage_plan = (args.duration * args.db_outage_at, args.db_outage, pg) if args.db_outage else None
        l2_plan = (args.duration * args.redis_outage_at, args.redis_outage, redis) if redis else None
        result = asyncio.run(run_load(stack, traffic, args.duration, args.concurrency,
                                      args.duration * args.kill_at, victim, say, outage_plan, l2_plan))
        rss_end = stack.rss_mib()
    finally:
        stack.stop()
    lost = log_audit(db_url or f"sqlite:///{args.workdir / 'var' / 'inference.db'}", result["answered"])
    if pg:
        pg.stop()
    if redis:
        redis.stop()

    stats, by_status, outage = result["stats"], result["by_status"], result["outage"]
    total = sum(by_status.values())
    print(f"## Soak: {args.duration:.0f}s, concurrency {args.concurrency}, {len(stack.heads)} heads, "
          f"Zipf s={args.zipf} over {len(traffic.texts)} texts ({machine()})\n")
    rows = []
    for kind in KINDS:
        s = stats.get(kind.name, Stats())
        n = sum(s.statuses.values())
        codes = ", ".join(f"{c}: {k}" for c, k in sorted(s.statuses.items(), key=lambda x: str(x[0])))
        lat = s.latencies_ms
        rows.append([kind.name, n, codes, sum(s.unexpected.values()),
                     f"{pct(lat, 50):.1f}" if lat else "-", f"{pct(lat, 99):.1f}" if lat else "-"])
    print(table(["request kind", "requests", "statuses", "unexpected", "p50 ms", "p99 ms"], rows))
    valid_lat = [x for k in KINDS if k.valid for x in stats.get(k.name, Stats()).latencies_ms]
    print()
    print(table(["status", "requests"], [[str(c), n] for c, n in sorted(by_status.items(), key=lambda x: str(x[0]))]))
    recovery = (f"{outage['back_at'] - outage['killed_at']:.1f}s" if outage["back_at"] and outage["killed_at"]
                else "not recovered")
    killed = outage["killed"]
    if killed is None:
        print("\nTHE KILL DID NOT HAPPEN (the run was shorter than --kill-at): nothing was measured about a crash")
        return 1
    failed = sum(len(v) for v in outage["failed_at"].values())
    spans = {m: (max(t) - min(t)) for m, t in outage["failed_at"].items() if t}
    print(f"\n{total} requests in {result['elapsed']:.0f}s ({total / result['elapsed']:.0f}/s); valid requests "
          f"p50 {pct(valid_lat, 50):.1f} ms, p99 {pct(valid_lat, 99):.1f} ms. SIGKILL of "
          f"{'the serving worker of ' if killed['worker'] else ''}{killed['service']} (pid {killed['pid']}, "
          f"{len(outage['models'])} models) at {args.duration * args.kill_at:.0f}s: {outage['503s']} predict requests "
          f"to its models got 503 until they answered again ({recovery}); failed (503 or transport) after the kill: "
          f"{failed} of {outage['victim_requests']} predicts to its models "
          f"({100 * failed / max(1, outage['victim_requests']):.2f} %), longest failing window of one model "
          f"{max(spans.values(), default=0.0):.2f} s; 503 for other models: {outage['other_503']}; other 5xx: "
          f"{outage['other_5xx']}; unexpected statuses: {sum(sum(s.unexpected.values()) for s in stats.values())}.\n")
    peak = {name: max(sample.get(name, 0.0) for sample in result["rss_samples"] + [rss_end]) for name in rss_end}
    # Worker rows are new processes after a takeover: compare the "(PSS, all)" rows across the run.
    print(table(["process", "start MiB", "end MiB", "peak MiB", "change"],
                [[name, rss_start.get(name, 0.0), rss_end[name], peak[name],
                  f"{rss_end[name] - rss_start.get(name, 0.0):+.1f}"] for name in rss_end]))
    print("\n(RSS unless marked PSS; the killed process's start figure is its first process', its end figure the "
          "one that took over)")
    window = result["db_window"]
    if window:
        print(f"\nPostgreSQL stopped for {window['started_at'] - window['stopped_at']:.0f}s from "
              f"t={window['stopped_at'] - result['started']:.0f}s; memory around it (sampled every 10 s):\n")
        print(memory_around(result["rss_samples"], window, result["started"]))
    print(f"\nThe inference log after the stack stopped: {lost['answered']} predict requests answered 200 "
          f"({lost['rows']} texts); rows missing from the DB: {lost['missing']}; duplicated: {lost['duplicated']}.")
    bad = (outage["other_5xx"] or lost["missing"] or lost["duplicated"]
           or any("not-polyhead-shape" in str(c) or "transport" in str(c) for c in by_status))
    return 1 if bad else 0


def log_audit(db_url: str, answered: dict[str, int]) -> dict[str, int]:
    """Every text of every predict answered 200 must be one served row in the inference DB, once."""
    import sqlalchemy as sa

    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        found = dict(conn.execute(sa.text(
            "SELECT issued_id, COUNT(*) FROM predictions WHERE issued_id IS NOT NULL "
            "AND (shadow IS NULL OR shadow = FALSE) GROUP BY issued_id")).all())
    engine.dispose()
    return {"answered": len(answered), "rows": sum(answered.values()),
            "missing": sum(max(0, n - found.get(pid, 0)) for pid, n in answered.items()),
            "duplicated": sum(max(0, found.get(pid, 0) - n) for pid, n in answered.items())}


def memory_around(samples: list[dict], window: dict[str, float], started: float) -> str:
    """Each process's memory just before the database stopped, at the end of the outage, and after."""
    def at(t: float) -> dict:
        before = [s for s in samples if s["_t"] <= t]
        return before[-1] if before else samples[0]

    points = [("before", at(window["stopped_at"])), ("end of outage", at(window["started_at"])),
              ("60 s later", at(window["started_at"] + 60)), ("last sample", samples[-1])]
    names = [n for n in samples[-1] if n != "_t" and " worker " not in n]
    return table(["process", *[f"{label} (t={p['_t'] - started:.0f}s) MiB" for label, p in points]],
                 [[n, *[p.get(n, 0.0) for _, p in points]] for n in names])


if __name__ == "__main__":
    sys.exit(main())
