"""Drill: SIGKILL an embedder of a running `polyhead up` under load through the gateway.

    .venv/bin/python -m scripts.drills.embedder_kill                  # 1 embedder, L2 in Redis, ~2-4 min
    .venv/bin/python -m scripts.drills.embedder_kill --replicas 2     # kill one of two replicas
    .venv/bin/python -m scripts.drills.embedder_kill --no-l2          # the heads' recent-text fallback only

Target (issue 12): 0 failed requests for texts seen before the kill; texts never seen answer 503 with
Retry-After only while no embedder replica is up; recovery time printed. Load: closed-loop clients
sending one text per request, half of them texts warmed up before the kill (through the gateway),
half of them texts nobody sent before. A poller watches every replica's gRPC health, which gives the
window in which no replica was SERVING. Exit status 1 when the target is missed.

Runs the real CLI (`polyhead up`) in a throwaway work dir under /tmp on free loopback ports; the L2 keys
get a prefix of their own in the Redis at --redis-url and are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import httpx
from scripts.bench.common import WORDS, cli, free_port_block, pct, pick_head_configs, spawn, stop_all, table, wait_http_ok, write_bench_heads

from embedder.client import EmbedderClient, RetryPolicy

GRACE_S = 1.0  # a 503 this close to the no-replica window (in flight at the kill, a reconnecting channel) still counts inside


@dataclass
class Result:
    sent: float
    done: float
    kind: str  # seen | new
    status: int  # 0 = transport error
    retry_after: str | None


def say(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


class HealthPoller(threading.Thread):
    """Every replica's gRPC health every 50 ms: when was none of them SERVING."""

    def __init__(self, targets: list[str]):
        super().__init__(daemon=True)
        self.targets = targets
        self.samples: list[tuple[float, list[bool]]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        clients = [EmbedderClient(t, retry=RetryPolicy(max_attempts=1)) for t in self.targets]
        while not self.stop.is_set():
            now = time.monotonic()
            self.samples.append((now, [c.health(timeout_s=0.5) == "SERVING" for c in clients]))
            time.sleep(0.05)
        for c in clients:
            c.close()

    def serving_again(self, replica: int, after: float) -> float | None:
        """First time at or after `after` the replica was SERVING, having been down in between."""
        down = False
        for t, up in self.samples:
            if t < after:
                continue
            if not up[replica]:
                down = True
            elif down:
                return t
        return None

    def none_up(self) -> list[tuple[float, float]]:
        windows, start = [], None
        for t, up in self.samples:
            if not any(up) and start is None:
                start = t
            elif any(up) and start is not None:
                windows.append((start, t))
                start = None
        if start is not None:
            windows.append((start, self.samples[-1][0]))
        return windows


def load(url: str, heads: list[str], seen: list[str], stop: threading.Event, out: list[Result], seed: int) -> None:
    rng = random.Random(seed)
    n = 0
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            head = rng.choice(heads)
            if rng.random() < 0.5:
                kind, text = "seen", rng.choice(seen)
            else:
                n += 1
                kind, text = "new", " ".join(rng.choices(WORDS, k=rng.randint(5, 12))) + f" (drill {seed}-{n})"
            sent = time.monotonic()
            try:
                r = client.post(f"{url}/v1/models/{head}/predict", json={"text": text})
                status, retry_after = r.status_code, r.headers.get("retry-after")
            except httpx.HTTPError:
                status, retry_after = 0, None
            out.append(Result(sent, time.monotonic(), kind, status, retry_after))
            time.sleep(0.01)


def warm(client: httpx.Client, url: str, texts: list[str], timeout_s: float = 60) -> None:
    """The gateway is ready before it has read every head's route: retry a 503 for a while."""
    deadline = time.monotonic() + timeout_s
    while (r := client.post(url, json={"texts": texts})).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    if r.status_code != 200:
        raise RuntimeError(f"warm-up of {url}: {r.status_code} {r.text}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replicas", type=int, default=1, help="embedder replicas (one is killed)")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--clients", type=int, default=4, help="closed-loop load clients")
    ap.add_argument("--seen", type=int, default=200, help="texts sent before the kill (the 'cached' ones)")
    ap.add_argument("--before-s", type=float, default=5.0, help="load before the kill")
    ap.add_argument("--after-s", type=float, default=5.0, help="load after the killed replica is SERVING again")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--no-l2", action="store_true", help="no shared L2: the heads fall back on their recent texts only")
    ap.add_argument("--workdir", type=Path, help="keep the work dir (trained heads are reused on the next run)")
    args = ap.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="polyhead-drill-"))
    workdir.mkdir(parents=True, exist_ok=True)
    heads = write_bench_heads(workdir, pick_head_configs(args.heads), train_limit=150, fast_training=True)
    base = free_port_block(2 + 2 * args.replicas + args.heads)
    gateway_port, embedder_port = base, base + 1
    metrics_port, head_port = base + 1 + args.replicas, base + 1 + 2 * args.replicas
    prefix = f"polyhead-drill:{uuid.uuid4().hex[:8]}:"
    env = {"POLYHEAD_GATEWAY_RATE_LIMIT_PER_S": "1000000", "POLYHEAD_GATEWAY_RATE_LIMIT_BURST": "1000000",
           "POLYHEAD_EMBEDDER_L2_CACHE_KEY_PREFIX": prefix, "POLYHEAD_HEAD_L2_CACHE_KEY_PREFIX": prefix}
    argv = cli("up", "--heads-dir", str(workdir / "heads"), "--models-dir", str(workdir / "models"),
               "--var-dir", str(workdir / "var"), "--gateway-port", str(gateway_port),
               "--embedder-port", str(embedder_port), "--embedder-metrics-port", str(metrics_port),
               "--head-base-port", str(head_port), "--embedder-replicas", str(args.replicas))
    if not args.no_l2:
        argv += ["--l2-cache-url", args.redis_url]
    (workdir / "var").mkdir(exist_ok=True)
    say(f"polyhead up in {workdir} ({args.replicas} embedder replica(s), L2 {'off' if args.no_l2 else 'on'})")
    up = spawn(argv, workdir / "up.log", env, start_new_session=True)
    url = f"http://127.0.0.1:{gateway_port}"
    try:
        ready_s = wait_http_ok(url + "/readyz", up, timeout_s=900)
        say(f"stack ready after {ready_s:.0f}s; warming {args.seen} texts")
        names = sorted(heads)
        rng = random.Random(0)
        pool = [t for h in heads.values() for t in h["texts"]]
        seen = rng.sample(pool, min(args.seen, len(pool)))
        # Each text is warmed through ONE head; the load sends it to any head. A head that never saw a
        # text finds it only in the shared L2 (with --no-l2 such requests fail while no embedder is up).
        with httpx.Client(timeout=60) as client:
            for k, name in enumerate(names):
                mine = seen[k::len(names)]
                for i in range(0, len(mine), 32):
                    warm(client, f"{url}/v1/models/{name}/predict", mine[i:i + 32])

        targets = [f"127.0.0.1:{embedder_port + i}" for i in range(args.replicas)]
        poller = HealthPoller(targets)
        poller.start()
        results: list[Result] = []
        stop = threading.Event()
        clients = [threading.Thread(target=load, args=(url, names, seen, stop, results, i), daemon=True)
                   for i in range(args.clients)]
        for c in clients:
            c.start()
        time.sleep(args.before_s)

        state = json.loads((workdir / "var" / "stack.json").read_text())
        victim = next(s for s in state["services"] if s["name"] == "embedder")
        say(f"SIGKILL embedder pid {victim['pid']}")
        killed_at = time.monotonic()
        os.kill(victim["pid"], signal.SIGKILL)
        deadline = killed_at + 300
        while (back := poller.serving_again(0, killed_at)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(args.after_s)
        stop.set()
        for c in clients:
            c.join(35)
        poller.stop.set()
        poller.join(5)
        fallback = fallback_counts(workdir)
    finally:
        os.killpg(up.pid, signal.SIGTERM)  # polyhead up stops its children in order
        stop_all([up])
        if not args.no_l2:
            import redis

            r = redis.Redis.from_url(args.redis_url)
            keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                r.delete(*keys)

    return report(args, results, poller, killed_at, back, fallback)


def fallback_counts(workdir: Path) -> dict[str, float]:
    """polyhead_head_embed_fallback_total summed over the heads, by source (recent | l2 | miss)."""
    from scripts.bench.common import scrape_prometheus

    state = json.loads((workdir / "var" / "stack.json").read_text())
    counts: dict[str, float] = {}
    for svc in state["services"]:
        if svc["kind"] == "head":
            for (name, labels), value in scrape_prometheus(svc["url"] + "/metrics").items():
                if name == "polyhead_head_embed_fallback_total":
                    source = dict(labels)["source"]
                    counts[source] = counts.get(source, 0) + value
    return counts


def report(args, results: list[Result], poller: HealthPoller, killed_at: float, back: float | None,
           fallback: dict[str, float]) -> int:
    windows = poller.none_up()
    in_window = lambda t: any(a - GRACE_S <= t <= b + GRACE_S for a, b in windows)  # noqa: E731
    end = back or float("inf")
    phases = (("before the kill", lambda r: r.done < killed_at), ("kill -> replica SERVING", lambda r: killed_at <= r.done < end),
              ("after", lambda r: r.done >= end))
    rows = []
    for kind in ("seen", "new"):
        for phase, pick in phases:
            rs = [r for r in results if r.kind == kind and pick(r)]
            if not rs:
                continue
            lat = [(r.done - r.sent) * 1000 for r in rs]
            failed = [r for r in rs if r.status != 200]
            rows.append([kind, phase, len(rs), len(rs) - len(failed), sum(r.status == 503 for r in failed),
                         sum(r.status not in (200, 503) for r in failed), round(pct(lat, 50), 1), round(pct(lat, 99), 1)])
    print(f"\nembedder replicas: {args.replicas}, L2: {'off' if args.no_l2 else 'on'}, clients: {args.clients}, "
          f"seen texts: {args.seen}\n")
    print(table(["texts", "phase", "requests", "ok", "503", "other errors", "p50 ms", "p99 ms"], rows))

    seen_failed = [r for r in results if r.kind == "seen" and r.status != 200]
    new_failed = [r for r in results if r.kind == "new" and r.status != 200]
    outside = [r for r in new_failed if r.status != 503 or not in_window(r.done)]
    no_retry_after = [r for r in new_failed if r.status == 503 and not r.retry_after]
    new_ok_after = [r.done for r in results if r.kind == "new" and r.status == 200 and r.sent > killed_at]
    none_up_s = sum(b - a for a, b in windows)
    print()
    print(table(["measure", "value"], [
        ["failed requests for seen texts (target 0)", len(seen_failed)],
        ["503s for new texts", sum(r.status == 503 for r in new_failed)],
        ["new-text failures outside the no-replica window (target 0)", len(outside)],
        ["503s without Retry-After (target 0)", len(no_retry_after)],
        ["head requests answered by the fallback: recent texts / L2 / neither (503)",
         " / ".join(str(int(fallback.get(k, 0))) for k in ("recent", "l2", "miss"))],
        ["time with no replica SERVING, s", round(none_up_s, 2)],
        ["killed replica SERVING again after, s", round(back - killed_at, 2) if back else "never"],
        ["first new text answered after the kill, s", round(min(new_ok_after) - killed_at, 2) if new_ok_after else "never"],
        ["last new-text 503 after the kill, s", round(max(r.done for r in new_failed) - killed_at, 2) if new_failed else "-"],
    ]))
    ok = not seen_failed and not outside and not no_retry_after and back is not None
    print(f"\n{'PASS' if ok else 'FAIL'}: seen texts never failed; new texts failed only while no replica was up"
          if ok else "\nFAIL: see the table above")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
