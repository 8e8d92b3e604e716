"""`autolabel doctor` against real services, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from autolabel.devservices import DevStack, redis_service

pytestmark = pytest.mark.integration


def run_doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    autolabel = Path(sys.executable).with_name("autolabel")
    return subprocess.run([str(autolabel), "doctor"], env=env, capture_output=True, text=True, timeout=120)


def test_doctor_passes_with_services_up(devstack: DevStack) -> None:
    result = run_doctor(devstack.subprocess_env())
    assert result.returncode == 0, result.stdout + result.stderr
    for line in ("ok   torch", "ok   mmcv ops", "ok   mmdet", "ok   redis", "ok   object store"):
        assert line in result.stdout
    assert "devstack-secret" not in result.stdout + result.stderr


def test_doctor_names_redis_when_it_is_down(devstack: DevStack, tmp_path: Path) -> None:
    redis = redis_service(tmp_path)
    redis.start()
    env = devstack.subprocess_env(AUTOLABEL_BROKER_URL=f"redis://127.0.0.1:{redis.port}/0")
    assert run_doctor(env).returncode == 0
    redis.stop()
    result = run_doctor(env)
    assert result.returncode != 0
    assert "FAIL redis" in result.stdout
    assert "fix: redis: start redis-server" in result.stdout
    assert "ok   object store" in result.stdout


def test_doctor_names_the_object_store_when_the_bucket_is_missing(devstack: DevStack) -> None:
    result = run_doctor(devstack.subprocess_env(AUTOLABEL_BUCKET="no-such-bucket"))
    assert result.returncode != 0
    assert "FAIL object store" in result.stdout
    assert "no-such-bucket" in result.stdout
