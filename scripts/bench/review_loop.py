"""Closed-loop simulation of the review queue: does labelling what the queue picks teach a head faster than
labelling random texts?

For each dataset and strategy: train a head on a small labelled seed (``--seed-fraction`` of train),
then rounds of: stream ``--stream-per-round`` unlabelled train texts as production traffic through a
running stack (gateway -> packed head process -> embedder; the head logs them), ask the gateway's
review queue for ``--n`` texts (``--pool-since round``: ``since`` the round's start, so the picks use the current version's
answers; ``--pool-since loop``, the default: every unlabelled text the loop streamed, ranked by the answers they
got), answer each with its true label through POST /feedback (with the strategy), retrain with
``--with-feedback`` and wait until the head serves the new version. Test accuracy is measured on the
dataset's test split after every round (the artifact applied to the test embeddings, through the
embedder's cache).

Strategies: every name of the review queue (uncertain, balanced, clustered, diverse, ood, new_label, random) plus ``mix`` (half
uncertain, three tenths diverse, one fifth random per round).

``--pseudo-labels``: every retraining after the first also adds the champion's surest logged texts
(`train --with-pseudo-labels`, its defaults), to measure whether self-training helps.

A new class mid-stream (``--new-class``, datasets with 3+ classes): one class is left out of the seed
and of the traffic until round ``--new-class-round``; the head's config has ``labels: open``, so its
feedback is stored as pending and a retraining adds the class once it has
``min_new_label_examples`` (8) texts. Its test recall is reported per round.

Run it on a quiet machine (the numbers go into BENCHMARKS.md), e.g.:

    .venv/bin/python -m scripts.bench.review_loop --datasets trec,emotion,ag_news_small \\
        --strategies uncertain,diverse,mix,random --rounds 10 --n 100 --out var/sim_review_loop.json

A tiny run proves the loop works (a minute or two each; the second adds TREC's `location` class in
round 1, which is a class of 6 after round 2):

    .venv/bin/python -m scripts.bench.review_loop --datasets trec,sms_spam,emotion --strategies uncertain,mix,random \\
        --rounds 2 --n 20 --stream-per-round 200 --max-train 1500 --max-test 300
    .venv/bin/python -m scripts.bench.review_loop --datasets trec --strategies uncertain --rounds 2 --n 40 \\
        --stream-per-round 400 --max-train 2000 --max-test 300 --new-class location --new-class-round 1

The embedder is started here unless ``--embedder-target`` names a running one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import yaml

from cli.processes import terminate
from embedder.client import EmbedderClient
from heads.artifacts import load_artifact
from heads.config import load_head_config
from heads.roles import read_state
from heads.training.pseudo_labels import PseudoLabelOptions
from heads.training.run import embed_all, read_split, train_from_config
from scripts.bench.common import ROOT, free_port

MIX = {"uncertain": 0.5, "diverse": 0.3, "random": 0.2}


def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer 200 in {timeout_s} s")


# As `polyhead up` does: one admin token for the heads and the gateway (the review queue's vector strategies
# read the served version's training centroids from the head's admin-only GET /drift/centroids).
ADMIN_TOKEN = secrets.token_urlsafe(24)


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "POLYHEAD_HEAD_ADMIN_TOKEN": ADMIN_TOKEN, "POLYHEAD_GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    return subprocess.Popen([sys.executable, "-m", "cli", *cmd], cwd=ROOT, stdout=open(log, "ab"),
                            stderr=subprocess.STDOUT, env=env)




class Dataset:
    def __init__(self, root: Path, name: str, args, rng: random.Random):
        folder = root / name
        train = read_split(folder / "train.jsonl", "text", "label")
        test = read_split(folder / "test.jsonl", "text", "label")
        rows = list(zip(train.texts, train.labels))
        rng.shuffle(rows)
        if args.max_train:
            rows = rows[:args.max_train]
        test_rows = list(zip(test.texts, test.labels))
        rng.shuffle(test_rows)
        self.test = test_rows[:args.max_test] if args.max_test else test_rows
        self.name = name
        self.truth = {}
        for text, label in rows:
            self.truth.setdefault(text, label)  # a text labelled twice in the data: its first label
        counts = Counter(label for _, label in rows)
        self.new_class = None
        if args.new_class and len(counts) >= 3:
            self.new_class = min(counts, key=lambda c: (counts[c], c)) if args.new_class == "auto" else args.new_class
        n_seed = max(len(counts) * 2, int(len(rows) * args.seed_fraction))
        seed_rows = [r for r in rows if r[1] != self.new_class][:n_seed]
        # every known class in the seed, at least twice (training needs it)
        for label in counts:
            have = sum(1 for _, lab in seed_rows if lab == label)
            if label != self.new_class and have < 2:
                seed_rows += [r for r in rows if r[1] == label and r not in seed_rows][:2 - have]
        seed_texts = {t for t, _ in seed_rows}
        self.seed = seed_rows
        self.pool = [r for r in rows if r[0] not in seed_texts]


def write_config(folder: Path, head: str, data: Dataset) -> Path:
    train = folder / f"{head}_seed.jsonl"
    train.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in data.seed))
    config = {"name": head, "description": f"review-loop simulation on {data.name}",
              "dataset": {"train": train.name}, "training": {"families": ["logreg"]},
              "labels": "open" if data.new_class else "closed", "drift": {"enabled": True}}
    path = folder / f"{head}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def evaluate(models: Path, head: str, test_x: np.ndarray, test_y: list[str], new_class: str | None) -> dict:
    artifact = load_artifact(models, head, read_state(models, head).champion or "latest")
    predicted = artifact.model.predict(test_x)
    y = np.array(test_y)
    out = {"version": artifact.version, "accuracy": round(float(np.mean(np.array(predicted) == y)), 4),
           "classes": len(artifact.model.labels)}
    if new_class is not None:
        mask = y == new_class
        out["new_class_recall"] = round(float(np.mean(np.array(predicted)[mask] == new_class)), 4) if mask.any() else None
    return out


def stream(gateway: str, head: str, texts: list[str], attempts: int = 5) -> None:
    for start_at in range(0, len(texts), 64):
        for attempt in range(attempts):  # as a production caller does: a 503 (embedder busy) is retried
            r = httpx.post(f"{gateway}/v1/models/{head}/predict", json={"texts": texts[start_at:start_at + 64]},
                           timeout=120)
            if r.status_code != 503 or attempt == attempts - 1:
                break
            time.sleep(2 ** attempt)
        r.raise_for_status()


def review_round(gateway: str, head: str, strategy: str, n: int, since: str, truth: dict, seed: int) -> dict:
    shares = MIX if strategy == "mix" else {strategy: 1.0}
    picked, seen = [], set()
    for name, share in shares.items():
        want = max(1, round(n * share))
        params = {"n": want, "strategy": name, "since": since, "seed": seed} if name == "random" else \
            {"n": want, "strategy": name, "since": since}
        r = httpx.get(f"{gateway}/v1/models/{head}/review", params={**params, "pool": 5000}, timeout=300)
        r.raise_for_status()
        for item in r.json()["items"]:
            if (item["prediction_id"], item["index"]) not in seen:
                seen.add((item["prediction_id"], item["index"]))
                picked.append(item)
    items = [{"prediction_id": i["prediction_id"], "index": i["index"], "label": truth[i["text"]], "strategy": i["strategy"]}
             for i in picked]
    for start_at in range(0, len(items), 1000):
        r = httpx.post(f"{gateway}/v1/models/{head}/feedback", json={"items": items[start_at:start_at + 1000]},
                       timeout=120)
        r.raise_for_status()
    return {"labelled": len(items), "texts": [i["text"] for i in picked],
            "by_strategy": dict(Counter(i["strategy"] for i in items))}


def wait_version(gateway: str, head: str, version: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        info = httpx.get(f"{gateway}/v1/models/{head}", timeout=5).json()
        if info.get("version") == version and info.get("ready"):
            return
        time.sleep(0.3)
    raise TimeoutError(f"{head} did not serve {version} in {timeout_s} s")


def wait_logged(db_url: str, head: str, at_least: int, timeout_s: float = 60) -> None:
    """Until the rows callers got reach `at_least` (a promoted-away champion's shadow rows do not count)."""
    import sqlalchemy as sa

    from polyhead.inference_log.schema import make_engine, predictions, served_only

    engine = make_engine(db_url)
    count = sa.select(sa.func.count()).select_from(predictions).where(predictions.c.head == head, served_only())
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            with engine.connect() as conn:
                if conn.execute(count).scalar_one() >= at_least:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{head}: the log did not reach {at_least} rows")
            time.sleep(0.3)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="trec,emotion,ag_news_small", help="comma-separated, under --datasets-dir")
    p.add_argument("--datasets-dir", type=Path, default=ROOT.parent / "shared" / "datasets")
    p.add_argument("--strategies", default="uncertain,diverse,mix,random")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--n", type=int, default=100, help="texts labelled per round")
    p.add_argument("--seed-fraction", type=float, default=0.05)
    p.add_argument("--stream-per-round", type=int, default=2000)
    p.add_argument("--max-train", type=int, default=0, help="use at most this many train rows (0: all)")
    p.add_argument("--max-test", type=int, default=0)
    p.add_argument("--new-class", default="auto", help="auto (the rarest class), a label, or '' for none")
    p.add_argument("--new-class-round", type=int, default=3, help="the held-out class joins the traffic from this round")
    p.add_argument("--embedder-target", default=None, help="a running embedder; default: start one here")
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--out", type=Path, default=None, help="write every round's figures here (JSON)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pseudo-labels", action="store_true",
                   help="retrain with --with-pseudo-labels too (self-training: the champion's surest logged texts, "
                        "heads.training.pseudo_labels defaults) from round 1")
    p.add_argument("--pool-since", choices=["loop", "round"], default="loop",
                   help="the queue picks from every unlabelled text since the loop started (as a production queue "
                        "over recent traffic does), or only from this round's stream")
    p.add_argument("--summarize", type=Path, nargs="+", default=None,
                   help="print the markdown tables (means over seeds) of earlier --out files instead of running")
    args = p.parse_args(argv)
    if args.summarize:
        summarize([json.loads(path.read_text()) for path in args.summarize], args.rounds)
        return 0

    # SIGTERM (kill, a CI timeout) unwinds like Ctrl-C, so the finally below stops the stack it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="sim-review-"))
    work.mkdir(parents=True, exist_ok=True)
    configs, models, db = work / "configs", work / "models", f"sqlite:///{work / 'inference.db'}"
    configs.mkdir(exist_ok=True)
    rng = random.Random(args.seed)
    datasets = [Dataset(args.datasets_dir, name, args, rng) for name in args.datasets.split(",") if name]
    strategies = [s for s in args.strategies.split(",") if s]
    procs: list[subprocess.Popen] = []
    results: list[dict] = []
    try:
        target = args.embedder_target
        if target is None:
            port = free_port()
            procs.append(start(["embedder", "serve", "--port", str(port), "--metrics-port", "0"], work / "embedder.log"))
            target = f"127.0.0.1:{port}"
        client = EmbedderClient(target, timeout_s=300)
        deadline = time.monotonic() + 300
        while client.health(timeout_s=2) != "SERVING":
            if time.monotonic() > deadline or (procs and procs[0].poll() is not None):
                raise RuntimeError(f"the embedder at {target} is not serving (log: {work / 'embedder.log'})")
            time.sleep(1)

        heads = {}  # head name -> (dataset, strategy)
        for data in datasets:
            for strategy in strategies:
                head = f"sim-{data.name}-{strategy}{'-pl' if args.pseudo_labels else ''}".replace('_', '-').replace('/', '-')[:63]
                heads[head] = (data, strategy)
                config = write_config(configs, head, data)
                train_from_config(load_head_config(config), models, client, console=False)
        head_port = free_port()
        procs.append(start(["head", "serve", "--heads", "*", "--heads-dir", str(configs), "--port", str(head_port),
                            "--models-dir", str(models), "--embedder-target", target, "--db-url", db,
                            "--spool-dir", str(work / "spool"), "--version-poll-s", "0.5"], work / "heads.log"))
        routes = work / "routes.yaml"
        routes.write_text(yaml.safe_dump({h: f"http://127.0.0.1:{head_port}/heads/{h}" for h in heads}))
        gw_port = free_port()
        procs.append(start(["gateway", "serve", "--port", str(gw_port), "--heads-dir", str(configs), "--routes-file",
                            str(routes), "--embedder-target", target, "--db-url", db], work / "gateway.log"))
        gateway = f"http://127.0.0.1:{gw_port}"
        wait_http(gateway + "/readyz")
        for head in heads:
            wait_http(f"http://127.0.0.1:{head_port}/heads/{head}/readyz")

        test_vectors = {}
        for data in datasets:
            vectors, _ = embed_all(client, [t for t, _ in data.test])
            test_vectors[data.name] = (vectors, [lab for _, lab in data.test])

        for head, (data, strategy) in heads.items():
            x, y = test_vectors[data.name]
            labelled: set[str] = set()
            logged = 0
            for round_no in range(args.rounds + 1):
                figures = evaluate(models, head, x, y, data.new_class)
                entry = {"dataset": data.name, "strategy": strategy + ("+pseudo" if args.pseudo_labels else ""),
                         "round": round_no, "labels_given": len(labelled),
                         "new_class": data.new_class, **figures}
                results.append(entry)
                print(json.dumps(entry), flush=True)
                if round_no == args.rounds:
                    break
                if args.pool_since == "round" or round_no == 0:
                    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
                allowed = [r for r in data.pool if r[0] not in labelled
                           and (r[1] != data.new_class or round_no >= args.new_class_round)]
                texts = [t for t, _ in random.Random(args.seed * 1000 + round_no).sample(
                    allowed, min(args.stream_per_round, len(allowed)))]
                stream(gateway, head, texts)
                logged += len(texts)
                wait_logged(db, head, logged)
                done = review_round(gateway, head, strategy, args.n, since, data.truth, args.seed + round_no)
                labelled |= set(done["texts"])
                # promote: the loop measures what the head serves after each round, not a shadowed challenger
                pseudo = PseudoLabelOptions(db) if args.pseudo_labels and round_no > 0 else None
                report = train_from_config(load_head_config(configs / f"{head}.yaml"), models, client, console=False,
                                           feedback_db_url=db, promote=True, pseudo_labels=pseudo)
                wait_version(gateway, head, report.version)
                entry["labelled_this_round"] = done["labelled"]
        client.close()
    finally:
        for proc in reversed(procs):
            terminate(proc, 15)
    print_table(results, args.rounds)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    print(f"work dir: {work}", file=sys.stderr)
    return 0


