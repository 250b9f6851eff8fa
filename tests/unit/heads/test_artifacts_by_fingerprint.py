"""The champion follows the encoder served: a version trained on the embedder's current fingerprint is
picked (polyhead up trains one only when none is), so switching the embedder's backend or precision
and back never serves a head on vectors of another encoder."""

from __future__ import annotations

import numpy as np

from heads.artifacts import versions_for_fingerprint, write_artifact
from heads.roles import read_audit, read_state, serve_fingerprint
from heads.model import HeadModel

TF, ONNX_INT8 = "sha256:aaaaaaaaaaaaaaaa", "sha256:bbbbbbbbbbbbbbbb"


def write(tmp_path, version: str, fingerprint: str):
    model = HeadModel("logreg", {"W": np.zeros((4, 2), np.float32), "b": np.zeros(2, np.float32)}, ["a", "b"])
    write_artifact(tmp_path, "h", version, model, manifest={"embedder_fingerprint": fingerprint}, metrics={},
                   config_yaml="name: h\n")


def test_the_champion_moves_to_the_newest_version_of_the_served_fingerprint(tmp_path):
    write(tmp_path, "20260101T000000Z", TF)
    write(tmp_path, "20260102T000000Z", TF)
    write(tmp_path, "20260103T000000Z", ONNX_INT8)
    assert versions_for_fingerprint(tmp_path, "h", TF) == ["20260101T000000Z", "20260102T000000Z"]
    assert read_state(tmp_path, "h").champion == "20260103T000000Z"
    assert serve_fingerprint(tmp_path, "h", TF)
    assert read_state(tmp_path, "h").champion == "20260102T000000Z"
    assert serve_fingerprint(tmp_path, "h", ONNX_INT8)
    assert read_state(tmp_path, "h").champion == "20260103T000000Z"


def test_no_version_for_the_fingerprint_leaves_the_champion_alone(tmp_path):
    write(tmp_path, "20260101T000000Z", TF)
    assert not serve_fingerprint(tmp_path, "h", ONNX_INT8)
    assert read_state(tmp_path, "h").champion == "20260101T000000Z"
    assert not serve_fingerprint(tmp_path, "missing-head", TF)


def test_a_switch_of_encoder_is_audited(tmp_path):
    write(tmp_path, "20260101T000000Z", TF)
    write(tmp_path, "20260102T000000Z", ONNX_INT8)
    assert serve_fingerprint(tmp_path, "h", TF)
    (entry,) = read_audit(tmp_path, "h")
    assert entry["version"] == "20260101T000000Z" and TF in entry["reason"]
