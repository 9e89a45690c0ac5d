#!/usr/bin/env bash
# Checks the deploy files with real tools (docs/deploy.md, "What CI checks"):
#   hadolint on the Dockerfile, plus its stages, ports, user, health check and the
#     runtime packages against `ldd` of the built binary;
#   kustomize-rendered cpu/gpu overlays validated (strict) against Kubernetes API schemas,
#     plus probes, drain timing, security context, selectors, HPA metric;
#   promtool check config / check rules / test rules; yamllint on deploy/;
#   the Compose files against the Compose specification, plus their mounts and targets;
#   the Grafana dashboard: JSON, panels, every query parsed by promtool;
#   every metric the dashboard, the alerts and the autoscaler query is in
#     docs/server-interface.md and, given METRICS_FILE, on a real /metrics scrape.
#
# Usage: scripts/check-deploy.sh [METRICS_FILE]
#        scripts/check-deploy.sh --self-test   (checks that the checks catch mistakes)
# METRICS_FILE: the text of `curl http://HOST:9090/metrics` from a running `mesaserve serve`.
# MESASERVE: the binary for the runtime-library check (default build/cli/mesaserve; the
#   check is skipped with a note when it does not exist).
# Exits non-zero, naming each failed check and why, if anything is wrong.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"

bash scripts/install-deploy-tools.sh

if [ "${1:-}" = "--self-test" ]; then
  exec "$PY" deploy/checks/selftest.py
fi
args=()
if [ "$#" -gt 0 ]; then
  if [ ! -f "$1" ]; then
    echo "check-deploy: metrics file '$1' not found" >&2
    exit 2
  fi
  args+=(--metrics "$1")
fi
exec "$PY" deploy/checks/deploycheck.py "${args[@]}"
