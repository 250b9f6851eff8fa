"""The images built for real and the stack run in containers (podman), wired as docker-compose.yml says.

deploy/build_images.sh builds the three images (from a local Debian bookworm base made with
debootstrap when no registry is reachable; cached between runs), then:

1. the `postgres` and `embedder` services start and their compose health checks pass;
2. a one-shot training container (the head image, `polyhead train` over every demo head config)
   fills the models volume through the embedder container: what `polyhead up` does before serving
   and what deploy/README.md asks of compose users (`polyhead train` first);
3. the packed `heads` service (every head in one process) and the `gateway` start as compose says;
4. a predict, a /v1/classify, an /v1/embeddings and a feedback go through the gateway's published port;
5. everything stops on SIGTERM, in time, with exit code 0.

The polyhead containers run with the Kubernetes manifests' security context (read-only root file
system, a small /tmp, no capabilities, no privilege escalation), stricter than compose's.

Substitutions, because the host reaches no image registry: `postgres` runs Debian's PostgreSQL 15 on
the local base (tests/fixtures/containers/postgres.Containerfile: same variables, data directory and
pg_isready health check as postgres:16.10-bookworm); no `prometheus` (its image cannot be pulled).
`./models` is a volume filled by step 2 (compose bind-mounts it read-only, the same).

Marked `needs_containers`: skipped with a reason where podman is absent (a failure under
POLYHEAD_REQUIRE_SERVICES=1, .ci/run installs podman). Set POLYHEAD_CONTAINER_REPORT=path.json
to keep the measurements (image sizes, cold starts, RSS, build time) deploy/README.md records.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import httpx
import pytest

from cli import deploy
from tests.conftest import ROOT, free_port, skip_or_fail
from tests.e2e.deploy.podman_stack import ULIMITS, Service, engine_problem, image_size_mb, load_compose, podman
from tests.e2e.deploy.podman_stack import build as build_image

# Warm (base and image layers cached): ~4 min on 2 shared cores; cold images: ~15 min more (deploy/README.md).
pytestmark = [pytest.mark.needs_containers, pytest.mark.timeout(2400)]

SERVICES = ("postgres", "embedder", "heads", "gateway")
POLYHEAD = ("embedder", "heads", "gateway")
# The Kubernetes manifests' container securityContext (readOnlyRootFilesystem, capabilities: drop
# ALL, allowPrivilegeEscalation: false, a /tmp emptyDir of 64Mi): the polyhead containers run under
# it here too, so the manifests' claim that they work that way is tested.
K8S_SECURITY = ["--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,size=64m", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges"]
POSTGRES = ROOT / "tests" / "fixtures" / "containers" / "postgres.Containerfile"
POSTGRES_IMAGE = "localhost/polyhead/test-postgres:15"
BUILD_TIMEOUT_S = 1800  # cold: TensorFlow's wheels and the model export; warm: ~2 min


@pytest.fixture(scope="module")
def stack():
    problem = engine_problem()
    if problem:
        skip_or_fail(problem)
    report: dict = {}
    started = time.monotonic()
    build = subprocess.run(["bash", str(ROOT / "deploy" / "build_images.sh")], capture_output=True, text=True,
                           timeout=BUILD_TIMEOUT_S)
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    report["build_s"] = round(time.monotonic() - started, 1)
    build_image(POSTGRES, POSTGRES_IMAGE, os.environ.get("POLYHEAD_BASE_IMAGE", "localhost/polyhead/base:bookworm"))

    project = f"phct-{uuid.uuid4().hex[:8]}"
    network, models = f"{project}-net", f"{project}-models"
    compose = load_compose()["services"]
    assert set(SERVICES) <= set(compose), "packed heads expected (polyhead deploy generate, the default)"
    # Compose's variables: a password of this run's own (not the local-only default) must reach every service.
    variables = {**os.environ, "POLYHEAD_DB_PASSWORD": uuid.uuid4().hex}
    services = {
        "postgres": Service("postgres", compose["postgres"], project, variables, image_override=POSTGRES_IMAGE),
        "embedder": Service("embedder", compose["embedder"], project, variables, extra_args=K8S_SECURITY),
        "heads": Service("heads", compose["heads"], project, variables, volume_overrides={"./models": models},
                         extra_args=K8S_SECURITY),
        "gateway": Service("gateway", compose["gateway"], project, variables, extra_args=K8S_SECURITY),
    }
    gateway_port = free_port()
    published = compose["gateway"]["ports"][0].rsplit(":", 1)[1]
    services["gateway"].publish = [f"127.0.0.1:{gateway_port}:{published}"]
    podman("network", "create", network)
    try:
        for name in ("postgres", "embedder"):
            services[name].start(network)
        services["postgres"].wait_healthy(120)
        services["embedder"].wait_healthy(300)
        started = time.monotonic()
        train = podman("run", "--rm", "--network", network, *ULIMITS, *K8S_SECURITY,
                       "-v", f"{ROOT / 'configs'}:/app/configs:ro", "-v", f"{models}:/app/models",
                       "--entrypoint", "polyhead", deploy.IMAGES["head"], "train", "--models-dir", "/app/models",
                       "--embedder-target", "dns:///embedder:50051",
                       *[f"/app/configs/heads/{p.name}" for p in sorted((ROOT / "configs" / "heads").glob("*.yaml"))],
                       timeout=600, check=False)
        assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
        report["train_s"] = round(time.monotonic() - started, 1)
        report["trained"] = [json.loads(line)["head"] for line in train.stdout.splitlines() if line.startswith("{")]
        for name in ("heads", "gateway"):
            services[name].start(network)
            services[name].wait_healthy(180)
        yield {"url": f"http://127.0.0.1:{gateway_port}", "services": services, "report": report}
    finally:
        for name in reversed(SERVICES):
            services[name].remove()
        podman("network", "rm", "-f", network, check=False)
        podman("volume", "rm", "-f", models, f"{project}-head-spool", f"{project}-pgdata", check=False)
        if os.environ.get("POLYHEAD_CONTAINER_REPORT"):
            with open(os.environ["POLYHEAD_CONTAINER_REPORT"], "w") as out:
                json.dump(report, out, indent=2)


def _ready_models(url: str) -> dict:
    # the packed heads process loads and warms 21 heads after its health check passes: a minute when the
    # machine is quiet, more under load (a CI run beside other jobs missed 60 s once)
    deadline = time.monotonic() + 180
    while True:
        models = httpx.get(f"{url}/v1/models", timeout=30).json()["data"]
        if all(m.get("ready") for m in models) or time.monotonic() > deadline:
            return {m["name"]: m for m in models}
        time.sleep(1)


def test_every_demo_head_is_trained_and_routed(stack):
    demo = {p.stem for p in (ROOT / "configs" / "heads").glob("*.yaml")}
    assert set(stack["report"]["trained"]) == demo
    models = _ready_models(stack["url"])
    assert set(models) == demo
    assert all(m["ready"] for m in models.values()), [n for n, m in models.items() if not m["ready"]]


def test_predict_classify_embeddings_and_feedback_through_the_gateway(stack):
    url = stack["url"]
    _ready_models(url)
    r = httpx.post(f"{url}/v1/models/sentiment/predict", json={"text": "I love this, it works perfectly"}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["predictions"][0]["label"] == "positive"

    r = httpx.post(f"{url}/v1/classify", json={"text": "My card was charged twice, refund me now",
                                               "models": ["sentiment", "urgency", "refund-request"]}, timeout=30)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert set(results) == {"sentiment", "urgency", "refund-request"}
    assert all("error" not in v for v in results.values()), results

    r = httpx.post(f"{url}/v1/embeddings", json={"input": ["hello world", "good morning"], "model": "default"},
                   timeout=30)
    assert r.status_code == 200, r.text
    vectors = [d["embedding"] for d in r.json()["data"]]
    assert len(vectors) == 2 and all(len(v) == 384 for v in vectors)

    r = httpx.post(f"{url}/v1/models/sentiment/feedback", json={"prediction_id": body["prediction_id"], "label": "positive"},
                   timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 1
    # The head logged the prediction in PostgreSQL (asynchronously); the gateway's report reads it there.
    deadline = time.monotonic() + 30
    while True:
        r = httpx.get(f"{url}/v1/models/sentiment/report", timeout=30)
        assert r.status_code == 200, r.text
        summary = r.json()["summary"]
        if summary["requests"] >= 1 and summary["feedback"]["count"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert summary["feedback"]["count"] == 1 and summary["requests"] >= 1, summary
    # Bad input is a 4xx naming the field, in containers too.
    r = httpx.post(f"{url}/v1/models/sentiment/predict", json={"txt": "x"}, timeout=30)
    assert r.status_code == 422 and "txt" in r.text


def test_head_image_has_no_tensorflow(stack):
    code = ("import importlib.util, importlib.metadata as m; "
            "print(importlib.util.find_spec('tensorflow') is None, "
            "sorted(d.metadata['Name'] for d in m.distributions() if d.metadata['Name'].lower().startswith(('tensorflow', 'tf-', 'keras', 'torch'))))")
    assert stack["services"]["heads"].exec_python(code) == "True []"
    # ... while the embedder's does (the check above can tell).
    embedder = stack["services"]["embedder"].exec_python(code)
    assert embedder.startswith("False [") and "'tensorflow'" in embedder, embedder


def test_containers_run_as_the_non_root_user(stack):
    for name in POLYHEAD:
        service = stack["services"][name]
        user = podman("inspect", "--format", "{{.Config.User}}", service.container).stdout.strip()
        assert user == f"{deploy.UID}:{deploy.UID}", (name, user)
        assert service.process_uids() == {deploy.UID}, name
        # ... on a read-only root file system (the Kubernetes securityContext), /tmp writable.
        probe = ("import errno\ntry:\n    open('/app/probe', 'w')\nexcept OSError as err:\n    print(errno.errorcode[err.errno])\n"
                 "open('/tmp/probe', 'w').write('ok')")
        assert service.exec_python(probe) == "EROFS", name


def test_measurements(stack):
    """Image sizes, cold starts and RSS (deploy/README.md), after the traffic of the tests above."""
    report = stack["report"]
    image = {"embedder": "embedder", "heads": "head", "gateway": "gateway"}
    for name in POLYHEAD:
        service = stack["services"][name]
        report[name] = {"image_mb": round(image_size_mb(deploy.IMAGES[image[name]]), 1),
                        "cold_start_s": round(service.healthy_after_s, 1), "rss_mib": round(service.rss_mib(), 1)}
        assert report[name]["rss_mib"] > 20, (name, report[name])
    assert report["heads"]["image_mb"] < report["embedder"]["image_mb"] / 2, report
    print(json.dumps(report, indent=2))


def test_the_stack_stops_cleanly(stack):
    """Last (pytest keeps file order): SIGTERM stops every service in time with exit code 0."""
    for name in reversed(SERVICES):
        state = stack["services"][name].stop(timeout_s=30)
        assert state["Status"] == "exited", (name, state)
        assert state["ExitCode"] == 0 and state["stop_s"] < 30, (name, state, stack["services"][name].logs())
