"""INT8's quality gate, measured on heads: heads trained on ONNX INT8 vectors vs on the FP32 reference.

    .venv/bin/python -m scripts.bench.int8_heads                 # every shared dataset, seeds 0..2
    .venv/bin/python -m scripts.bench.int8_heads trec --seeds 1  # smoke

Same trainer (TrainParams defaults, the dataset's val split when it has one), same seeds, same texts;
only the vectors differ: FP32 from the TF-Hub export (the reference, cached by scripts/dev/embed_datasets.py
in --cache-dir) and INT8 from the ONNX backend in-process (cached apart, in --int8-cache-dir: caches
never mix encoders). The gate (issue 25; README, "Choosing INT8"): mean test-accuracy change within
0.3 points, no dataset worse than 1 point. Exit status 1 when it fails.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


import numpy as np
from scripts.bench.common import machine, table
from scripts.dev.embed_datasets import (DATASETS_ROOT, DEFAULT_CACHE_DIR, all_dataset_names, available_splits, embed_sorted,
                            load_split, make_encoder)

from heads.training.evaluation import evaluate
from embedder.feature_sets import KNOWN
from heads.training.fit import train_head
from heads.training.params import TrainParams

MEAN_GATE, WORST_GATE = -0.3, -1.0  # accuracy points, INT8 minus FP32


class OnnxEncoder:
    """The ONNX backend's servable in-process, at the given precision."""

    def __init__(self, precision: str = "int8", batch_size: int = 64):
        self.precision, self.batch_size, self._servable = precision, batch_size, None

    def _load(self):
        if self._servable is None:
            from embedder.backends import make_backend_servable
            from embedder.settings import EmbedderSettings

            self._servable = make_backend_servable(EmbedderSettings(backend="onnx", precision=self.precision))
            self._servable.load()
        return self._servable

    def __call__(self, texts):
        return embed_sorted(lambda b: self._load().embed(b).vectors, texts, self.batch_size)

    def features(self, texts) -> dict[str, np.ndarray]:
        """Every known feature set, as load_split caches them (a miss fills them all)."""
        servable = self._load()
        return {name: embed_sorted(lambda b, n=name: servable.embed(b, n).vectors, texts, self.batch_size)
                for name in KNOWN}


def accuracies(name: str, encoder, cache_dir: Path, datasets_root: Path, seeds: int) -> list[float]:
    splits = available_splits(name, datasets_root)

    def load(split):
        X, y, _ = load_split(name, split, cache_dir=cache_dir, datasets_root=datasets_root, encoder=encoder,
                             log=lambda m: print(f"  {m}", file=sys.stderr))
        return X, list(y)

    X_tr, y_tr = load("train")
    X_te, y_te = load("test")
    X_va, y_va = load("val") if "val" in splits else (None, None)
    params = TrainParams()
    return [evaluate(train_head(X_tr, y_tr, X_va, y_va, params=params, seed=s).model, X_te, y_te)["accuracy"]
            for s in range(seeds)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="*", help="dataset folders (default: all, CLINC150 domains included)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="FP32 (TF export) vectors")
    ap.add_argument("--int8-cache-dir", type=Path, default=Path("/tmp/polyhead-embeddings-onnx-int8"))
    ap.add_argument("--datasets-root", type=Path, default=DATASETS_ROOT)
    args = ap.parse_args(argv)
    if not args.datasets_root.is_dir():
        print(f"{args.datasets_root} is absent: nothing to measure")
        return 0
    command = " ".join([".venv/bin/python -m scripts.bench.int8_heads",
                        *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    print(f"# Heads on ONNX INT8 vectors vs FP32 (TF export)\n\n{machine()}\n\ncommand: `{command}`\n")
    fp32_encoder, int8_encoder = make_encoder(None), OnnxEncoder("int8")
    rows, deltas = [], []
    for name in args.datasets or all_dataset_names():
        splits = available_splits(name, args.datasets_root)
        if "train" not in splits or "test" not in splits:
            continue
        fp32 = accuracies(name, fp32_encoder, args.cache_dir, args.datasets_root, args.seeds)
        int8 = accuracies(name, int8_encoder, args.int8_cache_dir, args.datasets_root, args.seeds)
        delta = 100 * (float(np.mean(int8)) - float(np.mean(fp32)))
        deltas.append(delta)
        rows.append([name, f"{np.mean(fp32):.4f}", f"{np.mean(int8):.4f}", f"{delta:+.2f}",
                     "ok" if delta >= WORST_GATE else "**WORSE THAN 1 POINT**"])
        print(f"  {name}: FP32 {np.mean(fp32):.4f} INT8 {np.mean(int8):.4f} ({delta:+.2f} points)", file=sys.stderr)
    print(table(["dataset", f"FP32 acc (mean of {args.seeds})", "INT8 acc", "change, points", "gate"], rows))
    mean = float(np.mean(deltas)) if deltas else 0.0
    ok = mean >= MEAN_GATE and all(d >= WORST_GATE for d in deltas)
    print(f"\nmean change {mean:+.2f} points over {len(deltas)} datasets (gate >= {MEAN_GATE}); worst "
          f"{min(deltas, default=0.0):+.2f} (gate >= {WORST_GATE}): {'PASS' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
