"""The backend registry: a name chooses the servable class; a wrong name or precision is refused up front,
naming the field; choosing ONNX imports no TensorFlow (the unit layer's autouse guard checks that)."""

from __future__ import annotations

import pydantic
import pytest

from embedder.backends import BACKENDS, DEFAULT_BACKEND, backend_class, make_backend_servable
from embedder.servable import make_servable
from embedder.settings import EmbedderSettings
from polyhead.errors import ValidationError


def test_tf_hub_is_the_default_and_every_registered_backend_resolves():
    assert EmbedderSettings().backend == DEFAULT_BACKEND == "tf_hub"
    for name in BACKENDS:
        cls = backend_class(name)
        assert cls.backend == name and "fp32" in cls.precisions


def test_an_unknown_backend_is_refused_by_the_settings():
    with pytest.raises(pydantic.ValidationError, match="unknown backend 'torch'; known: tf_hub, onnx"):
        EmbedderSettings(backend="torch")
    with pytest.raises(ValidationError, match="backend: unknown backend"):
        backend_class("torch")


def test_a_precision_the_backend_cannot_run_is_refused_naming_the_field():
    with pytest.raises(ValidationError, match="precision: backend 'tf_hub' runs fp32, not 'int8'") as err:
        make_backend_servable(EmbedderSettings(precision="int8"))
    assert err.value.field == "precision"
    with pytest.raises(pydantic.ValidationError):
        EmbedderSettings(precision="int4")


def test_onnx_backend_is_chosen_by_setting_not_loaded_until_asked(tmp_path):
    servable = make_servable(EmbedderSettings(backend="onnx", precision="int8", onnx_model_dir=tmp_path))
    assert type(servable).__name__ == "OnnxEmbeddingServable" and not servable.loaded
    assert servable.handle == str(tmp_path / "model.int8.onnx")
    # Nothing exported there and exporting not allowed: a clear error naming the export command.
    missing = make_servable(EmbedderSettings(backend="onnx", onnx_model_dir=tmp_path, export_if_missing=False))
    with pytest.raises(FileNotFoundError, match="python -m embedder.onnx_export"):
        missing.load()
