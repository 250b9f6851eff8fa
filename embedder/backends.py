"""The embedder's backends: which servable class runs the encoder, by name (setting `backend`).

A registry, not a chain of ifs: a backend is a servable class (load, warmup, embed, feature_sets,
fingerprint; see embedder/servable.py) with the `precisions` it can run, named here by import path so
that choosing one never imports another (the ONNX embedder must not import TensorFlow). Add one by
adding a line. "tf_hub" stays the default and the reference the others are tested against.
"""

from __future__ import annotations

import importlib

from polyhead.errors import ValidationError

DEFAULT_BACKEND = "tf_hub"
BACKENDS: dict[str, str] = {
    "tf_hub": "embedder.servable:TextEmbeddingServable",
    "onnx": "embedder.onnx_servable:OnnxEmbeddingServable",
}
PRECISIONS = ("fp32", "int8")


def backend_class(name: str) -> type:
    if name not in BACKENDS:
        raise ValidationError(f"backend: unknown backend {name!r}; known: {', '.join(BACKENDS)}", field="backend")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def make_backend_servable(settings):
    cls = backend_class(settings.backend)
    if settings.precision not in cls.precisions:
        raise ValidationError(f"precision: backend {settings.backend!r} runs {', '.join(cls.precisions)}, "
                              f"not {settings.precision!r}", field="precision")
    return cls(settings)
