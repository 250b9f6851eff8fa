"""The head servable (a trained artifact answering over embeddings) and its version manager.

LitServe-style hooks: `load` an artifact, `predict` on a batch of vectors. The manager
(TF Serving's name for it) owns which version is served: a switch loads the new version fully
first, then swaps one reference, so a request in flight finishes on the version it started with.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from heads import metrics
from heads.api import Prediction
from heads.artifacts import HeadArtifact, load_artifact, resolve_version
from heads.config import ServingConfig

log = logging.getLogger("polyhead.head.servable")


class HeadServable:
    def __init__(self, artifact: HeadArtifact, serving: ServingConfig):
        self.artifact = artifact
        self.serving = serving
        self.labels = np.array(artifact.model.labels)

    @classmethod
    def load(cls, models_dir: Path, name: str, version: str, serving: ServingConfig) -> "HeadServable":
        return cls(load_artifact(models_dir, name, version), serving)

    @property
    def name(self) -> str:
        return self.artifact.name

    @property
    def version(self) -> str:
        return self.artifact.version

    @property
    def fingerprint(self) -> str:
        return self.artifact.embedder_fingerprint

    @property
    def feature_set(self) -> str:
        return self.artifact.feature_set

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """[texts, labels] probabilities, columns in the order of `labels`."""
        return self.artifact.model.predict_proba(vectors)

    def predict(self, vectors: np.ndarray) -> list[Prediction]:
        proba = self.probabilities(vectors)
        k = min(self.serving.top_k, proba.shape[1])
        order = np.argsort(-proba, axis=1)[:, :k]
        out = []
        for row, idx in zip(proba, order):
            top = [{"label": str(self.labels[i]), "probability": float(row[i])} for i in idx]
            best = top[0]
            abstain = best["probability"] < self.serving.abstain_threshold
            out.append(Prediction(self.serving.abstain_label if abstain else best["label"], best["probability"], top, abstain))
        return out


class ServableManager:
    """Serves one version at a time; `sync()` follows the configured version spec (pin or latest)."""

    def __init__(self, models_dir: Path, name: str, serving: ServingConfig):
        self.models_dir = models_dir
        self.name = name
        self.serving = serving
        self.version_spec = serving.version
        self.current: HeadServable | None = None
        self.last_error: str | None = None
        self._lock = threading.Lock()

    def sync(self) -> bool:
        """Load the version the spec points to if it is not the one served; True if it switched."""
        with self._lock:
            try:
                wanted = resolve_version(self.models_dir, self.name, self.version_spec)
                if self.current is not None and self.current.version == wanted:
                    return False
                servable = HeadServable.load(self.models_dir, self.name, wanted, self.serving)
            except Exception as exc:  # noqa: BLE001 - keep serving what we have; readiness reports the error
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("cannot load version", extra={"head": self.name, "spec": self.version_spec, "error": self.last_error})
                return False
            previous, self.current, self.last_error = self.current, servable, None
        if previous is not None:
            metrics.VERSION.remove(self.name, previous.version)
        metrics.VERSION.labels(self.name, servable.version).set(1)
        log.info("serving version", extra={"head": self.name, "version": servable.version,
                                            "previous": previous.version if previous else None})
        return True

    def switch(self, version_spec: str) -> HeadServable:
        """Pin a version (rollback/upgrade) or go back to following `latest`."""
        resolve_version(self.models_dir, self.name, version_spec)  # NotFoundError -> 404 before any change
        self.version_spec = version_spec
        self.sync()
        if self.last_error:
            raise RuntimeError(self.last_error)
        return self.current
