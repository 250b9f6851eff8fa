"""`polyhead promote/rollback --local`, `polyhead retrain --dry-run` and the compare printout."""

from __future__ import annotations

import json
import shutil

import yaml
from rich.console import Console
from typer.testing import CliRunner

from cli.challengers import print_comparison
from cli.commands import app
from heads import roles
from polyhead.inference_log.challengers import summarize
from tests.unit.conftest import HEAD, HEAD_CONFIGS


def test_promote_and_rollback_local_write_the_state_and_the_audit(trained_head, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(trained_head.models_dir, models)
    v2 = "29990101T000000Z"
    shutil.copytree(models / HEAD / trained_head.version, models / HEAD / v2)
    roles.register_trained(models, HEAD, v2)
    runner = CliRunner()
    out = runner.invoke(app, ["promote", HEAD, "--local", "--models-dir", str(models), "--reason", "looks better"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["champion"] == v2
    out = runner.invoke(app, ["promote", HEAD, "20000101T000000Z", "--local", "--models-dir", str(models)])
    assert out.exit_code == 2 and "no version '20000101T000000Z'" in out.output
    out = runner.invoke(app, ["rollback", HEAD, "--local", "--models-dir", str(models)])
    assert out.exit_code == 0 and json.loads(out.output)["champion"] == trained_head.version
    audit = roles.read_audit(models, HEAD)
    assert [a["event"] for a in audit] == ["rollback", "promote"] and audit[1]["reason"] == "looks better"
    assert audit[0]["actor"].startswith("cli:")


def test_retrain_dry_run_says_which_heads_are_due_and_why(trained_head, tmp_path):
    heads_dir = tmp_path / "heads"
    heads_dir.mkdir()
    raw = yaml.safe_load((HEAD_CONFIGS / f"{HEAD}.yaml").read_text())
    (heads_dir / f"{HEAD}.yaml").write_text(yaml.safe_dump({**raw, "retraining": {"max_age_days": 1e-9}}))
    shutil.copyfile(HEAD_CONFIGS / "sentiment.yaml", heads_dir / "sentiment.yaml")  # no trigger: never due
    models = tmp_path / "models"
    shutil.copytree(trained_head.models_dir, models)
    out = CliRunner().invoke(app, ["retrain", "--dry-run", "--heads-dir", str(heads_dir), "--models-dir", str(models),
                                   "--db-url", f"sqlite:///{tmp_path / 'i.db'}", "--gateway", "http://127.0.0.1:9"])
    assert out.exit_code == 0, out.output
    lines = {d["head"]: d for d in (json.loads(x) for x in out.output.splitlines() if x.startswith("{"))}
    assert lines[HEAD]["due"] and "days old" in lines[HEAD]["reasons"][0]
    assert lines["sentiment"] == {"head": "sentiment", "due": True, "reasons": ["no trained version yet"]}


def test_compare_prints_flips_recall_and_the_gate(tmp_path):
    figures = summarize([("billing", "billing", "billing", 8, 7.2, 7.0), ("billing", "shipping", "billing", 2, 1.6, 1.2),
                         ("shipping", "shipping", None, 5, 4.0, 4.5)], [("billing", "shipping", "where is my refund")])
    assert figures["shadowed"] == 15 and figures["agreement"] == round(13 / 15, 6)
    assert figures["feedback"]["paired"] == 10 and figures["feedback"]["champion_only_correct"] == 2
    body = {"model": HEAD, "champion": "v1", "champion_offline_test": {"accuracy": 0.9}, "policy": {"mode": "manual"},
            "guard": None, "redacted": False, "challengers": [{
                "version": "v2", "in_shadow": True, "error": None, **figures, "offline_test": {"accuracy": 0.85},
                "gate": {"act": False, "reason": "promotion policy is manual", "checks": []}}]}
    console = Console(record=True, width=200)
    print_comparison(body, console)
    text = console.export_text()
    assert "where is my refund" in text and "recall billing (10)" in text and "McNemar p=0.5" in text
    assert "would not promote: promotion policy is manual" in text
