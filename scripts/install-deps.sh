#!/usr/bin/env bash
# Installs everything mesaserve needs to build and test on Debian 12 (bookworm).
# Used by the README, by CI (.ci/run) and by the Dockerfile, so that all three agree.
#
# Idempotent and fast when everything is present: it only calls apt-get for
# missing packages and only builds sentencepiece when the cached build is absent.
#
# Environment:
#   MESA_DEPS_DIR   where locally built dependencies go (default: /opt/mesaserve-deps)
#   MESA_DEPS_MINIMAL=1   skip test-only tools (python grpcio, promtool, clang for fuzzing) e.g. in a runtime image
set -euo pipefail

DEPS_DIR="${MESA_DEPS_DIR:-/opt/mesaserve-deps}"
SPM_VERSION="0.1.97"

log() { printf '[install-deps] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

# Build toolchain and the design card's libraries, all from Debian packages.
APT_PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config git ca-certificates dpkg-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev nlohmann-json3-dev libblis-pthread-dev
  libgtest-dev libgmock-dev
)
if [ "${MESA_DEPS_MINIMAL:-0}" != "1" ]; then
  # Test tools: promtool (metrics lint) and python for the client tests.
  APT_PACKAGES+=(prometheus python3 python3-pip python3-venv)
  # Fuzzing (scripts/fuzz.sh, ctest fuzz_smoke): clang with libFuzzer and the sanitizer
  # runtimes, OpenMP for clang, llvm-symbolizer for readable reports.
  APT_PACKAGES+=(clang-14 libclang-rt-14-dev libomp-14-dev llvm-14)
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

# sentencepiece: Debian's libsentencepiece0 bundles and exports protobuf-lite 3.14, which
# breaks every process that also loads the system libprotobuf (all gRPC programs). We build
# Debian's own source package statically against the system protobuf instead
# (docs/platform-notes in the developers' guide; verified to work, also under ASan).
SPM_PREFIX="${DEPS_DIR}/sentencepiece-${SPM_VERSION}"
if [ -f "${SPM_PREFIX}/lib/libsentencepiece.a" ] && [ -f "${SPM_PREFIX}/include/sentencepiece_processor.h" ]; then
  log "sentencepiece ${SPM_VERSION} present in ${SPM_PREFIX}"
else
  log "building sentencepiece ${SPM_VERSION} from Debian's source package"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  src_list="/etc/apt/sources.list.d/mesaserve-deb-src.sources"
  if [ ! -f "$src_list" ]; then
    # Same mirrors as the binary sources, with source packages enabled.
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources | $SUDO tee "$src_list" >/dev/null
    else
      printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        | $SUDO tee "$src_list" >/dev/null
    fi
    $SUDO apt-get update -qq
  fi
  (cd "$work" && apt-get source -qq --download-only "sentencepiece=${SPM_VERSION}-1" >/dev/null 2>&1 \
     || apt-get source -qq --download-only sentencepiece >/dev/null)
  tarball="$(ls "$work"/sentencepiece_*.orig.tar.* | head -n1)"
  mkdir -p "$work/src"
  tar -xf "$tarball" -C "$work/src" --strip-components=1
  cmake -S "$work/src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DSPM_USE_BUILTIN_PROTOBUF=OFF -DSPM_ENABLE_SHARED=OFF -DSPM_ENABLE_TCMALLOC=OFF \
    -DCMAKE_POSITION_INDEPENDENT_CODE=ON -DCMAKE_INSTALL_PREFIX="${SPM_PREFIX}" >/dev/null
  cmake --build "$work/build" --target sentencepiece-static >/dev/null
  $SUDO mkdir -p "${SPM_PREFIX}/lib" "${SPM_PREFIX}/include"
  $SUDO cp "$work/build/src/libsentencepiece.a" "${SPM_PREFIX}/lib/"
  $SUDO cp "$work/src/src/sentencepiece_processor.h" "${SPM_PREFIX}/include/"
  log "sentencepiece installed in ${SPM_PREFIX}"
fi

if [ "${MESA_DEPS_MINIMAL:-0}" != "1" ]; then
  # Python packages for the client-side tests (a user's grpcio client) and the tools.
  PY="${PYTHON:-python3}"
  if ! "$PY" -c 'import grpc, grpc_tools, grpc_health.v1.health_pb2, grpc_reflection.v1alpha.reflection_pb2, numpy, sentencepiece' >/dev/null 2>&1; then
    log "installing python test packages"
    "$PY" -m pip install -q --disable-pip-version-check --break-system-packages \
      grpcio grpcio-tools grpcio-health-checking grpcio-reflection numpy sentencepiece 2>/dev/null \
      || "$PY" -m pip install -q --disable-pip-version-check grpcio grpcio-tools grpcio-health-checking grpcio-reflection numpy sentencepiece
  fi
fi
log "done"
