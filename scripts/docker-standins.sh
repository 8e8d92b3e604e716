#!/usr/bin/env bash
# Stand-ins for the images the Dockerfiles and docker-compose.yml name, for a docker engine that
# reaches no registry of images (CI here), tagged with those same names so that the files are
# built and run exactly as a user would. An image already present is left alone (a stand-in only if
# this version of the script made it), and one a registry serves is pulled instead.
#   python:3.11-slim-bookworm   Debian 12 (debootstrap, minbase) with Debian's python3.11, trimmed as
#                               debian:bookworm-slim is (no docs, man pages or locales; dpkg keeps them out)
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

# The stand-ins' recipe, in their label and the cached tarballs' names: change it with what this
# script puts in a stand-in, and the stand-ins (and the tarballs) of the old recipe are made again.
RECIPE=slim-2
# wanted IMAGE: true when a stand-in is to be built: the image is not here (or is a stand-in of
# another recipe) and no registry serves it.
wanted() {
    local label
    if label=$(docker image inspect -f '{{index .Config.Labels "io.autolabel.standin"}}' "$1" 2>/dev/null) \
        && { [ -z "$label" ] || [ "$label" = "$RECIPE" ]; }; then
        return 1
    fi
    [ -z "${label:-}" ] || docker image rm "$1" >/dev/null  # a stand-in of another recipe: not left dangling
    timeout 300 docker pull -q "$1" >/dev/null 2>&1 && return 1
    echo "docker-standins: $1 cannot be pulled: building a stand-in" >&2
}

# rootfs NAME PACKAGES: a bookworm minbase tarball with PACKAGES, built once and cached.
rootfs() {
    local tarball="$CACHE/$1-$RECIPE.tar" dir
    if [ ! -f "$tarball" ]; then
        rm -f "$CACHE/$1".tar "$CACHE/$1"-*.tar
        dir=$(mktemp -d)
        debootstrap --variant=minbase --cache-dir="$CACHE/debs" --include="$2" bookworm "$dir" "$MIRROR" >&2
        # As debian:bookworm-slim: dpkg leaves documentation, man pages and locales out, now and in
        # the packages a build stage adds; what debootstrap put there goes.
        printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
            'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
            'path-include /usr/share/locale/locale.alias' > "$dir/etc/dpkg/dpkg.cfg.d/docker-slim"
        find "$dir/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
        find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete
        find "$dir/usr/share/locale" -mindepth 1 ! -name locale.alias -delete
        rm -rf "$dir"/usr/share/man/* "$dir"/usr/share/info/* "$dir"/var/cache/debconf/*-old "$dir"/var/log/*.log
        chroot "$dir" sh -c 'apt-get clean && rm -rf /var/lib/apt/lists/*'
        ln -sf /usr/bin/python3.11 "$dir/usr/local/bin/python"
        ln -sf /usr/bin/python3.11 "$dir/usr/local/bin/python3"
        tar -C "$dir" -cf "$tarball.partial" . && mv "$tarball.partial" "$tarball"
        rm -rf "$dir"
    fi
    echo "$tarball"
}

IMPORT=(--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' --change 'ENV LANG=C.UTF-8'
        --change "LABEL io.autolabel.standin=$RECIPE")
# python3-distutils provides python3.11-distutils, which python3.11-venv needs and debootstrap
# does not resolve (a virtual package): without it apt in a build stage refuses to install anything.
if wanted "$PYTHON_IMAGE"; then
    docker import "${IMPORT[@]}" --change 'CMD ["python3"]' \
        "$(rootfs python python3.11,python3.11-venv,python3-distutils,ca-certificates)" "$PYTHON_IMAGE"
fi
if wanted "$REDIS_IMAGE"; then
    docker import "${IMPORT[@]}" --change 'USER redis' --change 'WORKDIR /data' --change 'CMD ["redis-server"]' \
        "$(rootfs redis redis-server,redis-tools)" "$REDIS_IMAGE.base"
    # /data owned by redis, as in the official image (a named volume takes the owner from it).
    printf 'FROM %s\nUSER root\nRUN install -d -o redis -g redis /data\nUSER redis\n' "$REDIS_IMAGE.base" \
        | DOCKER_BUILDKIT=0 docker build -q -t "$REDIS_IMAGE" - >/dev/null
    docker rmi "$REDIS_IMAGE.base" >/dev/null
fi
if wanted "$MINIO_IMAGE"; then
    context=$(mktemp -d)
    cp docker/standins/minio docker/standins/mc "$context"/
    "$VENV/bin/python" -m pip download -q -d "$context/wheels" -c requirements/lock.txt "moto[server]"
    DOCKER_BUILDKIT=0 docker build -q -f docker/standins/s3.Dockerfile --label "io.autolabel.standin=$RECIPE" \
        -t "$MINIO_IMAGE" "$context" >/dev/null
    rm -rf "$context"
fi
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E "^($PYTHON_IMAGE|$REDIS_IMAGE|$MINIO_IMAGE) "
