"""Drift math on synthetic vectors: the reference, the rolling window, the scores and the flag."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from heads.artifacts import ARTIFACT_FORMAT_VERSION, load_artifact, write_artifact
from heads.drift import (CONFIDENCE_EDGES, DriftMonitor, DriftReference, DriftThresholds, SamplingNoise, _Window,
                         debiased_js, js_distance, js_divergence, nearest_centroid_similarity)
from heads.training.drift_reference import build_reference
from heads.training.fit import train_head
from heads.training.params import TrainParams
from tests.unit.heads.training.synthetic import FAST, clusters

LABELS = {"a": 150, "b": 100, "c": 50}
THRESHOLDS = DriftThresholds(label_shift_js=0.3, confidence_shift=0.15, ood_rate=0.25, window=200, min_window=50,
                             ood_percentile=1.0)


def fake_reference(n_classes: int = 3, dim: int = 8, confidence_mean: float = 0.9) -> DriftReference:
    centroids = np.eye(n_classes, dim, dtype=np.float32)
    return DriftReference([f"l{i}" for i in range(n_classes)], np.full(n_classes, 1 / n_classes),
                          np.array([0] * 9 + [10]), confidence_mean, centroids,
                          np.linspace(0.5, 1.0, 13), {"confidence_source": "given"})


@pytest.fixture(scope="module")
def trained():
    X, y = clusters(LABELS, seed=3, spread=1.2)
    result = train_head(X, y, params=FAST)
    ref = build_reference(X, y, result.model.labels, result.val_proba, confidence_source=result.val_source)
    return result, ref


def feed(monitor: DriftMonitor, result, ref: DriftReference, X: np.ndarray, version: str = "v1", batch: int = 32):
    for s in range(0, len(X), batch):
        proba = result.model.predict_proba(X[s:s + batch])
        monitor.observe(version, ref, X[s:s + batch], [result.model.labels[i] for i in proba.argmax(1)],
                        proba.max(1).tolist())


def test_js_distance_is_zero_for_equal_one_for_disjoint_and_symmetric():
    p, q = np.array([0.2, 0.3, 0.5]), np.array([0.5, 0.3, 0.2])
    assert js_distance(p, p) == pytest.approx(0.0, abs=1e-9)
    assert js_distance(np.array([1.0, 0]), np.array([0, 1.0])) == pytest.approx(1.0)
    assert js_distance(p, q) == pytest.approx(js_distance(q, p)) and 0 < js_distance(p, q) < 1


def test_label_shift_score_removes_sampling_noise_but_keeps_a_real_shift():
    rng = np.random.default_rng(0)
    prior = np.full(150, 1 / 150)
    noise = SamplingNoise(prior, max_n=1000)
    samples = [np.bincount(rng.choice(150, 200), minlength=150) for _ in range(50)]
    raw = [js_distance(c, prior) for c in samples]
    assert min(raw) > 0.3  # a window of 200 over 150 classes looks shifted by noise alone...
    fixed = [debiased_js(float(js_divergence(c, prior)[0]), noise(200)) for c in samples]
    assert max(fixed) < 0.2 and np.median(fixed) < 0.1  # ...which the correction removes
    shifted = np.bincount(rng.choice(15, 300), minlength=150)  # all traffic on 15 of 150 classes
    assert debiased_js(float(js_divergence(shifted, prior)[0]), noise(300)) > 0.75  # true distance 0.87
    assert noise(1000) < noise(200) < noise(20)


def test_window_running_sums_match_the_last_n_texts():
    rng = np.random.default_rng(1)
    w = _Window(size=50, n_classes=4)
    labels, conf, ood = [], [], []
    for n in [3, 20, 40, 1, 77, 50, 9, 0, 13]:  # includes a batch larger than the window and an empty one
        bl, bc, bo = rng.integers(0, 4, n), rng.random(n), rng.random(n) < 0.3
        w.add(bl, bc, bo)
        labels += bl.tolist()
        conf += bc.tolist()
        ood += bo.tolist()
        last = slice(-50, None)
        assert w.count == min(50, len(labels)) and w.seen == len(labels)
        assert w.label_counts.tolist() == np.bincount(labels[last], minlength=4).tolist()
        assert w.confidence_sum == pytest.approx(sum(conf[last]))
        assert w.ood_count == sum(ood[last])
        assert sum(w.confidence_histogram()) == w.count
        if labels:
            assert w.confidence_histogram() == np.histogram(conf[last], bins=CONFIDENCE_EDGES)[0].tolist()


def test_reference_centroids_prior_and_ood_threshold(trained):
    result, ref = trained
    X, y = clusters(LABELS, seed=3, spread=1.2)
    assert ref.labels == ["a", "b", "c"] and ref.centroids.dtype == np.float32
    assert np.allclose(np.linalg.norm(ref.centroids, axis=1), 1, atol=1e-5)
    assert ref.label_prior == pytest.approx([0.5, 1 / 3, 1 / 6])
    below = (nearest_centroid_similarity(X, ref.centroids) < ref.ood_threshold(2.0)).mean()
    assert 0.005 <= below <= 0.04  # by construction about 2 % of the training texts
    assert result.val_source == "split" and result.val_proba.shape == (result.n_val, 3)
    assert ref.confidence_counts.sum() == result.n_val and 0.5 < ref.confidence_mean <= 1


@pytest.mark.parametrize("params, source", [(TrainParams(epochs_max=5, search_grid={"dropout": [0.3]}), "cv"),
                                            (FAST, "given")])
def test_held_out_probabilities_for_every_validation_source(params, source):
    X, y = clusters({"a": 40, "b": 40}, dim=16, seed=4)
    Xv, yv = clusters({"a": 10, "b": 10}, dim=16, seed=4, sample_seed=1)
    result = train_head(X, y, Xv if source == "given" else None, yv if source == "given" else None, params=params)
    assert result.val_source == source
    assert result.val_proba.shape == ((20 if source == "given" else 80), 2)
    assert np.allclose(result.val_proba.sum(axis=1), 1, atol=1e-5)


def test_in_distribution_traffic_is_not_flagged_and_foreign_traffic_is(trained):
    result, ref = trained
    same, _ = clusters(LABELS, seed=3, spread=1.2, sample_seed=9)  # fresh samples of the training clusters
    same = same[np.random.default_rng(0).permutation(len(same))]  # traffic interleaves the classes
    monitor = DriftMonitor("h", THRESHOLDS)
    feed(monitor, result, ref, same)
    assert not monitor.flagged, monitor.scores
    assert monitor.scores["ood_rate"] < 0.1 and abs(monitor.scores["confidence_shift"]) < 0.1
    assert monitor.scores["label_shift_js"] < 0.15

    foreign, _ = clusters({"x": 100, "y": 100}, seed=11)  # other centres altogether
    feed(monitor, result, ref, foreign)
    assert monitor.flagged and monitor.scores["ood_rate"] > 0.9
    assert any(r.startswith("ood_rate") for r in monitor.reasons)


def test_label_shift_alone_is_flagged(trained):
    result, ref = trained
    only_c = clusters({"a": 0, "b": 0, "c": 200}, seed=3, spread=1.2, sample_seed=5)[0]  # in distribution, one class
    monitor = DriftMonitor("h", THRESHOLDS)
    feed(monitor, result, ref, only_c)
    assert monitor.scores["label_shift_js"] > 0.5 and monitor.scores["ood_rate"] < 0.1
    assert monitor.flagged and [r.split()[0] for r in monitor.reasons] == ["label_shift_js"]


def test_flag_waits_for_min_window_fires_once_per_crossing_and_resets_on_a_new_version():
    ref = fake_reference()
    changes = []
    monitor = DriftMonitor("h", THRESHOLDS, on_change=lambda flagged, reasons, scores: changes.append(flagged))
    far = np.tile(np.eye(1, 8, 7, dtype=np.float32), (10, 1))  # orthogonal to every centroid: OOD
    for _ in range(4):  # 40 texts < min_window 50: scored, not flagged
        monitor.observe("v1", ref, far, ["l0"] * 10, [0.9] * 10)
    assert monitor.scores["ood_rate"] == 1.0 and not monitor.flagged and changes == []
    for _ in range(10):
        monitor.observe("v1", ref, far, ["l0"] * 10, [0.9] * 10)
    assert monitor.flagged and changes == [True]  # one warning, not one per request

    near = np.tile(np.eye(3, 8, dtype=np.float32), (4, 1))[:10]
    labels = ["l0", "l1", "l2"] * 3 + ["l0"]
    for _ in range(20):  # 200 in-distribution texts push the OOD ones out of the window
        monitor.observe("v1", ref, near, labels, [0.9] * 10)
    assert not monitor.flagged and changes == [True, False]

    for _ in range(6):
        monitor.observe("v1", ref, far, ["l0"] * 10, [0.2] * 10)
    report = monitor.report("v1", ref)
    assert report["window"] == 200 and report["current"]["texts_seen"] == 400
    assert report["flagged"] and changes == [True, False, True]
    assert report["scores"]["ood_rate"] == pytest.approx(0.3)  # 60 of the last 200
    assert report["scores"]["confidence_shift"] == pytest.approx((140 * 0.9 + 60 * 0.2) / 200 - 0.9)
    assert [r.split()[0] for r in report["reasons"]] == ["|confidence_shift|", "ood_rate"]
    monitor.observe("v2", ref, near[:1], ["l0"], [0.9])  # a new version starts a new window
    report = monitor.report("v2", ref)
    assert report["window"] == 1 and report["version"] == "v2" and not report["flagged"]


def test_report_shape_and_an_artifact_without_drift_stats():
    ref = fake_reference()
    monitor = DriftMonitor("h", THRESHOLDS)
    report = monitor.report("v1", ref)
    assert set(report) >= {"head", "version", "window", "min_window", "scores", "reference", "thresholds", "flagged",
                           "reasons", "available"}
    assert report["available"] and report["reference"]["ood_rate"] == 0.01
    assert report["reference"]["confidence_mean"] == 0.9 and report["scores"]["ood_rate"] is None
    assert monitor.summary("v1", ref) == {"flagged": False, "available": True,
                                          "scores": {"label_shift_js": None, "confidence_shift": None, "ood_rate": None}}

    old = DriftMonitor("h", THRESHOLDS)
    old.observe("v0", None, np.ones((2, 8), np.float32), ["a", "b"], [0.9, 0.8])  # pre-drift artifact: no-op
    assert old.report("v0", None)["available"] is False and old.summary("v0", None)["flagged"] is False


def test_artifact_round_trip_and_old_artifacts_still_load(trained, tmp_path):
    result, ref = trained
    path = write_artifact(tmp_path, "h", "20260101T000000Z", result.model, manifest={"embedder_fingerprint": "sha256:x"},
                          metrics={}, config_yaml="name: h\n", drift=ref)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == ARTIFACT_FORMAT_VERSION == 2
    assert manifest["drift"]["file"] == "drift.npz" and manifest["drift"]["confidence_source"] == "split"
    loaded = load_artifact(tmp_path, "h").drift
    assert loaded.labels == ref.labels and np.array_equal(loaded.centroids, ref.centroids)
    assert loaded.confidence_mean == ref.confidence_mean and np.allclose(loaded.similarity_quantiles,
                                                                         ref.similarity_quantiles)
    assert np.array_equal(loaded.noise_sizes, ref.noise_sizes) and np.array_equal(loaded.noise, ref.noise)

    # an artifact from before format 2: no format_version, no drift.npz
    old = write_artifact(tmp_path, "h", "20250101T000000Z", result.model, manifest={"embedder_fingerprint": "sha256:x"},
                         metrics={}, config_yaml="name: h\n", set_latest=False)
    m = json.loads((old / "manifest.json").read_text())
    del m["format_version"]
    (old / "manifest.json").write_text(json.dumps(m))
    art = load_artifact(tmp_path, "h", "20250101T000000Z")
    assert art.drift is None and art.format_version == 1

    m["format_version"] = ARTIFACT_FORMAT_VERSION + 1
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="newer than this reader"):
        load_artifact(tmp_path, "h", "20250101T000000Z")


async def test_the_head_app_serves_drift_and_the_gateway_lists_it(head, gateway, trained_head):
    """The wiring on the fake model: predict feeds the window; /drift, /info, /metrics and the
    gateway's /v1/models show it. (Flagging on real data: tests/e2e/heads/test_drift.py.)"""
    from tests.unit.conftest import HEAD, OFFLINE_HEAD

    before = (await head.client.get("/drift")).json()
    assert before["available"] and before["version"] == trained_head.version
    assert before["reference"]["confidence_source"] == "cv" and before["min_window"] == 200
    texts = ["I was charged twice", "my parcel never arrived", "reset my password", "the app crashes"] * 3
    assert (await head.client.post("/predict", json={"texts": texts})).status_code == 200
    after = (await head.client.get("/drift")).json()
    assert after["window"] == before["window"] + 12 and after["current"]["texts_seen"] == after["window"]
    assert all(v is not None for v in after["scores"].values())
    info = (await head.client.get("/info")).json()
    assert info["drift"] == {"flagged": after["flagged"], "scores": after["scores"], "available": True}
    models = {m["name"]: m for m in (await gateway.get("/v1/models")).json()["data"]}
    assert models[HEAD]["drift"] == info["drift"] and models[OFFLINE_HEAD]["drift"] is None
    gauges = (await head.client.get("/metrics")).text
    assert f'polyhead_head_drift_window_texts{{head="{HEAD}"}} {float(after["window"])}' in gauges


