"""A deterministic fake embedding servable, for tests and development only (as Infinity's dummy model).

Same hooks as `TextEmbeddingServable` (load, warmup, embed -> EmbedBatchResult, name, fingerprint,
dim, max_seq_length, loaded), no TensorFlow. A text's vector is the L2-normalised sum of one fixed
pseudo-random unit vector per word (a random projection of its bag of words): texts sharing words
are near, so a classifier head trained on fake vectors really learns something, while the whole
stack (embedder core, gRPC, heads, gateway) runs in one process in milliseconds.

The vectors mean nothing beyond shared words. The fingerprint ("fake:...") can never equal a real
SavedModel's ("sha256:..."), so a head trained on fake vectors refuses to serve on the real model.
Select it with `model_handle: "fake://"` (optionally `fake://?dim=64&seed=1`); the embedder then
logs a warning at start. It serves the feature sets of a real export (embedder/feature_sets.py):
"all6" is six blocks of `dim`, five more hashed-words vectors (other word seeds) and then the default
vector, each unit-norm. `feature_sets=default` makes it a model exported before feature sets.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from urllib.parse import parse_qs, urlsplit

import numpy as np

from embedder.feature_sets import ALL6, DEFAULT, KNOWN, FeatureSet, served_set
from embedder.servable_api import EmbedBatchResult, char_lengths
from embedder.settings import EmbedderSettings

log = logging.getLogger("polyhead.embedder.fake")

FAKE_SCHEME = "fake"
ALGORITHM = "hashed-words-v1"  # change it when the vectors change: it is part of the fingerprint
FEATURE_SET_VERSIONS = {ALL6: 1}
LAYERS = 6  # all6's blocks
WORD = re.compile(r"\w+")


def is_fake_handle(handle: str) -> bool:
    return handle.startswith(f"{FAKE_SCHEME}://")


class FakeEmbeddingServable:
    def __init__(self, dim: int = 384, max_seq_length: int = 128, seed: int = 0, name: str = "fake-hashed-words",
                 feature_sets: tuple[str, ...] = KNOWN):
        if dim < 1 or max_seq_length < 1:
            raise ValueError(f"dim and max_seq_length must be >= 1, got {dim} and {max_seq_length}")
        if DEFAULT not in feature_sets or set(feature_sets) - set(KNOWN):
            raise ValueError(f"feature_sets: expected {DEFAULT!r} and any of {KNOWN}, got {feature_sets}")
        self.handle = f"{FAKE_SCHEME}://?dim={dim}&seed={seed}" + \
            ("" if set(feature_sets) == set(KNOWN) else f"&feature_sets={','.join(feature_sets)}")
        self.name = name
        self.seed = seed
        self._dim = dim
        self._max_seq_length = max_seq_length
        self.fingerprint = ""
        self.dim = 0
        self.max_seq_length = 0
        self._sets = tuple(dict.fromkeys((DEFAULT, *feature_sets)))
        self.feature_sets: dict[str, FeatureSet] = {}
        self._words: dict[tuple[str, int], np.ndarray] = {}
        # What the model was asked to embed (tests assert the cache and in-flight dedup with it).
        self.texts_embedded = 0
        self.batches_embedded = 0
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: EmbedderSettings) -> FakeEmbeddingServable:
        """`model_handle: "fake://?dim=384&seed=0&feature_sets=default,all6"`; max_seq_length comes from the settings."""
        query = parse_qs(urlsplit(settings.model_handle).query)
        try:
            dim = int(query.get("dim", ["384"])[0])
            seed = int(query.get("seed", ["0"])[0])
        except ValueError:
            raise ValueError(f"model_handle: expected fake://?dim=<int>&seed=<int>, got {settings.model_handle!r}") from None
        sets = tuple(query.get("feature_sets", [",".join(KNOWN)])[0].split(","))
        return cls(dim=dim, max_seq_length=settings.max_seq_length, seed=seed, feature_sets=sets)

    @property
    def loaded(self) -> bool:
        return bool(self.fingerprint)

    # -- lifecycle -------------------------------------------------------------------------------
    def load(self) -> None:
        identity = f"{ALGORITHM}:dim={self._dim}:seed={self.seed}:max_seq_length={self._max_seq_length}"
        self.fingerprint = "fake:" + hashlib.sha256(identity.encode()).hexdigest()[:16]
        self.dim, self.max_seq_length = self._dim, self._max_seq_length
        self.feature_sets = {DEFAULT: FeatureSet(DEFAULT, self.dim, self.fingerprint)}
        if ALL6 in self._sets:
            self.feature_sets[ALL6] = served_set(self.fingerprint, ALL6, LAYERS * self.dim,
                                                 FEATURE_SET_VERSIONS[ALL6])
        log.warning("serving a FAKE embedding model (hashed words): for tests and development only; its vectors "
                    "are not sentence embeddings and heads trained on them refuse the real model",
                    extra={"handle": self.handle, "fingerprint": self.fingerprint, "dim": self.dim})

    def warmup(self) -> None:
        """Nothing to trace: the first call costs what every call costs."""

    # -- inference -------------------------------------------------------------------------------
    def batch_lengths(self, texts: list[str]) -> list[int]:
        return char_lengths(texts)

    def embed(self, texts: list[str], feature_set: str = DEFAULT) -> EmbedBatchResult:
        # Block i of all6 uses word seed i; the last block is the default vector, as in the real export.
        layers = range(LAYERS) if feature_set == ALL6 else [LAYERS - 1]
        vectors = np.zeros((len(texts), len(layers) * self._dim), dtype=np.float32)
        truncated = np.zeros(len(texts), dtype=bool)
        token_counts = np.zeros(len(texts), dtype=np.int64)
        for i, text in enumerate(texts):
            # A text without word characters ("!!!") is one token of itself, so it still gets a vector.
            words = WORD.findall(text.lower()) or [text]
            truncated[i] = len(words) > self._max_seq_length
            words = words[:self._max_seq_length]
            token_counts[i] = len(words)
            for b, layer in enumerate(layers):
                block = vectors[i, b * self._dim:(b + 1) * self._dim]
                for word in words:
                    block += self._word_vector(word, layer)
                block /= max(float(np.linalg.norm(block)), 1e-12)
        with self._lock:
            self.texts_embedded += len(texts)
            self.batches_embedded += 1
        return EmbedBatchResult(vectors, truncated, token_counts)

    def _word_vector(self, word: str, layer: int = LAYERS - 1) -> np.ndarray:
        vector = self._words.get((word, layer))
        if vector is None:
            # blake2b, not hash(): Python's string hash changes with every process. The last layer
            # keeps the plain seed, so the default vectors are what they were before feature sets.
            key = str(self.seed) if layer == LAYERS - 1 else f"{self.seed}:{layer}"
            digest = hashlib.blake2b(word.encode(), digest_size=8, key=key.encode()).digest()
            vector = np.random.default_rng(int.from_bytes(digest, "little")).standard_normal(self._dim)
            vector = (vector / np.linalg.norm(vector)).astype(np.float32)
            if len(self._words) < 100_000:  # a bounded memo, not a second cache to tune
                self._words[(word, layer)] = vector
        return vector
