"""Head accuracy on float16 all6 beside float32 all6, per dataset (issue 26 item 1): accuracy only.

    .venv/bin/python -m scripts.bench.float16_parity                          # every dataset, logreg family
    .venv/bin/python -m scripts.bench.float16_parity trec sst2                # a few
    .venv/bin/python -m scripts.bench.float16_parity trec --params '{"families": ["mlp"]}' --seeds 3

The embedder stores and sends the all6 set rounded to float16 (embedder/feature_sets.py). This trains
the same head (heads.training.fit.train_head, `--params` TrainParams overrides; default the logreg
family, the deterministic one, so a difference is the rounding's alone) on each dataset's float32
all6 vectors and on the same vectors rounded to float16, with the dataset's val split when it has
one, and scores both on the test split. Vectors come from the cache scripts/dev/embed_datasets.py
writes (missing ones are embedded in-process, or via `--target`). It also prints what one all6
vector costs in the caches and on the wire, before and after, from the embedder's own packing code.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np

from embedder.cache import CachedEmbedding
from embedder.feature_sets import ALL6, FLOAT16, FLOAT32, PRECISIONS
from embedder.l2cache import pack
from heads.training.evaluation import evaluate
from heads.training.fit import train_head
from heads.training.params import TrainParams
from scripts.bench.common import machine, table
from scripts.dev.embed_datasets import (DATASETS_ROOT, DEFAULT_CACHE_DIR, all_dataset_names, available_splits,
                                        load_split, make_encoder)


def rounded(X: np.ndarray) -> np.ndarray:
    """What the embedder hands a head for float32 vectors X: float16 values, as float32."""
    return X.astype(PRECISIONS[FLOAT16].dtype).astype(np.float32)


def bytes_per_vector(dim: int) -> list[list]:
    """One all6 vector's bytes: L1 entry's array, L2 value (header + vector), wire (EmbedResponse.embeddings)."""
    vector = np.zeros(dim, np.float32)
    rows = []
    for name in (FLOAT32, FLOAT16):
        dtype = PRECISIONS[name].dtype
        rows.append([name, vector.astype(dtype).nbytes, len(pack(CachedEmbedding(vector, False, 0), dtype)),
                     vector.astype(dtype).nbytes])
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="*", help="dataset folders (default: all, CLINC150 domains included)")
    parser.add_argument("--params", default='{"families": ["logreg"]}', help="JSON TrainParams overrides")
    parser.add_argument("--seeds", type=int, default=1, help="train with seeds 0..N-1; mean accuracy")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    parser.add_argument("--datasets-root", type=Path, default=DATASETS_ROOT)
    parser.add_argument("--target", default=None, help="embedder service host:port for cache misses")
    args = parser.parse_args(argv)
    params = TrainParams(**{"feature_sets": [ALL6], **json.loads(args.params)})
    command = " ".join([".venv/bin/python -m scripts.bench.float16_parity",
                        *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    print(f"# Head accuracy, all6 float32 vs float16 (accuracy only)\n\n{machine()}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start\n\ncommand: `{command}`\n")
    encoder = make_encoder(args.target)  # the in-process model loads only on a cache miss
    rows, deltas, dim = [], [], 2304
    for name in args.datasets or all_dataset_names():
        splits = available_splits(name, args.datasets_root)
        if "train" not in splits or "test" not in splits:
            print(f"- {name}: skipped (no train/test split)", file=sys.stderr)
            continue
        data = {s: load_split(name, s, cache_dir=args.cache_dir, datasets_root=args.datasets_root, encoder=encoder,
                              feature_set=ALL6, log=lambda m: print(f"  {m}", file=sys.stderr))[:2] for s in splits}
        dim = data["train"][0].shape[1]
        y = {s: list(labels) for s, (_, labels) in data.items()}
        accs, spread, predictions = {}, {}, {}
        for precision, convert in ((FLOAT32, lambda X: X), (FLOAT16, rounded)):
            X = {s: convert(vectors) for s, (vectors, _) in data.items()}
            runs = []
            for seed in range(args.seeds):
                result = train_head({ALL6: X["train"]}, y["train"], {ALL6: X["val"]} if "val" in X else None,
                                    y.get("val"), params=params, seed=seed)
                runs.append(evaluate(result.model, X["test"], y["test"])["accuracy"])
                if seed == 0:
                    predictions[precision] = result.model.predict(X["test"])
            accs[precision], spread[precision] = float(np.mean(runs)), float(np.std(runs))
        delta = accs[FLOAT16] - accs[FLOAT32]
        deltas.append(delta)
        changed = int(np.sum(np.asarray(predictions[FLOAT16]) != np.asarray(predictions[FLOAT32])))
        shown = {p: f"{accs[p]:.4f}" + (f" ±{spread[p]:.4f}" if args.seeds > 1 else "") for p in accs}
        rows.append([name, len(y["train"]), len(y.get("val", [])), len(y["test"]), shown[FLOAT32], shown[FLOAT16],
                     f"{100 * delta:+.2f}", changed])
        print(f"  {name}: float32 {accs[FLOAT32]:.4f} float16 {accs[FLOAT16]:.4f} ({changed} test predictions "
              f"differ)", file=sys.stderr, flush=True)
    print(f"TrainParams overrides {args.params} on all6, seeds 0..{args.seeds - 1}; test accuracy"
          f"{' (mean ±std over seeds)' if args.seeds > 1 else ''}:\n")
    print(table(["dataset", "n train", "n val", "n test", "float32 acc", "float16 acc", "Δ points",
                 "test predictions changed (seed 0)"], rows))
    if deltas:
        print(f"\nmean Δ {100 * np.mean(deltas):+.2f} points, min {100 * min(deltas):+.2f}, "
              f"max {100 * max(deltas):+.2f} over {len(deltas)} datasets")
    print(f"\nOne cached all6 vector ({dim} dims), bytes:\n")
    print(table(["storage", "L1 (embedder LRU, head recent LRU) vector", "L2 (Redis) value", "wire (embeddings)"],
                bytes_per_vector(dim)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
