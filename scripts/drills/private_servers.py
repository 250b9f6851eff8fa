"""Throwaway PostgreSQL and Redis servers for drills that stop the database (the machine's shared server must stay up).

`initdb` into a directory once, then `pg_ctl start/stop` on a loopback port: a real server going away and
coming back, not a cut proxy. Run as root, the cluster belongs to the `postgres` user (initdb refuses root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from pathlib import Path

import sqlalchemy as sa


def _bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if not found:
        raise RuntimeError(f"{name} not found: the drill needs PostgreSQL's server binaries")
    return str(found)


class PrivatePostgres:
    def __init__(self, data_dir: Path, port: int):
        self.data_dir, self.port = data_dir, port
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            pwd.getpwnam("postgres")  # KeyError: no user to own the cluster
            self._as_owner = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str) -> None:
        subprocess.run([*self._as_owner, *argv], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._as_owner:
            shutil.chown(self.data_dir, "postgres", "postgres")
        self._run(_bin("initdb"), "-D", str(self.data_dir), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        self._run(_bin("pg_ctl"), "-D", str(self.data_dir), "-w", "-l", str(self.data_dir / "server.log"),
                  "-o", f"-p {self.port} -k /tmp -c listen_addresses=127.0.0.1", "start")
        deadline = time.monotonic() + 30
        while True:
            try:
                engine = sa.create_engine(self.url)
                with engine.connect():
                    engine.dispose()
                    return
            except sa.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as when the database host goes away."""
        self._run(_bin("pg_ctl"), "-D", str(self.data_dir), "-w", "-m", "fast", "stop")

    def reset(self) -> None:
        """Drop what an earlier run left (the drill counts rows)."""
        engine = sa.create_engine(self.url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
        engine.dispose()


class PrivateRedis:
    """A redis-server on a loopback port, no persistence: stop() kills it, start() brings back an empty one."""

    def __init__(self, port: int):
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen([_bin("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                                       "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        import redis  # the embedder's own client library

        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
