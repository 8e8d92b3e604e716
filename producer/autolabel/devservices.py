"""Throw-away local services on loopback for ``make demo`` and the tests.

A real redis-server and a real S3-compatible HTTP server (moto's server mode), each a child
process on a free port, so that everything above them talks over sockets as in production.
Redis gets a port outside the kernel's ephemeral range, so that a test can restart it on the
same port (see ``restartable_port``).
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from autolabel.errors import ConfigError
from autolabel.settings import Settings
from autolabel.storage import ObjectStore


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default
    return low, high


def restartable_port() -> int:
    """A free loopback port outside the kernel's ephemeral range, for a service restarted on the
    same port. The kernel hands out ports from that range only (bind to port 0 as in
    ``free_port``, the local end of an outgoing connection), so while the service is down no
    other process is given its port by chance; only one that asks for this very number can take it."""
    low, high = _ephemeral_range()
    candidates = [port for port in range(10_000, 65_536) if not low <= port <= high]
    for port in random.sample(candidates, min(len(candidates), 200)):
        if _port_free(port):
            return port
    raise RuntimeError(f"no free loopback port in 10000-65535 outside the ephemeral range {low}-{high}")


def wait_until(probe: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Poll ``probe`` until it is true; raise TimeoutError naming ``what`` (and the last OSError) when it never is."""
    deadline = time.monotonic() + timeout
    error: OSError | None = None
    while time.monotonic() < deadline:
        try:
            if probe():
                return
        except OSError as exc:
            error = exc
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}"
                       + (f" (last error: {error})" if error else ""))


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _port_free(port: int) -> bool:
    """Whether a server could listen on the loopback port now (bound as servers bind, SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Service:
    """A child process, listening on a loopback port when it has one; stop() ends it, start() brings it back."""

    def __init__(self, name: str, argv: list[str], port: int | None, log_path: Path) -> None:
        self.name, self.argv, self.port, self.log_path = name, argv, port, log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None, timeout: float = 30.0) -> None:
        """Start the process and, if it has a port, wait until the port accepts connections.

        Fails at once, naming the port, when another process holds the port (a restart on the same port).
        """
        if self.port is not None and not _port_free(self.port):
            raise RuntimeError(f"{self.name} cannot start: port {self.port} is taken by another process "
                               f"(`ss -ltnp 'sport = :{self.port}'` shows which)")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=env)
        if self.port is None:
            return
        port = self.port

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; see {self.log_path}")
            return _port_open(port)

        wait_until(ready, f"{self.name} on port {port}", timeout)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def redis_service(workdir: Path, port: int | None = None, *, appendonly: bool = False) -> Service:
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError("redis-server is not installed: `apt-get install redis-server` (make test does this)")
    port = port or restartable_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir),
            "--save", "", "--appendonly", "yes" if appendonly else "no"]
    return Service("redis-server", argv, port, workdir / f"redis-{port}.log")


def s3_service(workdir: Path, port: int | None = None) -> Service:
    port = port or free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    return Service("s3 (moto server)", argv, port, workdir / f"s3-{port}.log")


class DevStack:
    """redis-server plus an S3 server with the bucket created; ``env()`` points autolabel at them."""

    def __init__(self, bucket: str = "autolabel", workdir: Path | None = None) -> None:
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="autolabel-dev-"))
        self.bucket = bucket
        self.redis = redis_service(self.workdir, appendonly=True)
        self.s3 = s3_service(self.workdir)

    def start(self) -> DevStack:
        self.redis.start()
        self.s3.start()
        ObjectStore.from_settings(self.settings()).ensure_bucket()
        return self

    def stop(self) -> None:
        self.s3.stop()
        self.redis.stop()

    def env(self) -> dict[str, str]:
        return {
            "AUTOLABEL_BROKER_URL": f"redis://127.0.0.1:{self.redis.port}/0",
            "AUTOLABEL_S3_ENDPOINT_URL": f"http://127.0.0.1:{self.s3.port}",
            "AUTOLABEL_S3_REGION": "us-east-1",
            "AUTOLABEL_S3_ACCESS_KEY_ID": "devstack",
            "AUTOLABEL_S3_SECRET_ACCESS_KEY": "devstack-secret",
            "AUTOLABEL_BUCKET": self.bucket,
        }

    def settings(self, **overrides: object) -> Settings:
        values = {key.removeprefix("AUTOLABEL_").lower(): value for key, value in self.env().items()}
        values.update(overrides)
        return Settings(_env_file=None, **values)

    def subprocess_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOLABEL_")}
        env.update(self.env())
        env.update(extra)
        return env

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
