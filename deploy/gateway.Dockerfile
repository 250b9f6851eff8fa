# syntax=docker/dockerfile:1
# polyhead gateway: routes requests by model name to the heads (no TensorFlow). Build from the
# repository root:
#   docker build -f deploy/gateway.Dockerfile -t polyhead/gateway:0.1.0 .
# It reads the head configs from /app/configs/heads (mount configs/heads there).
# Build context filter: deploy/gateway.Dockerfile.dockerignore.
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
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['gateway']))" > /tmp/requirements.txt \
 && pip install --no-cache-dir -r /tmp/requirements.txt
COPY README.md ./
COPY polyhead ./polyhead
COPY cli ./cli
COPY embedder ./embedder
COPY heads ./heads
COPY gateway ./gateway
RUN pip install --no-cache-dir "/src[gateway]" \
 && python -c "import importlib.util as u, sys; sys.exit('tensorflow in the gateway image' if u.find_spec('tensorflow') else 0)" \
 && pip uninstall --yes pip

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="polyhead-gateway" \
      org.opencontainers.image.description="polyhead gateway: one HTTP front door for every head"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    POLYHEAD_GATEWAY_HOST=0.0.0.0 \
    POLYHEAD_GATEWAY_PORT=8000 \
    POLYHEAD_GATEWAY_HEADS_DIR=/app/configs/heads
RUN groupadd --system --gid 10001 polyhead \
 && useradd --system --uid 10001 --gid polyhead --home-dir /app --no-create-home --shell /usr/sbin/nologin polyhead \
 && install -d -o polyhead -g polyhead /app /app/configs/heads
COPY --from=builder /opt/venv /opt/venv
WORKDIR /app
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('POLYHEAD_GATEWAY_PORT', '8000'), timeout=3)"]
ENTRYPOINT ["polyhead", "gateway", "serve"]