def test_the_sampling_noise_table_comes_with_the_reference_and_older_references_simulate_it(trained):
    _, ref = trained
    assert ref.noise_sizes[0] == 1 and ref.noise_sizes[-1] >= 1_000_000  # any window a config may set
    table = SamplingNoise.of_reference(ref, THRESHOLDS.window)
    simulated = SamplingNoise(ref.label_prior, THRESHOLDS.window)
    for n in (1, 10, 50, 200):  # the same estimate, from draws on a different grid
        assert table(n) == pytest.approx(simulated(n), rel=0.1, abs=0.005)
    older = SamplingNoise.of_reference(fake_reference(), THRESHOLDS.window)  # no table: simulated here
    assert older.sizes[-1] == THRESHOLDS.window


def test_serving_a_reference_with_its_noise_table_does_not_import_numpy_random(trained, tmp_path):
    # numpy.random is ~7 MiB per head process (BENCHMARKS.md §5): only training may load it.
    _, ref = trained
    ref.save(tmp_path / "drift.npz")
    code = f"""
import sys
import numpy as np
from heads.drift import DriftMonitor, DriftReference, DriftThresholds
ref = DriftReference.load({str(tmp_path / "drift.npz")!r})
monitor = DriftMonitor("h", DriftThresholds(0.3, 0.15, 0.25, window=200, min_window=1, ood_percentile=1.0))
vectors = np.repeat(ref.centroids, 10, axis=0)
monitor.observe("v1", ref, vectors, [label for label in ref.labels for _ in range(10)], [0.9] * len(vectors))
body = monitor.report("v1", ref)
assert body["scores"]["label_shift_js"] is not None, body
bad = [m for m in sys.modules if m.split(".")[:2] in (["numpy", "random"], ["numpy", "ma"])]
assert not bad, bad
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
