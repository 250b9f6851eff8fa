"""`polyhead up` trains the heads for whichever encoder the embedder serves: switching the embedder to
another backend or precision (another fingerprint) trains a version for it once; switching back serves
the version trained for that encoder again, without training."""

from __future__ import annotations

import asyncio
import io
import json

from rich.console import Console

from embedder.fake import FakeEmbeddingServable
from heads.artifacts import list_versions
from heads.roles import read_state
from heads.config import load_head_configs
from cli.stack import Stack, StackSettings
from tests.e2e.heads.fixtures import write_head_config
from tests.unit.conftest import running_embedder


def trained_fingerprint(models_dir, name: str) -> str:
    return json.loads((models_dir / name / read_state(models_dir, name).champion / "manifest.json").read_text())[
        "embedder_fingerprint"]


async def ensure_trained(tmp_path, port: int, configs) -> Console:
    settings = StackSettings(heads_dir=tmp_path / "heads", var_dir=tmp_path / "var", models_dir=tmp_path / "models",
                             host="127.0.0.1", embedder_port=port)
    stack = Stack(settings, console=Console(file=io.StringIO()))
    # Blocking gRPC calls: off the loop that serves the embedders.
    assert await asyncio.to_thread(stack._ensure_trained, configs) == configs
    return stack.console


async def test_switching_the_encoder_trains_once_and_switching_back_reuses(tmp_path):
    write_head_config(tmp_path / "heads", "alpha")
    configs = load_head_configs(tmp_path / "heads")
    models = tmp_path / "models"
    async with running_embedder(FakeEmbeddingServable(seed=1)) as tf_like, \
            running_embedder(FakeEmbeddingServable(seed=2)) as onnx_like:
        first, second = tf_like.model.fingerprint, onnx_like.model.fingerprint
        assert first != second
        await ensure_trained(tmp_path, tf_like.server.port, configs)
        assert len(list_versions(models, "alpha")) == 1 and trained_fingerprint(models, "alpha") == first

        console = await ensure_trained(tmp_path, onnx_like.server.port, configs)
        assert "training 1 head(s)" in console.file.getvalue()
        assert len(list_versions(models, "alpha")) == 2 and trained_fingerprint(models, "alpha") == second

        console = await ensure_trained(tmp_path, tf_like.server.port, configs)
        assert "training" not in console.file.getvalue()  # a version for this encoder exists: reused
        assert len(list_versions(models, "alpha")) == 2 and trained_fingerprint(models, "alpha") == first
