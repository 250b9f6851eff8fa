"""What drift monitoring adds to a head's predict: DriftMonitor.observe beside the head's own forward.

    .venv/bin/python scripts/bench_drift.py                  # 384-d vectors, 2 / 15 / 150 classes, batches 1 / 8 / 64
    .venv/bin/python scripts/bench_drift.py --repeats 2000   # steadier figures

The cost depends on shapes, not on the texts, so the vectors are synthetic. Both sides run in the
same process, alternating (the minimum of --rounds timings), with one BLAS thread (as a serving head on a shared machine); the
head is a default-shaped MLP (2 members x 128 hidden units). The embedder call, which every predict
also pays, costs milliseconds per request and is not included.
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from bench_common import machine, table

from heads.drift import DriftMonitor, DriftThresholds
from heads.training.drift_reference import build_reference
from heads.training.fit import train_head
from heads.training.params import TrainParams


def per_call_us(fn, repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--classes", type=int, nargs="+", default=[2, 15, 150])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--repeats", type=int, default=200, help="calls per timing")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timings per cell; the minimum is kept")
    args = ap.parse_args()
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    rows = []
    with threadpool_limits(limits=1, user_api="blas"):
        for C in args.classes:
            X = rng.normal(size=(max(4 * C, 300), args.dim)).astype(np.float32)
            y = [f"c{i % C}" for i in range(len(X))]
            result = train_head(X, y, params=TrainParams(epochs_max=1, cv_folds=0, search_grid={"dropout": [0.5]}))
            ref = build_reference(X, y, result.model.labels, result.val_proba, confidence_source=result.val_source)
            monitor = DriftMonitor("bench", DriftThresholds(0.3, 0.15, 0.25, 1000, 200, 1.0))
            for n in args.batches:
                V = rng.normal(size=(n, args.dim)).astype(np.float32)
                labels, conf = [f"c{i % C}" for i in range(n)], [0.9] * n
                head, drift = float("inf"), float("inf")
                forward = partial(result.model.predict_proba, V)
                observe = partial(monitor.observe, "v", ref, V, labels, conf)
                for _ in range(args.rounds):  # alternate, keep the least disturbed timing of each
                    head = min(head, per_call_us(forward, args.repeats))
                    drift = min(drift, per_call_us(observe, args.repeats))
                rows.append([C, n, head, drift, f"{drift / head:.2f}x", drift / n])
    print(f"machine: {machine()}")
    print(table(["classes", "batch", "head forward us", "drift observe us", "drift / head", "drift us per text"],
                rows))


if __name__ == "__main__":
    main()
