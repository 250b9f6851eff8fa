"""The embedder's /metrics port: answers Prometheus, and a client that stops mid-request is dropped
after the read timeout (raw sockets on loopback)."""

from __future__ import annotations

import socket
import time

import httpx

from embedder.metrics import start_metrics_server


def test_metrics_port_answers_and_drops_stalled_clients():
    httpd = start_metrics_server(0, "127.0.0.1", timeout_s=0.5)
    try:
        port = httpd.server_port
        reply = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert reply.status_code == 200 and "polyhead_embedder_requests_total" in reply.text
        for partial in (b"", b"GET /metrics HTTP/1.1\r\nHost: x\r\nAcc"):
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(partial)
                try:
                    while s.recv(4096):
                        pass
                    closed = True
                except TimeoutError:
                    closed = False
            assert closed and time.monotonic() - started < 3, partial
    finally:
        httpd.shutdown()
        httpd.server_close()
