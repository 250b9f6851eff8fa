"""Drift: what a head's production traffic looks like next to its training data.

Training stores a `DriftReference` beside the weights (drift.npz): the label prior, the
confidence (top probability) histogram and mean of held-out predictions, L2-normalised per-class
centroids of the training embeddings and the quantiles of each training text's cosine similarity
to its nearest centroid. Serving keeps a bounded rolling window of the same statistics
(`DriftMonitor`) from the vectors the head already has, and scores it:

- label_shift_js: Jensen-Shannon distance (base 2, in [0, 1]) between the window's predicted-label
  distribution and the training prior, less the distance a window of that size shows by sampling
  noise alone (`debiased_js`);
- confidence_shift: window mean confidence minus the reference mean (signed; negative = the head
  is less sure than on held-out data); flagged on its absolute value;
- ood_rate: share of window texts whose highest cosine similarity to any training centroid is
  below the reference's `ood_percentile` quantile (by construction about that share of the
  training texts is below it).

Numpy only and cheap: one [N, D] x [D, C] matmul and a few O(N + C) updates per request.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("polyhead.head.drift")

DRIFT_FILE = "drift.npz"
MAX_WINDOW = 1_000_000  # the largest drift window a head config may set (heads/config.py)
CONFIDENCE_EDGES = np.linspace(0.0, 1.0, 11)  # the same 10 buckets as the report's confidence histogram
SIMILARITY_LEVELS = np.array([0, 0.5, 1, 2, 5, 10, 25, 50, 75, 90, 95, 99, 100], np.float64)  # percentiles stored
SCORE_NAMES = ("label_shift_js", "confidence_shift", "ood_rate")


@dataclass(frozen=True)
class DriftReference:
    """The training-time side of drift (one per artifact version)."""

    labels: list[str]
    label_prior: np.ndarray  # [C] training label shares
    confidence_counts: np.ndarray  # [10] held-out top probabilities per CONFIDENCE_EDGES bucket
    confidence_mean: float
    centroids: np.ndarray  # [C, D] float32, L2-normalised class means of the training embeddings
    similarity_quantiles: np.ndarray  # at SIMILARITY_LEVELS: training texts' cosine to the nearest centroid
    meta: dict = field(default_factory=dict)  # confidence_source, n_train, n_confidence
    # SamplingNoise of label_prior at log-spaced window sizes up to MAX_WINDOW: simulated at training
    # time, so serving need not import numpy.random (~7 MiB per head process). None in older artifacts.
    noise_sizes: np.ndarray | None = None
    noise: np.ndarray | None = None

    def ood_threshold(self, percentile: float) -> float:
        """The similarity below which `percentile` % of the training texts fall (interpolated)."""
        return float(np.interp(percentile, SIMILARITY_LEVELS, self.similarity_quantiles))

    def save(self, path: Path) -> None:
        np.savez(path, labels=np.array(self.labels, dtype=str), label_prior=self.label_prior.astype(np.float64),
                 confidence_edges=CONFIDENCE_EDGES, confidence_counts=self.confidence_counts.astype(np.int64),
                 confidence_mean=np.float64(self.confidence_mean), centroids=self.centroids.astype(np.float32),
                 similarity_levels=SIMILARITY_LEVELS, similarity_quantiles=self.similarity_quantiles.astype(np.float64),
                 meta=np.array(json.dumps(self.meta, sort_keys=True)),
                 **({"noise_sizes": self.noise_sizes, "noise": self.noise} if self.noise is not None else {}))

    @classmethod
    def load(cls, path: Path) -> "DriftReference":
        with np.load(path, allow_pickle=False) as z:
            levels = z["similarity_levels"]
            quantiles = z["similarity_quantiles"]
            if not np.array_equal(levels, SIMILARITY_LEVELS):  # written by another layout: re-sample onto ours
                quantiles = np.interp(SIMILARITY_LEVELS, levels, quantiles)
            return cls(labels=z["labels"].tolist(), label_prior=z["label_prior"],
                       confidence_counts=z["confidence_counts"], confidence_mean=float(z["confidence_mean"]),
                       centroids=np.ascontiguousarray(z["centroids"], np.float32),
                       similarity_quantiles=quantiles, meta=json.loads(str(z["meta"])),
                       noise_sizes=z["noise_sizes"] if "noise" in z.files else None,
                       noise=z["noise"] if "noise" in z.files else None)


def reference_confidence_mean(version_dir: Path) -> float | None:
    """A version's held-out mean top probability (its drift reference), without loading the rest."""
    path = Path(version_dir) / DRIFT_FILE
    try:
        with np.load(path, allow_pickle=False) as z:
            return float(z["confidence_mean"])
    except (OSError, KeyError, ValueError):
        return None


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (log base 2, in [0, 1]) of the rows of p and q (counts or shares).
    Finite without smoothing: the mixture is positive wherever either side is."""
    p = np.atleast_2d(np.asarray(p, np.float64))
    q = np.atleast_2d(np.asarray(q, np.float64))
    p = p / p.sum(axis=-1, keepdims=True)
    q = q / q.sum(axis=-1, keepdims=True)
    m = 0.5 * (p + q)

    safe_m = np.where(m > 0, m, 1.0)

    def kl(a: np.ndarray) -> np.ndarray:
        return (a * np.log2(np.where(a > 0, a, 1.0) / safe_m)).sum(axis=-1)  # 0 log 0 = 0

    return np.maximum(0.0, 0.5 * kl(p) + 0.5 * kl(q))


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (sqrt of the divergence, log base 2): 0 same, 1 disjoint."""
    return float(np.sqrt(js_divergence(p, q)[0]))


