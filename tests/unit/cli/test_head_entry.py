"""`polyhead head serve` runs heads/serve_cli.py: the same flags as the typer command, and a process
that loads only what serving needs (each single-head process pays for every import: BENCHMARKS.md §5)."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from heads import serve_cli
from cli.commands import app


def test_the_typer_command_forwards_to_the_one_serving_entry():
    # One command-line path: `polyhead head serve` under typer hands its raw arguments to serve_cli,
    # whose argparse flags (generated from HeadSettings) are the only ones.
    result = CliRunner().invoke(app, ["head", "serve", "--help"])
    assert result.exit_code == 0, result.output
    flags = {opt for action in serve_cli.parser()._actions for opt in action.option_strings}
    assert "--embedder-target" in flags and "--no-coalesce" in flags and "-s" in flags
    assert all(flag in result.output for flag in flags)
    assert "usage: polyhead head serve" in result.output


def test_every_head_setting_has_a_flag_but_secrets():
    from heads.settings import HeadSettings

    flags = {opt for action in serve_cli.parser()._actions for opt in action.option_strings}
    for name in HeadSettings.model_fields:
        if name == "config":
            continue  # the positional argument
        if name == "admin_token":  # ps would show it: env, settings file or --admin-token-file only
            assert "--admin-token" not in flags
            continue
        assert f"--{name.replace('_', '-')}" in flags, name


def test_the_light_entry_loads_settings_like_the_typer_command(tmp_path):
    config = tmp_path / "h.yaml"
    config.write_text("name: h\n")
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("head:\n  port: 9001\n  coalesce: false\n")
    settings = serve_cli.parse_settings(serve_cli.HeadSettings, [str(config), "-s", str(settings_file),
                                                                 "--embedder-timeout-s", "2.5", "--coalesce"],
                                        **serve_cli.PARSER)
    assert settings.config == [config] and settings.port == 9001 and settings.embedder_timeout_s == 2.5
    assert settings.coalesce is True  # a flag wins over the file


def test_the_head_serving_entry_imports_neither_cli_libraries_nor_other_backends(tmp_path):
    # What a head on SQLite loads: the entry, its app and server modules, its inference log writing a
    # row to a fresh DB. Not typer or rich (CLI), TensorFlow (embedder), SQLAlchemy (the head writes
    # through sqlite3 and migrates in a child process: polyhead/inference_log/sink.py), numpy.random
    # (drift noise comes precomputed in the artifact), training code.
    code = f"""
import sys
sys.argv = ["polyhead", "head", "serve"]
import cli.main, heads.serve_cli, heads.http_server, uvicorn
from polyhead.inference_log.records import PredictionRecord
from polyhead.inference_log.writer import InferenceLog
settings = heads.serve_cli.parse_settings(heads.serve_cli.HeadSettings, ["--db-url", "sqlite:///{tmp_path}/db/i.db"],
                                          **heads.serve_cli.PARSER)
with InferenceLog(settings.db_url, "{tmp_path}/spool") as log:
    log.record(PredictionRecord.create(request_id="r", head="h", head_version="1", embedder_fingerprint="f",
                                       text="t", label="a", probability=0.5, top_k=[("a", 0.5)], latency_ms=1.0))
    assert log.flush() and log.healthy() and log.stats.written == 1, log.stats
bad = [m for m in sys.modules if m.split(".")[0] in ("typer", "rich", "tensorflow", "gateway", "sqlalchemy")
       or m.startswith(("numpy.random", "heads.training.fit", "cli.commands"))]
assert not bad, bad
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
