"""`polyhead head serve` runs heads/serve_cli.py: the same flags as the typer command, and a process
that loads only what serving needs (each single-head process pays for every import: BENCHMARKS.md §5)."""

from __future__ import annotations

import subprocess
import sys

import typer

from heads import serve_cli
from polyhead.commands import app


def _typer_flags(*path: str) -> set[str]:
    command = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {opt for param in command.params for opt in (*param.opts, *param.secondary_opts) if opt.startswith("-")}


def test_the_light_entry_has_the_typer_commands_flags():
    parser = serve_cli.parser()
    light = {opt for action in parser._actions for opt in action.option_strings} - {"-h", "--help"}
    assert light == _typer_flags("head", "serve") - {"--help"}
    assert "--embedder-target" in light and "--no-coalesce" in light and "-c" in light


def test_the_light_entry_loads_settings_like_the_typer_command(tmp_path):
    config = tmp_path / "h.yaml"
    config.write_text("name: h\n")
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text("head:\n  port: 9001\n  coalesce: false\n")
    settings = serve_cli.parse_settings(serve_cli.HeadSettings, [str(config), "-c", str(settings_file),
                                                                 "--embedder-timeout-s", "2.5", "--coalesce"],
                                        **serve_cli.PARSER)
    assert settings.config == [config] and settings.port == 9001 and settings.embedder_timeout_s == 2.5
    assert settings.coalesce is True  # a flag wins over the file


def test_the_head_serving_entry_imports_neither_cli_libraries_nor_other_backends(tmp_path):
    # What a head on SQLite loads: the entry, its app and server modules, its inference log writing a
    # row to a fresh DB. Not typer or rich (CLI), TensorFlow (embedder), SQLAlchemy (the head writes
    # through sqlite3 and migrates in a child process: heads/inference_log/sink.py), numpy.random
    # (drift noise comes precomputed in the artifact), training code.
    code = f"""
import sys
sys.argv = ["polyhead", "head", "serve"]
import polyhead.cli, heads.serve_cli, heads.http_server, uvicorn
from heads.inference_log.records import PredictionRecord
from heads.inference_log.writer import InferenceLog
settings = heads.serve_cli.parse_settings(heads.serve_cli.HeadSettings, ["--db-url", "sqlite:///{tmp_path}/db/i.db"],
                                          **heads.serve_cli.PARSER)
with InferenceLog(settings.db_url, "{tmp_path}/spool") as log:
    log.record(PredictionRecord.create(request_id="r", head="h", head_version="1", embedder_fingerprint="f",
                                       text="t", label="a", probability=0.5, top_k=[("a", 0.5)], latency_ms=1.0))
    assert log.flush() and log.healthy() and log.stats.written == 1, log.stats
bad = [m for m in sys.modules if m.split(".")[0] in ("typer", "rich", "tensorflow", "gateway", "sqlalchemy")
       or m.startswith(("numpy.random", "heads.training.fit", "polyhead.commands"))]
assert not bad, bad
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