class SamplingNoise:
    """How far (JS divergence) a window of n texts drawn from the prior itself is from it, on average.

    With many classes and a small window that noise is larger than a real shift (150 classes,
    200 texts: distance ~0.3), so the score subtracts it: sqrt(max(0, JSD - noise(n))), an
    estimate of the shift itself whatever the window size. Simulated once per reference (seeded)
    at log-spaced window sizes, interpolated in between; exact for sparse counts, where the
    chi-square approximation (K-1)/(8 n ln 2) is not."""

    def __init__(self, prior: np.ndarray, max_n: int, draws: int = 64, seed: int = 0, points: int = 24):
        rng = np.random.default_rng(seed)
        self.sizes = np.unique(np.geomspace(1, max(2, max_n), points).round().astype(np.int64))
        self.noise = np.array([js_divergence(rng.multinomial(n, prior, size=draws), prior).mean() for n in self.sizes])

    @classmethod
    def of_reference(cls, reference: DriftReference, window: int) -> "SamplingNoise":
        """The reference's table when it has one that reaches `window`; else simulated here (older
        artifacts: imports numpy.random)."""
        if reference.noise is not None and reference.noise_sizes[-1] >= window:
            table = cls.__new__(cls)
            table.sizes, table.noise = reference.noise_sizes, reference.noise
            return table
        return cls(reference.label_prior, window)

    def __call__(self, n: int) -> float:
        return float(np.interp(np.log(max(n, 1)), np.log(self.sizes), self.noise))


def debiased_js(divergence: float, noise: float) -> float:
    return float(np.sqrt(max(0.0, divergence - noise)))


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    v = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.maximum(norms, 1e-12)