def summarize(runs: list[list[dict]], rounds: int) -> None:
    """Markdown: accuracy per round (mean over the runs, i.e. seeds), the targets (best queue strategy after 5
    rounds vs random after 10; the new class's recall 3 rounds after it joins), per-seed figures beside."""
    acc: dict[tuple, dict[int, list[float]]] = {}
    recall: dict[tuple, dict[int, list[float]]] = {}
    new_class = {}
    for run in runs:
        for r in run:
            key = (r["dataset"], r["strategy"])
            acc.setdefault(key, {}).setdefault(r["round"], []).append(r["accuracy"])
            if r.get("new_class"):
                new_class[r["dataset"]] = r["new_class"]
                recall.setdefault(key, {}).setdefault(r["round"], []).append(r.get("new_class_recall") or 0.0)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    seeds = sorted({len(per.get(0) or next(iter(per.values()))) for per in acc.values()})
    print(f"#### Test accuracy per round, mean of {'/'.join(map(str, seeds))} runs (seeds) per strategy\n")
    print("| dataset | strategy | " + " | ".join(f"r{i}" for i in range(rounds + 1)) + " |")
    print("|---|---|" + "---|" * (rounds + 1))
    for (dataset, strategy), per in acc.items():
        print(f"| {dataset} | {strategy} | " + " | ".join(f"{mean(per[i]):.3f}" if i in per else "" for i in range(rounds + 1)) + " |")
    print("\n#### Target 1: the best queue strategy after 5 rounds vs random after 10\n")
    print("| dataset | best after 5 (per run) | random after 10 (per run) | met |")
    print("|---|---|---|---|")
    for dataset in dict.fromkeys(d for d, _ in acc):
        # the queue strategies (an offline ceiling, trained on every label, has no round 5)
        queue = {s: per for (d, s), per in acc.items() if d == dataset and not s.startswith("random") and 5 in per}
        rand = acc.get((dataset, "random"), {}).get(rounds)
        if not queue or not rand:
            continue
        best = max(queue, key=lambda s: mean(queue[s][5]))
        fives = queue[best][5]
        print(f"| {dataset} | {best} {mean(fives):.3f} ({', '.join(f'{x:.3f}' for x in fives)}) | {mean(rand):.3f} "
              f"({', '.join(f'{x:.3f}' for x in rand)}) | {'yes' if mean(fives) >= mean(rand) else '**no**'} |")
    if recall:
        print("\n#### Target 2: the new class's test recall (mean of the runs)\n")
        print("| dataset (new class) | strategy | " + " | ".join(f"r{i}" for i in range(3, rounds + 1)) + " |")
        print("|---|---|" + "---|" * (rounds - 2))
        for (dataset, strategy), per in recall.items():
            print(f"| {dataset} ({new_class[dataset]}) | {strategy} | "
                  + " | ".join(f"{mean(per[i]):.2f}" if i in per else "" for i in range(3, rounds + 1)) + " |")


def print_table(results: list[dict], rounds: int) -> None:
    by = {}
    for r in results:
        by.setdefault((r["dataset"], r["strategy"]), {})[r["round"]] = r
    header = "dataset          strategy    " + " ".join(f"r{i:<5}" for i in range(rounds + 1))
    print(header)
    for (dataset, strategy), per_round in by.items():
        accs = " ".join(f"{per_round[i]['accuracy']:.3f}" if i in per_round else "  -   " for i in range(rounds + 1))
        print(f"{dataset:<16} {strategy:<11} {accs}")
        if per_round[0].get("new_class"):
            recalls = " ".join(f"{per_round[i].get('new_class_recall') or 0:.3f}" if i in per_round else "  -   "
                               for i in range(rounds + 1))
            print(f"{'':<16} {'  recall ' + str(per_round[0]['new_class'])[:10]:<11} {recalls}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
