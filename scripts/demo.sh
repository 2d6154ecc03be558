#!/usr/bin/env bash
# `make demo`: a real distributed run on this machine. Starts the CPU Triton with
# triton_models/, runs an open-loop test from two local agents, prints the summary,
# leaves the run directory under runs/, and stops Triton again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VOLLEY_PY:-.venv/bin/python}
STATE=.volley/demo-triton
HTTP=${DEMO_HTTP_PORT:-8000}; GRPC=${DEMO_GRPC_PORT:-8001}; METRICS=${DEMO_METRICS_PORT:-8002}
RATE=${DEMO_RATE:-200}; DURATION=${DEMO_DURATION:-20s}

"$PY" -m volley triton start --state-dir "$STATE" \
    --http-port "$HTTP" --grpc-port "$GRPC" --metrics-port "$METRICS"
trap '"$PY" -m volley triton stop --state-dir "$STATE" >/dev/null || true' EXIT

status=0
"$PY" -m volley run --name demo --target "127.0.0.1:$GRPC" --model add \
    --rate "$RATE" --arrival poisson --duration "$DURATION" --warmup 2s \
    --local-agents 2 --slo "p99<50ms" --slo "errors<0.1%" \
    --server-metrics "127.0.0.1:$METRICS" || status=$?
echo
echo "run directory: $(ls -td runs/*-demo | head -n 1)"
exit $status