def nearest_centroid_similarity(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row to its nearest centroid (centroids already unit length).
    The rows are normalised after the matmul: N divisions instead of N x D."""
    v = np.asarray(vectors, np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", v, v))
    return (v @ centroids.T).max(axis=1) / np.maximum(norms, 1e-12)


@dataclass(frozen=True)
class DriftThresholds:
    label_shift_js: float
    confidence_shift: float
    ood_rate: float
    window: int
    min_window: int
    ood_percentile: float


class _Window:
    """Ring buffer of the last `size` texts' predicted label, confidence and OOD bit, with running
    sums so that adding texts costs O(new texts + classes), not O(window)."""

    def __init__(self, size: int, n_classes: int):
        self.size = size
        self.labels = np.zeros(size, np.int64)
        self.confidence = np.zeros(size, np.float64)
        self.ood = np.zeros(size, bool)
        self.label_counts = np.zeros(n_classes, np.int64)
        self.confidence_sum = 0.0
        self.ood_count = 0
        self.count = 0  # texts in the window (<= size)
        self.next = 0  # slot the next text goes to
        self.seen = 0  # texts observed since the window was (re)started

    def add(self, labels: np.ndarray, confidence: np.ndarray, ood: np.ndarray) -> None:
        n = len(labels)
        if n > self.size:  # only the newest `size` texts can stay
            labels, confidence, ood = labels[-self.size:], confidence[-self.size:], ood[-self.size:]
            self.seen += n - self.size
            n = self.size
        slots = (self.next + np.arange(n)) % self.size
        evicted = max(0, self.count + n - self.size)  # the slots about to be overwritten were full
        if evicted:
            old = slots[:evicted] if self.count == self.size else slots[n - evicted:]
            self.label_counts -= np.bincount(self.labels[old], minlength=len(self.label_counts))
            self.confidence_sum -= float(self.confidence[old].sum())
            self.ood_count -= int(self.ood[old].sum())
        self.labels[slots], self.confidence[slots], self.ood[slots] = labels, confidence, ood
        self.label_counts += np.bincount(labels, minlength=len(self.label_counts))
        self.confidence_sum += float(confidence.sum())
        self.ood_count += int(ood.sum())
        self.count = min(self.size, self.count + n)
        self.next = int((self.next + n) % self.size)
        self.seen += n

    def confidence_histogram(self) -> list[int]:
        # the buffer fills slots 0.. in order before it wraps, so the first `count` slots are the window
        counts, _ = np.histogram(self.confidence[:self.count], bins=CONFIDENCE_EDGES)
        return counts.tolist()


class DriftMonitor:
    """A head's rolling drift window against the served version's reference.

    `observe` is called once per predict with the served version; a new version restarts the
    window (its reference and classes differ). Scores are recomputed once per `score_every`
    texts (1 % of the window; O(classes)), and always before a read. `on_change(flagged, reasons, scores)` is called
    when the flag flips (not per request), e.g. to log a warning."""

    def __init__(self, head: str, thresholds: DriftThresholds, on_change=None):
        self.head = head
        self.thresholds = thresholds
        self.on_change = on_change
        self._lock = threading.Lock()
        self._version: str | None = None
        self._reference: DriftReference | None = None
        self._label_index: dict[str, int] = {}
        self._ood_threshold = float("nan")
        self._window: _Window | None = None
        self.flagged = False
        self.reasons: list[str] = []
        self.scores: dict[str, float | None] = dict.fromkeys(SCORE_NAMES)

    # -- updates (serving path) --------------------------------------------------------------------
    def _restart(self, version: str, reference: DriftReference | None) -> None:
        self._version, self._reference = version, reference
        self._window = _Window(self.thresholds.window, len(reference.labels)) if reference else None
        self._pending = 0  # texts added since the last scoring
        self._score_every = max(1, self.thresholds.window // 100)
        self._label_index = {label: i for i, label in enumerate(reference.labels)} if reference else {}
        self._ood_threshold = reference.ood_threshold(self.thresholds.ood_percentile) if reference else float("nan")
        self._noise = SamplingNoise.of_reference(reference, self.thresholds.window) if reference else None
        self.label_shift_raw: float | None = None
        self.scores = dict.fromkeys(SCORE_NAMES)
        self._set_flag(False, [])

    def observe(self, version: str, reference: DriftReference | None, vectors: np.ndarray,
                labels: list[str], confidence: list[float]) -> bool:
        """Add one request's texts: predicted (top, not abstain) labels, top probabilities, vectors.
        True when the scores changed (recomputed, or reset by a new version)."""
        with self._lock:
            restarted = version != self._version
            if restarted:
                self._restart(version, reference)
            if self._reference is None or not labels:
                return restarted
            idx = np.fromiter((self._label_index.get(label, -1) for label in labels), np.int64, len(labels))
            conf = np.asarray(confidence, np.float64)
            ood = nearest_centroid_similarity(vectors, self._reference.centroids) < self._ood_threshold
            if idx.min() < 0:  # a label outside the reference cannot come from the same artifact; be safe
                known = idx >= 0
                idx, conf, ood = idx[known], conf[known], ood[known]
            self._window.add(idx, conf, ood)
            self._pending += len(labels)
            if self._pending < self._score_every:
                return restarted
            self._score()
            return True

    def _score(self) -> None:
        w, ref, t = self._window, self._reference, self.thresholds
        self._pending = 0
        if w.count == 0:
            return
        divergence = float(js_divergence(w.label_counts, ref.label_prior)[0])
        self.label_shift_raw = float(np.sqrt(divergence))
        self.scores = {"label_shift_js": debiased_js(divergence, self._noise(w.count)),
                       "confidence_shift": w.confidence_sum / w.count - ref.confidence_mean,
                       "ood_rate": w.ood_count / w.count}
        reasons = []
        if w.count >= t.min_window:
            s = self.scores
            if s["label_shift_js"] > t.label_shift_js:
                reasons.append(f"label_shift_js {s['label_shift_js']:.3f} > {t.label_shift_js}")
            if abs(s["confidence_shift"]) > t.confidence_shift:
                reasons.append(f"|confidence_shift| {abs(s['confidence_shift']):.3f} > {t.confidence_shift}")
            if s["ood_rate"] > t.ood_rate:
                reasons.append(f"ood_rate {s['ood_rate']:.3f} > {t.ood_rate}")
        self._set_flag(bool(reasons), reasons)

    def _set_flag(self, flagged: bool, reasons: list[str]) -> None:
        changed = flagged != self.flagged
        self.flagged, self.reasons = flagged, reasons
        if changed and self.on_change is not None:
            self.on_change(flagged, list(reasons), dict(self.scores))

    # -- reads (endpoints) -------------------------------------------------------------------------
    def _current(self, version: str | None, reference: DriftReference | None) -> None:
        """Scores for the version served now (under the lock): a new version restarts the window."""
        if version != self._version:
            self._restart(version, reference)
        elif self._pending:
            self._score()

    @property
    def window_count(self) -> int:
        return self._window.count if self._window is not None else 0

    def summary(self, version: str | None, reference: DriftReference | None) -> dict:
        """The short form for /info and /v1/models."""
        with self._lock:
            self._current(version, reference)
            return {"flagged": self.flagged, "scores": _rounded(self.scores), "available": self._reference is not None}

    def report(self, version: str | None, reference: DriftReference | None) -> dict:
        """GET /drift. `version`/`reference`: what is served now (the window may not have seen it yet)."""
        with self._lock:
            self._current(version, reference)
            t, ref, w = self.thresholds, self._reference, self._window
            body = {"head": self.head, "version": version, "window": w.count if w else 0,
                    "window_size": t.window, "min_window": t.min_window, "scores": _rounded(self.scores),
                    "reference": {"ood_rate": None, "confidence_mean": None},
                    "thresholds": {"label_shift_js": t.label_shift_js, "confidence_shift": t.confidence_shift,
                                   "ood_rate": t.ood_rate},
                    "flagged": self.flagged, "reasons": list(self.reasons), "available": ref is not None}
            if ref is None:
                return body
            body["reference"] = {
                # by construction: the share of training texts under the threshold is the percentile
                "ood_rate": round(t.ood_percentile / 100, 6), "confidence_mean": round(ref.confidence_mean, 6),
                "ood_percentile": t.ood_percentile, "ood_similarity_threshold": round(self._ood_threshold, 6),
                "label_prior": {label: round(float(p), 6) for label, p in zip(ref.labels, ref.label_prior)},
                "confidence_histogram": {"edges": CONFIDENCE_EDGES.round(2).tolist(),
                                         "counts": ref.confidence_counts.astype(int).tolist()},
                "confidence_source": ref.meta.get("confidence_source"),
            }
            if w.count:
                body["current"] = {
                    "texts_seen": w.seen, "confidence_mean": round(w.confidence_sum / w.count, 6),
                    "label_shift_js_raw": round(self.label_shift_raw, 6),
                    "label_distribution": {label: int(c) for label, c in zip(ref.labels, w.label_counts) if c},
                    "confidence_histogram": {"edges": CONFIDENCE_EDGES.round(2).tolist(),
                                             "counts": w.confidence_histogram()},
                }
            return body


def _rounded(scores: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (None if v is None else round(float(v), 6)) for k, v in scores.items()}
