"""The Dockerfiles (deploy/*.Dockerfile), read and linted without a Docker engine."""

from __future__ import annotations

import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cli import deploy
from tests.conftest import ROOT, free_port
from tests.helpers import settings_from_env
from tests.e2e.deploy.common import (DOCKERFILES, SETTINGS_BY_IMAGE, dockerignore_rules, env_of, field_of,
                                 global_args, image_of_dockerfile, is_ignored, parse_dockerfile, polyhead_cmd, run, tool)

IDS = [p.name for p in DOCKERFILES]
PINNED_BASE = re.compile(r"^python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}$")
BUILD_TOOLS = ("apt-get", "apt ", "gcc", "g++", "build-essential", "make ", "cc ")


def test_one_dockerfile_per_service_image():
    assert {image_of_dockerfile(p) for p in DOCKERFILES} == set(deploy.IMAGES) == {"embedder", "head", "gateway"}
    for rel in deploy.DOCKERFILES.values():
        assert (ROOT / rel).is_file(), rel


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_hadolint(dockerfile):
    result = run([tool("hadolint"), str(dockerfile)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_multi_stage_pinned_base_non_root(dockerfile):
    stages = parse_dockerfile(dockerfile)
    assert len(stages) >= 2, "build in a builder stage, copy the venv into a slim runtime stage"
    for stage in stages:
        assert PINNED_BASE.match(stage.base), f"base not pinned to a patch tag + digest: {stage.base}"
    assert len({s.base for s in stages}) == 1, "builder and runtime must share the base (the venv's python)"
    # ... which one build argument replaces (deploy/build_images.sh: a local base where no registry is reachable).
    assert "BASE_IMAGE" in global_args(dockerfile)
    assert all(line.split()[1] == "${BASE_IMAGE}" for line in dockerfile.read_text().splitlines()
               if line.startswith("FROM "))
    builder, runtime = stages[0], stages[-1]
    assert builder.name == "builder"
    copies_from_builder = [i for i in runtime.ops("COPY") if i.flags_and_rest()[0].get("from") == "builder"]
    assert any(i.flags_and_rest()[1][-1] == "/opt/venv" for i in copies_from_builder), "runtime copies the venv"
    user = runtime.ops("USER")
    assert user, "the runtime stage must switch to a non-root user"
    uid = user[-1].args.split(":")[0]
    assert uid.isdigit() and int(uid) != 0 and int(uid) == deploy.UID
    # No build tools installed in the runtime stage (and none are needed in the builder: wheels only).
    for ins in runtime.ops("RUN"):
        assert not any(t in ins.args for t in BUILD_TOOLS), f"line {ins.line}: {ins.args}"
        assert "pip install" not in ins.args, f"line {ins.line}: install in the builder stage"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_every_copy_source_exists_and_is_in_the_build_context(dockerfile):
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name} missing (BuildKit reads <Dockerfile>.dockerignore)"
    rules = dockerignore_rules(ignore)
    stage_names = {s.name for s in parse_dockerfile(dockerfile) if s.name}
    sources = []
    for stage in parse_dockerfile(dockerfile):
        for ins in stage.ops("COPY") + stage.ops("ADD"):
            flags, words = ins.flags_and_rest()
            if flags.get("from") in stage_names:
                continue
            assert ins.op == "COPY", f"line {ins.line}: use COPY, not ADD"
            sources += words[:-1]
    assert sources
    for src in sources:
        path = ROOT / src
        assert path.exists(), f"COPY source {src} does not exist in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
        assert files, src
        for f in files:
            rel = f.relative_to(ROOT).as_posix()
            assert not is_ignored(rel, rules), f"{rel} is COPYed but excluded by {ignore.name}"
    # ... and the context stays small: no tests, data, models or virtualenv.
    for rel in ("tests/conftest.py", "configs/heads/sentiment.yaml", "models/x", ".venv/bin/python", ".git/HEAD"):
        assert is_ignored(rel, rules), f"{rel} would be sent to the builder"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_the_build_context_builds_the_package(dockerfile, tmp_path):
    """What the builder stage COPYs into /src is enough for `pip install /src[...]` (built here as
    a wheel, without the dependencies)."""
    builder = parse_dockerfile(dockerfile)[0]
    assert any(ins.args.startswith("/src") for ins in builder.ops("WORKDIR"))
    src = tmp_path / "src"
    src.mkdir()
    for ins in builder.ops("COPY"):
        flags, words = ins.flags_and_rest()
        assert not flags
        for source in words[:-1]:
            path = ROOT / source
            if path.is_dir():
                shutil.copytree(path, src / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(path, src / source)
    result = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                  "-w", str(tmp_path / "wheels"), str(src)], cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    wheel = next((tmp_path / "wheels").glob("polyhead-*.whl"))
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("cli/main.py", "embedder/grpc_server.py", "embedder/v1/embedder_pb2.py",
                   "heads/http_server.py", "gateway/http_server.py", "gateway/console/static/index.html",
                   "gateway/console/static/app.js", "gateway/console/static/console.css"):
        assert module in names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_entrypoint_is_a_real_cli_command(dockerfile):
    runtime = parse_dockerfile(dockerfile)[-1]
    entry = runtime.ops("ENTRYPOINT")[-1].exec_form()
    cmd = runtime.ops("CMD")[-1].exec_form() if runtime.ops("CMD") else []
    assert entry[0] == "polyhead"
    image = image_of_dockerfile(dockerfile)
    assert entry[1:] == [image, "serve"], entry
    result = run([*polyhead_cmd(), *entry[1:], *cmd, "--help"])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_env_vars_and_ports_match_the_settings(dockerfile):
    image = image_of_dockerfile(dockerfile)
    cls = SETTINGS_BY_IMAGE[image]
    runtime = parse_dockerfile(dockerfile)[-1]
    env = env_of(runtime)
    polyhead_env = {k: v for k, v in env.items() if k.startswith("POLYHEAD_")}
    prefix = cls.model_config["env_prefix"]
    for key in polyhead_env:
        assert key.startswith(prefix), f"{key} in the {image} image"
        assert field_of(key), f"{key} is not a field of {cls.__name__}"
    assert env[f"{prefix}HOST"] == "0.0.0.0", "containers must listen on every interface"
    # The settings as the container would build them from its environment.
    extra = {"config": ROOT / "configs" / "heads" / "sentiment.yaml"} if image == "head" else {}
    settings = settings_from_env(cls, polyhead_env, **extra)
    exposed = {int(p) for ins in runtime.ops("EXPOSE") for p in ins.args.split()}
    wanted = {settings.port} | ({settings.metrics_port} if image == "embedder" else set())
    assert exposed == wanted
    assert settings.port == {"embedder": deploy.EMBEDDER_PORT, "head": deploy.HEAD_PORT,
                             "gateway": deploy.GATEWAY_PORT}[image]
    if image == "embedder":
        assert Path(settings.model_handle).as_posix() == "/opt/polyhead/encoder" and not settings.export_if_missing


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=IDS)
def test_healthcheck_is_declared(dockerfile):
    runtime = parse_dockerfile(dockerfile)[-1]
    (check,) = runtime.ops("HEALTHCHECK")
    args = check.args
    assert "--start-period=" in args and "CMD" in args
    if image_of_dockerfile(dockerfile) == "embedder":
        assert deploy.EMBEDDER_HEALTHCHECK in args
        copies = [i.flags_and_rest()[1] for i in runtime.ops("COPY")]
        assert ["deploy/embedder_healthcheck.py", deploy.EMBEDDER_HEALTHCHECK] in copies
    else:
        assert "/healthz" in args and "urllib.request" in args


