"""deploy/docker/embedder-onnx.Dockerfile, the slim embedder (ONNX Runtime, no TensorFlow), read and
linted without a Docker engine. It sits apart from deploy/*.Dockerfile (the images compose and k8s run)."""

from __future__ import annotations

from tests.conftest import ROOT
from tests.e2e.deploy.common import field_of, parse_dockerfile, run, tool

DOCKERFILE = ROOT / "deploy" / "docker" / "embedder-onnx.Dockerfile"


def test_hadolint():
    result = run([tool("hadolint"), str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_installs_the_onnx_extra_only_and_serves_the_onnx_backend():
    text = DOCKERFILE.read_text()
    assert '"/src[onnx]"' in text and "[embedder]" not in text  # no TensorFlow in the image
    assert "python -m embedder.onnx_export /opt/polyhead/encoder-onnx --precision int8" in text
    runtime = parse_dockerfile(DOCKERFILE)[-1]
    env = " ".join(i.args for i in runtime.instructions if i.op == "ENV")
    for setting in ("POLYHEAD_EMBEDDER_BACKEND=onnx", "POLYHEAD_EMBEDDER_ONNX_MODEL_DIR=/opt/polyhead/encoder-onnx",
                    "POLYHEAD_EMBEDDER_EXPORT_IF_MISSING=false"):
        assert setting in env
        assert field_of(setting.split("=")[0]), f"{setting}: no such embedder setting"


def test_build_context_is_filtered():
    ignore = DOCKERFILE.with_name(DOCKERFILE.name + ".dockerignore")
    assert ignore.read_text().splitlines()[2] == "*"
