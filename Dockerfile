# syntax=docker/dockerfile:1
#
# mesaserve container images (docs/deploy.md).
#
#   docker build -t mesaserve:gpu .                # GPU (CUDA) image: the default target
#   docker build --target cpu -t mesaserve:cpu .   # CPU-only image, for machines without a GPU
#
# Both are built with the same scripts as the README and CI: scripts/install-deps.sh
# (MESA_DEPS_MINIMAL=1: no test-only tools) and scripts/build.sh --target mesaserve.
# Those scripts target Debian 12, so every stage is Debian 12. NVIDIA publishes no
# Debian CUDA image: the GPU build stage copies the toolkit out of the official
# nvidia/cuda devel image (the same /usr/local/cuda-<x.y> layout CI builds with), and the
# GPU runtime stage carries only the CUDA libraries the binary links, found with ldd.
# The driver (libcuda) comes from the host through the NVIDIA container toolkit.
#
# Configuration: flags after the image name (`docker run IMAGE --slots 64`) or MESA_*
# environment variables (`-e MESA_SLOTS=64`); see docs/server-interface.md.

ARG DEBIAN_VERSION=12.11
ARG CUDA_VERSION=13.0.2
ARG CUDA_MAJOR_MINOR=13.0

# ---------------------------------------------------------------------------
# Toolkit source for the GPU build (only /usr/local/cuda-<x.y> is taken from it).
# ---------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS cuda-devel

# ---------------------------------------------------------------------------
# Build dependencies: the README's scripts/install-deps.sh on Debian 12.
# ---------------------------------------------------------------------------
FROM debian:${DEBIAN_VERSION} AS build-deps
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive
# Keep downloaded .debs in the BuildKit cache mounts below instead of deleting them.
RUN rm -f /etc/apt/apt.conf.d/docker-clean \
 && echo 'Binary::apt::APT::Keep-Downloaded-Packages "true";' > /etc/apt/apt.conf.d/keep-cache
WORKDIR /src
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt,sharing=locked \
    MESA_DEPS_MINIMAL=1 bash scripts/install-deps.sh

# ---------------------------------------------------------------------------
# CPU build: the README's scripts/build.sh, only the mesaserve target, no tests.
# ---------------------------------------------------------------------------
FROM build-deps AS build-cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG MESA_CPU_ARCH=x86-64-v3
COPY . .
RUN --mount=type=cache,target=/root/.cache/ccache \
    MESA_CMAKE_ARGS="-DMESA_WITH_CUDA=OFF -DMESA_BUILD_TESTS=OFF -DMESA_CPU_ARCH=${MESA_CPU_ARCH} \
      -DMESA_DEFAULT_MODEL_DIR=/opt/mesaserve/models/mesanet-tiny-en" \
    bash scripts/build.sh --target mesaserve \
 && install -D -m 0755 build/cli/mesaserve /out/bin/mesaserve

# ---------------------------------------------------------------------------
# GPU build: same scripts, with the CUDA toolkit on PATH.
# ---------------------------------------------------------------------------
FROM build-deps AS build-gpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG CUDA_MAJOR_MINOR
ARG MESA_CPU_ARCH=x86-64-v3
# CUDA architectures for nvcc; 90a = H100/H200 (the kernels' target).
ARG MESA_CUDA_ARCHITECTURES=90a
COPY --from=cuda-devel /usr/local/cuda-${CUDA_MAJOR_MINOR} /usr/local/cuda-${CUDA_MAJOR_MINOR}
RUN ln -s "/usr/local/cuda-${CUDA_MAJOR_MINOR}" /usr/local/cuda
ENV PATH=/usr/local/cuda/bin:${PATH} \
    CUDACXX=/usr/local/cuda/bin/nvcc
