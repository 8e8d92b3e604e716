# Stand-in for the MinIO image docker-compose.yml names, where no registry of images is reachable
# (CI here): moto's S3 server, the one the tests use, behind `minio` and `mc` shims that take the
# compose file's command (`server /data ...`) and healthcheck (`mc ready local`) as they are.
# Built by scripts/docker-standins.sh on the python stand-in; never for production.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}
COPY wheels/ /wheels/
# hadolint ignore=DL3013
RUN python -m venv /opt/moto \
    && /opt/moto/bin/pip install --no-cache-dir --no-index --find-links /wheels "moto[server]" \
    && rm -rf /wheels
COPY minio mc /usr/local/bin/
EXPOSE 9000
ENTRYPOINT ["minio"]
