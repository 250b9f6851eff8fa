"""`polyhead up` end to end: first run trains, children are supervised, new heads join, stop is clean."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import ROOT, free_port
from tests.e2e.heads.fixtures import write_head_config

pytestmark = pytest.mark.timeout(400)


def wait_for(check, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            pass
        time.sleep(0.25)
    raise TimeoutError(what)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def run_up(tmp_path: Path, exported_model: Path, gateway_port: int):
    heads = tmp_path / "heads"
    ports = [str(free_port()) for _ in range(3)]
    cmd = [sys.executable, "-m", "cli", "up", "--heads-dir", str(heads), "--models-dir", str(tmp_path / "models"),
           "--var-dir", str(tmp_path / "var"), "--gateway-port", str(gateway_port), "--embedder-port", ports[0],
           "--embedder-metrics-port", ports[1], "--head-base-port", ports[2]]
    env = {**os.environ, "POLYHEAD_EMBEDDER_MODEL_HANDLE": str(exported_model)}
    log = open(tmp_path / "up.log", "ab")
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)


def test_up_trains_supervises_picks_up_new_heads_and_stops_cleanly(exported_model, tmp_path):
    write_head_config(tmp_path / "heads", "tickets")
    gateway_port = free_port()
    gw = f"http://127.0.0.1:{gateway_port}"
    up = run_up(tmp_path, exported_model, gateway_port)
    state_file = tmp_path / "var" / "stack.json"
    try:
        wait_for(lambda: httpx.get(gw + "/v1/models/tickets", timeout=2).json()["ready"], 240, "stack did not come up")
        r = httpx.post(gw + "/v1/models/tickets/predict", json={"text": "refund my double charge"})
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] == "billing"
        assert "training 1 head" in (tmp_path / "up.log").read_text()
        wait_for(lambda: f"console: {gw}/ui" in (tmp_path / "up.log").read_text(), 30, "no console address printed")
        assert httpx.get(gw + "/ui").headers["content-type"].startswith("text/html")

        # Heads run packed by default (heads_per_process=0): the gateway routes to the head's path there.
        routes = yaml.safe_load((tmp_path / "var" / "routes.yaml").read_text())
        assert routes["tickets"].endswith("/heads/tickets")

        # A crashed head process is restarted by the supervisor.
        state = json.loads(state_file.read_text())
        head = next(s for s in state["services"] if "tickets" in s.get("heads", []))
        assert head["name"].startswith("heads:pool-")
        os.kill(head["pid"], signal.SIGKILL)
        wait_for(lambda: next(s for s in json.loads(state_file.read_text())["services"]
                              if s["name"] == head["name"])["pid"] != head["pid"], 30, "head not restarted")
        wait_for(lambda: httpx.post(gw + "/v1/models/tickets/predict", json={"text": "refund"}).status_code == 200,
                 30, "restarted head not serving")

        # A new head config is trained, started and routed while everything keeps running.
        write_head_config(tmp_path / "heads", "newcomer")
        wait_for(lambda: httpx.post(gw + "/v1/models/newcomer/predict", json={"text": "app crashes"}).status_code == 200,
                 120, "new head not routable")

        # One text, both models (in two head processes now: the newcomer joined a new pool).
        both = httpx.post(gw + "/v1/classify", json={"text": "refund my double charge", "models": "*"}).json()
        assert sorted(both["results"]) == ["newcomer", "tickets"]
        assert all(r["predictions"][0]["label"] == "billing" for r in both["results"].values())

        status = subprocess.run([sys.executable, "-m", "cli", "status", "--var-dir", str(tmp_path / "var")],
                                cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert status.returncode == 0 and "newcomer" in status.stdout and "SERVING" in status.stdout

        pids = [s["pid"] for s in json.loads(state_file.read_text())["services"]]
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
    assert up.returncode == 0
    assert not any(pid_alive(p) for p in pids), "children left running after SIGTERM"
    assert not state_file.exists()

    # Second run: nothing is re-trained, and it is up quickly.
    started = time.monotonic()
    up = run_up(tmp_path, exported_model, gateway_port)
    try:
        wait_for(lambda: httpx.get(gw + "/v1/models/newcomer", timeout=2).json()["ready"], 120, "second start failed")
        log = (tmp_path / "up.log").read_text()
        assert log.count("with no artifact for the served encoder yet") == 2  # the first run and the newcomer only
        assert time.monotonic() - started < 90
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(60)
