"""Real services for the tests: a redis-server and an S3-compatible server on loopback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from autolabel.devservices import DevStack, Service, free_port
from autolabel.settings import Settings
from autolabel.storage import ObjectStore


@pytest.fixture(scope="session")
def devstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    stack = DevStack(workdir=tmp_path_factory.mktemp("services"))
    with stack:
        yield stack


@pytest.fixture(scope="module")
def worker(devstack: DevStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One `autolabel worker` (the embedded model at full size) on the session's services, per test module."""
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    port = free_port()
    service = Service("worker", [str(Path(sys.executable).with_name("autolabel")), "worker", "--health-port",
                                 str(port)], port, log)
    service.start(devstack.subprocess_env())
    yield service
    service.stop()
    print(log.read_text(errors="replace")[-3000:])


@pytest.fixture
def settings(devstack: DevStack) -> Settings:
    return devstack.settings()


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    return ObjectStore.from_settings(settings)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
