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

ROOT = Path(__file__).resolve().parents[2]
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
    proc = subprocess.Popen([sys.executable, "-m", "cli", "embedder", "serve", "--port", str(port),
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


# -- helpers for bench_gateway.py / bench_stack.py: head configs in a work dir, CLI children, /proc memory --
SHARED_HEADS = ROOT / "configs" / "shared-heads"
DEMO_HEADS = ROOT / "configs" / "heads"
HEAD_PREFERENCE = ("clinc-banking", "emotion", "sms-spam", "ag-news-small", "trec", "sst2")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def spawn(argv: list[str], log: Path, env: dict | None = None, **kwargs) -> subprocess.Popen:
    """A child in this process group (Ctrl-C reaches it too), output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
                                stdout=out, stderr=subprocess.STDOUT, **kwargs)


def free_port_block(n: int, start: int = 20000, stop_at: int = 60000) -> int:
    """First port p such that p..p+n-1 are all free on loopback (randomised start, fewer collisions)."""
    p = random.Random().randrange(start, stop_at - n, 97)
    for _ in range(200):
        ok = True
        for port in range(p, p + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return p
        p = start + (p - start + n + 97) % (stop_at - start - n)
    raise RuntimeError(f"no block of {n} free ports")


def wait_http_ok(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 120, interval_s: float = 0.05) -> float:
    """Poll `url` until HTTP 200; returns seconds waited."""
    import httpx

    t0 = time.monotonic()
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited ({proc.returncode})")
        if time.monotonic() - t0 > timeout_s:
            raise RuntimeError(f"{url}: not 200 after {timeout_s:.0f}s")
        time.sleep(interval_s)


def wait_grpc_serving(target: str, proc: subprocess.Popen | None = None, timeout_s: float = 300,
                      interval_s: float = 0.05) -> float:
    from embedder.client import EmbedderClient, RetryPolicy

    t0 = time.monotonic()
    with EmbedderClient(target, retry=RetryPolicy(max_attempts=1)) as client:
        while client.health(timeout_s=1.0) != "SERVING":
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"embedder at {target} exited ({proc.returncode})")
            if time.monotonic() - t0 > timeout_s:
                raise RuntimeError(f"embedder at {target} not SERVING after {timeout_s:.0f}s")
            time.sleep(interval_s)
    return time.monotonic() - t0


def stop_all(procs) -> None:
    """terminate() every live child first, then wait for each (kill after 20 s)."""
    procs = [p for p in procs if p is not None]
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        stop(p)


def mem_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in KiB of one process; (0, 0) when it is gone."""
    try:
        rss = int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0])
        pss = int(Path(f"/proc/{pid}/smaps_rollup").read_text().split("\nPss:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return 0, 0
    return rss, pss


def scrape_prometheus(url: str) -> dict[tuple, float]:
    """{(sample name, sorted label items): value} from a Prometheus text endpoint."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _read_jsonl(path: Path, text_field: str = "text", label_field: str = "label") -> list[tuple[str, str]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                rows.append((row[text_field], str(row[label_field])))
    return rows


def pick_head_configs(count: int) -> list:
    """`count` HeadConfigs: shared-dataset heads first (data present), then demo heads, then copies."""
    from heads.config import HeadConfigError, load_head_config

    found = []
    for folder in (SHARED_HEADS, DEMO_HEADS):
        for path in sorted(folder.glob("*.yaml")):
            try:
                cfg = load_head_config(path)
            except HeadConfigError:
                continue
            if cfg.data_available() and cfg.dataset.train.suffix == ".jsonl":
                found.append(cfg)
    order = {name: i for i, name in enumerate(HEAD_PREFERENCE)}
    found.sort(key=lambda c: (c.kind != "shared", order.get(c.name, len(order)), c.name))
    if not found:
        raise RuntimeError("no usable head config in configs/shared-heads or configs/heads")
    picked = found[:count]
    copy = 2
    while len(picked) < count:  # more heads than configs: the same data under new names
        for cfg in list(found):
            if len(picked) >= count:
                break
            clone = cfg.model_copy(deep=True)
            clone.name = f"{cfg.name[:56]}-copy{copy}"
            clone.source = cfg.source
            picked.append(clone)
        copy += 1
    return picked


def _balanced_sample(rows: list[tuple[str, str]], limit: int, seed: int) -> list[tuple[str, str]]:
    """At most `limit` rows, round-robin over the classes so every class keeps examples."""
    if len(rows) <= limit:
        return rows
    rng = random.Random(seed)
    by_label: dict[str, list] = {}
    for row in rows:
        by_label.setdefault(row[1], []).append(row)
    for group in by_label.values():
        rng.shuffle(group)
    sample, i = [], 0
    while len(sample) < limit:
        for group in by_label.values():
            if i < len(group) and len(sample) < limit:
                sample.append(group[i])
        i += 1
    return sample


def write_bench_heads(workdir: Path, configs: list, train_limit: int = 0, fast_training: bool = False,
                      seed: int = 0) -> dict[str, dict]:
    """Head configs under workdir/heads with absolute dataset paths. With `train_limit`, the training split is
    a class-balanced sample of at most that many texts (and val, if any, of a third of it; test left out),
    written under workdir/data. `fast_training`: one candidate, no refit (same network shape, so the same
    serving cost). Returns {name: {"config": path, "texts": every text of the source dataset (all splits),
    "n_train": int}}."""
    import yaml

    workdir = Path(workdir).resolve()  # the configs name their data absolutely (a relative --workdir too)
    heads_dir, data_dir = workdir / "heads", workdir / "data"
    heads_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for cfg in configs:
        ds = cfg.dataset
        paths = {k: cfg.resolve(getattr(ds, k)) for k in ("train", "val", "test") if getattr(ds, k) is not None}
        paths = {k: p for k, p in paths.items() if p.exists()}
        raw = cfg.model_dump(mode="json")
        raw["dataset"] = {"train": str(paths["train"]), "text_field": ds.text_field, "label_field": ds.label_field}
        for k in ("val", "test"):
            if k in paths:
                raw["dataset"][k] = str(paths[k])
        rows = {k: _read_jsonl(p, ds.text_field, ds.label_field) for k, p in paths.items()}
        n_train = len(rows["train"])
        if train_limit:
            raw["dataset"] = {}
            for k, limit in (("train", train_limit), ("val", max(1, train_limit // 3))):
                if k not in rows:
                    continue
                sample = _balanced_sample(rows[k], limit, seed)
                target = data_dir / cfg.name / f"{k}.jsonl"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in sample),
                                  encoding="utf-8")
                raw["dataset"][k] = str(target)
                if k == "train":
                    n_train = len(sample)
        if fast_training:
            raw.setdefault("training", {}).update({"search_grid": {}, "refit": False})
        path = heads_dir / f"{cfg.name}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
        texts = [t for split in rows.values() for t, _ in split]
        out[cfg.name] = {"config": path, "texts": list(dict.fromkeys(texts)), "n_train": n_train}
    return out


def train_bench_heads(heads: dict[str, dict], models_dir: Path, target: str, log: Path) -> float:
    """`polyhead train` (the real CLI) for every head without an artifact yet; returns seconds taken."""
    from heads.artifacts import list_versions

    todo = [str(h["config"]) for name, h in heads.items() if not list_versions(models_dir, name)]
    t0 = time.monotonic()
    if todo:
        proc = spawn(cli("train", *todo, "--models-dir", str(models_dir), "--embedder-target", target), log)
        if proc.wait() != 0:
            raise RuntimeError(f"polyhead train failed ({proc.returncode}); see {log}")
    return time.monotonic() - t0


def mem_detail(pid: int) -> dict[str, int]:
    """KiB of one process from /proc/<pid>/smaps_rollup: rss, pss, uss (private pages) and shared (pages
    another process maps too); all 0 when it is gone."""
    fields = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, rest = line.partition(":")
            fields[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return {"rss": 0, "pss": 0, "uss": 0, "shared": 0}
    return {"rss": fields.get("Rss", 0), "pss": fields.get("Pss", 0),
            "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
            "shared": fields.get("Shared_Clean", 0) + fields.get("Shared_Dirty", 0)}


def round_workloads(texts: list[str], rounds: int) -> list[tuple[list[list[str]], list[list[str]]]]:
    """Per round, new texts: (single-text requests, requests of 32), half the round's texts each."""
    per_round = len(texts) // rounds
    out = []
    for r in range(rounds):
        part = texts[r * per_round:(r + 1) * per_round]
        half = per_round // 2
        out.append(([[t] for t in part[:half]],
                    [part[half + i:half + i + 32] for i in range(0, per_round - half, 32)]))
    return out
