"""Embedder backends side by side: TF-Hub (the reference), ONNX FP32, ONNX INT8, and a peer (Infinity).

    .venv/bin/python -m scripts.bench.backends                     # full run, quiet machine (~25 min on 2 cores)
    .venv/bin/python -m scripts.bench.backends --texts 64 --rounds 1 --repeat 1   # smoke (proves it runs)
    .venv/bin/python -m scripts.bench.backends --no-peer           # without Infinity
    .venv/bin/python -m scripts.bench.backends --sections 1        # the in-process model only

Sections (BENCHMARKS.md; targets from issue 25):
1. In-process model, batches of 32 of held-out sentences sorted by characters, the same batches for every
   backend (the model compared; the ONNX service's batcher groups by token count, which pads less); each
   backend in its own child process, backends alternating in rounds, medians. Target: INT8 >= 2x TF.
2. Services: polyhead's gRPC embedder on each backend and Infinity's HTTP server (torch engine, the
   same weights), 16 clients, requests of 32 texts and single texts, polyhead's cache bypassed; the
   servers alternate in rounds, medians. Targets: ONNX INT8 service >= 2x Infinity on requests of 32,
   >= 3x on single texts; each service >= 0.85x its own in-process model on requests of 32.
Infinity runs from its own virtualenv under var/ (created here on first use: torch from the machine's
local wheel, `pip install torch==2.13.0`, then infinity-emb[server,torch]); polyhead never imports it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from scripts.bench.common import ROOT, free_port, machine, round_workloads, start_embedder, stop, table
from scripts.bench.embedder import run_clients
from scripts.bench.choose_int8_matmuls import held_out_sentences

INFINITY_VENV = ROOT / "var" / "bench-infinity"
INFINITY_PINS = ["torch==2.13.0", "infinity-emb[server,torch]==0.0.78"]
BACKENDS = {  # name -> embedder settings flags
    "tf_hub": ["--backend", "tf_hub"],
    "onnx fp32": ["--backend", "onnx", "--precision", "fp32"],
    "onnx int8": ["--backend", "onnx", "--precision", "int8"],
}
CLIENTS = 16


# -- in-process -------------------------------------------------------------------------------------
def child_in_process(backend: str, n_texts: int, repeat: int) -> float:
    """texts/s of one backend's servable at batch 32 (runs in a child: one runtime per process)."""
    from embedder.backends import make_backend_servable
    from embedder.settings import EmbedderSettings

    flags = dict(zip(BACKENDS[backend][::2], BACKENDS[backend][1::2]))
    servable = make_backend_servable(EmbedderSettings(backend=flags["--backend"],
                                                      precision=flags.get("--precision", "fp32")))
    servable.load()
    servable.warmup()
    ordered = sorted(held_out_sentences(n_texts), key=len)
    started = time.perf_counter()
    for _ in range(repeat):
        for i in range(0, len(ordered), 32):
            servable.embed(ordered[i:i + 32])
    return len(ordered) * repeat / (time.perf_counter() - started)


def in_process(n_texts: int, repeat: int, rounds: int) -> dict[str, float]:
    results: dict[str, list[float]] = {b: [] for b in BACKENDS}
    for _ in range(rounds):
        for backend in BACKENDS:
            out = subprocess.run([sys.executable, "-m", __spec__.name, "--child", backend, "--texts", str(n_texts),
                                  "--repeat", str(repeat)], capture_output=True, text=True, check=True, cwd=ROOT)
            results[backend].append(json.loads(out.stdout.strip().splitlines()[-1])["texts_per_s"])
    return {b: statistics.median(v) for b, v in results.items()}


# -- the peer -----------------------------------------------------------------------------------------
def ensure_infinity() -> Path:
    """Infinity's own virtualenv (var/bench-infinity), created once; returns its infinity_emb."""
    exe = INFINITY_VENV / "bin" / "infinity_emb"
    if exe.exists():
        return exe
    subprocess.run([sys.executable, "-m", "venv", str(INFINITY_VENV)], check=True)
    pip = [str(INFINITY_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, INFINITY_PINS[0]], check=True)  # first, alone: the local CPU wheel, not a CUDA build
    subprocess.run([*pip, *INFINITY_PINS], check=True)
    return exe


