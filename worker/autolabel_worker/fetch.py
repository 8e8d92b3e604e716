"""Checkpoints from S3 into a local directory, safe for many processes and many pods at once.

``autolabel fetch-model`` runs this as a Kubernetes initContainer: into an emptyDir (one pod),
or into one ReadWriteMany volume (NFS) that every worker pod mounts. On a shared volume the
first pod downloads and the others wait on a lock file, then find the finished file:

- the download goes to a ``.partial`` file named after the host and pid, and is renamed onto
  the final name only after its SHA-256 matched and it was flushed to disk: a reader sees the
  whole checked file or no file, never half of one;
- the lock is a POSIX record lock (``fcntl.lockf``), which NFS (v4, or v3 with lockd) carries
  across clients; the kernel releases it when its holder dies, and the next waiter then removes
  the dead holder's ``.partial`` file and downloads again;
- a file already there is checked against the expected hash before it is used, so a pod never
  trusts a checkpoint that was replaced or damaged on the volume.

This module needs no ML stack itself (the package's ``__init__`` still imports torch: a few
seconds at start, no CUDA).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import time
from pathlib import Path

from autolabel.errors import CheckpointError, InvalidInputError
from autolabel.settings import Settings
from autolabel.storage import ObjectStore, parse_s3_uri

log = logging.getLogger(__name__)

LOCK_POLL_S = 1.0


def sha256_file(path: Path) -> str:
    """The file's SHA-256 as 64 hex digits, read in 1 MiB chunks (checkpoints are gigabytes)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_sha256(value: str) -> str:
    """A SHA-256 as given on a command line or in a manifest: 64 hex digits, any case."""
    if len(value) != 64 or any(c not in "0123456789abcdefABCDEF" for c in value):
        raise InvalidInputError(f"--sha256 {value!r}: expected 64 hex digits (the output of sha256sum)")
    return value.lower()


def _matches(path: Path, sha256: str | None) -> bool:
    if not path.is_file():
        return False
    if sha256 is None:
        return True
    actual = sha256_file(path)
    if actual != sha256:
        log.warning("%s has SHA-256 %s, not the expected %s; fetching it again", path, actual, sha256)
        return False
    return True


def _lock(lock_path: Path, timeout_s: float) -> int:
    """Open and lock ``lock_path``; waits while another process or pod holds it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + timeout_s
    told = False
    while True:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError:
            if time.monotonic() > deadline:
                os.close(fd)
                raise CheckpointError(f"{lock_path} is still locked after {timeout_s:.0f} s: another pod's "
                                      "download has not finished; raise --lock-timeout-s for a slow link") from None
            if not told:
                log.info("waiting for another download of the same checkpoint (lock %s)", lock_path)
                told = True
            time.sleep(LOCK_POLL_S)


def fetch_checkpoint(uri: str, dest_dir: Path, settings: Settings, *, sha256: str | None = None,
                     filename: str | None = None, lock_timeout_s: float = 3600) -> Path:
    """Download ``s3://bucket/key`` to ``dest_dir/filename`` (default: the key's last part) once.

    Returns the path. With ``sha256`` the file, downloaded or found, must have that hash; a
    download that differs is deleted and refused (CheckpointError), a file found that differs is
    fetched again.
    """
    bucket, key = parse_s3_uri(uri)
    name = filename or key.rsplit("/", 1)[-1]
    if not name or "/" in name or name.startswith("."):
        raise InvalidInputError(f"checkpoint file name {name!r}: a plain file name, not a path or a hidden file")
    expected = check_sha256(sha256) if sha256 else None
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / name
    if _matches(target, expected):
        log.info("%s is there already%s", target, " (SHA-256 checked)" if expected else "")
        return target
    fd = _lock(dest_dir / f".{name}.lock", lock_timeout_s)
    try:
        # The holder before us may have finished it while we waited.
        if _matches(target, expected):
            log.info("%s was fetched by another process", target)
            return target
        # Only a lock holder writes a .partial, so any left are a dead holder's.
        for stale in dest_dir.glob(f".{name}.*.partial"):
            stale.unlink(missing_ok=True)
        partial = dest_dir / f".{name}.{socket.gethostname()}.{os.getpid()}.partial"
        store = ObjectStore.from_settings(settings.model_copy(update={"bucket": bucket}))
        started = time.monotonic()
        store.download(key, partial)
        actual = sha256_file(partial)
        if expected is not None and actual != expected:
            partial.unlink()
            raise CheckpointError(f"{uri} has SHA-256 {actual}, not the expected {expected}: the object is "
                                  "another file or was damaged; nothing was written to " + str(dest_dir))
        with partial.open("rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, target)
        _fsync_dir(dest_dir)
        size_mib = target.stat().st_size / 2**20
        log.info("fetched %s to %s: %.1f MiB in %.1f s, SHA-256 %s", uri, target, size_mib,
                 time.monotonic() - started, actual)
        return target
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable: after a node crash the name points at the whole file or at nothing."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