def test_head_and_gateway_images_have_no_tensorflow():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for extra in ("head", "gateway"):
        for requirement in project["dependencies"] + project["optional-dependencies"][extra]:
            name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()
            assert not name.startswith(("tensorflow", "tf-", "tf_", "keras", "torch")), f"{extra}: {requirement}"
    for image in ("head", "gateway"):
        text = (ROOT / "deploy" / f"{image}.Dockerfile").read_text()
        assert f'"/src[{image}]"' in text and "find_spec('tensorflow')" in text


# ------------------------------------------------------------------------------------------
# The health checks themselves, against tiny real servers.

def _grpc_health_server(status):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", status)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


@pytest.mark.parametrize("status, rc", [(health_pb2.HealthCheckResponse.SERVING, 0),
                                        (health_pb2.HealthCheckResponse.NOT_SERVING, 1)])
def test_embedder_healthcheck_script(status, rc):
    server, port = _grpc_health_server(status)
    try:
        result = run([sys.executable, str(ROOT / "deploy" / "embedder_healthcheck.py")],
                     env={**os.environ, "POLYHEAD_EMBEDDER_PORT": str(port)}, timeout=30)
    finally:
        server.stop(None)
    assert result.returncode == rc, result.stdout + result.stderr


def test_embedder_healthcheck_script_fails_with_no_server():
    result = run([sys.executable, str(ROOT / "deploy" / "embedder_healthcheck.py")],
                 env={**os.environ, "POLYHEAD_EMBEDDER_PORT": str(free_port())}, timeout=30)
    assert result.returncode == 1


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("image", ["head", "gateway"])
def test_http_healthcheck_command(image):
    """The HEALTHCHECK of the head and gateway images (and compose's) runs and tells up from down."""
    runtime = parse_dockerfile(ROOT / "deploy" / f"{image}.Dockerfile")[-1]
    exec_form = runtime.ops("HEALTHCHECK")[0].args.split("CMD", 1)[1].strip()
    import json

    argv = json.loads(exec_form)
    assert argv[:2] == ["python", "-c"]
    port_env = f"POLYHEAD_{image.upper()}_PORT"
    assert argv == deploy.http_healthcheck(port_env, 8000)[1:], "Dockerfile and compose healthchecks differ"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        up = subprocess.run([sys.executable, *argv[1:]], env={**os.environ, port_env: str(server.server_port)},
                            capture_output=True, timeout=30)
    finally:
        server.shutdown()
    down = subprocess.run([sys.executable, *argv[1:]], env={**os.environ, port_env: str(free_port())},
                          capture_output=True, timeout=30)
    assert up.returncode == 0, up.stderr
    assert down.returncode != 0


