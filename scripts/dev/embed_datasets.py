"""Compute and cache all-MiniLM-L6-v2 embeddings of the public datasets in ../shared/datasets.

Each split lands in `<cache-dir>/<dataset>/<split>.npz` (default cache dir
/tmp/polyhead-embeddings) holding `X` [N,384] float32 (the default feature set), `labels` and
`texts` (unicode arrays, no pickle) and `source_sha256` (a digest of the JSONL file, so a changed
dataset is re-embedded); every other feature set of the model (embedder/feature_sets.py: all6,
[N,2304]) in `<split>.<set>.npz` beside it, from the same encoder pass (`embed_features`), so
one run caches both sets. CLINC150 domain subsets (`clinc150/domains/<d>`) reuse the vectors of
the full CLINC150 splits when those are cached, since their texts are a subset.

    .venv/bin/python -m scripts.dev.embed_datasets                      # every dataset, in-process
    .venv/bin/python -m scripts.dev.embed_datasets clinc150 emotion trec sms_spam
    .venv/bin/python -m scripts.dev.embed_datasets --target 127.0.0.1:50051   # via the embedder service

In-process embedding loads the exported TF-Hub SavedModel (models/_encoders/all-minilm-l6-v2);
`--target` goes through `embedder.client.EmbedderClient` instead (no TensorFlow in this process).
The module is also imported by scripts/bench/heads.py and the heads tests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from embedder.feature_sets import DEFAULT, KNOWN

ROOT = Path(__file__).resolve().parents[2]
DATASETS_ROOT = ROOT.parent / "shared" / "datasets"
DEFAULT_CACHE_DIR = Path("/tmp/polyhead-embeddings")
ENCODER_PATH = ROOT / "models" / "_encoders" / "all-minilm-l6-v2"
FLOOR_DATASETS = ["clinc150", "emotion", "trec", "sms_spam"]
OTHER_DATASETS = ["sst2", "ag_news_small", "tweeteval_offensive", "tweeteval_irony"]
CLINC_DOMAINS = ["auto_and_commute", "banking", "credit_cards", "home", "kitchen_and_dining",
                 "meta", "small_talk", "travel", "utility", "work"]
SPLITS = ("train", "val", "test")
BATCH_SIZE = 64

Embedder = Callable[[Sequence[str]], np.ndarray]  # texts -> default vectors; `.features(texts)`: every set


def all_dataset_names() -> list[str]:
    """Every dataset this project benchmarks, floor sets first, domains last."""
    return FLOOR_DATASETS + OTHER_DATASETS + [f"clinc150/domains/{d}" for d in CLINC_DOMAINS]


def read_jsonl(path: Path) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                texts.append(row["text"])
                labels.append(str(row["label"]))
    return texts, labels


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def available_splits(dataset: str, datasets_root: Path = DATASETS_ROOT) -> list[str]:
    folder = datasets_root / dataset
    return [s for s in SPLITS if (folder / f"{s}.jsonl").is_file()]


# -- encoders ------------------------------------------------------------------------------------
class LocalEncoder:
    """The exported SavedModel, loaded in this process (lazily, once)."""

    def __init__(self, path: Path | str = ENCODER_PATH, batch_size: int = BATCH_SIZE):
        self.path = str(path)
        self.batch_size = batch_size
        self._module = None

    def _load(self):
        if self._module is None:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            import tensorflow as tf  # noqa: F401
            import tensorflow_text  # noqa: F401  registers the tokenizer ops; before hub.load

            with warnings.catch_warnings():  # tensorflow_hub 0.16 imports the deprecated pkg_resources
                warnings.simplefilter("ignore")
                import tensorflow_hub as hub
            self._module = hub.load(self.path)
        return self._module

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        import tensorflow as tf

        return np.asarray(self._load()(tf.constant(texts, dtype=tf.string)).numpy(), dtype=np.float32)

    def _features_batch(self, texts: list[str]) -> dict[str, np.ndarray]:
        import tensorflow as tf

        out = self._load().embed_features(tf.constant(texts, dtype=tf.string))
        return {DEFAULT: np.asarray(out["embeddings"].numpy(), np.float32),
                **{name: np.asarray(out[name].numpy(), np.float32) for name in KNOWN if name != DEFAULT}}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return embed_sorted(self._embed_batch, texts, self.batch_size)

    def features(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Every feature set of KNOWN from one encoder pass (the export's `embed_features`)."""
        return embed_sorted_sets(self._features_batch, texts, self.batch_size)


