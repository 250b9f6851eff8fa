"""docker-compose.yml and deploy/prometheus.yml: schema-valid and wired to the real settings."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from heads.api import packed_path
from cli import deploy
from tests.conftest import ROOT
from tests.e2e.deploy.common import SETTINGS_BY_IMAGE, field_of, retrain_options, run, tool
from tests.helpers import settings_from_env

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
HEADS = sorted(p.stem for p in (ROOT / "configs" / "heads").glob("*.yaml"))
# The long-running services; `retrain` (a one-shot under its profile) has a test of its own.
OURS = {n: s for n, s in SERVICES.items() if s.get("image", "").startswith("polyhead/") and not s.get("profiles")}
UNITS = deploy.head_units(HEADS)  # the head services for the default heads_per_process (packed or one per head)
SERVICE_OF = {n: u.service for u in UNITS for n in u.heads}


def image_kind(service: dict) -> str:
    return service["image"].split("/")[1].split(":")[0]


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with VAR unset."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", value)


def settings_of(name: str):
    service = SERVICES[name]
    kind = image_kind(service)
    cls = SETTINGS_BY_IMAGE[kind]
    env = {k: interpolate(v) for k, v in service.get("environment", {}).items()}
    init = {}
    if kind == "head" and service["command"][0] == "--heads":  # packed: --heads PATTERN --pool-name NAME
        init["heads"], init["pool_name"] = service["command"][1], service["command"][3]
    elif kind == "head":  # the config path is the command's argument; read it from the repo's copy
        init["config"] = ROOT / "configs" / "heads" / Path(service["command"][0]).name
    return settings_from_env(cls, env, **init)


def test_compose_validates_against_the_compose_spec_schema():
    result = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_mistakes(tmp_path):
    broken = dict(COMPOSE, services={**SERVICES, "gateway": {**SERVICES["gateway"], "restart_policy": "always"}})
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)])
    assert result.returncode != 0 and "restart_policy" in result.stdout + result.stderr


def test_services():
    assert set(SERVICES) == {"embedder", "gateway", "postgres", "prometheus", deploy.RETRAIN,
                             *(u.service for u in UNITS)}
    assert sorted(SERVICE_OF) == HEADS, "every head is served by exactly one head service"
    assert {image_kind(SERVICES[u.service]) for u in UNITS} == {"head"}, "one head image for every head"
    for service in OURS.values():
        assert service["build"] == {"context": ".", "dockerfile": deploy.DOCKERFILES[image_kind(service)]}
        assert (ROOT / service["build"]["dockerfile"]).is_file()


def test_only_the_gateway_publishes_a_port():
    assert [n for n, s in SERVICES.items() if s.get("ports")] == ["gateway"]
    (published,) = SERVICES["gateway"]["ports"]
    assert interpolate(published).rsplit(":", 1)[1] == str(settings_of("gateway").port)


def test_healthchecks_restart_policies_and_depends_on_healthy():
    for name, service in SERVICES.items():
        if service.get("profiles"):  # a one-shot run (retrain): no restart, no health check
            assert service["restart"] == "no" and "healthcheck" not in service, name
            continue
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        for dep, cond in service.get("depends_on", {}).items():
            assert dep in SERVICES and cond == {"condition": "service_healthy"}, (name, dep)
            assert "healthcheck" in SERVICES[dep]
    for u in UNITS:
        assert set(SERVICES[u.service]["depends_on"]) == {"embedder", "postgres"}
    assert set(SERVICES["gateway"]["depends_on"]) == {"embedder", "postgres", *(u.service for u in UNITS)}
    assert SERVICES["embedder"]["healthcheck"]["test"] == ["CMD", "python", deploy.EMBEDDER_HEALTHCHECK]


@pytest.mark.parametrize("name", sorted(OURS))
def test_env_vars_are_real_settings_fields(name):
    cls = SETTINGS_BY_IMAGE[image_kind(SERVICES[name])]
    prefix = cls.model_config["env_prefix"]
    env = SERVICES[name]["environment"]
    for key in env:
        assert key.startswith(prefix), f"{name}: {key} is not a {cls.__name__} variable"
        assert field_of(key), f"{name}: {key} is not a field of {cls.__name__}"
    assert env[f"{prefix}HOST"] == "0.0.0.0"
    settings_of(name)  # and the values parse


def test_ports_agree_across_services():
    embedder = settings_of("embedder")
    gateway = settings_of("gateway")
    assert set(SERVICES["embedder"]["expose"]) == {str(embedder.port), str(embedder.metrics_port)}
    embedder_target = f"dns:///embedder:{embedder.port}"
    assert gateway.embedder_target == embedder_target
    for n in HEADS:
        head = settings_of(SERVICE_OF[n])
        assert head.embedder_target == embedder_target
        assert SERVICES[SERVICE_OF[n]]["expose"] == [str(head.port)]
        # The gateway finds each head by its template: the compose service name and the head's port,
        # and in a packed service the head's path there.
        url = urlsplit(gateway.head_url_template.format(name=n))
        assert (url.hostname, url.port) == (SERVICE_OF[n], head.port)
        assert url.path.rstrip("/") == (packed_path(n) if head.packed else "")
        assert head.db_url.startswith("postgresql+psycopg://") and "@postgres:5432/" in head.db_url
        assert gateway.db_url == head.db_url  # reports and feedback read the DB the heads log to
        assert head.models_dir.as_posix() == deploy.MODELS_DIR


@pytest.mark.parametrize("name", HEADS)
def test_head_command_and_mounts(name):
    service = SERVICES[SERVICE_OF[name]]
    head = settings_of(SERVICE_OF[name])
    if head.packed:  # every config in the mounted folder; this one among them
        assert head.heads == "*" and head.heads_dir.as_posix() == deploy.HEAD_CONFIGS_DIR
    else:
        assert service["command"] == [f"{deploy.HEAD_CONFIGS_DIR}/{name}.yaml"]
    mounts = {m["target"]: m for m in service["volumes"]}
    models = mounts[deploy.MODELS_DIR]
    assert models["source"] == "./models" and models["read_only"] is True
    configs = mounts[deploy.HEAD_CONFIGS_DIR]
    assert configs["read_only"] is True
    assert (ROOT / configs["source"] / f"{name}.yaml").is_file()
    assert mounts[deploy.SPOOL_DIR]["type"] == "volume"


def test_services_keep_the_image_entrypoints():
    """The images' ENTRYPOINTs (`polyhead <service> serve`, checked to be real commands by
    test_dockerfiles) stay in force: compose only appends a head's config path."""
    for name in OURS:
        assert "entrypoint" not in SERVICES[name]
    assert "command" not in SERVICES["embedder"] and "command" not in SERVICES["gateway"]


