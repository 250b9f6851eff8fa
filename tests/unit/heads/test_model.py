"""The served head model (heads.model): numpy only."""

from __future__ import annotations

import subprocess
import sys


def test_model_module_imports_neither_tensorflow_nor_sklearn():
    code = ("import sys, heads.model; bad = [m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'sklearn', 'torch')]; assert not bad, bad")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    code = "import heads.model, sys; assert 'tensorflow' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
