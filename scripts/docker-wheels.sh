#!/usr/bin/env bash
# Fills docker/wheels/ with every wheel the two images install, so that they build with no index
# (`--build-arg OFFLINE=1`): the CPU torch build the host's pip installs (not on PyPI), the mmcv
# wheel scripts/bootstrap.sh built against it, and the rest at the versions of requirements/lock.txt.
# Run after `make setup`. The wheels are build context only; the images' runtime stages hold none.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)
OUT=docker/wheels
CACHE=${AUTOLABEL_WHEEL_CACHE:-$HOME/.cache/autolabel/wheels}
CACHE="$CACHE/$("$PY" -c 'import sys, torch; print(f"torch-{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}")')"

mkdir -p "$OUT"
cp "$CACHE"/mmcv-2.1.0-*.whl "$OUT"/ \
    || { echo "docker-wheels: no mmcv wheel in $CACHE; run make setup first" >&2; exit 1; }
# What pip would install into an empty environment for both packages (the images' build stages).
report=$(mktemp)
trap 'rm -f "$report"' EXIT
"${PIP[@]}" install --dry-run --ignore-installed --report "$report" -c requirements/lock.txt --find-links "$OUT" \
    "./producer[flower]" ./worker
"$PY" - "$report" > "$OUT/requirements.txt" <<'PYTHON'
import json, sys
for item in json.load(open(sys.argv[1]))["install"]:
    meta = item["metadata"]
    if meta["name"] not in ("autolabel", "autolabel-worker"):
        print(f"{meta['name']}=={meta['version']}")
PYTHON
cv=$(sed -n 's/^opencv-python==//p' "$OUT/requirements.txt")
# setuptools builds the two local packages; opencv-python-headless replaces opencv-python (no libGL);
# redis needs async-timeout on a Python before 3.11.3, such as Debian 12's 3.11.2 (the stand-in base).
"${PIP[@]}" download --no-deps -d "$OUT" --find-links "$OUT" -r "$OUT/requirements.txt" -c requirements/lock.txt \
    setuptools "opencv-python-headless==$cv" "async-timeout>=4.0.3"
echo "docker-wheels: $(ls "$OUT"/*.whl | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $OUT"
