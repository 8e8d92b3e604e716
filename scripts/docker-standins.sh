#!/usr/bin/env bash
# Stand-ins for the images the Dockerfiles and docker-compose.yml name, for a docker engine that
# reaches no registry of images (CI here), tagged with those same names so that the files are
# built and run exactly as a user would. An image already present is left alone.
#   python:3.11-slim-bookworm   Debian 12 (debootstrap, minbase) with Debian's python3.11
#   redis:7.2-bookworm          Debian 12 with Debian's redis-server (7.0), run as redis in /data
#   minio/minio:...             moto's S3 server (the tests' S3 server) behind `minio`/`mc` shims
# The Debian root filesystems are cached in $AUTOLABEL_STANDIN_CACHE. Needs root and debootstrap.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
CACHE=${AUTOLABEL_STANDIN_CACHE:-$HOME/.cache/autolabel/standins}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PYTHON_IMAGE=python:3.11-slim-bookworm
REDIS_IMAGE=$(sed -n 's/^ *image: \(redis:[^ ]*\)$/\1/p' docker-compose.yml)
MINIO_IMAGE=$(sed -n 's/^ *image: \(minio\/minio:[^ ]*\)$/\1/p' docker-compose.yml)
mkdir -p "$CACHE/debs"

have() { docker image inspect "$1" >/dev/null 2>&1; }

# rootfs NAME PACKAGES: a bookworm minbase tarball with PACKAGES, built once and cached.
rootfs() {
    local tarball="$CACHE/$1.tar" dir
    if [ ! -f "$tarball" ]; then
        dir=$(mktemp -d)
        debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include="$2" bookworm "$dir" "$MIRROR" >&2
        chroot "$dir" sh -c 'apt-get clean && rm -rf /var/lib/apt/lists/*'
        ln -sf /usr/bin/python3.11 "$dir/usr/local/bin/python"
        ln -sf /usr/bin/python3.11 "$dir/usr/local/bin/python3"
        tar -C "$dir" -cf "$tarball.partial" . && mv "$tarball.partial" "$tarball"
        rm -rf "$dir"
    fi
    echo "$tarball"
}

IMPORT=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'ENV LANG=C.UTF-8')
if ! have "$PYTHON_IMAGE"; then
    docker import "${IMPORT[@]}" --change 'CMD ["python3"]' \
        "$(rootfs python python3.11,python3.11-venv,ca-certificates)" "$PYTHON_IMAGE"
fi
if ! have "$REDIS_IMAGE"; then
    docker import "${IMPORT[@]}" --change 'USER redis' --change 'WORKDIR /data' --change 'CMD ["redis-server"]' \
        "$(rootfs redis redis-server,redis-tools)" "$REDIS_IMAGE.base"
    # /data owned by redis, as in the official image (a named volume takes the owner from it).
    printf 'FROM %s\nUSER root\nRUN install -d -o redis -g redis /data\nUSER redis\n' "$REDIS_IMAGE.base" \
        | DOCKER_BUILDKIT=0 docker build -q -t "$REDIS_IMAGE" - >/dev/null
    docker rmi "$REDIS_IMAGE.base" >/dev/null
fi
if ! have "$MINIO_IMAGE"; then
    context=$(mktemp -d)
    cp docker/standins/minio docker/standins/mc "$context"/
    "$VENV/bin/python" -m pip download -q -d "$context/wheels" -c requirements/lock.txt "moto[server]"
    DOCKER_BUILDKIT=0 docker build -q -f docker/standins/s3.Dockerfile -t "$MINIO_IMAGE" "$context" >/dev/null
    rm -rf "$context"
fi
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^($PYTHON_IMAGE|$REDIS_IMAGE|$MINIO_IMAGE) "
