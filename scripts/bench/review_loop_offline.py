"""The review loop without the servers: the same loop as scripts/bench/review_loop.py, many seeds in minutes.

The real loop's numbers on 500 test texts (trec) move by a point or two from seed to seed, more than the
differences it is asked about, and three seeds take an hour. This replica keeps every part that decides
what is picked and what is learned, and drops the transport:

- the same split and stream as the real loop for a seed and the same ``--datasets`` order (its ``Dataset``:
  a 5 % labelled seed, 2,000 texts streamed per round, a class left out until ``--new-class-round``);
- the texts' vectors from an embedder, fetched once per dataset and feature set (cached as .npy under
  ``--cache-dir``);
- each streamed text's logged answer is what the version serving in that round answers (its top-3, as a
  head logs); the queue's pool is what ``candidate_pool`` gives (the ``--pool`` least confident by top
  probability for uncertain, balanced and clustered; the newest for new_label; a random sample for random;
  never a labelled text). A text streamed twice keeps only its newest answer here; ``candidate_pool`` finds
  it by its least confident one and ranks it by its newest, the same ranking when the pool holds every text;
- the ranking is the production code (``polyhead.inference_log.review.select`` with its ``STRATEGIES``,
  the served version's feature set for vectors, pending labels and the fallback as the gateway does);
- training is the production trainer (``heads.training.fit.train_head``: logreg on the default and all6
  sets, new classes weighted, a pending label added at ``min_new_label_examples``, 8).

Left out: HTTP, the inference log and the guard (the real loop promotes each version at once; the guard
no longer counts queue-picked feedback). Check it against the real loop on the same seed before trusting
it: BENCHMARKS.md, "The review queue in a closed loop", puts both side by side.

    .venv/bin/polyhead embedder serve --port 50999 &
    .venv/bin/python -m scripts.bench.review_loop_offline --datasets trec,ag_news_small,emotion \\
        --strategies random,uncertain,balanced,clustered --seeds 0-9 --new-class '' \\
        --embedder-target 127.0.0.1:50999 --out var/offline_t1.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from embedder.client import EmbedderClient
from heads.config import HeadConfig, ServingConfig
from heads.training.fit import train_head
from heads.training.params import TrainParams
from heads.training.run import embed_all
from polyhead.inference_log.review import PENDING_LIMIT, STRATEGIES, Candidate, Context, select
from scripts.bench.common import ROOT
from scripts.bench.review_loop import Dataset, summarize

# the defaults a head and the queue use, from where they are defined
TOP_K = ServingConfig.model_fields["top_k"].default
MIN_NEW_LABEL_EXAMPLES = HeadConfig.model_fields["min_new_label_examples"].default
SETS = ("default", "all6")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
CEILING = "every label"  # --ceiling: trained on every train label at once


class Vectors:
    """Every train and test text of a dataset, embedded once per feature set and kept on disk."""

    def __init__(self, client: EmbedderClient, cache: Path, name: str, texts: list[str]):
        ordered = sorted(set(texts))  # the same rows whatever the seed's split; the file name says which texts
        self.row = {t: i for i, t in enumerate(ordered)}
        digest = hashlib.sha256("\n".join(ordered).encode()).hexdigest()[:12]
        self.sets = {}
        for fs in SETS:
            path = cache / f"{name.replace('/', '_')}-{fs}-{digest}.npy"  # clinc150/domains/banking: one file
            if not path.exists():
                vectors, _ = embed_all(client, ordered, feature_set=fs)
                cache.mkdir(parents=True, exist_ok=True)
                np.save(path, vectors.astype(np.float32))
            self.sets[fs] = np.load(path)

    def of(self, texts: list[str], fs: str | None = None) -> np.ndarray | dict[str, np.ndarray]:
        idx = np.array([self.row[t] for t in texts])
        return self.sets[fs][idx] if fs else {k: v[idx] for k, v in self.sets.items()}


def fit(vec: Vectors, rows: list[tuple[str, str]], known: set[str]):
    """Train as `train --with-feedback` does: a label with fewer than 8 examples that the seed lacked stays
    pending (left out); one with 8+ is added and weighted as a new class."""
    counts = Counter(label for _, label in rows)
    new = [c for c in counts if c not in known and counts[c] >= MIN_NEW_LABEL_EXAMPLES]
    kept = [(t, lab) for t, lab in rows if lab in known or lab in new]
    return train_head(vec.of([t for t, _ in kept]), [lab for _, lab in kept], params=TrainParams(families=["logreg"]),
                      seed=0, new_classes=new)


def answers(result, vec: Vectors, texts: list[str]) -> list[list[dict]]:
    proba = result.model.predict_proba(vec.of(texts, result.feature_set))
    labels = result.model.labels
    top = np.argsort(-proba, axis=1)[:, :TOP_K]
    return [[{"label": labels[j], "probability": float(proba[i, j])} for j in row] for i, row in enumerate(top)]


def pool_of(strategy, logged: dict[str, tuple], labelled: set[str], limit: int, seed: int) -> list[str]:
    texts = [t for t in logged if t not in labelled]
    if strategy.pool_order == "least_confident":
        texts.sort(key=lambda t: (logged[t][1][0]["probability"], -logged[t][0]))
    elif strategy.pool_order == "random":
        random.Random(seed).shuffle(texts)
    else:
        texts.sort(key=lambda t: -logged[t][0])
    return texts[:limit]


def evaluate(result, vec: Vectors, data: Dataset) -> dict:
    """A version on the test split: accuracy, classes, and the new class's recall when there is one."""
    test_y = np.array([lab for _, lab in data.test])
    proba = result.model.predict_proba(vec.of([t for t, _ in data.test], result.feature_set))
    predicted = np.array(result.model.labels)[proba.argmax(1)]
    out = {"new_class": data.new_class, "accuracy": round(float(np.mean(predicted == test_y)), 4),
           "classes": len(result.model.labels)}
    if data.new_class is not None:
        out["new_class_recall"] = round(float(np.mean(predicted[test_y == data.new_class] == data.new_class)), 4)
    return out