def start_infinity(log: Path) -> tuple[subprocess.Popen, str]:
    """Infinity's server on the packaged weights (no hub access), batch size 32 as polyhead's default, its
    disk cache of results off (texts are unique anyway, and polyhead's cache is bypassed)."""
    import httpx

    from embedder.export import default_weights_dir

    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0"}
    cmd = [str(ensure_infinity()), "v2", "--model-id", str(default_weights_dir()), "--served-model-name", "minilm",
           "--engine", "torch", "--device", "cpu", "--batch-size", "32", "--port", str(port), "--host", "127.0.0.1",
           "--no-bettertransformer", "--no-vector-disk-cache", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"Infinity did not start (exit {proc.poll()}); see {log}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)


async def run_http_clients(url: str, requests: list[list[str]], concurrency: int) -> float:
    """texts/s of Infinity's OpenAI-style /embeddings, `concurrency` clients (own connection each)."""
    import httpx

    clients = [httpx.AsyncClient(base_url=url, timeout=60) for _ in range(concurrency)]
    queue = list(reversed(requests))

    async def worker(client):
        while queue:
            batch = queue.pop()
            r = await client.post("/embeddings", json={"model": "minilm", "input": batch})
            r.raise_for_status()
    await asyncio.gather(*(c.post("/embeddings", json={"model": "minilm", "input": ["warm"]}) for c in clients))
    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    elapsed = time.perf_counter() - started
    for c in clients:
        await c.aclose()
    return sum(len(r) for r in requests) / elapsed


# -- services -----------------------------------------------------------------------------------------
def services(texts: list[str], rounds: int, peer: bool, log_dir: Path) -> dict[str, tuple[float, float]]:
    """(single-text texts/s, requests-of-32 texts/s) per server, servers alternating, new texts each round."""
    servers = [*BACKENDS, *(["Infinity (torch)"] if peer else [])]
    results: dict[str, list[tuple[float, float]]] = {s: [] for s in servers}
    for singles, batches in round_workloads(texts, rounds):
        for server in servers:
            if server in BACKENDS:
                proc, target = start_embedder(*BACKENDS[server], log=log_dir / "embedder.log")
                measure = lambda reqs, target=target: asyncio.run(run_clients(target, reqs, CLIENTS, bypass=True))[0]  # noqa: E731
            else:
                proc, target = start_infinity(log_dir / "infinity.log")
                measure = lambda reqs, target=target: asyncio.run(run_http_clients(target, reqs, CLIENTS))  # noqa: E731
            try:
                results[server].append((measure(singles), measure(batches)))
            finally:
                stop(proc)
    return {s: (statistics.median(v[0] for v in vals), statistics.median(v[1] for v in vals))
            for s, vals in results.items()}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--texts", type=int, default=2000, help="held-out sentences per measurement")
    ap.add_argument("--repeat", type=int, default=3, help="in-process: passes over the texts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-peer", dest="peer", action="store_false", help="leave Infinity out")
    ap.add_argument("--sections", default="1,2", choices=["1", "1,2"],
                    help="1: the in-process model only; 1,2: and the services (2 needs 1's figures)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps({"texts_per_s": child_in_process(args.child, args.texts, args.repeat)}))
        return 0
    log_dir = ROOT / "var" / "bench-backends"
    log_dir.mkdir(parents=True, exist_ok=True)
    print(f"# Embedder backends — {machine()}\n")
    print(f"command: .venv/bin/python -m scripts.bench.backends --texts {args.texts} --repeat {args.repeat} "
          f"--rounds {args.rounds}{'' if args.peer else ' --no-peer'}"
          f"{'' if args.sections == '1,2' else ' --sections ' + args.sections}\n")

    model = in_process(args.texts, args.repeat, args.rounds)
    tf = model["tf_hub"]
    print(f"## In-process model (batch 32, length-sorted, {args.texts} held-out sentences x {args.repeat}; "
          f"backends alternate, median of {args.rounds})\n")
    print(table(["backend", "texts/s", "x TF"], [[b, v, v / tf] for b, v in model.items()]) + "\n")
    print("target: onnx int8 >= 2x TF\n")
    if args.sections == "1":
        return 0

    texts = held_out_sentences(args.texts * args.rounds, seed=3)
    served = services(texts, args.rounds, args.peer, log_dir)
    peer = served.get("Infinity (torch)")
    rows = []
    for name, (single, batch) in served.items():
        rows.append([name, single, batch, batch / model[name] if name in model else "",
                     single / peer[0] if peer else "", batch / peer[1] if peer else ""])
    print(f"## Services ({CLIENTS} clients, unique held-out sentences, polyhead's cache bypassed; servers "
          f"alternate, median of {args.rounds})\n")
    print(table(["server", "single-text texts/s", "requests of 32 texts/s", "x own in-process",
                 "x peer, singles", "x peer, of 32"], rows) + "\n")
    print("targets: onnx int8 >= 2x the peer on requests of 32 and >= 3x on singles; "
          "each service >= 0.85x its own in-process model on requests of 32\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
