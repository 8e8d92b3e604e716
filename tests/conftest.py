"""Real services for the tests: a redis-server and an S3-compatible server on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from autolabel.devservices import DevStack
from autolabel.settings import Settings
from autolabel.storage import ObjectStore


@pytest.fixture(scope="session")
def devstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    stack = DevStack(workdir=tmp_path_factory.mktemp("services"))
    with stack:
        yield stack


@pytest.fixture
def settings(devstack: DevStack) -> Settings:
    return devstack.settings()


@pytest.fixture
def store(settings: Settings) -> ObjectStore:
    return ObjectStore.from_settings(settings)


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
