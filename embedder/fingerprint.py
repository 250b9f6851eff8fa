"""A fingerprint of a SavedModel's weights and assets, stable across re-exports.

The serialized graph of a SavedModel is not byte-stable between exports, but its variables and
asset files are; our exporter also stores its preprocessing version and max sequence length as
variables, so every input that changes the vectors changes the fingerprint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np


def fingerprint_saved_model(path: Path | str) -> str:
    import tensorflow as tf

    path = Path(path)
    digest = hashlib.sha256()
    reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
    for name in sorted(reader.get_variable_to_shape_map()):
        if name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH"):
            continue  # bookkeeping, not weights
        value = np.asarray(reader.get_tensor(name))
        digest.update(name.encode())
        digest.update(str(value.dtype).encode() + str(value.shape).encode())
        digest.update(value.tobytes() if value.dtype != object else b"\0".join(map(bytes, value.ravel())))
    assets = path / "assets"
    if assets.is_dir():
        for asset in sorted(p for p in assets.rglob("*") if p.is_file()):
            digest.update(str(asset.relative_to(assets)).encode())
            digest.update(asset.read_bytes())
    return "sha256:" + digest.hexdigest()[:16]
