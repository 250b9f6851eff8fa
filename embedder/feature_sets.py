"""Named feature sets: what else one pass of the encoder hands a caller besides its sentence vector.

"default" is the model's own output (mean-pooled last layer, L2-normalised); its fingerprint is the
model's. "all6" concatenates every transformer layer's mean-pooled, L2-normalised hidden states
(6 x 384 = 2,304 dims; BENCHMARKS.md section 2c). Each other set's fingerprint is derived from the
model's plus the set's name and the version of its computation, so its cache keys (L1 and Redis)
and the heads trained on it never meet another set's vectors. No TensorFlow here.

Each set also has a storage precision (PRECISION_OF_SET): all6 is float16, half the bytes in the
caches and on the wire at no measured cost in head accuracy (BENCHMARKS.md, round 3, item 1). The
embedder rounds every vector of a float16 set, so a text's vector is the same from the model, L1 or
L2; a float16 set's fingerprint ends with the precision's tag, so float32 and float16 vectors of one
set never share a cache key or a head, and whoever holds a fingerprint knows the precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from polyhead.errors import ValidationError

DEFAULT = "default"
ALL6 = "all6"
# Every name a SavedModel exported by this code can serve, default first (heads' configs accept these).
KNOWN = (DEFAULT, ALL6)
# Not a set: a head config's "let the trainer choose among its training.feature_sets" (heads/config.py).
AUTO = "auto"


FLOAT32 = "float32"
FLOAT16 = "float16"


@dataclass(frozen=True)
class Precision:
    name: str
    dtype: np.dtype  # little-endian, as in the caches and on the wire
    tag: str  # appended to the set's fingerprint ("" keeps float32 fingerprints what they always were)


PRECISIONS = {FLOAT32: Precision(FLOAT32, np.dtype("<f4"), ""), FLOAT16: Precision(FLOAT16, np.dtype("<f2"), "+f16")}
# The default set stays float32: its vectors are held to the SavedModel's at 1e-5 (tests/e2e).
PRECISION_OF_SET = {DEFAULT: FLOAT32, ALL6: FLOAT16}


@dataclass(frozen=True)
class FeatureSet:
    name: str
    dim: int
    fingerprint: str
    precision: str = FLOAT32  # a key of PRECISIONS

    @property
    def dtype(self) -> np.dtype:
        return PRECISIONS[self.precision].dtype


def served_set(model_fingerprint: str, name: str, dim: int, version: int = 0) -> FeatureSet:
    """Set `name` of a model, with its registered precision and the fingerprint that follows from both."""
    precision = PRECISION_OF_SET.get(name, FLOAT32)
    return FeatureSet(name, dim, derived_fingerprint(model_fingerprint, name, version, precision), precision)


# Sets whose vectors hold another set's whole vector as a block of columns: all6's last 384 dims are the
# last layer's pooled, L2-normalised states, i.e. the default vector (embedder/export.py embed_features).
# The trainer uses it to serve a model of the default set on all6 vectors (heads/training/blend.py).
_BLOCKS = {(ALL6, DEFAULT): (5 * 384, 6 * 384)}


def block_of(name: str | None, inner: str | None) -> slice | None:
    """The columns of set `name`'s vectors that are set `inner`'s vector (None: not known to be)."""
    if name == inner:
        return slice(None)
    found = _BLOCKS.get((name, inner))
    return None if found is None else slice(*found)


def derived_fingerprint(model_fingerprint: str, name: str, version: int, precision: str = FLOAT32) -> str:
    """The default set keeps the model's fingerprint exactly; another set's names the set and its version
    (bumped when its computation changes, as PREPROCESSING_VERSION is for the model's), then its precision's
    tag (e.g. `<model>+all6-v1+f16`)."""
    if name == DEFAULT:
        return model_fingerprint + PRECISIONS[precision].tag
    return f"{model_fingerprint}+{name}-v{version}{PRECISIONS[precision].tag}"


def precision_of(fingerprint: str) -> Precision:
    """The precision of the vectors a fingerprint names (its tag): how the L2 cache packs and reads them,
    and how a head keeps them, from the fingerprint alone (a head reading Redis knows no more)."""
    for precision in PRECISIONS.values():
        if precision.tag and fingerprint.endswith(precision.tag):
            return precision
    return PRECISIONS[FLOAT32]


def answers(fingerprint: str, name: str) -> bool:
    """Whether vectors with this fingerprint can be of set `name` (derived_fingerprint's form). A server
    older than feature sets ignores a request's feature_set and answers the default vector."""
    return name == DEFAULT or f"+{name}-v" in fingerprint


def resolve(sets: dict[str, FeatureSet], name: str) -> FeatureSet:
    """The served set called `name` ("" means default), or a ValidationError naming the field."""
    found = sets.get(name or DEFAULT)
    if found is None:
        raise ValidationError(f"feature_set: unknown feature set {name!r}; this embedder serves: "
                              f"{', '.join(sets)}", field="feature_set")
    return found