def test_gateway_reads_the_mounted_head_configs():
    gateway = settings_of("gateway")
    mounts = {m["target"]: m for m in SERVICES["gateway"]["volumes"]}
    assert gateway.heads_dir.as_posix() in mounts and mounts[gateway.heads_dir.as_posix()]["read_only"]


def test_prometheus_scrapes_every_service():
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    targets = set()
    for job in config["scrape_configs"]:
        for sc in job.get("static_configs", []):
            targets |= set(sc["targets"])
        for sd in job.get("dns_sd_configs", []):
            targets |= {f"{n}:{sd['port']}" for n in sd["names"]}
    embedder = settings_of("embedder")
    wanted = {f"embedder:{embedder.metrics_port}", f"gateway:{settings_of('gateway').port}",
              *(f"{u.service}:{settings_of(u.service).port}" for u in UNITS)}
    assert wanted <= targets
    for target in targets - {f"127.0.0.1:{deploy.PROMETHEUS_PORT}"}:
        assert target.split(":")[0] in SERVICES, target
    mount = {m["target"]: m for m in SERVICES["prometheus"]["volumes"]}["/etc/prometheus/prometheus.yml"]
    assert mount["source"] == "./deploy/prometheus.yml" and mount["read_only"]


def test_retrain_runs_under_its_profile_with_the_heads_image_db_and_volumes():
    service = SERVICES[deploy.RETRAIN]
    assert service["profiles"] == [deploy.RETRAIN], "`docker compose up` must not start it"
    head = SERVICES[UNITS[0].service]
    assert service["image"] == head["image"] and service["build"] == head["build"]
    assert service["entrypoint"] == ["polyhead"] and service["command"][:2] == ["retrain", "--challengers-only"]
    flags, envvars = retrain_options()
    assert {a for a in service["command"] if a.startswith("--")} <= flags
    args = dict(zip(service["command"][2::2], service["command"][3::2]))
    assert args == {"--heads-dir": deploy.HEAD_CONFIGS_DIR, "--models-dir": deploy.MODELS_DIR}
    env = service["environment"]
    assert set(env) <= set(envvars), set(env) - set(envvars)
    head_settings = settings_of(UNITS[0].service)
    assert env["POLYHEAD_EMBEDDER_TARGET"] == head_settings.embedder_target
    assert interpolate(env["POLYHEAD_HEAD_DB_URL"]) == head_settings.db_url  # the feedback the heads logged
    gateway = urlsplit(env["POLYHEAD_GATEWAY_URL"])
    assert gateway.hostname in SERVICES and gateway.port == settings_of("gateway").port
    mounts = {m["target"]: m for m in service["volumes"]}
    head_mounts = {m["target"]: m for m in head["volumes"]}
    assert mounts[deploy.MODELS_DIR]["source"] == head_mounts[deploy.MODELS_DIR]["source"]
    assert not mounts[deploy.MODELS_DIR].get("read_only"), "it writes the new challengers"
    assert mounts[deploy.HEAD_CONFIGS_DIR] == head_mounts[deploy.HEAD_CONFIGS_DIR]
    assert set(service["depends_on"]) == {"embedder", "postgres"}


def test_heads_and_gateway_share_the_admin_token_from_the_environment_never_a_literal():
    for name, service in OURS.items():
        kind = image_kind(service)
        if kind == "embedder":
            assert not any("ADMIN" in k for k in service["environment"])
            continue
        key = f"POLYHEAD_{kind.upper()}_ADMIN_TOKEN"
        assert service["environment"][key] == "${POLYHEAD_ADMIN_TOKEN:-}", name  # from the host's env or .env
        assert settings_of(name).admin_secret() is None  # unset: admin routes closed, never open
        assert settings_from_env(SETTINGS_BY_IMAGE[kind], {k: v.replace("${POLYHEAD_ADMIN_TOKEN:-}", "s3cret")
                                                           for k, v in service["environment"].items()},
                                 **({"heads": "*", "pool_name": "heads"} if kind == "head" else {})
                                 ).admin_secret() == "s3cret"
