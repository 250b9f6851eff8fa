"""Memory of one single-head process (`polyhead head serve <config>`), as a deployment runs it.

    .venv/bin/python -m scripts.bench.head_memory                 # 3 runs, 20 predicts each
    .venv/bin/python -m scripts.bench.head_memory --runs 5 --workdir /tmp/hm   # keep the trained head
    .venv/bin/python -m scripts.bench.head_memory --db-url postgresql+psycopg://...   # log to PostgreSQL instead

Starts an embedder, trains one small head with `polyhead train` (first run only, when --workdir is
reused), then per run: starts a fresh head process on a SQLite inference log, sends 20 predicts
(one text each, every text different), and reads the head's VmRSS and PSS. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path


import httpx
from scripts.bench.common import (
    cli, free_port, machine, mem_detail, mem_kib, pick_head_configs, spawn, stop_all, table, train_bench_heads,
    wait_grpc_serving, wait_http_ok, write_bench_heads,
)


def one_run(workdir: Path, head: dict, models: Path, target: str, predicts: int, run: int, db_url: str | None) -> dict:
    port = free_port()
    argv = cli("head", "serve", str(head["config"]), "--port", str(port), "--models-dir", str(models),
               "--embedder-target", target, "--db-url", db_url or f"sqlite:///{workdir / f'inference-{run}.db'}",
               "--spool-dir", str(workdir / f"spool-{run}"))
    proc = spawn(argv, workdir / "logs" / f"head-{run}.log")
    try:
        url = f"http://127.0.0.1:{port}"
        ready_s = wait_http_ok(url + "/readyz", proc, timeout_s=120, interval_s=0.1)
        texts = head["texts"]
        with httpx.Client(timeout=30) as client:
            for i in range(predicts):
                client.post(url + "/predict", json={"text": texts[(run * predicts + i) % len(texts)]}).raise_for_status()
        rss, _ = mem_kib(proc.pid)
        return {"rss": rss, "pss": mem_detail(proc.pid)["pss"], "ready_s": ready_s}
    finally:
        stop_all([proc])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--predicts", type=int, default=20)
    parser.add_argument("--train-limit", type=int, default=300, help="Texts the head is trained on (its size "
                        "does not depend on it: the same network shape)")
    parser.add_argument("--workdir", type=Path, default=None, help="Keep the trained head here (default: a temp dir)")
    parser.add_argument("--db-url", default=None, help="The heads' inference DB (default: a new SQLite file per run)")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="polyhead-head-mem-"))
    models = workdir / "models"
    heads = write_bench_heads(workdir, pick_head_configs(1), train_limit=args.train_limit, fast_training=True)
    (name, head), = heads.items()
    embedder = spawn(cli("embedder", "serve", "--port", str(port := free_port()), "--metrics-port", "0"),
                     workdir / "logs" / "embedder.log")
    try:
        target = f"127.0.0.1:{port}"
        wait_grpc_serving(target, embedder)
        train_bench_heads(heads, models, target, workdir / "logs" / "train.log")
        results = [one_run(workdir, head, models, target, args.predicts, run, args.db_url) for run in range(args.runs)]
    finally:
        stop_all([embedder])
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    rows = [[i + 1, f"{r['rss'] / 1024:.1f}", f"{r['pss'] / 1024:.1f}", f"{r['ready_s']:.1f}"] for i, r in enumerate(results)]
    rss = [r["rss"] / 1024 for r in results]
    db = "PostgreSQL" if args.db_url and args.db_url.startswith("postgresql") else "SQLite"
    print(f"head `{name}`, {args.predicts} predicts per run, inference log on {db}; {machine()}\n")
    print(table(["run", "RSS MiB", "PSS MiB", "launch to ready s"], rows))
    print(f"\nRSS MiB: mean {statistics.mean(rss):.1f}, min {min(rss):.1f}, max {max(rss):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