COPY . .
RUN --mount=type=cache,target=/root/.cache/ccache \
    MESA_CMAKE_ARGS="-DMESA_WITH_CUDA=ON -DMESA_BUILD_TESTS=OFF -DMESA_CPU_ARCH=${MESA_CPU_ARCH} \
      -DCMAKE_CUDA_ARCHITECTURES=${MESA_CUDA_ARCHITECTURES} \
      -DMESA_DEFAULT_MODEL_DIR=/opt/mesaserve/models/mesanet-tiny-en" \
    bash scripts/build.sh --target mesaserve \
 && install -D -m 0755 build/cli/mesaserve /out/bin/mesaserve \
 && mkdir -p /out/cuda-lib \
 && { LD_LIBRARY_PATH=/usr/local/cuda/lib64 ldd build/cli/mesaserve \
      | awk '$3 ~ /^\/usr\/local\/cuda/ { print $3 }' \
      | xargs -r cp -L -t /out/cuda-lib; }

# ---------------------------------------------------------------------------
# Runtime base: Debian 12 slim with the shared libraries mesaserve links
# (scripts/check-deploy.sh compares this list with `ldd build/cli/mesaserve`).
# ---------------------------------------------------------------------------
FROM debian:${DEBIAN_VERSION}-slim AS runtime-base
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive
# Package versions are not pinned: the base image tag pins the Debian point release and
# bookworm only receives security and stability fixes; pinned versions would break the
# build as soon as the mirror drops them.
# hadolint ignore=DL3008
RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt,sharing=locked \
    rm -f /etc/apt/apt.conf.d/docker-clean \
 && apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      libgrpc++1.51 libgrpc29 libprotobuf32 libabsl20220623 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 \
      libblis4-pthread libgomp1 \
 && groupadd --system --gid 10001 mesa \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin mesa
COPY models/mesanet-tiny-en /opt/mesaserve/models/mesanet-tiny-en
# Defaults of `mesaserve serve` made explicit; override with -e or with flags.
ENV MESA_MODEL=/opt/mesaserve/models/mesanet-tiny-en \
    MESA_LISTEN=0.0.0.0:50051 \
    MESA_METRICS_LISTEN=0.0.0.0:9090 \
    MESA_DRAIN_TIMEOUT=30 \
    MESA_LOG_LEVEL=info
# 50051: gRPC (mesa.v1.Generation, grpc.health.v1.Health, reflection); 9090: /metrics.
EXPOSE 50051 9090
STOPSIGNAL SIGTERM
# gRPC health check (grpc.health.v1.Health/Check on the port of MESA_LISTEN).
# The shell takes the port out of MESA_LISTEN at run time, so a changed port is followed;
# any failure is reported as 1 (unhealthy), as Docker expects.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["/bin/bash", "-c", "mesaserve health --address \"127.0.0.1:${MESA_LISTEN##*:}\" || exit 1"]
WORKDIR /opt/mesaserve

# ---------------------------------------------------------------------------
# CPU-only image: docker build --target cpu -t mesaserve:cpu .
# ---------------------------------------------------------------------------
FROM runtime-base AS cpu
COPY --from=build-cpu /out/bin/mesaserve /usr/local/bin/mesaserve
USER 10001:10001
ENTRYPOINT ["mesaserve", "serve"]

# ---------------------------------------------------------------------------
# GPU image (default target): docker build -t mesaserve:gpu .
# Run with `docker run --gpus all ...` (NVIDIA container toolkit on the host).
# ---------------------------------------------------------------------------
FROM runtime-base AS gpu
ARG CUDA_MAJOR_MINOR
COPY --from=build-gpu /out/cuda-lib/ /usr/local/lib/mesaserve-cuda/
COPY --from=build-gpu /out/bin/mesaserve /usr/local/bin/mesaserve
RUN echo /usr/local/lib/mesaserve-cuda > /etc/ld.so.conf.d/mesaserve-cuda.conf && ldconfig
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA="cuda>=${CUDA_MAJOR_MINOR}"
USER 10001:10001
ENTRYPOINT ["mesaserve", "serve"]
