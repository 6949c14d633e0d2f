# segtune images; compose.yaml builds both final targets:
#   cpu   every binary (CLI, preprocessor, controller, CPU trainer and evaluator) on Debian slim
#   cuda  segtune-trainer and segtune-evaluator built with `--features cuda` by
#         scripts/build-cuda (NVIDIA's CUDA 13.0 wheels from PyPI; no CUDA toolkit image
#         needed to build), on NVIDIA's CUDA 13.0 runtime image (cuBLAS, cuRAND, NVRTC).
# Both build generic x86-64 code (no target-cpu=native): the images run on any x86-64 host.
# The CUDA kernels are built for CUDA_COMPUTE_CAP (default 90 = H100/H200):
#   docker compose build --build-arg CUDA_COMPUTE_CAP=89 trainer
# and need an NVIDIA driver >= 580 (CUDA 13.0) on the host.
#
# The CPU image's binaries come from one of two stages (CPU_BINARIES):
#   build     (default) `cargo build --release` inside the Rust image: needs the image and
#             crates.io; what `docker compose build` / `up` does on a host with network.
#   prebuilt  binaries built on the host, in `prebuilt/` of the build context:
#             scripts/docker-cpu-image makes that context and builds the image (offline
#             machines and CI). They must run on Debian bookworm (glibc 2.36): the stage runs
#             each one before it is copied.
# Either way the `cpu` image is the same: the five binaries in /usr/local/bin, the user, the
# studies, the environment.
# No `# syntax=` line: BuildKit's built-in Dockerfile frontend builds this file, so nothing
# is pulled for it (RUN --mount needs BuildKit: Docker >= 23, or buildx).

ARG RUST_IMAGE=rust:1.95.0-bookworm
ARG CPU_BINARIES=build
# The CUDA image's binaries come from `build-cuda` (default: scripts/build-cuda inside the
# Rust image) or `prebuilt-cuda` (built on the host by scripts/build-cuda, in
# `prebuilt-cuda/` of the build context: scripts/docker-cuda-image). Its base is NVIDIA's
# CUDA 13.0 runtime image; machines without a registry make a stand-in with the same CUDA
# libraries from NVIDIA's wheels (scripts/docker-bases --cuda) to check what the image links.
ARG CUDA_BINARIES=build-cuda
ARG CUDA_RUNTIME_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu24.04

# ---- CPU build: every binary of the workspace ------------------------------------------
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && for b in segtune segtune-preprocessor segtune-controller segtune-trainer segtune-evaluator; do \
      cp "target/release/$b" /out/ && strip "/out/$b"; \
    done

# ---- CPU binaries built on the host (CPU_BINARIES=prebuilt) -----------------------------
FROM debian:bookworm-slim AS prebuilt
COPY prebuilt/ /out/
RUN for b in segtune segtune-preprocessor segtune-controller segtune-trainer segtune-evaluator; do \
      "/out/$b" --help >/dev/null || { echo "prebuilt/$b does not run on bookworm" >&2; exit 1; }; \
    done

FROM ${CPU_BINARIES} AS cpu-binaries

# ---- CUDA build: the recipe of scripts/build-cuda, run as is ---------------------------
FROM ${RUST_IMAGE} AS build-cuda
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3-pip \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ARG CUDA_COMPUTE_CAP=90
# pip --target into the cached prefix; Debian's pip wants this flag for any install.
ENV SEGTUNE_CUDA_PREFIX=/opt/cuda13 \
    CARGO_TARGET_DIR=/src/target/cuda \
    PIP_BREAK_SYSTEM_PACKAGES=1
# Own cache ids: BuildKit builds this stage and `build` at the same time.
RUN --mount=type=cache,id=segtune-cuda-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=segtune-cuda-target,target=/src/target \
    --mount=type=cache,id=segtune-cuda-wheels,target=/opt/cuda13 \
    CUDA_COMPUTE_CAP="$CUDA_COMPUTE_CAP" CUDAFORGE_THREADS="$(nproc)" \
      CARGO_BUILD_JOBS="$(nproc)" scripts/build-cuda \
 && mkdir -p /out \
 && cp target/cuda/release/segtune-trainer target/cuda/release/segtune-evaluator /out/

# ---- CUDA binaries built on the host (CUDA_BINARIES=prebuilt-cuda) -----------------------
# They cannot run here (no libcuda.so.1 until the NVIDIA runtime mounts it): the `cuda`
# stage's ldd check is what vets them.
FROM debian:bookworm-slim AS prebuilt-cuda
COPY prebuilt-cuda/ /out/

FROM ${CUDA_BINARIES} AS cuda-binaries

# ---- CPU image --------------------------------------------------------------------------
FROM debian:bookworm-slim AS cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --create-home segtune \
 && mkdir -p /data && chown segtune /data
COPY --from=cpu-binaries /out/ /usr/local/bin/
# The study files (the compose `demo` service submits studies/demo.toml).
COPY studies/ /opt/segtune/studies/
ENV SEGTUNE_STORE=/data/store SEGTUNE_NATS=nats://nats:4222
USER segtune
WORKDIR /data
VOLUME /data
CMD ["segtune", "--help"]

# ---- CUDA image: trainer and evaluator ---------------------------------------------------
FROM ${CUDA_RUNTIME_IMAGE} AS cuda
COPY --from=cuda-binaries /out/ /usr/local/bin/
# Every library the binaries link must be in the image, except the driver's libcuda.so.1,
# which the NVIDIA container toolkit mounts at run time.
RUN missing="$(ldd /usr/local/bin/segtune-trainer /usr/local/bin/segtune-evaluator \
      | grep 'not found' | grep -v 'libcuda\.so\.1' || true)"; \
    if [ -n "$missing" ]; then echo "missing libraries: $missing" >&2; exit 1; fi \
 && useradd --uid 10001 --create-home segtune \
 && mkdir -p /data && chown segtune /data
ENV SEGTUNE_STORE=/data/store SEGTUNE_NATS=nats://nats:4222 SEGTUNE_DEVICE=cuda \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER segtune
WORKDIR /data
VOLUME /data
CMD ["segtune-trainer"]

# `docker build .` without --target builds the CPU image.
FROM cpu