class RemoteEncoder:
    """The embedder gRPC service at `target` (host:port)."""

    def __init__(self, target: str, batch_size: int = 256):
        from embedder.client import EmbedderClient

        self.client = EmbedderClient(target, timeout_s=60.0)
        self.batch_size = batch_size

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return embed_sorted(lambda b: np.asarray(self.client.embed(b).vectors, np.float32), texts, self.batch_size)

    def features(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        return {name: embed_sorted(lambda b, n=name: np.asarray(self.client.embed(b, feature_set=n).vectors,
                                                                np.float32), texts, self.batch_size)
                for name in KNOWN}


def embed_sorted(embed_batch: Callable[[list[str]], np.ndarray], texts: Sequence[str], batch_size: int,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Embed in batches of similar-length texts (less padding), returned in the input order."""
    texts = list(texts)
    if not texts:
        return np.zeros((0, 384), np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: np.ndarray | None = None
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        vecs = embed_batch([texts[i] for i in idx])
        if out is None:
            out = np.empty((len(texts), vecs.shape[1]), np.float32)
        out[idx] = vecs
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    assert out is not None
    return out


def embed_sorted_sets(embed_batch: Callable[[list[str]], dict[str, np.ndarray]], texts: Sequence[str],
                      batch_size: int) -> dict[str, np.ndarray]:
    """embed_sorted for a batch function answering several feature sets at once."""
    texts = list(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        for name, vecs in embed_batch([texts[i] for i in idx]).items():
            if name not in out:
                out[name] = np.empty((len(texts), vecs.shape[1]), np.float32)
            out[name][idx] = vecs
    return out


def make_encoder(target: str | None = None) -> Embedder:
    return RemoteEncoder(target) if target else LocalEncoder()


# -- cache ---------------------------------------------------------------------------------------
def cache_path(dataset: str, split: str, cache_dir: Path = DEFAULT_CACHE_DIR, feature_set: str = DEFAULT) -> Path:
    suffix = "" if feature_set == DEFAULT else f".{feature_set}"
    return Path(cache_dir) / dataset / f"{split}{suffix}.npz"


def _read_cache(path: Path, sha: str | None = None) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception:  # noqa: BLE001 - a torn or foreign file is simply recomputed
        return None
    if sha is not None and str(data.get("source_sha256", "")) != sha:
        return None
    return data


def _write_cache(path: Path, X: np.ndarray, texts: list[str], labels: list[str], sha: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # the cache is shared: no two writers' tmp meet
    np.savez(tmp, X=X.astype(np.float32), texts=np.array(texts, dtype=str), labels=np.array(labels, dtype=str),
             source_sha256=np.array(sha))
    os.replace(tmp, path)


def _reuse_pool(dataset: str, split: str, cache_dir: Path, feature_set: str) -> dict[str, np.ndarray]:
    """Vectors already computed for the same texts (CLINC150 domains are subsets of CLINC150)."""
    if not dataset.startswith("clinc150/domains/"):
        return {}
    data = _read_cache(cache_path("clinc150", split, cache_dir, feature_set))
    if data is None:
        return {}
    return {t: v for t, v in zip(data["texts"].tolist(), data["X"])}


def load_split(dataset: str, split: str, *, cache_dir: Path = DEFAULT_CACHE_DIR,
               datasets_root: Path = DATASETS_ROOT, encoder: Embedder | None = None,
               log: Callable[[str], None] | None = None,
               feature_set: str = DEFAULT) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(X [N,dim] float32, labels [N] str, texts) of `feature_set` for one split, embedding and caching
    it if needed. A miss embeds every feature set of KNOWN in one pass and caches them all.

    `encoder` maps texts to vectors (LocalEncoder loads its model lazily, on the first cache miss);
    None means a fresh in-process LocalEncoder.
    """
    if feature_set not in KNOWN:
        raise ValueError(f"unknown feature set {feature_set!r} (one of {KNOWN})")
    src = Path(datasets_root) / dataset / f"{split}.jsonl"
    sha = file_sha256(src)
    data = _read_cache(cache_path(dataset, split, cache_dir, feature_set), sha)
    if data is not None:
        return data["X"], data["labels"], data["texts"].tolist()
    texts, labels = read_jsonl(src)
    pools = {name: _reuse_pool(dataset, split, cache_dir, name) for name in KNOWN}
    missing = [i for i, t in enumerate(texts) if not all(t in pool for pool in pools.values())]
    computed: dict[str, np.ndarray] = {}
    if missing:
        if encoder is None:
            encoder = LocalEncoder()
        started = time.perf_counter()
        computed = encoder.features([texts[i] for i in missing])
        if log:
            dt = time.perf_counter() - started
            log(f"{dataset}/{split}: embedded {len(missing)} texts ({', '.join(KNOWN)}) in {dt:.1f}s "
                f"({len(missing) / max(dt, 1e-9):.0f}/s)"
                + (f", reused {len(texts) - len(missing)}" if len(missing) < len(texts) else ""))
    elif log:
        log(f"{dataset}/{split}: reused all {len(texts)} vectors")
    out = None
    for name in KNOWN:
        vecs = computed.get(name)
        dim = vecs.shape[1] if vecs is not None else len(next(iter(pools[name].values())))
        X = np.empty((len(texts), dim), np.float32)
        if vecs is not None:
            X[missing] = vecs
        reused = sorted(set(range(len(texts))) - set(missing))
        for i in reused:
            X[i] = pools[name][texts[i]]
        _write_cache(cache_path(dataset, split, cache_dir, name), X, texts, labels, sha)
        if name == feature_set:
            out = X
    assert out is not None
    return out, np.array(labels, dtype=str), texts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="*", help="dataset folders (e.g. clinc150 trec clinc150/domains/banking); default all")
    ap.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)
    ap.add_argument("--datasets-root", type=Path, default=DATASETS_ROOT)
    ap.add_argument("--target", default=None, help="host:port of a running embedder service (default: in-process model)")
    args = ap.parse_args(argv)

    if not args.datasets_root.is_dir():
        print(f"no datasets at {args.datasets_root}; nothing to do", file=sys.stderr)
        return 1
    names = args.datasets or all_dataset_names()
    encoder = make_encoder(args.target)  # the in-process model loads lazily, on the first cache miss
    for name in names:
        splits = available_splits(name, args.datasets_root)
        if not splits:
            print(f"skip {name}: no {args.datasets_root / name}/*.jsonl", flush=True)
            continue
        for split in splits:
            for feature_set in KNOWN:  # the first call embeds every set (one pass); the others read the cache
                X, _, _ = load_split(name, split, cache_dir=args.cache_dir, datasets_root=args.datasets_root,
                                     encoder=encoder, log=lambda m: print(m, flush=True), feature_set=feature_set)
                print(f"{name}/{split}: {feature_set} {X.shape} -> "
                      f"{cache_path(name, split, args.cache_dir, feature_set)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
