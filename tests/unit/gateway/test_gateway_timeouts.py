"""The gateway under slow clients, served as `polyhead gateway serve` serves it (polyhead.http_protocol):
a body that stops arriving gets 408 and the connection closes; headers that never complete and
uvicorn's own 400s likewise (raw sockets, loopback)."""

from __future__ import annotations

import asyncio
import json

import pytest_asyncio

from tests.unit.conftest import HEAD
from tests.unit.heads.test_head_security import raw, serve_like_production

TIMEOUT_S = 0.5


@pytest_asyncio.fixture(scope="module")
async def gateway_port(gateway_routes, embedder, head):
    from gateway.http_server import create_app
    from gateway.settings import GatewaySettings

    heads_dir, routes = gateway_routes
    settings = GatewaySettings(heads_dir=heads_dir, routes_file=routes, embedder_target=embedder.target,
                               reload_interval_s=0, port=0, db_url=head.db_url, body_read_timeout_s=TIMEOUT_S,
                               header_read_timeout_s=TIMEOUT_S)
    async with serve_like_production(create_app(settings), settings) as port:
        yield port


async def test_incomplete_bodies_and_headers_do_not_hold_gateway_connections(gateway_port):
    request = (f"POST /v1/models/{HEAD}/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               "Content-Length: 100\r\n\r\n").encode() + b'{"text": "only 25 bytes.'
    # Several at once: each is answered and closed on its own clock, none waits for the others.
    answers = await asyncio.gather(*(asyncio.to_thread(raw, gateway_port, request) for _ in range(8)))
    for answer, took in answers:
        assert answer.startswith(b"HTTP/1.1 408") and took < TIMEOUT_S + 3, answer
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "timeout"
    answer, took = await asyncio.to_thread(raw, gateway_port, b"POST /v1/classify HTTP/1.1\r\nHost")
    assert b"<still open>" not in answer and took < TIMEOUT_S + 3


async def test_gateway_answers_uvicorns_400s_as_json(gateway_port):
    answer, _ = await asyncio.to_thread(raw, gateway_port, b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n"
                                                           b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    assert "error" in json.loads(answer.split(b"\r\n\r\n", 1)[1])
