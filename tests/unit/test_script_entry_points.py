"""Modules run as scripts (`python -m ...`) keep their `if __name__ == "__main__"` block last: a block in
the middle runs main() before the functions below it exist (the slim image's build ran
`python -m embedder.onnx_export --precision int8` and died with a NameError that way)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("polyhead", "embedder", "heads", "gateway", "cli")


def _is_main_guard(node: ast.stmt) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _modules_with_a_main_guard() -> list[Path]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "v1" in path.parts:  # generated gRPC stubs
                continue
            if any(_is_main_guard(n) for n in ast.parse(path.read_text()).body):
                found.append(path)
    return found


def test_there_are_script_modules_to_check():
    assert ROOT / "embedder" / "onnx_export.py" in _modules_with_a_main_guard()


@pytest.mark.parametrize("path", _modules_with_a_main_guard(), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_main_guard_is_the_last_statement(path):
    body = ast.parse(path.read_text()).body
    assert _is_main_guard(body[-1]), f"{path.relative_to(ROOT)}: code after `if __name__ == '__main__'`"
