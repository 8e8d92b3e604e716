#!/usr/bin/env bash
# Builds the pinned environment in $VENV: producer, worker, the ML stack and the test tools.
# mmcv 2.1.0 has no wheel for torch 2.13, so it is built from source once (about 10 minutes
# on 2 cores) and the wheel is kept in $AUTOLABEL_WHEEL_CACHE; later runs install from there.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
CACHE=${AUTOLABEL_WHEEL_CACHE:-$HOME/.cache/autolabel/wheels}
LOCK=requirements/lock.txt
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# setuptools must keep pkg_resources for mmcv's setup.py (80.9 does, 84 does not).
"${PIP[@]}" install -c "$LOCK" pip setuptools wheel ninja
"${PIP[@]}" install -c "$LOCK" torch numpy

# The wheel's compiled ops are tied to one torch build, so the cache is keyed by it.
CACHE="$CACHE/$("$VENV/bin/python" -c 'import sys, torch; print(f"torch-{torch.__version__}-py{sys.version_info.major}{sys.version_info.minor}")')"
mkdir -p "$CACHE"
if ! ls "$CACHE"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    echo "bootstrap: building mmcv 2.1.0 with its compiled ops (once; cached in $CACHE)"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
        "${PIP[@]}" wheel --no-build-isolation --no-deps -w "$CACHE" mmcv==2.1.0
fi
"${PIP[@]}" install -c "$LOCK" --find-links "$CACHE" mmcv==2.1.0
"${PIP[@]}" install -c "$LOCK" --find-links "$CACHE" -e producer -e worker -r requirements/dev.txt
"$VENV/bin/python" -c "import mmcv.ops, mmdet, autolabel_worker" \
    || { echo "bootstrap: the ML stack does not import; see the messages above" >&2; exit 1; }
