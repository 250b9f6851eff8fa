# syntax=docker/dockerfile:1
# polyhead head: one image for every classifier head (numpy only: no TensorFlow in it); which head
# it serves is the config file given as its argument. Build from the repository root:
#   docker build -f deploy/head.Dockerfile -t polyhead/head:0.1.0 .
#   docker run -v "$PWD/configs/heads:/app/configs/heads:ro" -v "$PWD/models:/app/models:ro" \
#     polyhead/head:0.1.0 /app/configs/heads/sentiment.yaml
# Build context filter: deploy/head.Dockerfile.dockerignore.
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
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['head']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt
COPY README.md ./
COPY polyhead ./polyhead
COPY cli ./cli
COPY embedder ./embedder
COPY heads ./heads
COPY gateway ./gateway
# The build fails if anything pulled TensorFlow in: heads stay small.
RUN pip install --no-cache-dir "/src[head]" \
 && python -c "import importlib.util as u, sys; sys.exit('tensorflow in the head image' if u.find_spec('tensorflow') else 0)" \
 && pip uninstall --yes pip

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="polyhead-head" \
      org.opencontainers.image.description="polyhead classifier head (FastAPI, numpy): one config per container"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    POLYHEAD_HEAD_HOST=0.0.0.0 \
    POLYHEAD_HEAD_PORT=8000 \
    POLYHEAD_HEAD_MODELS_DIR=/app/models \
    POLYHEAD_HEAD_SPOOL_DIR=/app/var/spool
RUN groupadd --system --gid 10001 polyhead \
 && useradd --system --uid 10001 --gid polyhead --home-dir /app --no-create-home --shell /usr/sbin/nologin polyhead \
 && install -d -o polyhead -g polyhead /app /app/configs/heads /app/models /app/var /app/var/spool
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('POLYHEAD_HEAD_PORT', '8000'), timeout=3)"]
ENTRYPOINT ["polyhead", "head", "serve"]