def run(data: Dataset, vec: Vectors, strategy_name: str, args, seed: int) -> list[dict]:
    known = {label for _, label in data.seed}
    labelled_rows: list[tuple[str, str]] = []
    labelled: set[str] = set()
    result = fit(vec, data.seed, known)
    version = 0
    logged: dict[str, tuple] = {}  # text -> (stream order, top-k answer of the version serving then, version)
    out, order = [], 0
    for round_no in range(args.rounds + 1):
        out.append({"dataset": data.name, "strategy": strategy_name, "round": round_no, "seed": seed,
                    "labels_given": len(labelled_rows), **evaluate(result, vec, data)})
        if round_no == args.rounds:
            break
        allowed = [r for r in data.pool if r[0] not in labelled
                   and (r[1] != data.new_class or round_no >= args.new_class_round)]
        streamed = [t for t, _ in random.Random(seed * 1000 + round_no).sample(allowed, min(args.stream_per_round, len(allowed)))]
        for text, top_k in zip(streamed, answers(result, vec, streamed)):
            order += 1
            logged[text] = (order, top_k, version)  # a text streamed again: its newest row first in the pool
        strategy = STRATEGIES[strategy_name]
        served_labels = set(result.model.labels)
        pending = [t for t, lab in reversed(labelled_rows) if lab not in served_labels][:PENDING_LIMIT]
        if strategy.needs_pending and not pending:
            strategy = STRATEGIES[strategy.fallback]
        pool = pool_of(strategy, logged, labelled, args.pool, seed + round_no)
        candidates = [Candidate(t, t, 0, T0 + timedelta(seconds=logged[t][0]), str(logged[t][2]), t, t,
                                logged[t][1][0]["label"], logged[t][1][0]["probability"], logged[t][1]) for t in pool]
        ctx = Context(seed=seed + round_no if strategy.name == "random" else None)
        if strategy.needs_vectors:
            ctx.vectors = vec.of(pool, result.feature_set)
        if strategy.needs_pending:
            ctx.pending = vec.of(pending, result.feature_set)
        if strategy.needs_centroids and not strategy.needs_pending:
            raise SystemExit(f"{strategy.name}: the replica has no training centroids; use the real loop")
        picked = [c.text for c, _ in select(strategy, candidates, args.n, ctx)]
        labelled_rows += [(t, data.truth[t]) for t in picked]
        labelled |= set(picked)
        result = fit(vec, data.seed + labelled_rows, known)
        version += 1
    return out


