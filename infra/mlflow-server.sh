#!/usr/bin/env bash
# A local MLflow tracking server on the project's own store.
#
#   backend store   sqlite:///$ROOT/mlflow.db   (the same file the embedded pipeline writes)
#   artifacts       $ROOT/mlartifacts, uploaded and downloaded through the server (proxied)
#
# Run:   make server            (or: bash infra/mlflow-server.sh [extra `mlflow server` options])
# Use:   export MLFLOW_TRACKING_URI=http://127.0.0.1:5000   then `shrinkflow run` logs to it.
#
# Environment:
#   MLFLOW_HOST   interface to bind (default 127.0.0.1). Anything but loopback (e.g. 0.0.0.0)
#                 exposes the whole store (runs, models, artifacts) to the network without
#                 authentication; set --allowed-hosts / --cors-allowed-origins as well then.
#   MLFLOW_PORT   port to listen on (default 5000).
#   MLFLOW_SERVER_ENABLE_JOB_EXECUTION   default false here (the pipeline runs no server jobs).
#
# Experiments created by the embedded pipeline (no server) keep their file:// artifact location
# under $ROOT/mlartifacts; experiments created through this server get mlflow-artifacts:/ URIs
# that the server resolves into the same folder.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST="${MLFLOW_HOST:-127.0.0.1}"
PORT="${MLFLOW_PORT:-5000}"

if [[ -x "$ROOT/.venv/bin/mlflow" ]]; then
    MLFLOW="$ROOT/.venv/bin/mlflow"
elif command -v mlflow >/dev/null 2>&1; then
    MLFLOW="$(command -v mlflow)"
else
    echo "mlflow not found: run \`make install\` (creates $ROOT/.venv) or put mlflow on PATH" >&2
    exit 1
fi

export MLFLOW_DISABLE_TELEMETRY=true
# the server's background job runner (GenAI evaluation/optimization jobs; ~8 extra processes)
# is unused by this pipeline: off unless asked for
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
mkdir -p "$ROOT/mlartifacts"
cd "$ROOT"

case "$HOST" in
    0.0.0.0 | :: ) URL_HOST=127.0.0.1 ;;
    *:* ) URL_HOST="[$HOST]" ;;  # IPv6 literal
    * ) URL_HOST="$HOST" ;;
esac
URL="http://$URL_HOST:$PORT"

echo "MLflow tracking server on $URL"
echo "  store:     sqlite:///$ROOT/mlflow.db"
echo "  artifacts: $ROOT/mlartifacts (served through the server)"
if [[ "$HOST" != 127.* && "$HOST" != "::1" && "$HOST" != localhost ]]; then
    echo "  WARNING: bound to $HOST, not loopback: the store is reachable from the network" >&2
fi
echo "Log the pipeline to it with:"
echo "  export MLFLOW_TRACKING_URI=$URL"

exec "$MLFLOW" server \
    --backend-store-uri "sqlite:///$ROOT/mlflow.db" \
    --serve-artifacts \
    --artifacts-destination "$ROOT/mlartifacts" \
    --host "$HOST" \
    --port "$PORT" \
    --workers 1 \
    "$@"
