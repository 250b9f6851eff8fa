"""Head fixtures: a trained artifact (real embedder), head services as real child processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port

TICKETS = ROOT / "tests" / "fixtures" / "heads"


def write_head_config(folder: Path, name: str, **serving) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        shutil.copyfile(TICKETS / f"tickets_{split}.jsonl", folder / f"{name}_{split}.jsonl")
    lines = [f"name: {name}", "description: support ticket routing (test head)", "dataset:",
             f"  train: {name}_train.jsonl", f"  test: {name}_test.jsonl"]
    if serving:
        lines.append("serving:")
        lines += [f"  {k}: {v}" for k, v in serving.items()]
    path = folder / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def train(config_path: Path, models_dir: Path, target: str, seed: int | None = None, promote: bool = False):
    from embedder.client import EmbedderClient
    from heads.config import load_head_config
    from heads.training.run import train_from_config

    config = load_head_config(config_path)
    if seed is not None:
        config.seed = seed
    with EmbedderClient(target, timeout_s=60) as client:
        return train_from_config(config, models_dir, client, console=False, promote=promote)


@pytest.fixture(scope="session")
def trained_tickets(server_process, tmp_path_factory):
    """A head config + its trained artifact (two versions, so rollbacks have somewhere to go; the
    second promoted, so it is the champion and the first a challenger)."""
    _, target = server_process
    folder = tmp_path_factory.mktemp("head")
    config = write_head_config(folder / "configs", "tickets")
    models = folder / "models"
    first = train(config, models, target, seed=1)
    second = train(config, models, target, seed=2, promote=True)
    return config, models, first, second


# Every head these tests start has this admin token (POST /admin/reload needs it).
ADMIN_TOKEN = "e2e-admin-token"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


def start_head_process(config: Path | list[Path], models_dir: Path, target: str, *, db_url: str, spool_dir: Path,
                       port: int | None = None, log: Path | None = None, extra_env: dict | None = None,
                       extra_args: tuple[str, ...] = ()):
    """`config`: one head config (a one-head process), or several (one packed process)."""
    port = port or free_port()
    configs = [str(c) for c in config] if isinstance(config, (list, tuple)) else [str(config)]
    cmd = [sys.executable, "-m", "cli", "head", "serve", *configs, *extra_args, "--port", str(port),
           "--models-dir", str(models_dir), "--embedder-target", target, "--db-url", db_url,
           "--spool-dir", str(spool_dir), "--version-poll-s", "0.5"]
    out = open(log, "ab") if log else subprocess.DEVNULL
    env = {**os.environ, "POLYHEAD_HEAD_ADMIN_TOKEN": ADMIN_TOKEN, **(extra_env or {})}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"head exited with {proc.returncode}; log: {log.read_text() if log else ''}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        time.sleep(0.1)
    proc.kill()
    raise TimeoutError("head did not start")


@contextlib.contextmanager
def head_process(*args, **kwargs):
    proc, url = start_head_process(*args, **kwargs)
    try:
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_ready(url: str, timeout_s: float = 15) -> dict:
    deadline = time.monotonic() + timeout_s
    body = {}
    while time.monotonic() < deadline:
        r = httpx.get(url + "/readyz", timeout=3)
        body = r.json()
        if r.status_code == 200:
            return body
        time.sleep(0.2)
    raise TimeoutError(f"head not ready: {body}")
