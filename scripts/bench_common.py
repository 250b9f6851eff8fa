"""Helpers the benchmark scripts share: texts, servers as child processes, percentiles, tables."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
WORDS = ("account balance card transfer refund payment order delivery late broken password reset login "
         "error app crash slow great terrible love hate happy angry sad ticket support help urgent please "
         "today tomorrow week month price cost invoice bill charge fee travel flight hotel booking cancel "
         "change address phone email update new old fast quick simple problem issue question answer").split()


def real_sentences(limit: int = 20000, seed: int = 0) -> list[str]:
    """Unique real sentences from ../shared/datasets when present, else generated ones."""
    texts: list[str] = []
    for name in ("clinc150", "emotion", "trec", "sms_spam", "ag_news_small"):
        path = SHARED / name / "train.jsonl"
        if path.exists():
            texts += [json.loads(line)["text"] for line in path.open(encoding="utf-8")]
    rng = random.Random(seed)
    texts = list(dict.fromkeys(t for t in texts if t.strip()))
    if len(texts) < limit:
        texts += [" ".join(rng.choices(WORDS, k=rng.randint(6, 20))) + f" #{i}" for i in range(limit - len(texts))]
    rng.shuffle(texts)
    return texts[:limit]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_embedder(*flags: str, log: Path | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "polyhead.cli", "embedder", "serve", "--port", str(port),
                             "--metrics-port", "0", *flags], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{port}"
    from embedder.client import EmbedderClient

    with EmbedderClient(target) as client:
        deadline = time.monotonic() + 180
        while client.health() != "SERVING":
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"embedder did not start (exit {proc.poll()})")
            time.sleep(0.2)
    return proc, target


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")


def table(headers: list[str], rows: list[list]) -> str:
    fmt = lambda v: f"{v:,.1f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine() -> str:
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
