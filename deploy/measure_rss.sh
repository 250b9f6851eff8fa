#!/usr/bin/env bash
# Measure the resident memory (VmRSS) of each service as the containers run them: an embedder,
# one head (a real trained artifact) and the gateway, on loopback ports, then some traffic.
# The numbers size the Kubernetes requests/limits in cli/deploy.py (RESOURCES).
#   bash deploy/measure_rss.sh            # CACHE_TEXTS=3000 distinct texts through the embedder cache
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
CACHE_TEXTS=${CACHE_TEXTS:-3000}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
port() { $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss() { awk '/VmRSS/ {printf "%.0f MiB\n", $2/1024}' "/proc/$1/status"; }

EPORT=$(port); HPORT=$(port); GPORT=$(port)
$PY -m cli.main embedder serve --port "$EPORT" --metrics-port 0 --log-level warning >"$WORK/embedder.log" 2>&1 &
PIDS+=($!); EPID=$!
for _ in $(seq 120); do
  [ "$($PY -c "from embedder.client import EmbedderClient as C; print(C('127.0.0.1:$EPORT').health(1.0))" 2>/dev/null)" = SERVING ] && break
  sleep 1
done

mkdir -p "$WORK/configs"
cp tests/fixtures/heads/tickets_train.jsonl tests/fixtures/heads/tickets_test.jsonl "$WORK/configs/"
printf 'name: tickets\ndataset:\n  train: tickets_train.jsonl\n  test: tickets_test.jsonl\n' >"$WORK/configs/tickets.yaml"
$PY -m cli.main train "$WORK/configs/tickets.yaml" --models-dir "$WORK/models" --embedder-target "127.0.0.1:$EPORT" >/dev/null 2>&1

$PY -m cli.main head serve "$WORK/configs/tickets.yaml" --port "$HPORT" --models-dir "$WORK/models" \
  --embedder-target "127.0.0.1:$EPORT" --db-url "sqlite:///$WORK/inference.db" --spool-dir "$WORK/spool" \
  --log-level warning >"$WORK/head.log" 2>&1 &
PIDS+=($!); HPID=$!
printf 'tickets: http://127.0.0.1:%s\n' "$HPORT" >"$WORK/routes.yaml"
$PY -m cli.main gateway serve --port "$GPORT" --heads-dir "$WORK/configs" --routes-file "$WORK/routes.yaml" \
  --embedder-target "127.0.0.1:$EPORT" --log-level warning >"$WORK/gateway.log" 2>&1 &
PIDS+=($!); GPID=$!

$PY - "$HPORT" "$GPORT" "$CACHE_TEXTS" <<'EOF'
import sys, time, httpx
hport, gport, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for url in (f"http://127.0.0.1:{hport}/readyz", f"http://127.0.0.1:{gport}/readyz"):
    for _ in range(120):
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        sys.exit(f"not ready: {url}")
texts = [f"my order number {i} has not arrived yet, can you check ticket {i * 7}?" for i in range(n)]
with httpx.Client(timeout=60) as c:
    for i in range(0, n, 32):  # gateway -> head -> embedder (fills the embedder's cache)
        c.post(f"http://127.0.0.1:{gport}/v1/models/tickets/predict", json={"texts": texts[i:i + 32]}).raise_for_status()
    for i in range(50):
        c.get(f"http://127.0.0.1:{gport}/v1/models").raise_for_status()
EOF
echo "texts through the cache: $CACHE_TEXTS"
echo "embedder RSS: $(rss "$EPID")"
echo "head RSS:     $(rss "$HPID")"
echo "gateway RSS:  $(rss "$GPID")"
