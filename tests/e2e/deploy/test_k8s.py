"""deploy/k8s: the kustomize build validates, and is wired to the real settings and endpoints."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from heads.api import packed_path
from cli import deploy
from tests.conftest import ROOT
from tests.e2e.deploy.common import SETTINGS_BY_IMAGE, VENV_BIN, field_of, retrain_options, run, tool

HEADS = sorted(p.stem for p in (ROOT / "configs" / "heads").glob("*.yaml"))
UNITS = deploy.head_units(HEADS)  # the head Deployments for the default heads_per_process
SERVICE_OF = {n: u.service for u in UNITS for n in u.heads}
NAMESPACE = deploy.NAMESPACE


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    result = run([tool("kubectl"), "kustomize", "deploy/k8s"])
    assert result.returncode == 0, result.stderr
    path = tmp_path_factory.mktemp("k8s") / "k8s.yaml"
    path.write_text(result.stdout)
    return path


@pytest.fixture(scope="module")
def docs(built) -> list[dict]:
    return [d for d in yaml.safe_load_all(built.read_text()) if d]


@pytest.fixture(scope="module")
def by_kind(docs) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for d in docs:
        out.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    return out


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def image_kind(c: dict) -> str:
    return c["image"].split("/")[1].split(":")[0]


def env_of(c: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def settings_of(deployment: dict):
    c = container(deployment)
    kind = image_kind(c)
    env = {k: (v or "from-a-secret").replace("$(POD_NAMESPACE)", NAMESPACE)
           for k, v in env_of(c).items() if k.startswith("POLYHEAD_")}
    if kind == "head" and c["args"][0] == "--heads":  # packed: --heads PATTERN --pool-name NAME
        init = {"heads": c["args"][1], "pool_name": c["args"][3]}
    else:
        init = {"config": ROOT / "configs" / "heads" / Path(c["args"][0]).name} if kind == "head" else {}
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("POLYHEAD_")}
    os.environ.update(env)
    try:
        return SETTINGS_BY_IMAGE[kind](**init)
    finally:
        for k in env:
            os.environ.pop(k, None)
        os.environ.update(saved)


def port_number(c: dict, port) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in c["ports"] if p["name"] == port]
    return number


def test_kubernetes_validate_strict(built):
    result = run([tool("kubernetes-validate"), "--strict", "--quiet", str(built)], timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_service_has_deployment_service_hpa_pdb(by_kind):
    instances = {"embedder", "gateway", *(u.service for u in UNITS)}
    assert set(by_kind["Deployment"]) == instances
    assert set(by_kind["HorizontalPodAutoscaler"]) == instances
    assert set(by_kind["PodDisruptionBudget"]) == instances
    assert set(by_kind["Service"]) == {"embedder-headless", "gateway", *(u.service for u in UNITS)}
    assert sorted(SERVICE_OF) == HEADS, "every head is served by exactly one head Deployment"
    for d in (d for kind in by_kind.values() for d in kind.values() if d["kind"] != "Namespace"):
        assert d["metadata"]["namespace"] == NAMESPACE


def test_selectors_hpas_and_pdbs_point_at_real_pods(by_kind):
    pods = {name: d["spec"]["template"]["metadata"]["labels"] for name, d in by_kind["Deployment"].items()}
    for name, d in by_kind["Deployment"].items():
        assert d["spec"]["selector"]["matchLabels"].items() <= pods[name].items()
        assert "replicas" not in d["spec"], "the HPA owns the replica count"
    for hpa in by_kind["HorizontalPodAutoscaler"].values():
        ref = hpa["spec"]["scaleTargetRef"]
        assert ref["kind"] == "Deployment" and ref["name"] in by_kind["Deployment"]
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        # Utilization is a share of the requests: every container must request CPU.
        assert container(by_kind["Deployment"][ref["name"]])["resources"]["requests"]["cpu"]
    for name, pdb in by_kind["PodDisruptionBudget"].items():
        matched = [p for p, labels in pods.items() if pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert matched == [name]
        hpa_min = by_kind["HorizontalPodAutoscaler"][name]["spec"]["minReplicas"]
        assert pdb["spec"]["minAvailable"] < hpa_min, "a PDB that blocks every eviction stops node drains"
    for name, svc in by_kind["Service"].items():
        matched = [p for p, labels in pods.items() if svc["spec"]["selector"].items() <= labels.items()]
        assert len(matched) == 1, name
        c = container(by_kind["Deployment"][matched[0]])
        for port in svc["spec"]["ports"]:
            assert port_number(c, port["targetPort"]) == port["port"], (name, port)


def test_only_the_gateway_is_exposed_outside(by_kind):
    types = {name: s["spec"].get("type", "ClusterIP") for name, s in by_kind["Service"].items()}
    assert [n for n, t in types.items() if t in ("LoadBalancer", "NodePort")] == ["gateway"]
    assert by_kind["Service"]["embedder-headless"]["spec"]["clusterIP"] == "None"


def test_resources_security_and_probes(by_kind):
    for name, d in by_kind["Deployment"].items():
        c = container(d)
        res = c["resources"]
        assert set(res) == {"requests", "limits"} and all(set(res[k]) == {"cpu", "memory"} for k in res), name
        assert c["securityContext"]["runAsNonRoot"] and c["securityContext"]["runAsUser"] == deploy.UID
        assert c["securityContext"]["readOnlyRootFilesystem"] and not c["securityContext"]["allowPrivilegeEscalation"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in c, (name, probe)
        settings = settings_of(d)
        if image_kind(c) == "embedder":
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # native gRPC health probe
                assert c[probe]["grpc"] == {"port": settings.port}
        else:
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert port_number(c, c[probe]["httpGet"]["port"]) == settings.port
        # Sized from the measured RSS (cli/deploy.py): the limit is above the request.
        sized = "heads-packed" if name == deploy.PACKED_SERVICE else image_kind(c)
        assert deploy.RESOURCES[sized].k8s() == res


def test_the_http_endpoints_the_probes_use_exist(tmp_path):
    from gateway.http_server import create_app as gateway_app
    from gateway.settings import GatewaySettings
    from heads.http_server import create_app as head_app
    from heads.settings import HeadSettings

    config = ROOT / "configs" / "heads" / "spam.yaml"
    common = {"db_url": f"sqlite:///{tmp_path / 'i.db'}", "spool_dir": tmp_path / "spool"}
    apps = {"one head": head_app(HeadSettings(config=[config], **common)),
            "packed heads": head_app(HeadSettings(heads="spam,urgency", heads_dir=config.parent, **common)),
            "gateway": gateway_app(GatewaySettings())}
    for what, app in apps.items():
        paths = set(app.openapi()["paths"])
        assert {"/healthz", "/readyz", "/metrics"} <= paths, what


def test_env_vars_are_real_settings_fields_and_ports_agree(by_kind):
    embedder = settings_of(by_kind["Deployment"]["embedder"])
    headless = by_kind["Service"]["embedder-headless"]
    grpc_port = {p["name"]: p["port"] for p in headless["spec"]["ports"]}["grpc"]
    assert grpc_port == embedder.port
    for name, d in by_kind["Deployment"].items():
        c = container(d)
        cls = SETTINGS_BY_IMAGE[image_kind(c)]
        prefix = cls.model_config["env_prefix"]
        for key in env_of(c):
            if key == "POD_NAMESPACE":
                continue
            assert key.startswith(prefix) and field_of(key), f"{name}: {key} is not a field of {cls.__name__}"
        settings = settings_of(d)
        assert settings.host == "0.0.0.0"
        container_ports = {p["containerPort"] for p in c["ports"]}
        wanted = {settings.port} | ({settings.metrics_port} if image_kind(c) == "embedder" else set())
        assert container_ports == wanted, name
        annotations = d["spec"]["template"]["metadata"]["annotations"]
        assert int(annotations["prometheus.io/port"]) == (settings.metrics_port if name == "embedder" else settings.port)
        if name != "embedder":  # heads and gateway balance gRPC over the headless Service's pods
            assert settings.embedder_target == (
                f"dns:///embedder-headless.{NAMESPACE}.svc.cluster.local:{embedder.port}")
    gateway = settings_of(by_kind["Deployment"]["gateway"])
    for n in HEADS:
        head = settings_of(by_kind["Deployment"][SERVICE_OF[n]])
        url = urlsplit(gateway.head_url_template.format(name=n))
        assert url.hostname == SERVICE_OF[n] and url.hostname in by_kind["Service"] and url.port == head.port
        assert url.path.rstrip("/") == (packed_path(n) if head.packed else "")
        db = [e for e in container(by_kind["Deployment"][SERVICE_OF[n]])["env"] if e["name"] == "POLYHEAD_HEAD_DB_URL"]
        ref = db[0]["valueFrom"]["secretKeyRef"]
        assert ref["name"] in by_kind["Secret"] and ref["key"] in by_kind["Secret"][ref["name"]]["data"]


def test_head_configs_configmap_and_args(by_kind):
    (cm_name,) = [n for n in by_kind["ConfigMap"] if n.startswith("head-configs-")]
    data = by_kind["ConfigMap"][cm_name]["data"]
    assert sorted(data) == [f"{n}.yaml" for n in HEADS]
    for n in HEADS:
        assert data[f"{n}.yaml"] == (ROOT / "configs" / "heads" / f"{n}.yaml").read_text()
        d = by_kind["Deployment"][SERVICE_OF[n]]
        c = container(d)
        head = settings_of(d)
        if head.packed:  # every config in the mounted ConfigMap; this one among them
            assert head.heads == "*" and head.heads_dir.as_posix() == deploy.HEAD_CONFIGS_DIR
        else:
            assert c["args"] == [f"{deploy.HEAD_CONFIGS_DIR}/{n}.yaml"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        volumes = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
        assert volumes[mounts[deploy.HEAD_CONFIGS_DIR]]["configMap"]["name"] == cm_name
        models = volumes[mounts[deploy.MODELS_DIR]]
        assert models["persistentVolumeClaim"]["readOnly"] and models["persistentVolumeClaim"]["claimName"] in \
            by_kind["PersistentVolumeClaim"]
    gateway = settings_of(by_kind["Deployment"]["gateway"])
    gc = container(by_kind["Deployment"]["gateway"])
    assert gateway.heads_dir.as_posix() in {m["mountPath"] for m in gc["volumeMounts"]}
    # The image's ENTRYPOINT (`polyhead head serve`, a real command: test_dockerfiles) stays in force.
    for d in by_kind["Deployment"].values():
        assert "command" not in container(d)


def test_gateway_api_keys_secret_is_a_closed_placeholder(by_kind):
    import base64

    from gateway.settings import ApiKey

    gateway = settings_of(by_kind["Deployment"]["gateway"])
    gc = container(by_kind["Deployment"]["gateway"])
    volumes = {v["name"]: v for v in by_kind["Deployment"]["gateway"]["spec"]["template"]["spec"]["volumes"]}
    mount = [m for m in gc["volumeMounts"] if gateway.api_keys_file.as_posix().startswith(m["mountPath"] + "/")][0]
    secret = by_kind["Secret"][volumes[mount["name"]]["secret"]["secretName"]]
    text = base64.b64decode(secret["data"][gateway.api_keys_file.name]).decode()
    keys = [ApiKey.model_validate(k) for k in yaml.safe_load(text)]
    assert keys and all(k.sha256 == "0" * 64 for k in keys), "the example must lock the gateway, not open it"
    assert "EXAMPLE" in text
    db = base64.b64decode(by_kind["Secret"][[n for n in by_kind["Secret"] if n.startswith("polyhead-db-")][0]]
                          ["data"]["DB_URL"]).decode()
    assert "REPLACE-ME" in db and db.startswith("postgresql+psycopg://")


def test_network_policies(by_kind):
    policies = by_kind["NetworkPolicy"]
    deny = policies["default-deny-ingress"]["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and not deny.get("ingress")

    def pod_labels(component):
        return [d["spec"]["template"]["metadata"]["labels"] for d in by_kind["Deployment"].values()
                if d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == component]

    def selects(selector, labels):
        if selector.get("matchLabels") and not selector["matchLabels"].items() <= labels.items():
            return False
        for expr in selector.get("matchExpressions", []):
            assert expr["operator"] == "In"
            if labels.get(expr["key"]) not in expr["values"]:
                return False
        return True

    def allowed_peers(component, port):
        """Who may reach `component` pods on `port`: 'anyone', or the components of the allowed pods."""
        peers = set()
        for p in policies.values():
            spec = p["spec"]
            if not any(selects(spec["podSelector"], labels) for labels in pod_labels(component)):
                continue
            for rule in spec.get("ingress", []):
                if rule.get("ports") and port not in [x["port"] for x in rule["ports"]]:
                    continue
                if not rule.get("from"):
                    return "anyone"
                for peer in rule["from"]:
                    if "namespaceSelector" in peer:
                        peers.add("prometheus" if peer["podSelector"]["matchLabels"] ==
                                  {"app.kubernetes.io/name": "prometheus"} else "other-namespace")
                        continue
                    peers |= {c for c in ("embedder", "head", "gateway")
                              if any(selects(peer["podSelector"], labels) for labels in pod_labels(c))}
        return peers

    assert allowed_peers("gateway", deploy.GATEWAY_PORT) == "anyone"
    assert allowed_peers("head", deploy.HEAD_PORT) == {"gateway", "prometheus"}
    assert allowed_peers("embedder", deploy.EMBEDDER_PORT) == {"gateway", "head"}
    assert allowed_peers("embedder", deploy.EMBEDDER_METRICS_PORT) == {"prometheus"}
    # The retrain CronJob's pods embed their training texts: the embedder's gRPC policy lets them in.
    job_labels = by_kind["CronJob"][deploy.RETRAIN]["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    (grpc_policy,) = [p["spec"] for p in policies.values()
                      if p["spec"]["podSelector"].get("matchLabels") == {"app.kubernetes.io/component": "embedder"}
                      and any(deploy.EMBEDDER_PORT in [x["port"] for x in r.get("ports", [])] and r.get("from")
                              and any(selects(peer["podSelector"], job_labels) for peer in r["from"])
                              for r in p["spec"]["ingress"])]
    assert not any(selects(p["spec"]["podSelector"], job_labels) for n, p in policies.items()
                   if n != "default-deny-ingress"), "nothing needs to reach the retrain job"


def test_retrain_cronjob_runs_polyhead_retrain_like_the_heads(by_kind):
    job = by_kind["CronJob"][deploy.RETRAIN]
    assert job["spec"]["concurrencyPolicy"] == "Forbid" and job["spec"]["schedule"] == deploy.RETRAIN_SCHEDULE
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    (c,) = pod["containers"]
    head = by_kind["Deployment"][deploy.PACKED_SERVICE if deploy.PACKED_SERVICE in by_kind["Deployment"]
                                 else next(iter(SERVICE_OF.values()))]
    head_pod = head["spec"]["template"]["spec"]
    hc = container(head)
    # Same image, pod and container security as a head; the CLI's own command, not `head serve`.
    assert c["image"] == hc["image"] and pod["securityContext"] == head_pod["securityContext"]
    assert c["securityContext"] == hc["securityContext"]
    assert c["command"] == ["polyhead"] and c["args"][0] == "retrain" and "--challengers-only" in c["args"]
    flags, envvars = retrain_options()
    assert {a for a in c["args"] if a.startswith("--")} <= flags
    args = dict(zip(c["args"][2::2], c["args"][3::2]))
    assert args == {"--heads-dir": deploy.HEAD_CONFIGS_DIR, "--models-dir": deploy.MODELS_DIR}
    # Every env var is one of the command's options (or the namespace the target refers to).
    env = {e["name"]: e for e in c["env"]}
    assert set(env) - {"POD_NAMESPACE"} <= set(envvars), set(env) - set(envvars)
    assert env["POLYHEAD_EMBEDDER_TARGET"]["value"] == env_of(hc)["POLYHEAD_HEAD_EMBEDDER_TARGET"]
    head_env = {e["name"]: e for e in hc["env"]}
    assert env["POLYHEAD_HEAD_DB_URL"] == head_env["POLYHEAD_HEAD_DB_URL"]  # the heads' inference DB Secret
    ref = env["POLYHEAD_HEAD_DB_URL"]["valueFrom"]["secretKeyRef"]
    assert ref["key"] in by_kind["Secret"][ref["name"]]["data"]
    assert env["POLYHEAD_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert urlsplit(env["POLYHEAD_GATEWAY_URL"]["value"]).hostname in by_kind["Service"]
    # Volumes: the heads' configs and models claim, writable here (it writes the challengers).
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    head_volumes = {v["name"]: v for v in head_pod["volumes"]}
    cfg = mounts[deploy.HEAD_CONFIGS_DIR]
    assert cfg["readOnly"] and volumes[cfg["name"]] == head_volumes[cfg["name"]]
    models = mounts[deploy.MODELS_DIR]
    assert not models.get("readOnly") and "readOnly" not in volumes[models["name"]]["persistentVolumeClaim"]
    assert volumes[models["name"]]["persistentVolumeClaim"]["claimName"] in by_kind["PersistentVolumeClaim"]
    assert mounts["/tmp"] and volumes[mounts["/tmp"]["name"]]["emptyDir"]  # read-only root: /tmp is a volume
    assert deploy.RESOURCES[deploy.RETRAIN].k8s() == c["resources"]


def test_validate_deploy_script():
    """scripts/dev/validate_deploy.sh: generated files current, kustomize | kubernetes-validate, compose schema, hadolint."""
    for name in ("kubectl", "kubernetes-validate", "check-jsonschema", "hadolint"):
        tool(name)
    result = run(["bash", "scripts/dev/validate_deploy.sh"], timeout=300, env={**os.environ, "VENV": str(VENV_BIN.parent)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "deployment files are valid" in result.stdout


def test_the_admin_token_is_a_secret_file_in_every_head_and_gateway_pod(by_kind, tmp_path):
    import base64

    (secret_name,) = [n for n in by_kind["Secret"] if n.startswith(deploy.ADMIN_SECRET + "-")]
    data = by_kind["Secret"][secret_name]["data"]
    assert set(data) == {deploy.ADMIN_TOKEN_KEY}
    assert base64.b64decode(data[deploy.ADMIN_TOKEN_KEY]) == b"", "the example holds no known credential"
    for cm in by_kind["ConfigMap"].values():
        assert not any("ADMIN_TOKEN" in k or "admin-token" in k for k in cm["data"])
    pods = {n: d for n, d in by_kind["Deployment"].items() if image_kind(container(d)) in ("head", "gateway")}
    assert set(pods) == {"gateway", *(u.service for u in UNITS)}
    for name, d in pods.items():
        c = container(d)
        env = {e["name"]: e for e in c["env"]}
        assert not any("ADMIN_TOKEN" in k and not k.endswith("_FILE") for k in env), (name, "no token in env")
        settings = settings_of(d)
        assert settings.admin_token is None and settings.admin_token_file.as_posix() == deploy.ADMIN_TOKEN_FILE
        mount = [m for m in c["volumeMounts"] if deploy.ADMIN_TOKEN_FILE.startswith(m["mountPath"] + "/")][0]
        assert mount["readOnly"]
        volume = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}[mount["name"]]["secret"]
        assert volume["secretName"] == secret_name and volume["defaultMode"] == 0o440
        (item,) = volume["items"]
        assert item["key"] == deploy.ADMIN_TOKEN_KEY
        assert f"{mount['mountPath']}/{item['path']}" == deploy.ADMIN_TOKEN_FILE
        # the pod's fsGroup owns the Secret's files, so the non-root user can read a 0440 file
        assert d["spec"]["template"]["spec"]["securityContext"]["fsGroup"] == c["securityContext"]["runAsGroup"]
    # The example's empty token leaves the services closed: they refuse their admin routes.
    empty = tmp_path / "admin-token"
    empty.write_text("")
    assert settings_of(pods["gateway"]).model_copy(update={"admin_token_file": empty}).admin_secret() is None
