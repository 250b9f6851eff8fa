"""Head families are plug-ins: a toy third family, defined and registered here, goes through the
normal selection, the config -> artifact pipeline and the head service, like mlp and logreg."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
import yaml

from heads.artifacts import load_artifact
from heads.config import HeadConfigError, load_head_config
from heads.model import HeadModel
from heads.training import families
from heads.training.family_api import Candidate, Final, FinalData, SearchData
from heads.training.fit import train_head
from heads.training.params import TrainParams
from tests.unit.conftest import HEAD, HEAD_CONFIGS, TrainedHead, asgi_client, head_app, train_in_process


def class_centroids(X: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    sums = np.zeros((n_classes, X.shape[1]))
    np.add.at(sums, y, X)
    return sums / np.maximum(np.bincount(y, minlength=n_classes), 1)[:, None]


def centroid_proba(X: np.ndarray, mu: np.ndarray, temperature: float) -> np.ndarray:
    z = -((X[:, None, :] - mu[None]) ** 2).sum(axis=-1) / temperature
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


class NearestCentroid:
    """softmax(-|x - mu_c|^2 / T): linear in x (the |x|^2 term is the same for every class), so it
    is served as a "logreg" HeadModel with W = 2 mu^T / T, b = -|mu|^2 / T."""

    name = "centroid"
    temperatures = (0.1, 1.0)

    def default_params(self, p: TrainParams) -> dict[str, Any] | None:
        return None  # a challenger: it must clearly beat the default candidate

    def search(self, data: SearchData) -> list[Candidate]:
        X, y, C = data.X_fit.astype(np.float64), data.y_fit, data.n_classes
        out = []
        for t in self.temperatures:
            t0 = time.perf_counter()
            if data.folds is not None:  # out-of-fold: each fold scored by the centroids of the others
                proba = np.empty((len(y), C), np.float32)
                for k in np.unique(data.folds):
                    fold = data.folds == k
                    proba[fold] = centroid_proba(X[fold], class_centroids(X[~fold], y[~fold], C), t)
                mu = class_centroids(X, y, C)
            else:
                mu = class_centroids(X, y, C)
                proba = centroid_proba(data.X_sel, mu, t) if data.X_sel is not None else None
            out.append(Candidate(self.name, {"temperature": t}, data.score(proba), proba, mu,
                                 time.perf_counter() - t0, {"classes": C}))
        return out

    def final(self, chosen: Candidate, data: FinalData) -> Final:
        t = chosen.params["temperature"]
        mu = class_centroids(data.X.astype(np.float64), data.y, data.n_classes) if data.refit else chosen.fitted
        W, b = 2 * mu.T / t, -(mu ** 2).sum(axis=1) / t + data.shift
        return Final(lambda meta: HeadModel("logreg", {"W": W, "b": b}, data.labels, meta=meta), data.p,
                     {"temperature": t})


@pytest.fixture
def centroid_family():
    family = families.register(NearestCentroid())
    try:
        yield family
    finally:
        families.unregister(family.name)


def few_shot(n_per_class: int, dim: int = 128, classes: int = 4, sample_seed: int = 0):
    """Isotropic Gaussian classes close together, few examples each: nearest centroid is the Bayes
    rule here, while LogisticRegression(C=10) fits the noise (measured: 0.52 vs 0.83 accuracy)."""
    centers = np.random.default_rng(0).normal(size=(classes, dim)) * 0.9 / np.sqrt(dim)
    rng = np.random.default_rng([0, sample_seed])
    X = np.concatenate([c + rng.normal(size=(n_per_class, dim)) * 3 / np.sqrt(dim) for c in centers])
    return X.astype(np.float32), [f"k{i}" for i in np.repeat(np.arange(classes), n_per_class)]


def test_a_registered_family_is_searched_selected_and_served_like_the_builtin_ones(centroid_family, tmp_path):
    X, y = few_shot(6)
    Xv, yv = few_shot(150, sample_seed=1)
    p = TrainParams(families=["mlp", "logreg", "centroid"], logreg_c_grid=[10.0], epochs_max=5, cv_pool_val=False)
    result = train_head(X, y, Xv, yv, params=p)
    sel = result.selection
    assert sel["default"] == {"family": "logreg", "C": 10.0}  # the baseline stays the one to beat
    assert [c["family"] for c in sel["candidates"]] == ["mlp", "logreg", "centroid", "centroid"]
    assert [c["params"] for c in sel["candidates"][2:]] == [{"temperature": 0.1}, {"temperature": 1.0}]
    assert all(c["classes"] == 4 for c in sel["candidates"][2:])  # the family's own record travels
    logreg_score = sel["candidates"][1]["val_score"]
    assert sel["chosen"]["family"] == "centroid" and result.val_score >= logreg_score + 0.1
    assert result.chosen["family"] == "centroid" and "temperature" in result.chosen
    # the served model is nearest centroid (refitted on train + val), saved and loaded as any head
    loaded = HeadModel.load(result.model.save(tmp_path / "weights.npz"))
    mu = class_centroids(np.concatenate([X, Xv]).astype(np.float64),
                         np.array([int(v[1]) for v in y + yv]), 4)
    Xt, _ = few_shot(50, sample_seed=2)
    nearest = ((Xt[:, None, :].astype(np.float64) - mu[None]) ** 2).sum(axis=-1).argmin(axis=1)
    assert loaded.predict(Xt) == [f"k{i}" for i in nearest]
    assert loaded.meta["selection"] == sel


def test_an_unknown_family_fails_config_validation_by_name(tmp_path):
    config = yaml.safe_load((HEAD_CONFIGS / f"{HEAD}.yaml").read_text())
    config["training"] = {"families": ["logreg", "centroid"]}  # not registered here
    path = tmp_path / f"{HEAD}.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(HeadConfigError, match=r"training\.families.*unknown head families \['centroid'\]"):
        load_head_config(path)


async def test_a_registered_family_trains_from_a_config_and_the_head_serves_it(centroid_family, embedder, tmp_path):
    config = yaml.safe_load((HEAD_CONFIGS / f"{HEAD}.yaml").read_text())
    for split in ("train", "test"):
        config["dataset"][split] = str((HEAD_CONFIGS / config["dataset"][split]).resolve())
    config["training"] = {"families": ["centroid"]}
    path = tmp_path / "configs" / f"{HEAD}.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(config))
    models = tmp_path / "models"
    report = await asyncio.to_thread(train_in_process, path, models, embedder.target)
    artifact = load_artifact(models, HEAD)
    assert artifact.metrics["selection"]["chosen"]["family"] == "centroid"
    assert artifact.manifest["params"]["families"] == ["centroid"] and artifact.model.head_type == "logreg"
    assert report.metrics["test"]["accuracy"] > 0.4  # 5 labels: chance 0.2
    trained = TrainedHead(path, models, report.version, artifact.model.labels, artifact.embedder_fingerprint)
    async with asgi_client(head_app(trained, embedder.target, tmp_path)) as client:
        reply = await client.post("/predict", json={"texts": ["invoice charged twice refund payment card billing"]})
        assert reply.status_code == 200, reply.text
        assert reply.json()["version"] == report.version
        assert reply.json()["predictions"][0]["label"] == "billing"
