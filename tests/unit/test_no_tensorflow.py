"""The unit layer never imports TensorFlow.

Two halves: the autouse fixture in tests/unit/conftest.py fails any unit test that imports it while
running; this test imports what collecting the unit layer imports (the conftests, the plugins they
name, every unit test module, hence the production modules those import) in a fresh interpreter and
fails if that alone brought TensorFlow in.
"""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

COLLECT = """
import importlib, pathlib, sys
import tests.conftest
for plugin in tests.conftest.pytest_plugins:
    importlib.import_module(plugin)
modules = sorted(p for p in pathlib.Path("tests/unit").rglob("*.py") if p.name == "conftest.py" or p.name.startswith("test_"))
for path in modules:
    importlib.import_module(".".join(path.with_suffix("").parts))
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorflow_hub", "tensorflow_text"))
print("IMPORTED", len(modules), "TF_MODULES", loaded[:5])
"""


def test_collecting_the_unit_layer_imports_no_tensorflow():
    done = subprocess.run([sys.executable, "-c", COLLECT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "TF_MODULES []" in done.stdout, done.stdout
    assert int(done.stdout.split()[1]) >= 10  # it did find the unit test modules
