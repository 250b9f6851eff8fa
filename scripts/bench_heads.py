"""Head quality and training time: our default trainer beside logistic regression, same embeddings.

    .venv/bin/python scripts/bench_heads.py            # every dataset in ../shared/datasets
    .venv/bin/python scripts/bench_heads.py trec sst2  # a few

Embeddings (frozen all-MiniLM-L6-v2) are computed once and cached by scripts/embed_datasets.py.
The baseline is scikit-learn LogisticRegression(C=10) (benchmark-only dependency).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from bench_common import machine, table  # noqa: E402
from embed_datasets import DATASETS_ROOT, all_dataset_names, available_splits, load_split  # noqa: E402

from heads.training import TrainParams, evaluate, train_head  # noqa: E402

# Floors measured for the issue with LogisticRegression(C=10) on the same embeddings.
FLOORS = {"clinc150": ("accuracy", 0.855), "emotion": ("accuracy", 0.686), "trec": ("accuracy", 0.904),
          "sms_spam": ("f1_weighted", 0.991)}


def baseline(X_tr, y_tr, X_te, y_te) -> tuple[float, float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    started = time.perf_counter()
    clf = LogisticRegression(C=10, max_iter=2000).fit(X_tr, y_tr)
    seconds = time.perf_counter() - started
    pred = clf.predict(X_te)
    return accuracy_score(y_te, pred), f1_score(y_te, pred, average="weighted"), seconds


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("datasets", nargs="*")
    args = parser.parse_args()
    if not DATASETS_ROOT.is_dir():
        print(f"{DATASETS_ROOT} is absent: nothing to benchmark")
        return 0
    names = args.datasets or all_dataset_names()
    print(f"# Head quality — {machine()}\n\ncommand: .venv/bin/python scripts/bench_heads.py {' '.join(args.datasets)}\n")
    rows, verdicts = [], []
    for name in names:
        splits = available_splits(name)
        if "train" not in splits or "test" not in splits:
            print(f"- {name}: missing train/test, skipped")
            continue
        X_tr, y_tr, _ = load_split(name, "train")
        X_te, y_te, _ = load_split(name, "test")
        X_va, y_va = (load_split(name, "val")[:2] if "val" in splits else (None, None))
        params = TrainParams(selection_metric="f1_weighted") if name == "sms_spam" else TrainParams()
        result = train_head(X_tr, list(y_tr), X_va, None if y_va is None else list(y_va), params=params, seed=0)
        ours = evaluate(result.model, X_te, list(y_te))
        # The baseline sees train (+ val when there is one), as our refit does.
        X_all = X_tr if X_va is None else np.concatenate([X_tr, X_va])
        y_all = list(y_tr) if y_va is None else list(y_tr) + list(y_va)
        b_acc, b_f1, b_time = baseline(X_all, y_all, X_te, list(y_te))
        rows.append([name, len(y_all), len(set(y_all)), f"{ours['accuracy']:.4f}", f"{ours['f1_weighted']:.4f}",
                     f"{result.train_time_s:.1f}", f"{b_acc:.4f}", f"{b_f1:.4f}", f"{b_time:.1f}",
                     f"{ours['accuracy'] - b_acc:+.4f}"])
        if name in FLOORS:
            metric, floor = FLOORS[name]
            verdicts.append(f"- {name}: {metric} {ours[metric]:.4f} vs floor {floor} -> "
                            f"{'beats' if ours[metric] > floor else 'MISSES'}")
        print(f"  done {name}", file=sys.stderr)
    print(table(["dataset", "n train(+val)", "classes", "ours acc", "ours wF1", "ours train s", "LR(C=10) acc",
                 "LR wF1", "LR train s", "acc Δ"], rows))
    print("\nQuality floors from the issue (LogisticRegression(C=10), frozen all-MiniLM-L6-v2):\n")
    print("\n".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
