# The worker image: `autolabel worker` (the launcher and its Celery processes) and `autolabel fetch-model`.
#
#   docker build -f docker/worker.Dockerfile -t autolabel-worker:cuda .                      # production
#   scripts/docker-wheels.sh && \
#   docker build -f docker/worker.Dockerfile --build-arg FLAVOR=cpu -t autolabel-worker:cpu .   # laptops, CI
#
# Two flavours, one build argument. `cuda`: the locked torch as PyPI ships it for Linux (the CUDA 13
# build; its CUDA libraries come as wheels, so no CUDA base image), mmcv 2.1.0 with its CUDA ops
# compiled in a builder stage for compute capabilities 8.0 (A100), 8.6 (RTX 30xx, A10, A40), 8.9
# (RTX 40xx, L4, L40) and 9.0 (H100). `cpu`: the CPU torch build, which is not on PyPI: from
# docker/wheels/ (scripts/docker-wheels.sh puts the host's wheels there) or PyTorch's CPU index.
# Either way only the installed environment reaches the runtime stage: no compiler, no CUDA
# headers, no wheels. Model weights are never in the image (docs/deploy.md: `autolabel fetch-model`).
ARG FLAVOR=cuda
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# cuda: nvcc and the CUDA headers (NVIDIA's Debian 12 packages) only here, in the builder.
FROM ${PYTHON_IMAGE} AS build-cuda
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG CUDA_VERSION=13.0
ARG CUDA_PACKAGES=13-0
ARG CUDA_KEYRING=https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl g++ \
    && curl -fsSL -o /tmp/cuda-keyring.deb "$CUDA_KEYRING" \
    && dpkg -i /tmp/cuda-keyring.deb \
    && apt-get update \
    && pkg="$CUDA_PACKAGES" \
    && apt-get install -y --no-install-recommends "cuda-nvcc-$pkg" "cuda-cudart-dev-$pkg" "cuda-nvrtc-dev-$pkg" \
        "cuda-nvtx-$pkg" "libcublas-dev-$pkg" "libcusparse-dev-$pkg" "libcusolver-dev-$pkg" "libcurand-dev-$pkg" \
    && rm -rf /var/lib/apt/lists/* /tmp/cuda-keyring.deb
ENV CUDA_HOME=/usr/local/cuda-${CUDA_VERSION} \
    PATH=/opt/autolabel/bin:/usr/local/cuda-${CUDA_VERSION}/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY requirements/lock.txt /src/requirements/lock.txt
# mmcv's setup.py needs pkg_resources (setuptools 80.9 from the lock has it) and torch at build time.
RUN python -m venv /opt/autolabel \
    && pip install -c /src/requirements/lock.txt pip setuptools wheel ninja torch numpy
# mmcv's ops for the four architectures, plus PTX of the newest so a later card can JIT-compile it.
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0+PTX"
ARG MAX_JOBS=8
RUN MMCV_WITH_OPS=1 FORCE_CUDA=1 pip wheel --no-build-isolation --no-deps -w /wheels mmcv==2.1.0
# PyPI's torch is the CUDA build: no other index.
ENV TORCH_INDEX_URL=

# ---------------------------------------------------------------------------------------------
# cpu: the CPU torch wheel and the mmcv wheel built against it (with its CPU ops) come from
# docker/wheels/, else from PyTorch's CPU index (torch) and a source build would be needed (mmcv).
FROM ${PYTHON_IMAGE} AS build-cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PATH=/opt/autolabel/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    TORCH_INDEX_URL=${TORCH_INDEX_URL}
# binutils: `strip` for docker/slim-env.sh (the cuda stage has it with g++).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
COPY docker/wheels/ /wheels/
RUN python -m venv /opt/autolabel

# ---------------------------------------------------------------------------------------------
# A stage of this file (build-cuda or build-cpu), not an image to tag: DL3006 does not apply.
# hadolint ignore=DL3006
FROM build-${FLAVOR} AS build
# OFFLINE=1: no index at all, every wheel from docker/wheels/ (what CI does: no registry is reachable there).
ARG OFFLINE=
COPY requirements/lock.txt /src/requirements/lock.txt
COPY producer/pyproject.toml /src/producer/pyproject.toml
COPY worker/pyproject.toml /src/worker/pyproject.toml
COPY docker/slim-env.sh /src/docker/slim-env.sh
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# First the two packages' dependencies, read from their pyproject.toml: this layer (torch and the
# rest, minutes to install) stays cached while only the product's code changes.
# opencv-python is what mmcv asks for, and it needs libGL; the headless build of the same version
# provides the same cv2 without it. triton (0.7 GB; torch.compile's) and networkx (19 MB; torch.fx
# partitioners') are torch dependencies the worker never imports (a detection runs with both
# absent); sympy stays: mmengine imports torch's FSDP, which imports it. Then docker/slim-env.sh
# (tests, headers, botocore's other services, symbols). Versions come from the
# lock (-c) and --no-cache-dir is in "${index[@]}", where hadolint does not look.
# hadolint ignore=DL3013,DL3042
RUN index=(--no-cache-dir --find-links /wheels) \
    && if [ -n "$OFFLINE" ]; then index+=(--no-index); elif [ -n "$TORCH_INDEX_URL" ]; then \
        index+=(--extra-index-url "$TORCH_INDEX_URL"); fi \
    && printf '%s\n' "${index[@]}" > /src/pip-index.args \
    && python -c 'import sys, tomllib; print("\n".join(d for f in sys.argv[1:] for d in tomllib.load(open(f, "rb"))["project"]["dependencies"] if d.split("[")[0] != "autolabel"))' \
        /src/producer/pyproject.toml /src/worker/pyproject.toml > /src/dependencies.txt \
    && pip install "${index[@]}" -c /src/requirements/lock.txt mmcv==2.1.0 -r /src/dependencies.txt \
    && cv="$(pip show opencv-python | sed -n 's/^Version: //p')" \
    && pip uninstall -y opencv-python \
    && pip install "${index[@]}" --no-deps "opencv-python-headless==$cv" \
    && pip uninstall -y triton networkx \
    && /src/docker/slim-env.sh /opt/autolabel
COPY producer/ /src/producer/
COPY worker/ /src/worker/
# The product's own two packages, from the sources (no version to pin); their dependencies are in.
# hadolint ignore=DL3013,DL3042
RUN mapfile -t index < /src/pip-index.args \
    && pip install "${index[@]}" --no-deps /src/producer /src/worker \
    && pip uninstall -y pip setuptools wheel \
    && python -c "import cv2, mmcv.ops, mmdet.apis, torch, autolabel_worker.app, autolabel.storage"
COPY configs/ /opt/autolabel/configs/

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG FLAVOR
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="autolabel-worker" \
      org.opencontainers.image.description="autolabel worker (${FLAVOR}): batched MMDetection inference behind Celery" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://example.invalid/autolabel" \
      io.autolabel.flavor="${FLAVOR}"
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin autolabel
COPY --from=build /opt/autolabel /opt/autolabel
# nvidia-container-toolkit mounts the driver and nvidia-smi (which the launcher asks for the cards) into
# the container when these say so; on a CPU host they do nothing.
ENV PATH=/opt/autolabel/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    AUTOLABEL_CONFIGS_DIR=/opt/autolabel/configs \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001
WORKDIR /home/autolabel
EXPOSE 8008
# /live is 200 while the launcher runs and is not shutting down (docs/workers.md).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request as r; r.urlopen('http://127.0.0.1:8008/live', timeout=4)"]
# Exec form: the launcher is PID 1 and gets SIGTERM itself; it lets each process finish its batch.
ENTRYPOINT ["autolabel"]
CMD ["worker", "--devices", "all", "--procs-per-device", "auto"]
