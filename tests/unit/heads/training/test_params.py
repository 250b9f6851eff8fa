"""What a serving process may import from heads.training: the config schema, nothing that trains."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]


def test_validating_a_head_config_imports_only_params_and_the_family_names():
    # heads.config validates a config's `training:` section (TrainParams, family names) in serving
    # processes too: that must not load the optimiser, a family module or scikit-learn.
    code = f"""
import sys
from heads.config import load_head_config
from heads.training.params import TrainParams
load_head_config({str(ROOT / "configs" / "heads" / "support-routing.yaml")!r})
TrainParams(families=["logreg", "mlp"])
loaded = sorted(m for m in sys.modules if m.startswith("heads.training"))
assert loaded == ["heads.training", "heads.training.families", "heads.training.params"], loaded
assert "sklearn" not in sys.modules
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
