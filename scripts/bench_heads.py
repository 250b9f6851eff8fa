"""Head quality and training time: our default trainer beside logistic regression, same embeddings.

    .venv/bin/python scripts/bench_heads.py                    # every dataset in ../shared/datasets
    .venv/bin/python scripts/bench_heads.py trec sst2          # a few
    .venv/bin/python scripts/bench_heads.py --seeds 3          # mean over seeds 0..2 (and the spread)
    .venv/bin/python scripts/bench_heads.py --target 127.0.0.1:50051   # embed misses via the service

Embeddings (frozen all-MiniLM-L6-v2) come from the cache scripts/embed_datasets.py writes
(/tmp/polyhead-embeddings by default); missing ones are computed with the same code. Our heads
use `TrainParams()` defaults everywhere, with the dataset's val split when it has one. The
baseline is scikit-learn LogisticRegression(C=10) (a benchmark-only dependency), fitted on
train + val: the same data our refit sees. The quality floors below were set with that baseline
fitted on train alone.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from bench_common import machine, table
from embed_datasets import (DATASETS_ROOT, DEFAULT_CACHE_DIR, all_dataset_names, available_splits,
                            load_split, make_encoder)

from heads.training.evaluation import evaluate
from heads.training.fit import train_head
from heads.training.params import TrainParams

# Floors from the issue: LogisticRegression(C=10) on frozen all-MiniLM-L6-v2 embeddings, test split.
FLOORS = {"clinc150": ("accuracy", 0.855), "emotion": ("accuracy", 0.686), "trec": ("accuracy", 0.904),
          "sms_spam": ("f1_weighted", 0.991)}


def baseline(X_tr, y_tr, X_te, y_te) -> tuple[float, float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    started = time.perf_counter()
    clf = LogisticRegression(C=10, max_iter=2000).fit(X_tr, y_tr)
    seconds = time.perf_counter() - started
    pred = clf.predict(X_te)
    return float(accuracy_score(y_te, pred)), float(f1_score(y_te, pred, average="weighted")), seconds


def fmt(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ±{np.std(values):.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="*", help="dataset folders (default: all, CLINC150 domains included)")
    parser.add_argument("--seeds", type=int, default=1, help="train with seeds 0..N-1 and report the mean")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--datasets-root", type=Path, default=DATASETS_ROOT)
    parser.add_argument("--target", default=None, help="embedder service host:port for cache misses "
                                                       "(default: the in-process model)")
    args = parser.parse_args(argv)
    command = " ".join([".venv/bin/python scripts/bench_heads.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    if not args.datasets_root.is_dir():
        print(f"{args.datasets_root} is absent: nothing to benchmark")
        return 0
    names = args.datasets or all_dataset_names()
    encoder = make_encoder(args.target)  # the in-process model loads only on a cache miss
    print(f"# Head quality: default TrainParams vs LogisticRegression(C=10)\n\n{machine()}\n\ncommand: `{command}`\n")
    rows, verdicts, notes = [], [], []
    for name in names:
        splits = available_splits(name, args.datasets_root)
        if "train" not in splits or "test" not in splits:
            notes.append(f"- {name}: skipped ({args.datasets_root / name} has no train/test split)")
            continue

        def load(split, name=name):
            X, y, _ = load_split(name, split, cache_dir=args.cache_dir, datasets_root=args.datasets_root,
                                 encoder=encoder, log=lambda m: print(f"  {m}", file=sys.stderr))
            return X, list(y)

        X_tr, y_tr = load("train")
        X_te, y_te = load("test")
        X_va, y_va = load("val") if "val" in splits else (None, None)
        accs, f1s, times, chosen = [], [], [], []
        for seed in range(args.seeds):
            result = train_head(X_tr, y_tr, X_va, y_va, params=TrainParams(), seed=seed)
            ours = evaluate(result.model, X_te, y_te)
            accs.append(ours["accuracy"])
            f1s.append(ours["f1_weighted"])
            times.append(result.train_time_s)
            chosen.append(result.chosen)
        X_all = X_tr if X_va is None else np.concatenate([X_tr, X_va])
        y_all = y_tr if y_va is None else y_tr + y_va
        b_acc, b_f1, b_time = baseline(X_all, y_all, X_te, y_te)
        rows.append([name, len(y_tr), "" if y_va is None else len(y_va), len(set(y_all)), fmt(accs), fmt(f1s),
                     f"{np.mean(times):.1f}", f"{b_acc:.4f}", f"{b_f1:.4f}", f"{b_time:.1f}",
                     f"{np.mean(accs) - b_acc:+.4f}", f"{np.mean(f1s) - b_f1:+.4f}"])
        if name in FLOORS:
            metric, floor = FLOORS[name]
            values = accs if metric == "accuracy" else f1s
            worst = min(values)
            verdicts.append(f"- {name}: {metric} {fmt(values)} (worst seed {worst:.4f}) vs floor {floor}: "
                            f"{'beats' if worst > floor else 'MISSES'}")
        c = chosen[0]
        print(f"  {name}: acc {fmt(accs)} wF1 {fmt(f1s)} in {np.mean(times):.1f}s; LR acc {b_acc:.4f} "
              f"(seed 0 chose epochs={c.get('epochs')} prior_adjustment={c.get('prior_adjustment')})",
              file=sys.stderr, flush=True)
    print(table(["dataset", "n train", "n val", "classes", "ours acc", "ours wF1", "ours train s",
                 "LR acc", "LR wF1", "LR train s", "acc Δ", "wF1 Δ"], rows))
    if notes:
        print("\n" + "\n".join(notes))
    if verdicts:
        print("\nQuality floors (LogisticRegression(C=10) fitted on train, frozen all-MiniLM-L6-v2, test split):\n")
        print("\n".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
