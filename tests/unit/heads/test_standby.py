"""A head process with a warm standby (`polyhead head serve --standby`): SIGKILL of the serving worker
under load through the gateway fails no request, and the standby takes over the same port.

The head is a real child process (fake embedder in this test's process, reached over loopback gRPC);
the gateway app runs here (ASGITransport) and reaches the head over HTTP.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import yaml

from tests.conftest import ROOT, free_port
from tests.unit.conftest import HEAD, HEAD_CONFIGS, asgi_client


def children(pid: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


async def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the head process exited"
            try:
                if (await client.get(url + "/readyz", timeout=1)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError("head not ready")


async def test_killing_the_serving_worker_fails_no_request(trained_head, embedder, tmp_path):
    from gateway.http_server import create_app
    from gateway.settings import GatewaySettings

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "head", "serve", str(trained_head.config), "--standby", "--port", str(port),
         "--models-dir", str(trained_head.models_dir), "--embedder-target", embedder.target,
         "--db-url", f"sqlite:///{tmp_path / 'inference.db'}", "--spool-dir", str(tmp_path / "spool"),
         "--version-poll-s", "0"],
        cwd=ROOT, stdout=open(tmp_path / "head.log", "wb"), stderr=subprocess.STDOUT)
    try:
        await wait_ready(url, proc)
        heads_dir = tmp_path / "heads"
        heads_dir.mkdir()
        shutil.copyfile(HEAD_CONFIGS / f"{HEAD}.yaml", heads_dir / f"{HEAD}.yaml")
        routes = tmp_path / "routes.yaml"
        routes.write_text(yaml.safe_dump({HEAD: url}))
        settings = GatewaySettings(heads_dir=heads_dir, routes_file=routes, embedder_target=embedder.target,
                                   reload_interval_s=0, port=0, db_url=f"sqlite:///{tmp_path / 'gw.db'}")
        async with asgi_client(create_app(settings), "http://gateway") as gateway:
            async with httpx.AsyncClient() as direct:
                first = (await direct.get(url + "/healthz")).json()["pid"]
            assert first in children(proc.pid) and len(children(proc.pid)) == 2  # active + standby

            statuses: list[int] = []
            stop = asyncio.Event()

            async def caller():
                while not stop.is_set():
                    reply = await gateway.post(f"/v1/models/{HEAD}/predict", json={"text": "refund my order"})
                    statuses.append(reply.status_code)

            callers = [asyncio.create_task(caller()) for _ in range(8)]
            await asyncio.sleep(1.0)
            before = len(statuses)
            os.kill(first, signal.SIGKILL)
            await asyncio.sleep(1.5)
            stop.set()
            await asyncio.gather(*callers)

            assert before > 0 and len(statuses) > before + 8  # traffic went on after the kill
            assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
            async with httpx.AsyncClient() as direct:
                second = (await direct.get(url + "/healthz")).json()["pid"]
            assert second != first and proc.poll() is None
            assert second in children(proc.pid) and len(children(proc.pid)) == 2  # a new standby waits
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0  # SIGTERM stops the parent and both workers
