"""``autolabel fetch-model``: a checkpoint from the real S3 server into a directory, once, checked.

The concurrent cases start real processes on one directory, as pods do on a shared volume.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autolabel.devservices import DevStack, wait_until
from autolabel.errors import CheckpointError, InvalidInputError
from autolabel.settings import Settings
from autolabel.storage import ObjectStore
from autolabel_worker.fetch import fetch_checkpoint

pytestmark = pytest.mark.integration

AUTOLABEL = Path(sys.executable).with_name("autolabel")
KEY = "models/test/fake-checkpoint.pth"
# Big enough that a download takes a while next to process start-up; not a real checkpoint (nothing loads it).
PAYLOAD = os.urandom(6 << 20)
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def uri(store: ObjectStore) -> str:
    store.put_bytes(KEY, PAYLOAD)
    return f"s3://{store.bucket}/{KEY}"


def fetch_model_process(devstack: DevStack, log: Path, *args: str) -> subprocess.Popen[str]:
    """`autolabel fetch-model` as an initContainer runs it, in its own process; its log lines go to ``log``."""
    with log.open("w") as handle:
        return subprocess.Popen([str(AUTOLABEL), "fetch-model", *args], env=devstack.subprocess_env(),
                                stdout=subprocess.PIPE, stderr=handle, text=True)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".partial"))


def test_downloads_checks_and_names_the_file(settings: Settings, uri: str, tmp_path: Path) -> None:
    path = fetch_checkpoint(uri, tmp_path / "weights", settings, sha256=SHA256.upper(), filename="model.pth")
    assert path == tmp_path / "weights" / "model.pth"
    assert path.read_bytes() == PAYLOAD
    assert leftovers(path.parent) == []


def test_a_wrong_hash_is_refused_and_leaves_no_file(settings: Settings, uri: str, tmp_path: Path) -> None:
    wrong = hashlib.sha256(b"another file").hexdigest()
    with pytest.raises(CheckpointError, match=f"has SHA-256 {SHA256}, not the expected {wrong}"):
        fetch_checkpoint(uri, tmp_path, settings, sha256=wrong)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".fake-checkpoint.pth.lock"]


def test_bad_arguments_are_one_line_errors(settings: Settings, uri: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="expected 64 hex digits"):
        fetch_checkpoint(uri, tmp_path, settings, sha256="abc123")
    with pytest.raises(InvalidInputError, match="a plain file name"):
        fetch_checkpoint(uri, tmp_path, settings, filename="../model.pth")
    with pytest.raises(InvalidInputError, match="must name a bucket and a key"):
        fetch_checkpoint("s3://bucket-only", tmp_path, settings)


def test_a_checked_file_is_used_and_a_damaged_one_fetched_again(settings: Settings, store: ObjectStore, uri: str,
                                                               tmp_path: Path) -> None:
    path = fetch_checkpoint(uri, tmp_path, settings, sha256=SHA256)
    # Gone from the store: a second call can only succeed by using the file it finds.
    store.delete_keys([KEY])
    assert fetch_checkpoint(uri, tmp_path, settings, sha256=SHA256) == path
    store.put_bytes(KEY, PAYLOAD)
    path.write_bytes(PAYLOAD[:1000])  # a damaged copy on the shared volume
    assert fetch_checkpoint(uri, tmp_path, settings, sha256=SHA256).read_bytes() == PAYLOAD


def test_pods_on_one_volume_download_once(devstack: DevStack, uri: str, tmp_path: Path) -> None:
    """Four processes start while the lock is held (a first pod downloading); when it is released,
    exactly one downloads and the other three use its file."""
    lock = os.open(tmp_path / ".model.pth.lock", os.O_RDWR | os.O_CREAT)
    fcntl.lockf(lock, fcntl.LOCK_EX)
    logs = [tmp_path.parent / f"fetch-{i}.log" for i in range(4)]
    procs = [fetch_model_process(devstack, log, uri, "--dest", str(tmp_path), "--sha256", SHA256, "--name",
                                 "model.pth") for log in logs]
    try:
        wait_until(lambda: all("waiting for another download" in log.read_text() for log in logs),
                   "every fetch-model process waiting on the lock", timeout=60)
        assert all(p.poll() is None for p in procs) and not (tmp_path / "model.pth").exists()
    finally:
        os.close(lock)
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    errors = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert {out.strip() for out in outputs} == {str(tmp_path / "model.pth")}
    assert sum("fetched s3://" in err for err in errors) == 1, errors
    assert sum("was fetched by another process" in err for err in errors) == 3, errors
    assert (tmp_path / "model.pth").read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == []


def test_a_dead_holders_partial_file_is_never_used(devstack: DevStack, uri: str, tmp_path: Path) -> None:
    """A pod killed mid-download leaves its .partial file and its lock; the kernel drops the lock,
    the next pod removes the partial file and downloads the whole checkpoint."""
    partial = tmp_path / ".model.pth.deadpod.4242.partial"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(tmp_path / '.model.pth.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
        f"open({str(partial)!r}, 'wb').write(b'half a checkpoint')\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        log = tmp_path.parent / "fetch.log"
        fetcher = fetch_model_process(devstack, log, uri, "--dest", str(tmp_path), "--sha256", SHA256, "--name",
                                      "model.pth")
        wait_until(lambda: "waiting for another download" in log.read_text(), "fetch-model waiting", timeout=60)
        assert fetcher.poll() is None and not (tmp_path / "model.pth").exists()
    finally:
        holder.kill()
        holder.wait()
    fetcher.communicate(timeout=60)
    assert fetcher.returncode == 0, log.read_text()
    assert (tmp_path / "model.pth").read_bytes() == PAYLOAD
    assert leftovers(tmp_path) == []


def test_a_lock_held_too_long_is_an_error(devstack: DevStack, uri: str, tmp_path: Path) -> None:
    lock = os.open(tmp_path / ".model.pth.lock", os.O_RDWR | os.O_CREAT)
    fcntl.lockf(lock, fcntl.LOCK_EX)
    try:
        log = tmp_path.parent / "fetch.log"
        fetcher = fetch_model_process(devstack, log, uri, "--dest", str(tmp_path), "--name", "model.pth",
                                      "--lock-timeout-s", "2")
        fetcher.communicate(timeout=60)
    finally:
        os.close(lock)
    assert fetcher.returncode == 1
    # One line for the user, no traceback.
    assert "Error: CheckpointError: " in log.read_text() and "Traceback" not in log.read_text()
    assert "is still locked after 2 s" in log.read_text()
    assert not (tmp_path / "model.pth").exists()
