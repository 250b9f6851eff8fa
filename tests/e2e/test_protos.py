"""The committed gRPC stubs are exactly what scripts/dev/gen_protos.py makes from protos/."""

import subprocess
import sys

from tests.conftest import ROOT


def test_committed_stubs_match_the_proto():
    result = subprocess.run([sys.executable, "scripts/dev/gen_protos.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
