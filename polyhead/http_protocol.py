"""The uvicorn HTTP protocol our servers run: uvicorn's own (httptools, else h11) with two changes.

- A connection that has not sent complete request headers within `header_read_timeout_s` (a
  fresh connection that sends nothing, or a request line and half its headers) is closed: uvicorn
  only times out idle keep-alive connections, so such a connection was held forever. A body that
  stops arriving is the app's side (polyhead.http.BodyReadTimeout: 408).
- The 400s uvicorn answers itself, before any app code runs (a malformed request line, a bad
  Content-Length, Content-Length with chunked, an over-long URL), are our JSON error shape
  `{"error": {"type": "bad_request", "message", "field"}}` instead of plain text.
"""

from __future__ import annotations

import json
import os
from typing import Any

from polyhead.settings import HttpServiceSettings


def _base_protocol() -> type:
    try:  # what uvicorn's "auto" picks
        import httptools  # noqa: F401

        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol
    except ImportError:  # pragma: no cover - httptools ships with uvicorn[standard]
        from uvicorn.protocols.http.h11_impl import H11Protocol

        return H11Protocol


# The header timeout travels by environment variable: uvicorn's worker processes (gateway --workers N)
# are spawned and import this class by name, so it cannot be a closure over the setting.
HEADER_TIMEOUT_ENV = "POLYHEAD_HTTP_HEADER_READ_TIMEOUT_S"
DEFAULT_HEADER_READ_TIMEOUT_S = 10.0


class PolyheadHttpProtocol(_base_protocol()):
    _header_timer = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if not self._in_request():
            self._arm_header_timer()  # a new request begins: its headers must complete in time
        super().data_received(data)
        if self._in_request():
            self._cancel_header_timer()

    def connection_lost(self, exc) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _in_request(self) -> bool:
        cycle = getattr(self, "cycle", None)
        return cycle is not None and not cycle.response_complete

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            timeout_s = float(os.environ.get(HEADER_TIMEOUT_ENV, DEFAULT_HEADER_READ_TIMEOUT_S))
            self._header_timer = self.loop.call_later(timeout_s, self._headers_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_timed_out(self) -> None:
        self._header_timer = None
        if not self._in_request() and not self.transport.is_closing():
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": {"type": "bad_request", "message": f"bad request: {msg}",
                                     "field": "request"}}).encode("ascii")
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"content-type: application/json\r\n", b"content-length: ", str(len(body)).encode(), b"\r\n",
                 b"connection: close\r\n", b"\r\n"]
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def uvicorn_options(settings: HttpServiceSettings, keepalive_s: float) -> dict[str, Any]:
    """What every polyhead HTTP server passes uvicorn: the protocol above (by name: spawned workers
    import it) and its timeouts. Sets this process's header timeout (inherited by its workers)."""
    os.environ[HEADER_TIMEOUT_ENV] = str(settings.header_read_timeout_s)
    return dict(host=settings.host, port=settings.port, log_config=None, access_log=False,
                timeout_graceful_shutdown=10, timeout_keep_alive=int(keepalive_s),
                http="polyhead.http_protocol:PolyheadHttpProtocol")