def ceiling(data: Dataset, vec: Vectors, _strategy: str, args, seed: int) -> list[dict]:
    """What every train label teaches the same trainer (the seed and the whole pool, the new class known): the
    accuracy and new-class recall no strategy can be expected to pass, in the last round's column."""
    rows = data.seed + [(t, data.truth[t]) for t, _ in data.pool]
    result = fit(vec, rows, {label for _, label in rows})
    return [{"dataset": data.name, "strategy": CEILING, "round": args.rounds, "seed": seed, "labels_given": len(rows),
             **evaluate(result, vec, data)}]


def parse_seeds(text: str) -> list[int]:
    if "-" in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",") if s]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="trec,emotion,ag_news_small")
    p.add_argument("--datasets-dir", type=Path, default=ROOT.parent / "shared" / "datasets")
    p.add_argument("--strategies", default="random,uncertain,balanced,clustered",
                   help="review queue strategies (those without training centroids: not ood, diverse)")
    p.add_argument("--seeds", default="0-2", help="e.g. 0-9 or 0,3,5")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed-fraction", type=float, default=0.05)
    p.add_argument("--stream-per-round", type=int, default=2000)
    p.add_argument("--pool", type=int, default=5000, help="the review request's pool (the real loop asks for 5000)")
    p.add_argument("--max-train", type=int, default=0)
    p.add_argument("--max-test", type=int, default=0)
    p.add_argument("--new-class", default="auto", help="auto (the rarest class), a label, or '' for none")
    p.add_argument("--new-class-round", type=int, default=3)
    p.add_argument("--embedder-target", required=False, default="127.0.0.1:50999")
    p.add_argument("--cache-dir", type=Path, default=ROOT / "var" / "review-loop-vectors")
    p.add_argument("--ceiling", action="store_true",
                   help="also train once on every train label (per dataset and seed): the ceiling, in the r10 column")
    p.add_argument("--out", type=Path, default=None, help="JSON: a list of runs (one per seed and strategy)")
    p.add_argument("--summarize", type=Path, nargs="+", default=None, help="print the tables of earlier --out files")
    args = p.parse_args(argv)
    if args.summarize:
        runs = [run for path in args.summarize for run in json.loads(path.read_text())]
        summarize(runs, args.rounds)
        return 0
    for name in args.strategies.split(","):
        if name not in STRATEGIES:
            p.error(f"--strategies: {name!r} is not a review strategy ({', '.join(STRATEGIES)})")
    client = EmbedderClient(args.embedder_target, timeout_s=600)
    runs: list[list[dict]] = []
    names = [d for d in args.datasets.split(",") if d]
    vectors: dict[str, Vectors] = {}
    for seed in parse_seeds(args.seeds):
        rng = random.Random(seed)  # as the real loop: one generator for the datasets in --datasets order
        for data in [Dataset(args.datasets_dir, name, args, rng) for name in names]:
            if data.name not in vectors:
                vectors[data.name] = Vectors(client, args.cache_dir, data.name,
                                             [t for t, _ in data.seed + data.pool + data.test])
            for strategy in args.strategies.split(",") + ([CEILING] if args.ceiling else []):
                started = time.monotonic()
                rounds = (ceiling if strategy == CEILING else run)(data, vectors[data.name], strategy, args, seed)
                runs.append(rounds)
                print(json.dumps({"dataset": data.name, "strategy": strategy, "seed": seed,
                                  "accuracy": [r["accuracy"] for r in rounds],
                                  "new_class_recall": [r.get("new_class_recall") for r in rounds]
                                  if data.new_class else None, "s": round(time.monotonic() - started, 1)}), flush=True)
                if args.out:
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps(runs))
    client.close()
    summarize(runs, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
