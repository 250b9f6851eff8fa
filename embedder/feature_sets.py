"""Named feature sets: what else one pass of the encoder hands a caller besides its sentence vector.

"default" is the model's own output (mean-pooled last layer, L2-normalised); its fingerprint is the
model's. "all6" concatenates every transformer layer's mean-pooled, L2-normalised hidden states
(6 x 384 = 2,304 dims; BENCHMARKS.md section 2c). Each other set's fingerprint is derived from the
model's plus the set's name and the version of its computation, so its cache keys (L1 and Redis)
and the heads trained on it never meet another set's vectors. No TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass

from polyhead.errors import ValidationError

DEFAULT = "default"
ALL6 = "all6"
# Every name a SavedModel exported by this code can serve, default first (heads' configs accept these).
KNOWN = (DEFAULT, ALL6)
# Not a set: a head config's "let the trainer choose among its training.feature_sets" (heads/config.py).
AUTO = "auto"


@dataclass(frozen=True)
class FeatureSet:
    name: str
    dim: int
    fingerprint: str


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


def derived_fingerprint(model_fingerprint: str, name: str, version: int) -> str:
    """The default set keeps the model's fingerprint exactly; another set's names the set and its version
    (bumped when its computation changes, as PREPROCESSING_VERSION is for the model's)."""
    if name == DEFAULT:
        return model_fingerprint
    return f"{model_fingerprint}+{name}-v{version}"


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
