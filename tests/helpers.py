"""Test helpers shared across test packages: a cuttable TCP proxy, a throwaway PostgreSQL schema."""

from __future__ import annotations

import os
import socket
import threading
import uuid

import sqlalchemy as sa

from tests.conftest import free_port


class TcpProxy:
    """127.0.0.1:port -> upstream, one thread per direction; cut() kills the listener and all links."""

    def __init__(self, upstream: tuple[str, int]):
        self.upstream = upstream
        self.port = free_port()
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None

    def start(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))  # SO_REUSEADDR: same port again
        threading.Thread(target=self._accept, args=(self._listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            socks, self._socks = [self._listener, *self._socks], set()
            self._listener = None
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)  # wakes accept()/recv() in the other threads
            except OSError:
                pass
            s.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
                server = socket.create_connection(self.upstream, timeout=2)
                server.settimeout(None)
                for s in (client, server):  # no Nagle: psycopg's pipelined executemany stalls on it
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                if listener.fileno() == -1:
                    return
                continue
            with self._lock:
                self._socks |= {client, server}
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass



class PostgresBackend:
    name = "postgresql"

    def __init__(self, base_url: str):
        self.schema = "polyhead_test_" + uuid.uuid4().hex[:12]  # a fresh database, as far as we can tell
        self._admin = sa.create_engine(base_url, isolation_level="AUTOCOMMIT")
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{self.schema}"')
        base = sa.make_url(base_url).update_query_dict({"options": f"-csearch_path={self.schema}"})
        self.url = base.render_as_string(hide_password=False)
        self.proxy = TcpProxy((base.host or "127.0.0.1", base.port or 5432))
        self.proxy.start()
        self.flaky_url = base.set(host="127.0.0.1", port=self.proxy.port).render_as_string(hide_password=False)
        self.dead_url = base.set(host="127.0.0.1", port=free_port()).render_as_string(hide_password=False)

    def down(self) -> None:
        self.proxy.cut()

    def up(self) -> None:
        self.proxy.start()

    def close(self) -> None:
        self.proxy.cut()
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{self.schema}" CASCADE')
        self._admin.dispose()


def settings_from_env(cls, env: dict[str, str], **init):
    """Build a settings object from exactly `env` (the caller's POLYHEAD_* vars set aside meanwhile)."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("POLYHEAD_")}
    os.environ.update(env)
    try:
        return cls(**init)
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)
