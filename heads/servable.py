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
from heads.artifacts import LATEST, HeadArtifact, load_artifact, resolve_version
from heads.config import ServingConfig
from heads.roles import read_state, state_stamp

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
    """Serves one champion and shadows its challengers; `sync()` follows the version spec: `latest`
    follows the head's serving state (heads/roles.py: its champion; old layouts: the `latest`
    pointer), a pinned version is served whatever the state says. Challengers come from the state
    either way (never the version served). A challenger that fails to load, or is of another feature
    set or encoder than the champion, is left out of shadow and flagged in `challenger_errors`."""

    def __init__(self, models_dir: Path, name: str, serving: ServingConfig):
        self.models_dir = models_dir
        self.name = name
        self.serving = serving
        self.version_spec = serving.version
        self.current: HeadServable | None = None
        self.challengers: tuple[HeadServable, ...] = ()
        self.challenger_errors: dict[str, str] = {}  # version -> why it is not shadowed
        self.last_error: str | None = None
        self._stamp: tuple | None = None
        self._lock = threading.Lock()

    def sync(self, force: bool = False) -> bool:
        """Load what the spec and the state point to if it is not what is served; True if the champion
        switched. Unchanged files (mtime, size) are not read again unless `force`."""
        with self._lock:
            stamp = state_stamp(self.models_dir, self.name)
            if stamp == self._stamp and not force and self.current is not None:
                return False
            try:
                state = read_state(self.models_dir, self.name)
                wanted = state.champion if self.version_spec == LATEST else self.version_spec
                if wanted is None:
                    wanted = resolve_version(self.models_dir, self.name, LATEST)  # NotFoundError says why
                wanted = resolve_version(self.models_dir, self.name, wanted)
                if self.current is not None and self.current.version == wanted:
                    champion = self.current
                else:
                    champion = HeadServable.load(self.models_dir, self.name, wanted, self.serving)
            except Exception as exc:  # noqa: BLE001 - keep serving what we have; readiness reports the error
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("cannot load version", extra={"head": self.name, "spec": self.version_spec, "error": self.last_error})
                return False
            self._load_challengers([v for v in state.challengers if v != champion.version], champion)
            previous, self.current, self.last_error = self.current, champion, None
            self._stamp = stamp
        if previous is champion:
            return False
        if previous is not None:
            metrics.VERSION.remove(self.name, previous.version)
        metrics.VERSION.labels(self.name, champion.version).set(1)
        log.info("serving version", extra={"head": self.name, "version": champion.version,
                                            "previous": previous.version if previous else None,
                                            "challengers": [c.version for c in self.challengers]})
        return True

    def _load_challengers(self, versions: list[str], champion: HeadServable) -> None:
        loaded = {c.version: c for c in self.challengers}
        if self.current is not None:
            loaded.setdefault(self.current.version, self.current)  # a demoted champion is already in memory
        out, errors = [], {}
        for version in versions:
            try:
                servable = loaded.get(version) or HeadServable.load(self.models_dir, self.name, version, self.serving)
            except Exception as exc:  # noqa: BLE001 - a bad challenger never stops the champion
                errors[version] = f"cannot load: {type(exc).__name__}: {exc}"
                continue
            if servable.feature_set != champion.feature_set or servable.fingerprint != champion.fingerprint:
                errors[version] = (f"not shadowed: trained on feature set {servable.feature_set!r} "
                                   f"({servable.fingerprint}), the champion on {champion.feature_set!r} "
                                   f"({champion.fingerprint}); shadowing it would cost a second embedding")
                continue
            out.append(servable)
        for version, why in errors.items():
            if self.challenger_errors.get(version) != why:
                log.warning("challenger not shadowed", extra={"head": self.name, "version": version, "error": why})
        self.challengers = tuple(out)
        self.challenger_errors = errors

    def drop_challenger(self, version: str, error: str) -> None:
        """A challenger that failed while shadowing: out of shadow until the head's roles change (or a
        reload). Called on the event loop: no lock (sync may hold it while loading), one tuple swap."""
        self.challengers = tuple(c for c in self.challengers if c.version != version)
        self.challenger_errors = {**self.challenger_errors, version: f"dropped from shadow: {error}"}
        metrics.SHADOW_FAILED.labels(self.name).inc()
        log.warning("challenger dropped from shadow", extra={"head": self.name, "version": version, "error": error})

    def switch(self, version_spec: str) -> HeadServable:
        """Pin a version (rollback/upgrade) or go back to following the champion (`latest`)."""
        resolve_version(self.models_dir, self.name, version_spec)  # NotFoundError -> 404 before any change
        self.version_spec = version_spec
        self.sync(force=True)
        if self.last_error:
            raise RuntimeError(self.last_error)
        return self.current
