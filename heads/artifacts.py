"""Versioned head artifacts: models/<name>/<version>/ plus a `latest` pointer.

A version is the UTC date-time of training (sortable). Each version directory holds
weights.npz (HeadModel), labels.json, metrics.json, config.yaml (snapshot), manifest.json
(training-data hash, embedder fingerprint, code version). The `latest` file names the newest
version and is replaced atomically, so a head polling it never reads half a pointer.

manifest.json carries `format_version` (ARTIFACT_FORMAT_VERSION). 1 (no field): the files above.
2: adds drift.npz, the training-side drift reference (heads.drift.DriftReference), described by
manifest["drift"]. Older versions load as they are (no drift reference); newer ones are refused.
manifest["feature_set"] names the embedder feature set the head was trained on (absent: "default",
as for every artifact written before feature sets); `embedder_fingerprint` is that set's.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from embedder.feature_sets import DEFAULT
from heads.drift import DRIFT_FILE, DriftReference
from heads.model import HeadModel
from polyhead.errors import NotFoundError

VERSION_RE = re.compile(r"^\d{8}T\d{6}(\d{6})?Z$")
LATEST = "latest"
ARTIFACT_FORMAT_VERSION = 2


@dataclass(frozen=True)
class HeadArtifact:
    name: str
    version: str
    path: Path
    model: HeadModel
    manifest: dict
    metrics: dict
    drift: DriftReference | None = None  # None for artifacts written before format 2

    @property
    def format_version(self) -> int:
        return int(self.manifest.get("format_version", 1))

    @property
    def embedder_fingerprint(self) -> str:
        return self.manifest["embedder_fingerprint"]

    @property
    def feature_set(self) -> str:
        return self.manifest.get("feature_set", DEFAULT)


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def list_versions(models_dir: Path, name: str) -> list[str]:
    root = Path(models_dir) / name
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and VERSION_RE.match(p.name) and (p / "manifest.json").exists())


def resolve_version(models_dir: Path, name: str, spec: str = LATEST) -> str:
    root = Path(models_dir) / name
    if spec == LATEST:
        pointer = root / LATEST
        if pointer.exists():
            return pointer.read_text().strip()
        versions = list_versions(models_dir, name)
        if not versions:
            raise NotFoundError(f"no trained artifact for head {name!r} in {root} (run `polyhead train`)")
        return versions[-1]
    if spec not in list_versions(models_dir, name):
        raise NotFoundError(f"head {name!r} has no version {spec!r}; available: {list_versions(models_dir, name)}")
    return spec


def load_artifact(models_dir: Path, name: str, spec: str = LATEST) -> HeadArtifact:
    version = resolve_version(models_dir, name, spec)
    path = Path(models_dir) / name / version
    manifest = json.loads((path / "manifest.json").read_text())
    metrics = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").exists() else {}
    if int(manifest.get("format_version", 1)) > ARTIFACT_FORMAT_VERSION:
        raise ValueError(f"{path}: artifact format {manifest['format_version']} is newer than this reader "
                         f"({ARTIFACT_FORMAT_VERSION}); upgrade polyhead to serve it")
    drift = DriftReference.load(path / manifest["drift"]["file"]) if manifest.get("drift") else None
    return HeadArtifact(name, version, path, HeadModel.load(path / "weights.npz"), manifest, metrics, drift)


def write_artifact(models_dir: Path, name: str, version: str, model: HeadModel, *, manifest: dict,
                   metrics: dict, config_yaml: str, set_latest: bool = True,
                   drift: DriftReference | None = None) -> Path:
    """Write into a hidden staging dir, then rename: a half-written version is never visible."""
    root = Path(models_dir) / name
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{version}."))
    model.save(staging / "weights.npz")
    (staging / "labels.json").write_text(json.dumps(list(model.labels), ensure_ascii=False, indent=1))
    (staging / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=1))
    (staging / "config.yaml").write_text(config_yaml)
    manifest = {"name": name, "version": version, "format_version": ARTIFACT_FORMAT_VERSION, **manifest}
    if drift is not None:
        drift.save(staging / DRIFT_FILE)
        manifest["drift"] = {"file": DRIFT_FILE, **drift.meta}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
    final = root / version
    os.replace(staging, final)
    if set_latest:
        set_latest_version(models_dir, name, version)
    return final


def set_latest_version(models_dir: Path, name: str, version: str) -> None:
    if version not in list_versions(models_dir, name):
        raise NotFoundError(f"head {name!r} has no version {version!r}")
    _atomic_write(Path(models_dir) / name / LATEST, version + "\n")


def versions_for_fingerprint(models_dir: Path, name: str, fingerprint: str) -> list[str]:
    """The versions of head `name` trained on vectors with this fingerprint (one encoder: backend,
    precision, export, feature set), oldest first."""
    root = Path(models_dir) / name
    return [v for v in list_versions(models_dir, name)
            if json.loads((root / v / "manifest.json").read_text()).get("embedder_fingerprint") == fingerprint]
