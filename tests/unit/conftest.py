"""Unit-layer fixtures: the whole stack in ONE process on the fake embedding model, no TensorFlow.

- embedder: the real gRPC server (`EmbedderServer`, grpc.aio) on a free loopback port, over
  `FakeEmbeddingServable` (embedder/fake.py);
- head: a head app (`heads.http_server.create_app`) trained in-process on configs/datasets through
  that embedder, served by uvicorn inside the test event loop (the gateway reaches heads over real
  HTTP with aiohttp), its inference log in SQLite under tmp;
- gateway: the gateway app through httpx's ASGITransport, its lifespan run here.

Everything shares the session event loop (pytest.ini: asyncio loop scope "session"), so the
grpc.aio channels created by the head and the gateway live on the loop that serves them.
The e2e layer (tests/e2e) runs the same services on the real model, as child processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import uvicorn
import yaml
from fastapi import FastAPI
from prometheus_client import REGISTRY

from embedder.fake import FakeEmbeddingServable
from embedder.grpc_server import EmbedderServer
from embedder.settings import EmbedderSettings
from tests.conftest import ROOT, free_port

HEAD = "support-routing"  # a demo head: 137 training texts, 5 labels
OFFLINE_HEAD = "sentiment"  # routed by the gateway to a port nobody listens on
HEAD_CONFIGS = ROOT / "configs" / "heads"


@pytest.fixture(autouse=True)
def _no_tensorflow():
    """A unit test that pulls TensorFlow in fails here (tests/unit/test_no_tensorflow.py checks imports)."""
    before = "tensorflow" in sys.modules
    yield
    if not before:
        assert "tensorflow" not in sys.modules, "this unit test imported TensorFlow; the unit layer must not"


# -- embedder --------------------------------------------------------------------------------------
@dataclass
class RunningEmbedder:
    server: EmbedderServer
    target: str

    @property
    def model(self) -> FakeEmbeddingServable:
        return self.server.servable


@contextlib.asynccontextmanager
async def running_embedder(servable: FakeEmbeddingServable | None = None, **overrides) -> AsyncIterator[RunningEmbedder]:
    """A real grpc.aio embedder server on a free loopback port over a fake model (its own cache)."""
    settings = EmbedderSettings(**{"model_handle": "fake://", "port": 0, "metrics_port": 0, "max_wait_ms": 1, **overrides})
    server = EmbedderServer(settings, servable=servable)
    await server.start()
    try:
        yield RunningEmbedder(server, f"127.0.0.1:{server.port}")
    finally:
        await server.stop(grace=0.5)


def embedder_calls(method: str) -> float:
    """RPCs answered OK by every in-process embedder so far (a process-wide Prometheus counter)."""
    return REGISTRY.get_sample_value("polyhead_embedder_requests_total", {"method": method, "code": "OK"}) or 0.0


@pytest_asyncio.fixture(scope="session")
async def embedder() -> AsyncIterator[RunningEmbedder]:
    async with running_embedder() as running:
        yield running


# -- head ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainedHead:
    config: Path
    models_dir: Path
    version: str
    labels: list[str]
    fingerprint: str


def train_in_process(config: Path, models_dir: Path, target: str):
    """`polyhead train`'s pipeline, its embeddings streamed from the in-process embedder."""
    from embedder.client import EmbedderClient
    from heads.config import load_head_config
    from heads.training.run import train_from_config

    with EmbedderClient(target, timeout_s=30) as client:
        return train_from_config(load_head_config(config), models_dir, client, console=False)


@pytest_asyncio.fixture(scope="session")
async def trained_head(embedder, tmp_path_factory) -> TrainedHead:
    models = tmp_path_factory.mktemp("models")
    config = HEAD_CONFIGS / f"{HEAD}.yaml"
    # A blocking gRPC client on this thread would stall the loop that serves it: train on a worker thread.
    report = await asyncio.to_thread(train_in_process, config, models, embedder.target)
    manifest = json.loads((report.path / "manifest.json").read_text())
    return TrainedHead(config, models, report.version, manifest["labels"], manifest["embedder_fingerprint"])


class _InLoopServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield  # Ctrl-C stays with the test runner


@contextlib.asynccontextmanager
async def serve_http(app: FastAPI) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on a free loopback port inside the running event loop."""
    sock = socket.create_server(("127.0.0.1", 0))
    server = _InLoopServer(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped before it started")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def head_app(trained: TrainedHead, target: str, tmp: Path, *, models_dir: Path | None = None, **settings) -> FastAPI:
    from heads.http_server import create_app
    from heads.settings import HeadSettings

    return create_app(HeadSettings(
        config=trained.config, models_dir=models_dir or trained.models_dir, embedder_target=target, port=0,
        db_url=f"sqlite:///{tmp / 'inference.db'}", spool_dir=tmp / "spool",
        version_poll_s=0, readiness_ttl_s=0, embedder_timeout_s=5, **settings,
    ))


@contextlib.asynccontextmanager
async def asgi_client(app: FastAPI, base_url: str = "http://app") -> AsyncIterator[httpx.AsyncClient]:
    """httpx over ASGITransport, with the app's lifespan run around it (ASGITransport does not)."""
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as client:
            yield client


@dataclass
class RunningHead:
    app: FastAPI
    url: str  # where uvicorn serves it (the gateway's route)
    client: httpx.AsyncClient  # ASGITransport to the same app, for head-level tests
    db_url: str

    async def flush_log(self) -> None:
        assert await asyncio.to_thread(self.app.state.service.inference_log.flush, 10)


@pytest_asyncio.fixture(scope="session")
async def head(trained_head, embedder, tmp_path_factory) -> AsyncIterator[RunningHead]:
    tmp = tmp_path_factory.mktemp("head")
    app = head_app(trained_head, embedder.target, tmp)
    async with serve_http(app) as url:  # runs the lifespan: artifact loaded, log writer started
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://head") as client:
            yield RunningHead(app, url, client, f"sqlite:///{tmp / 'inference.db'}")


# -- gateway ---------------------------------------------------------------------------------------
def gateway_app(heads_dir: Path, routes_file: Path, target: str, db_url: str | None = None, **settings) -> FastAPI:
    from gateway.http_server import create_app
    from gateway.settings import GatewaySettings

    db = {"db_url": db_url} if db_url else {}  # reports and feedback: the heads' inference DB
    return create_app(GatewaySettings(heads_dir=heads_dir, routes_file=routes_file, embedder_target=target,
                                      reload_interval_s=0, port=0, info_timeout_s=2, **db, **settings))


@pytest.fixture(scope="session")
def gateway_routes(head, tmp_path_factory) -> tuple[Path, Path]:
    """heads_dir with two configs: HEAD routed to the in-process head, OFFLINE_HEAD to a closed port."""
    folder = tmp_path_factory.mktemp("gateway")
    heads_dir = folder / "heads"
    heads_dir.mkdir()
    for name in (HEAD, OFFLINE_HEAD):
        shutil.copyfile(HEAD_CONFIGS / f"{name}.yaml", heads_dir / f"{name}.yaml")
    routes = folder / "routes.yaml"
    routes.write_text(yaml.safe_dump({HEAD: head.url, OFFLINE_HEAD: f"http://127.0.0.1:{free_port()}"}))
    return heads_dir, routes


@pytest_asyncio.fixture(scope="session")
async def gateway(gateway_routes, embedder, head) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(gateway_app(*gateway_routes, embedder.target, head.db_url), "http://gateway") as client:
        yield client
