"""Embedder fixtures: the real model, exported once per session; servers on loopback ports."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The exporter below imports TensorFlow first; with oneDNN on, as in the served embedder
# (EmbedderSettings.onednn), the in-process tests check the numerics that production runs.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory) -> Path:
    from embedder.export import export_minilm

    return export_minilm(tmp_path_factory.mktemp("encoder") / "minilm")


@pytest.fixture(scope="session")
def servable(exported_model):
    from embedder.servable import TextEmbeddingServable
    from embedder.settings import EmbedderSettings

    s = TextEmbeddingServable(EmbedderSettings(model_handle=str(exported_model), export_if_missing=False))
    s.load()
    s.warmup()
    return s


@contextlib.asynccontextmanager
async def running_server(servable, **overrides):
    """An in-process gRPC server over the shared loaded model, with its own cache and batcher."""
    from embedder.grpc_server import EmbedderServer
    from embedder.settings import EmbedderSettings

    settings = EmbedderSettings(model_handle=servable.handle, port=0, metrics_port=0, **overrides)
    server = EmbedderServer(settings, servable=servable)
    await server.start()
    try:
        yield server, f"127.0.0.1:{server.port}"
    finally:
        await server.stop(grace=1)


def start_server_process(model_dir: Path, port: int, *extra: str, log: Path | None = None) -> subprocess.Popen:
    """`polyhead embedder serve` as a real child process."""
    cmd = [sys.executable, "-m", "cli", "embedder", "serve", "--model-handle", str(model_dir),
           "--port", str(port), "--metrics-port", "0", *extra]
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def wait_serving(target: str, timeout_s: float = 90) -> None:
    from embedder.client import EmbedderClient

    deadline = time.monotonic() + timeout_s
    with EmbedderClient(target) as client:
        while time.monotonic() < deadline:
            if client.health() == "SERVING":
                return
            time.sleep(0.2)
    raise TimeoutError(f"embedder at {target} not SERVING after {timeout_s}s")


@pytest.fixture(scope="session")
def server_process(exported_model, tmp_path_factory):
    port = free_port()
    proc = start_server_process(exported_model, port, log=tmp_path_factory.mktemp("logs") / "embedder.log")
    try:
        wait_serving(f"127.0.0.1:{port}")
        yield proc, f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.fixture(scope="session")
def onnx_model_dir(tmp_path_factory) -> Path:
    """The ONNX export (FP32 and INT8) from the packaged safetensors, once per session."""
    from embedder.onnx_export import export_onnx

    model_dir = tmp_path_factory.mktemp("encoder") / "minilm-onnx"
    export_onnx(model_dir, "fp32")
    export_onnx(model_dir, "int8")
    return model_dir


def load_onnx_servable(model_dir: Path, precision: str):
    from embedder.backends import make_backend_servable
    from embedder.settings import EmbedderSettings

    s = make_backend_servable(EmbedderSettings(backend="onnx", precision=precision, onnx_model_dir=model_dir,
                                               export_if_missing=False))
    s.load()
    s.warmup()
    return s


@pytest.fixture(scope="session")
def onnx_servable(onnx_model_dir):
    return load_onnx_servable(onnx_model_dir, "fp32")


@pytest.fixture(scope="session")
def onnx_int8_servable(onnx_model_dir):
    return load_onnx_servable(onnx_model_dir, "int8")
