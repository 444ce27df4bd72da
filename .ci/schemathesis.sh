#!/usr/bin/env bash
# Property-based API tests: starts the service (debug build) on a free port with a fresh
# database, logs in as an administrator, and runs schemathesis with every check against the
# OpenAPI document the service serves. Exit status is schemathesis'.
# Usage: .ci/schemathesis.sh [extra schemathesis options]     (MariaDB and Redis must be up)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VALIDATORS_VENV:-$HOME/.cache/orderflow-validators}"
SCHEMATHESIS_VERSION=4.32.5
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-25}"
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
if [[ "$("$VENV/bin/python" -m pip show schemathesis 2>/dev/null | sed -n 's/^Version: //p')" != "$SCHEMATHESIS_VERSION" ]]; then
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi

# ORDERFLOW_BIN: a binary already built (CI's); otherwise cargo builds one.
if [[ -z "${ORDERFLOW_BIN:-}" ]]; then
  cargo build --quiet --bin orderflow
  ORDERFLOW_BIN=./target/debug/orderflow
fi
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
db="orderflow_schemathesis_$$"
server="${TEST_DATABASE_URL:-mysql://root@127.0.0.1:3306}"
log="${TMPDIR:-/tmp}/orderflow-schemathesis.log"

HTTP_ADDR="127.0.0.1:$port" DATABASE_URL="$server/$db" REDIS_URL="${TEST_REDIS_URL:-redis://127.0.0.1:6379}" \
  CACHE_KEY_PREFIX="st$$:" KAFKA_TOPIC_PREFIX="st$$." KAFKA_BROKERS="${TEST_KAFKA_BROKERS:-}" \
  ADMIN_EMAIL=admin@schemathesis.test ADMIN_PASSWORD=schemathesis-admin-1 \
  RUST_LOG=warn "$ORDERFLOW_BIN" serve > "$log" 2>&1 &
pid=$!
cleanup() {
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  mysql --protocol=tcp -h127.0.0.1 -uroot -e "DROP DATABASE IF EXISTS \`$db\`" 2>/dev/null || true
}
trap cleanup EXIT

base="http://127.0.0.1:$port"
for _ in $(seq 1 60); do
  curl -sf "$base/actuator/health/readiness" >/dev/null && break
  kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
  sleep 1
done
token="$(curl -sf -X POST "$base/api/v1/auth/login" -H 'Content-Type: application/json' \
  -d '{"email":"admin@schemathesis.test","password":"schemathesis-admin-1"}' | jq -r .accessToken)"
# A product, so that order operations reach past "no such product".
curl -sf -X POST "$base/api/v1/admin/products" -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/json' \
  -d '{"sku":"ST-1","name":"Schemathesis","price":100,"initialStock":1000000}' >/dev/null

# One worker: with two threads, CPython 3.11 can fail inside schemathesis with "SystemError: AST
# constructor recursion depth mismatch" (concurrent compile() calls; seen once in .ci/run).
"$VENV/bin/schemathesis" --config-file .ci/schemathesis.toml run "$base/api-docs/openapi.json" \
  -H "Authorization: Bearer $token" --max-examples "$MAX_EXAMPLES" --workers 1 \
  --seed 20261126 "$@"
