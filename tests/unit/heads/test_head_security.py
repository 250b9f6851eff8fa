"""A head process locked down: admin needs its token, bodies have the gateway's limits, a body or
headers that stop arriving do not hold a connection, uvicorn's own 400s are JSON, every prediction
gets a server-issued id and the caller the gateway names is believed only with the token.

Served by uvicorn on loopback with the options `polyhead head serve` uses (polyhead.http_protocol);
the slow-client tests speak raw sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import httpx
import pytest_asyncio
import sqlalchemy as sa
import uvicorn

from polyhead.http_protocol import uvicorn_options
from tests.unit.conftest import _InLoopServer

TOKEN = "head-admin-token"
TIMEOUT_S = 0.5


@contextlib.asynccontextmanager
async def serve_like_production(app, settings, keepalive_s: float = 75):
    """uvicorn with the protocol and timeouts of `serve()`, on a free loopback port in this event loop."""
    sock = socket.create_server(("127.0.0.1", 0))
    options = {k: v for k, v in uvicorn_options(settings, keepalive_s).items() if k not in ("host", "port")}
    server = _InLoopServer(uvicorn.Config(app, lifespan="on", **options))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task
        sock.close()


@pytest_asyncio.fixture(scope="module")
async def locked_head(trained_head, embedder, tmp_path_factory):
    from heads.http_server import create_app
    from heads.settings import HeadSettings

    tmp = tmp_path_factory.mktemp("locked-head")
    settings = HeadSettings(config=trained_head.config, models_dir=trained_head.models_dir,
                            embedder_target=embedder.target, port=0, db_url=f"sqlite:///{tmp / 'inference.db'}",
                            spool_dir=tmp / "spool", version_poll_s=0, readiness_ttl_s=0, admin_token=TOKEN,
                            max_body_bytes=4096, body_read_timeout_s=TIMEOUT_S, header_read_timeout_s=TIMEOUT_S)
    app = create_app(settings)
    async with serve_like_production(app, settings) as port:
        yield app, port, settings.db_url


def raw(port: int, data: bytes, wait_s: float = 5.0) -> tuple[bytes, float]:
    """Send `data`, then read until the server closes the connection: (all it sent, seconds it took)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            chunks.append(b"<still open>")
    return b"".join(chunks), time.monotonic() - started


async def test_admin_reload_needs_the_admin_token(locked_head, trained_head):
    _, port, _ = locked_head
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
            refused = await client.post("/admin/reload", json={"version": "latest"}, headers=headers)
            assert refused.status_code == 401 and refused.json()["error"]["field"] == "authorization"
        ok = await client.post("/admin/reload", json={"version": trained_head.version},
                               headers={"authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()["version"] == trained_head.version


async def test_roles_audit_and_training_centroids_need_the_admin_token(locked_head, trained_head):
    """Every version's name and figures, the audit log and the training vectors are for the gateway and
    operators only; what every answer already carries (/info, /drift: the served version) stays open."""
    _, port, _ = locked_head
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for path in ("/roles", "/audit", "/audit?limit=5", "/drift/centroids"):
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
                refused = await client.get(path, headers=headers)
                assert refused.status_code == 401, (path, headers, refused.text)
                body = refused.json()["error"]
                assert body["field"] == "authorization" and "Bearer" in body["message"]
                assert trained_head.version not in refused.text
            ok = await client.get(path, headers={"authorization": f"Bearer {TOKEN}"})
            assert ok.status_code == 200, (path, ok.text)
        admin = {"authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/roles", headers=admin)).json()["champion"] == trained_head.version
        assert (await client.get("/drift/centroids", headers=admin)).json()["centroids"]
        assert (await client.get("/audit", headers=admin)).json()["entries"] == []
        # a bad query is still checked after the credential, never before
        assert (await client.get("/audit?limit=0")).status_code == 401
        assert (await client.get("/audit?limit=0", headers=admin)).status_code == 422
        for path in ("/info", "/drift", "/readyz", "/healthz"):
            assert (await client.get(path)).status_code == 200, path
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert "401" in paths["/roles"]["get"]["responses"] and "401" in paths["/drift/centroids"]["get"]["responses"]


async def test_a_head_without_an_admin_token_refuses_admin_routes(head):
    reply = await head.client.post("/admin/reload", json={"version": "latest"})
    assert reply.status_code == 401 and "no admin_token configured" in reply.json()["error"]["message"]
    for path in ("/roles", "/audit", "/drift/centroids"):  # never falls open
        reply = await head.client.get(path)
        assert reply.status_code == 401 and "no admin_token configured" in reply.json()["error"]["message"]


async def test_bodies_over_the_limit_get_413_declared_or_streamed(locked_head):
    _, port, _ = locked_head
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        big = await client.post("/predict", json={"texts": ["word " * 200] * 8})
        assert big.status_code == 413 and "max_body_bytes=4096" in big.json()["error"]["message"]

        async def chunks():  # no Content-Length: chunked, counted as it streams
            for _ in range(10):
                yield b" " * 1000

        streamed = await client.post("/predict", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413


async def test_each_prediction_gets_a_server_issued_id_and_the_caller_needs_the_token(locked_head):
    app, port, db_url = locked_head
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        claimed = await client.post("/predict", json={"text": "refund please"},
                                    headers={"x-polyhead-caller": "alice", "x-request-id": "mine"})
        vouched = await client.post("/predict", json={"text": "refund please"},
                                    headers={"x-polyhead-caller": "alice", "authorization": f"Bearer {TOKEN}"})
    ids = []
    for reply in (claimed, vouched):
        assert reply.status_code == 200, reply.text
        ids.append(reply.json()["prediction_id"])
        assert reply.headers["x-prediction-id"] == ids[-1] and len(ids[-1]) >= 22
    assert claimed.json()["request_id"] == "mine" and ids[0] != ids[1]
    assert await asyncio.to_thread(app.state.service.inference_log.flush, 10)
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            callers = dict(conn.execute(sa.text("SELECT issued_id, caller FROM predictions")).all())
    finally:
        engine.dispose()
    assert callers == {ids[0]: None, ids[1]: "alice"}  # a claim without the token is not believed


async def test_a_body_that_stops_arriving_gets_408_and_the_connection_closes(locked_head):
    _, port, _ = locked_head
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    answer, took = await asyncio.to_thread(raw, port, head + b'{"text": "only 25 bytes.')
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"<still open>" not in answer and TIMEOUT_S <= took < TIMEOUT_S + 3
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["field"] == "body"


async def test_headers_that_never_complete_do_not_hold_the_connection(locked_head):
    _, port, _ = locked_head
    for partial in (b"", b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le"):
        answer, took = await asyncio.to_thread(raw, port, partial)
        assert b"<still open>" not in answer and took < TIMEOUT_S + 3, (partial, answer)
    # an idle keep-alive connection still gets its next request answered within keepalive_s
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.get("/healthz")).status_code == 200
        await asyncio.sleep(TIMEOUT_S * 2)
        assert (await client.get("/healthz")).status_code == 200


async def test_uvicorns_own_400s_are_json_errors(locked_head):
    _, port, _ = locked_head
    for request in (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
                    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                    b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                    b"NOT HTTP AT ALL\r\n\r\n"):
        answer, _ = await asyncio.to_thread(raw, port, request)
        status, _, rest = answer.partition(b"\r\n")
        assert status.startswith(b"HTTP/1.1 400"), (request[:40], answer[:200])
        assert b"content-type: application/json" in rest.lower()
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "bad_request"
