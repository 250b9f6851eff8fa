"""The generated deployment files are current, deterministic, and follow configs/heads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from cli import deploy
from tests.conftest import ROOT
from tests.e2e.deploy.common import polyhead_cmd, run

HEAD_NAMES = sorted(p.stem for p in (ROOT / "configs" / "heads").glob("*.yaml"))


def copy_configs(dest: Path) -> Path:
    shutil.copytree(ROOT / "configs" / "heads", dest / "configs" / "heads")
    return dest


def test_committed_files_are_not_stale(tmp_path):
    """Regenerate into a temp dir with the CLI and compare with what is committed."""
    root = copy_configs(tmp_path)
    result = run([*polyhead_cmd(), "deploy", "generate", "--root", str(root)])
    assert result.returncode == 0, result.stdout + result.stderr
    made = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and not p.relative_to(root).as_posix().startswith("configs/"))
    assert made == sorted(deploy.generate(ROOT)), "the CLI and cli.deploy.generate disagree"
    stale = [rel for rel in made if not (ROOT / rel).is_file() or (ROOT / rel).read_text() != (root / rel).read_text()]
    leftover = deploy.stale(ROOT)
    assert not stale and not leftover, (
        f"stale deployment files {sorted(set(stale + leftover))}: run `polyhead deploy generate` and commit the result")


def test_check_mode_reports_stale_and_writes_nothing(tmp_path):
    root = copy_configs(tmp_path)
    result = run([*polyhead_cmd(), "deploy", "generate", "--root", str(root), "--check"])
    assert result.returncode == 1 and "stale: docker-compose.yml" in result.stdout
    assert not (root / "docker-compose.yml").exists()
    assert run([*polyhead_cmd(), "deploy", "generate", "--root", str(root)]).returncode == 0
    again = run([*polyhead_cmd(), "deploy", "generate", "--root", str(root), "--check"])
    assert again.returncode == 0 and "up to date" in again.stdout


def test_generation_is_deterministic(tmp_path):
    first = deploy.generate(ROOT)
    assert deploy.generate(ROOT) == first
    # Same configs written in another order (and mtime) give the same bytes.
    root = tmp_path
    (root / "configs" / "heads").mkdir(parents=True)
    for name in reversed(HEAD_NAMES):
        shutil.copyfile(ROOT / "configs" / "heads" / f"{name}.yaml", root / "configs" / "heads" / f"{name}.yaml")
    assert deploy.generate(root) == first


def test_a_new_head_config_appears_after_one_command_and_goes_when_removed(tmp_path):
    """One service per head (heads_per_process=1)."""
    root = copy_configs(tmp_path)
    deploy.write(root, 1)
    (root / "configs" / "heads" / "aaa-new-head.yaml").write_text(
        "name: aaa-new-head\ndataset:\n  train: ../datasets/x/train.jsonl\n")
    changed = deploy.write(root, 1)
    assert {"docker-compose.yml", "deploy/prometheus.yml", "deploy/k8s/kustomization.yaml",
            "deploy/k8s/heads/aaa-new-head.yaml", "deploy/k8s/head-configs/aaa-new-head.yaml"} <= set(changed)
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    assert "head-aaa-new-head" in compose["services"]
    assert "head-aaa-new-head" in compose["services"]["gateway"]["depends_on"]
    kinds = {d["kind"] for d in yaml.safe_load_all((root / "deploy/k8s/heads/aaa-new-head.yaml").read_text())}
    assert kinds == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    kustomization = yaml.safe_load((root / "deploy/k8s/kustomization.yaml").read_text())
    assert "heads/aaa-new-head.yaml" in kustomization["resources"]
    assert deploy.stale(root, heads_per_process=1) == []

    (root / "configs" / "heads" / "aaa-new-head.yaml").unlink()
    changed = deploy.write(root, 1)
    assert "deploy/k8s/heads/aaa-new-head.yaml" in changed
    assert not (root / "deploy/k8s/heads/aaa-new-head.yaml").exists()
    assert not (root / "deploy/k8s/head-configs/aaa-new-head.yaml").exists()
    assert "head-aaa-new-head" not in yaml.safe_load((root / "docker-compose.yml").read_text())["services"]


def test_packed_heads_follow_the_config_folder(tmp_path):
    """Every head packed in one service (heads_per_process=0): a new config changes only the ConfigMap."""
    root = copy_configs(tmp_path)
    deploy.write(root, 0)
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    heads = [n for n in compose["services"] if n.startswith("head")]
    assert heads == [deploy.PACKED_SERVICE]
    assert compose["services"][deploy.PACKED_SERVICE]["command"][:2] == ["--heads", "*"]
    gateway_env = compose["services"]["gateway"]["environment"]
    assert gateway_env["POLYHEAD_GATEWAY_HEAD_URL_TEMPLATE"].endswith("/heads/{name}")
    (root / "configs" / "heads" / "aaa-new-head.yaml").write_text(
        "name: aaa-new-head\ndataset:\n  train: ../datasets/x/train.jsonl\n")
    changed = deploy.write(root, 0)
    assert set(changed) == {"deploy/k8s/kustomization.yaml", "deploy/k8s/head-configs/aaa-new-head.yaml"}
    with pytest.raises(ValueError, match="heads_per_process=2"):
        deploy.generate(root, 2)


def test_a_bad_head_config_stops_generation(tmp_path):
    root = copy_configs(tmp_path)
    (root / "configs" / "heads" / "broken.yaml").write_text("name: not-the-file-name\ndataset: {train: a.jsonl}\n")
    result = run([*polyhead_cmd(), "deploy", "generate", "--root", str(root)])
    assert result.returncode == 2 and "broken.yaml" in result.stderr
    assert not (root / "docker-compose.yml").exists()


def test_every_generated_file_says_it_is_generated():
    for rel, text in deploy.generate(ROOT).items():
        if rel.startswith("deploy/k8s/head-configs/"):
            assert text == (ROOT / "configs" / "heads" / Path(rel).name).read_text()
        elif rel.startswith("deploy/k8s/secrets/"):
            assert "EXAMPLE" in text and "REPLACE-ME" in text
        else:
            assert text.startswith(deploy.HEADER), rel


@pytest.mark.parametrize("name", HEAD_NAMES)
def test_each_head_config_has_its_deployment_files(name):
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    (unit,) = [u for u in deploy.head_units(HEAD_NAMES) if name in u.heads]  # the default heads_per_process
    assert unit.service in compose["services"]
    assert (ROOT / "deploy" / "k8s" / "heads" / f"{unit.file}.yaml").is_file()
    assert (ROOT / "deploy" / "k8s" / "head-configs" / f"{name}.yaml").read_text() == \
        (ROOT / "configs" / "heads" / f"{name}.yaml").read_text()


def test_generate_outside_a_project_writes_nothing(tmp_path):
    result = run([*polyhead_cmd(), "deploy", "generate"], cwd=tmp_path)
    assert result.returncode == 2 and "configs/heads" in result.stderr
    assert list(tmp_path.iterdir()) == []