# ------------------------------------------------------------------------------------------
# What each image installs is enough for what its service imports (the head image once lacked
# cachetools: found only when a container first started).

IMPORTS_WITHIN_EXTRA = r"""
import importlib, pkgutil, re, sys, tomllib
from importlib import metadata
from packaging.requirements import Requirement

extra, packages = sys.argv[1], sys.argv[2:]
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
installed, todo = set(), [(Requirement(r), "") for r in project["dependencies"] + project["optional-dependencies"][extra]]
while todo:  # the closure of the image's requirements, extras included, markers evaluated
    req, via_extra = todo.pop()
    if req.marker and not req.marker.evaluate({"extra": via_extra}):
        continue
    key = (norm(req.name), tuple(sorted(req.extras)))
    if key in installed:
        continue
    installed.add(key)
    for sub in metadata.requires(req.name) or []:
        for wanted in ("", *req.extras):
            todo.append((Requirement(sub), wanted))
dists = {name for name, _ in installed}
owners = metadata.packages_distributions()
ours = {"polyhead", "cli", "heads", "gateway", "embedder"}


class NotInTheImage:  # imports of other distributions fail as they would in the image
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in owners and top not in ours and not {norm(d) for d in owners[top]} & dists:
            raise ModuleNotFoundError(f"No module named {top!r}", name=top)


sys.meta_path.insert(0, NotInTheImage())
outside = {}
for package in packages:
    for info in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as err:
            outside.setdefault(err.name, info.name)
outside = sorted(outside.items())
print("OUTSIDE", outside)
"""


@pytest.mark.parametrize("extra, packages", [("head", ["heads", "polyhead"]), ("gateway", ["gateway", "polyhead"])])
def test_service_imports_are_installed_by_its_extra(extra, packages):
    """Every module of the service's packages imports only distributions that `pip install .[extra]`
    brings (the image's install): a module outside it is a container that cannot start."""
    done = subprocess.run([sys.executable, "-c", IMPORTS_WITHIN_EXTRA, extra, *packages], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "OUTSIDE []" in done.stdout, f"{extra} image lacks: {done.stdout.strip()}"
