"""What shadowing challengers costs a head: p50/p99 latency and CPU per predict with 0, 1 and 3 challengers.

    .venv/bin/python scripts/bench_shadow.py                       # real embedder, 2,000 requests per setting
    .venv/bin/python scripts/bench_shadow.py --requests 200 --fake # quick check that it runs (fake model)
    .venv/bin/python scripts/bench_shadow.py --batch 8             # 8 texts per request

One embedder, one trained head (configs/heads/support-routing.yaml); the head process is started once
per setting with N challengers in its serving.json (copies of the champion's artifact under other
version ids: a challenger of the same shape costs the same, whatever its weights), logging to SQLite
(shadow rows included: what a challenger really costs). Requests are sequential, from one client,
texts drawn from the head's test set; the embedder's cache is warmed first, so the embedding is a
cache hit and the head's own work (where a challenger's cost lands) is as large a share as it gets:
the worst case for the ratio. Settings run in alternating rounds (--rounds); each figure is the
median over rounds. CPU per predict: the head process's user+system time over the requests (from
/proc/<pid>/stat). Target (issue 23): each challenger adds <= 5 % to the head's p50; no failed request.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from bench_common import cli, free_port, machine, pct, spawn, start_embedder, stop, table, wait_http_ok

ROOT = Path(__file__).resolve().parents[1]
HEAD = "support-routing"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def with_challengers(models: Path, champion: str, n: int) -> None:
    from heads import roles

    versions = []
    for i in range(n):
        version = f"2999010{i + 1}T000000Z"
        if not (models / HEAD / version).exists():
            shutil.copytree(models / HEAD / champion, models / HEAD / version)
        versions.append(version)
    (models / HEAD / roles.STATE_FILE).write_text(json.dumps(roles.ServingState(champion, tuple(versions)).to_json()))


def run_setting(models: Path, target: str, work: Path, texts: list[str], requests: int, batch: int) -> dict:
    port = free_port()
    proc = spawn(cli("head", "serve", str(ROOT / "configs" / "heads" / f"{HEAD}.yaml"), "--port", str(port),
                     "--models-dir", str(models), "--embedder-target", target,
                     "--db-url", f"sqlite:///{work / 'inference.db'}", "--spool-dir", str(work / "spool"),
                     "--version-poll-s", "0"), work / "head.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http_ok(url + "/readyz", proc)
        latencies, failed = [], 0
        with httpx.Client(timeout=10) as client:
            for i in range(50):  # warm: connections, numpy, the log writer
                client.post(url + "/predict", json={"texts": texts[i:i + batch]})
            cpu0 = cpu_seconds(proc.pid)
            for i in range(requests):
                start = (i * batch) % max(1, len(texts) - batch)
                t0 = time.perf_counter()
                r = client.post(url + "/predict", json={"texts": texts[start:start + batch]})
                latencies.append((time.perf_counter() - t0) * 1000)
                failed += r.status_code != 200
            cpu = cpu_seconds(proc.pid) - cpu0
        return {"p50": pct(latencies, 50), "p99": pct(latencies, 99), "cpu_ms": cpu / requests * 1000, "failed": failed}
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--challengers", type=int, nargs="+", default=[0, 1, 3])
    ap.add_argument("--requests", type=int, default=2000, help="timed requests per setting and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1, help="texts per request")
    ap.add_argument("--fake", action="store_true", help="the fake embedding model (no TensorFlow): proves it runs")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-shadow-"))
    embedder, target = start_embedder(*(["--model-handle", "fake://"] if args.fake else []), log=work / "embedder.log")
    try:
        models = work / "models"
        trained = spawn(cli("train", str(ROOT / "configs" / "heads" / f"{HEAD}.yaml"), "--models-dir", str(models),
                            "--embedder-target", target), work / "train.log")
        if trained.wait() != 0:
            raise SystemExit(f"training failed; see {work / 'train.log'}")
        champion = (models / HEAD / "latest").read_text().strip()
        rows = [json.loads(line)["text"] for line in
                (ROOT / "configs" / "datasets" / HEAD / "test.jsonl").read_text().splitlines() if line.strip()]
        results: dict[int, list[dict]] = {n: [] for n in args.challengers}
        for _ in range(args.rounds):
            for n in args.challengers:
                with_challengers(models, champion, n)
                results[n].append(run_setting(models, target, work, rows, args.requests, args.batch))
        base = statistics.median(r["p50"] for r in results[args.challengers[0]])
        out = []
        for n in args.challengers:
            p50 = statistics.median(r["p50"] for r in results[n])
            extra = (p50 / base - 1) * 100
            out.append([n, f"{p50:.3f}", f"{statistics.median(r['p99'] for r in results[n]):.3f}",
                        f"{statistics.median(r['cpu_ms'] for r in results[n]):.3f}",
                        f"{extra:+.1f}%" if n else "-", f"{extra / n:+.1f}%" if n else "-",
                        sum(r["failed"] for r in results[n])])
        print(f"machine: {machine()}; embedder: {'fake' if args.fake else 'all-MiniLM-L6-v2'}; batch {args.batch}; "
              f"{args.requests} requests x {args.rounds} rounds per setting")
        print(table(["challengers", "head p50 ms", "head p99 ms", "head CPU ms / predict", "p50 vs 0",
                     "per challenger", "failed"], out))
    finally:
        stop(embedder)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
