"""`polyhead embed` against a running embedder; the client side never imports TensorFlow."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def test_embed_command_prints_vectors(server_process):
    _, target = server_process
    result = run_cli("embed", "--target", target, "hello", "hello")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["dim"] for line in lines] == [384, 384]
    assert lines[0]["fingerprint"].startswith("sha256:")


def test_embed_command_reports_bad_input_clearly(server_process):
    _, target = server_process
    result = run_cli("embed", "--target", target, " ")
    assert result.returncode == 2
    assert "texts[0]" in result.stderr and "Traceback" not in result.stderr


def test_client_import_does_not_import_tensorflow():
    code = "import sys, embedder.client, cli.main, cli.commands; assert 'tensorflow' not in sys.modules, 'tf imported'"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
