# The producer image: the torch-free `autolabel` package (CLI, client) and Flower.
#
#   docker build -f docker/producer.Dockerfile -t autolabel:latest .
#   docker run --rm --env-file .env autolabel:latest submit s3://bucket/video.mp4 --wait
#   docker run --rm -p 5555:5555 --env-file .env --entrypoint celery autolabel:latest \
#       --broker "$AUTOLABEL_BROKER_URL" flower --basic-auth=user:password
#
# No torch, no mmcv: the image test asserts that neither is installed.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# OFFLINE=1: every wheel from docker/wheels/ (scripts/docker-wheels.sh), no index (CI).
ARG OFFLINE=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
# binutils: `strip` for docker/slim-env.sh.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends binutils \
    && rm -rf /var/lib/apt/lists/*
COPY docker/wheels/ /wheels/
COPY requirements/lock.txt /src/requirements/lock.txt
COPY producer/ /src/producer/
COPY docker/slim-env.sh /src/docker/slim-env.sh
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Versions come from the lock (-c).
# hadolint ignore=DL3013
RUN python -m venv /opt/autolabel \
    && /opt/autolabel/bin/pip install --no-cache-dir --find-links /wheels ${OFFLINE:+--no-index} \
        -c /src/requirements/lock.txt "/src/producer[flower]" \
    && /opt/autolabel/bin/pip uninstall -y pip setuptools wheel \
    && /src/docker/slim-env.sh /opt/autolabel \
    && /opt/autolabel/bin/python -c "import autolabel.cli, autolabel.client, autolabel.video, flower" \
    && ! /opt/autolabel/bin/python -c "import torch" 2>/dev/null
COPY configs/ /opt/autolabel/configs/

FROM ${PYTHON_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="autolabel" \
      org.opencontainers.image.description="autolabel producer: task contract, client, CLI and Flower; no torch" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://example.invalid/autolabel"
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin autolabel
COPY --from=build /opt/autolabel /opt/autolabel
# AUTOLABEL_CONFIGS_DIR: a model name with no config here (and no live worker) is refused at submit.
ENV PATH=/opt/autolabel/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    AUTOLABEL_CONFIGS_DIR=/opt/autolabel/configs \
    FLOWER_TASKS_COLUMNS=name,state,kwargs,received,runtime,worker
USER 10001
WORKDIR /home/autolabel
ENTRYPOINT ["autolabel"]
CMD ["--help"]
