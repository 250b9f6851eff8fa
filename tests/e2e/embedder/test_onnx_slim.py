"""The slim embedder: `polyhead embedder serve --backend onnx` serves without ever loading TensorFlow."""

from __future__ import annotations

from pathlib import Path

from embedder.client import EmbedderClient
from tests.conftest import free_port
from tests.e2e.embedder.fixtures import start_server_process, wait_serving


def mapped_libraries(pid: int) -> set[str]:
    """Every file mapped into the process: a Python import of TensorFlow maps its native libraries."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split()[-1] for line in lines if len(line.split()) >= 6}


def test_the_onnx_embedder_process_never_loads_tensorflow(onnx_model_dir, onnx_int8_servable, tmp_path):
    port = free_port()
    proc = start_server_process(Path("unused-savedmodel"), port, "--backend", "onnx", "--precision", "int8",
                                "--onnx-model-dir", str(onnx_model_dir), "--no-export-if-missing",
                                log=tmp_path / "embedder.log")
    try:
        wait_serving(f"127.0.0.1:{port}", timeout_s=120)
        with EmbedderClient(f"127.0.0.1:{port}") as client:
            out = client.embed(["how do I reset my PIN?"])
        libraries = mapped_libraries(proc.pid)
    finally:
        proc.terminate()
        proc.wait(15)
    assert out.fingerprint == onnx_int8_servable.fingerprint  # it served the INT8 model we exported
    assert any("onnxruntime" in lib for lib in libraries)  # the probe sees native libraries at all
    assert not [lib for lib in libraries if "tensorflow" in lib.lower()], (tmp_path / "embedder.log").read_text()[-2000:]
