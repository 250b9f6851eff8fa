"""The servable: a TF-Hub text-embedding module loaded once, called on batches of strings.

Hooks in the LitServe spirit: `load()` once, `warmup()` before health says SERVING, then
`embed(texts, feature_set)` from one worker thread. Any module whose call maps a 1-D string tensor
to [N, D] float32 works ("default" only); ours also reports per-text token counts so truncation can
be flagged, and serves the other feature sets (embedder/feature_sets.py) from `embed_features`.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from embedder.feature_sets import DEFAULT, FeatureSet, served_set
from embedder.servable_api import EmbedBatchResult, char_lengths
from embedder.settings import EmbedderSettings

log = logging.getLogger("polyhead.embedder.servable")


class TextEmbeddingServable:
    backend = "tf_hub"
    precisions = ("fp32",)

    def __init__(self, settings: EmbedderSettings):
        self.settings = settings
        self.name = settings.model_name
        self.handle = settings.model_handle
        self.fingerprint = ""
        self.dim = 0
        self.max_seq_length = 0
        self.feature_sets: dict[str, FeatureSet] = {}  # default first
        self._module = None
        self._with_stats = None
        self._features = None

    @property
    def loaded(self) -> bool:
        return self._module is not None

    # -- lifecycle -------------------------------------------------------------------------------
    def load(self) -> None:
        started = time.perf_counter()
        configure_onednn(self.settings.onednn)  # before anything imports TensorFlow (an export would)
        path = self._resolve_local_path()
        import tensorflow as tf

        if self.settings.intra_op_threads:
            tf.config.threading.set_intra_op_parallelism_threads(self.settings.intra_op_threads)
        if self.settings.inter_op_threads:
            tf.config.threading.set_inter_op_parallelism_threads(self.settings.inter_op_threads)
        import tensorflow_text  # noqa: F401  registers the tokenizer ops hub.load needs

        with warnings.catch_warnings():  # tensorflow_hub 0.16 imports the deprecated pkg_resources
            warnings.simplefilter("ignore", UserWarning)
            import tensorflow_hub as hub

        from embedder.fingerprint import fingerprint_saved_model

        resolved = Path(hub.resolve(str(path) if path else self.handle))
        self._module = hub.load(str(resolved))
        self._with_stats = getattr(self._module, "embed_with_stats", None)
        self._features = getattr(self._module, "embed_features", None)  # absent from exports before feature sets
        self.fingerprint = fingerprint_saved_model(resolved)
        max_len = getattr(self._module, "max_seq_length", None)
        self.max_seq_length = int(max_len.numpy()) if max_len is not None else 0
        probe = self.embed(["polyhead"])
        self.dim = int(probe.vectors.shape[1])
        self.feature_sets = {DEFAULT: FeatureSet(DEFAULT, self.dim, self.fingerprint)}
        if self._features is not None:
            versions = {k: int(v.numpy()) for k, v in self._module.feature_set_versions().items()}
            out = self._features(tf.constant(["polyhead"]))
            for name in sorted(versions):
                self.feature_sets[name] = served_set(self.fingerprint, name, int(out[name].shape[1]),
                                                     versions[name])
        log.info("model loaded", extra={"handle": self.handle, "fingerprint": self.fingerprint,
                                        "dim": self.dim, "feature_sets": list(self.feature_sets),
                                        "load_s": round(time.perf_counter() - started, 2)})

    def warmup(self) -> None:
        """Trace the shapes real traffic hits first, so the first caller does not pay for it."""
        for name in self.feature_sets:
            for n in (1, 2, self.settings.max_batch_size):
                self.embed([f"warm up text number {i} for the encoder" for i in range(n)], name)

    def _resolve_local_path(self) -> Path | None:
        if "://" in self.handle:
            return None
        path = Path(self.handle)
        if not (path / "saved_model.pb").exists():
            if not self.settings.export_if_missing:
                raise FileNotFoundError(f"no SavedModel at {path} (export it with `polyhead export-model`)")
            from embedder.export import export_minilm

            log.info("exporting the bundled all-MiniLM-L6-v2 (first start)", extra={"path": str(path)})
            export_minilm(path, max_seq_length=self.settings.max_seq_length)
        return path

    # -- inference -------------------------------------------------------------------------------
    def batch_lengths(self, texts: list[str]) -> list[int]:
        return char_lengths(texts)  # the tokenizer is inside the graph

    def embed(self, texts: list[str], feature_set: str = DEFAULT) -> EmbedBatchResult:
        """One model pass; `feature_set` is one of `feature_sets` (the core has checked the name)."""
        import tensorflow as tf

        batch = tf.constant(texts, dtype=tf.string)
        if feature_set != DEFAULT:
            out = self._features(batch)
            vectors = out[feature_set].numpy()
        elif self._with_stats is not None:
            # The default set keeps its own function: its vectors stay bit-for-bit what they were.
            out = self._with_stats(batch)
            vectors = out["embeddings"].numpy()
        else:
            out, vectors = None, self._module(batch).numpy()
        if out is not None:
            num_tokens = out["num_tokens"].numpy()
            limit = self.max_seq_length or int(num_tokens.max(initial=0))
            truncated = num_tokens > limit
            token_counts = np.minimum(num_tokens, limit)
        else:
            truncated = np.zeros(len(texts), dtype=bool)
            token_counts = np.zeros(len(texts), dtype=np.int64)
        return EmbedBatchResult(np.ascontiguousarray(vectors, dtype=np.float32), truncated, token_counts)


def make_servable(settings: EmbedderSettings):
    """`fake://` as model_handle (tests and development only), else the servable of `settings.backend`
    (embedder/backends.py): the TF-Hub module by default, or ONNX Runtime."""
    from embedder.backends import make_backend_servable
    from embedder.fake import FakeEmbeddingServable, is_fake_handle

    if is_fake_handle(settings.model_handle):
        return FakeEmbeddingServable.from_settings(settings)
    return make_backend_servable(settings)


ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def configure_onednn(enabled: bool) -> bool:
    """Ask for TensorFlow's oneDNN kernels (or not). TensorFlow reads the variable once, at import:
    returns False, with a warning, when it was imported before with another value."""
    wanted = "1" if enabled else "0"
    if "tensorflow" in sys.modules and os.environ.get(ONEDNN_ENV) != wanted:
        log.warning("TensorFlow was imported before the oneDNN setting could apply",
                    extra={"wanted": wanted, "in_effect": os.environ.get(ONEDNN_ENV, "TensorFlow's default")})
        return False
    os.environ[ONEDNN_ENV] = wanted
    return True


def configure_tf_logging() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
