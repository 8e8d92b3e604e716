"""``autolabel worker``: N Celery worker processes per device, pinned, watched and restarted.

This parent process never imports torch, so it never initializes CUDA: each child is a fresh
interpreter whose CUDA_VISIBLE_DEVICES is set before it starts, so it sees only its own card
(as cuda:0). A child loads the model once, runs a warm-up batch and writes a ready file;
the parent serves ``/ready`` and ``/live`` over HTTP for Kubernetes probes, restarts a child
that dies (1 s, doubling to 30 s while it keeps dying young; 1 s again once it had run
``AUTOLABEL_RESTART_RESET_S``), and on SIGTERM lets every child finish the batch in hand before it
exits, killing those still running after the shutdown timeout.

Processes per card with ``auto``:  N = floor((card_memory - reserve) / (peak * (1 + margin)))
with peak the warm-up's peak reserved memory at the configured batch size, reserve 1 GiB for
the CUDA context and the driver, margin 10 % for frames of other sizes. A 24 GB card and a
9.6 GB peak give floor(23 / 10.56) = 2. Under time-slicing with ``AUTOLABEL_GPU_REPLICAS`` pods per
card, card_memory is the pod's share: card / replicas. On CPU, ``auto`` is one process per 2 cores.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from autolabel.contract import queue_for
from autolabel.errors import ConfigError
from autolabel.logs import POOL_DEVICE_ENV, POOL_SLOT_ENV, configure, relay_lines, secrets_of
from autolabel.settings import Settings

log = logging.getLogger("autolabel.pool")

RESERVE_BYTES = 1 << 30
MARGIN = 0.10
RESTART_BACKOFF_MAX_S = 30.0


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_bytes: int


def detect_gpus() -> list[Gpu]:
    """GPUs as nvidia-smi lists them; asking it keeps CUDA out of this process."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        index, name, memory_mib = (part.strip() for part in line.split(","))
        gpus.append(Gpu(int(index), name, int(memory_mib) << 20))
    return gpus


def restart_delay_s(quick_exits: int) -> float:
    """Seconds before restarting a child that died after ``quick_exits`` quick exits in a row: 1, 2, 4 ... 30."""
    return min(RESTART_BACKOFF_MAX_S, 2.0 ** min(quick_exits, 5))


def processes_that_fit(card_bytes: int, peak_bytes: int, replicas: int = 1) -> int:
    """Processes of ``peak_bytes`` each in this pod's share of a card that ``replicas`` pods time-slice
    (the share holds its own CUDA context reserve: each pod creates its own)."""
    return max(1, math.floor((card_bytes / replicas - RESERVE_BYTES) / (peak_bytes * (1 + MARGIN))))


def cpu_processes(cores: int | None = None) -> int:
    return max(1, (cores or os.cpu_count() or 1) // 2)


def parse_devices(value: str, gpus: list[Gpu]) -> list[str]:
    """``all`` (every GPU, or cpu when there is none), ``cpu``, or GPU indices ``0,1``."""
    if value == "cpu":
        return ["cpu"]
    if value == "all":
        return [str(gpu.index) for gpu in gpus] or ["cpu"]
    wanted = [part.strip() for part in value.split(",") if part.strip()]
    known = {str(gpu.index) for gpu in gpus}
    if not wanted or any(not w.isdigit() for w in wanted):
        raise ConfigError(f"--devices {value!r}: use all, cpu, or GPU indices such as 0,1")
    if missing := [w for w in wanted if w not in known]:
        raise ConfigError(f"--devices {value!r}: no GPU {', '.join(missing)} (nvidia-smi lists {sorted(known) or 'none'})")
    return wanted


@dataclass
class Child:
    name: str
    device: str
    env: dict[str, str]
    argv: list[str]
    ready_file: Path
    slot: int = 0
    # JSON logs: the child's output passes through this process, which wraps any line that is not
    # JSON and masks these secrets in it. None: the child writes to this process's stdout/stderr.
    relay_secrets: list[str] | None = None
    relay: threading.Thread | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    # Exits in a row that came before the child had run restart_reset_s: the restart backoff's exponent.
    quick_exits: int = 0
    started_at: float = 0.0

    def start(self) -> None:
        self.ready_file.unlink(missing_ok=True)
        # Children log to the launcher's stdout/stderr, where a container runtime collects them.
        if self.relay_secrets is not None:
            self.process = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            fields = {"device": self.device, "process": str(self.slot)}
            self.relay = threading.Thread(target=relay_lines, name=f"output-{self.name}", daemon=True,
                                          args=(self.process.stdout, fields, self.relay_secrets))
            self.relay.start()
        else:
            self.process = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL)
        self.started_at = time.monotonic()
        log.info("started %s (pid %d) on %s", self.name, self.process.pid, self.device)

    @property
    def ready(self) -> bool:
        return self.process is not None and self.process.poll() is None and self.ready_file.is_file()

    def report(self) -> dict[str, object] | None:
        try:
            return json.loads(self.ready_file.read_text())
        except (OSError, ValueError):
            return None


@dataclass
class WorkerPool:
    settings: Settings
    devices: list[str]
    procs_per_device: int | None  # None: auto
    queues: list[str]
    loglevel: str = "INFO"
    run_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="autolabel-pool-")))
    children: list[Child] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        # The children's prometheus_client files (PROMETHEUS_MULTIPROC_DIR): private to this pool,
        # so that /metrics sums this pool's processes only, and a stale file of another run never counts.
        self.metrics_dir.mkdir(mode=0o700, exist_ok=True)

    @property
    def metrics_dir(self) -> Path:
        return self.run_dir / "metrics"

    def child(self, device: str, slot: int) -> Child:
        name = f"autolabel-{device}-{slot}@{socket.gethostname()}"
        ready = self.run_dir / f"ready-{device}-{slot}.json"
        env = dict(os.environ)
        if device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
            env["AUTOLABEL_DEVICE"] = "cpu"
            # CPU processes share the cores: each gets its slice, or they thrash each other.
            share = (os.cpu_count() or 1) // (self.procs_per_device or cpu_processes())
            env["OMP_NUM_THREADS"] = str(max(1, share))
        else:
            env["CUDA_VISIBLE_DEVICES"] = device
            env["AUTOLABEL_DEVICE"] = "cuda:0"
        env["AUTOLABEL_BATCH_SIZE"] = str(self.settings.batch_size)
        env["AUTOLABEL_WORKER_THREADS"] = str(self.settings.worker_threads)
        env["AUTOLABEL_READY_FILE"] = str(ready)
        env.update({"PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir), POOL_DEVICE_ENV: device,
                    POOL_SLOT_ENV: str(slot)})
        # --quiet in json mode: Celery's banner is plain text printed past the log handlers.
        quiet = ["--quiet"] if self.settings.log_format == "json" else []
        argv = [sys.executable, "-m", "celery", *quiet, "-A", "autolabel_worker.app", "worker", "--pool", "threads",
                "--concurrency", str(self.settings.worker_threads), "--queues", ",".join(self.queues), "--hostname", name,
                "--loglevel", self.loglevel, "--task-events", "--without-gossip", "--without-mingle"]
        relay = secrets_of(self.settings) if self.settings.log_format == "json" else None
        return Child(name, device, env, argv, ready, slot, relay)

    def _wait_ready(self, child: Child, timeout: float = 1800) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while not child.ready:
            if child.process is not None and child.process.poll() is not None:
                raise ConfigError(f"{child.name} exited with {child.process.returncode} before it was ready; "
                                  "its log is above")
            if time.monotonic() > deadline or self.stopping.is_set():
                raise ConfigError(f"{child.name} not ready after {timeout:.0f} s")
            time.sleep(0.2)
        return child.report() or {}

    def start(self) -> None:
        """Start every child; with auto sizing on a GPU, the first child's warm-up sizes the rest."""
        per_device = self.procs_per_device
        if per_device is None and self.devices == ["cpu"]:
            per_device = cpu_processes()
        if per_device is None:
            first = self.child(self.devices[0], 0)
            first.start()
            self.children.append(first)
            peak = int(self._wait_ready(first)["peak_memory_bytes"])
            cards = {str(gpu.index): gpu.memory_bytes for gpu in detect_gpus()}
            for device in self.devices:
                count = processes_that_fit(cards[device], peak, self.settings.gpu_replicas)
                log.info("device %s: %.1f GiB (a 1/%d share), peak %.2f GiB at batch %d -> %d processes", device,
                         cards[device] / 2**30, self.settings.gpu_replicas, peak / 2**30, self.settings.batch_size,
                         count)
                for slot in range(1 if device == self.devices[0] else 0, count):
                    self.children.append(self.child(device, slot))
        else:
            self.children += [self.child(device, slot) for device in self.devices for slot in range(per_device)]
        for child in self.children:
            if child.process is None:
                child.start()

    def supervise(self) -> None:
        """Restart children that die (with backoff) until stop() is called."""
        while not self.stopping.wait(0.5):
            for child in self.children:
                if child.process is not None and child.process.poll() is not None:
                    uptime_s = time.monotonic() - child.started_at
                    if uptime_s >= self.settings.restart_reset_s:
                        # It ran well before it died (an OOM kill after hours): no crash loop to slow down.
                        child.quick_exits = 0
                    delay = restart_delay_s(child.quick_exits)
                    log.warning("%s exited with %s after %.0f s; restarting in %.0f s", child.name,
                                child.process.returncode, uptime_s, delay)
                    child.restarts += 1
                    # Its live gauges (memory) go; its counters stay in the totals.
                    mark_process_dead(child.process.pid, str(self.metrics_dir))
                    child.quick_exits += 1
                    if self.stopping.wait(delay):
                        return
                    child.start()

    def stop(self, timeout: float = 120.0) -> None:
        """Warm shutdown: children finish the tasks in hand; after ``timeout`` they are killed and
        their unacknowledged messages go back to the queue."""
        self.stopping.set()
        running = [(c, c.process) for c in self.children if c.process is not None and c.process.poll() is None]
        for _, process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child, process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) still running %.0f s after SIGTERM; killed", child.name, process.pid, timeout)
                process.kill()
                process.wait()
            if child.relay is not None:
                child.relay.join(5)  # its last lines, written as it exited
        shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def status(self) -> dict[str, object]:
        return {
            "ready": bool(self.children) and all(c.ready for c in self.children),
            "processes": [{"name": c.name, "device": c.device, "pid": c.process.pid if c.process else None,
                           "ready": c.ready, "restarts": c.restarts, "warmup": c.report()} for c in self.children],
        }


class RestartsCollector:
    """``autolabel_child_restarts_total`` from the launcher's own count (a collector, not a metric
    object: the launcher keeps no prometheus_client files of its own)."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def collect(self) -> list[CounterMetricFamily]:
        family = CounterMetricFamily("autolabel_child_restarts", "Worker processes restarted after they exited",
                                     labels=("device", "process"))
        for child in self.pool.children:
            family.add_metric((child.device, str(child.slot)), child.restarts)
        return [family]


def metrics_registry(pool: WorkerPool) -> CollectorRegistry:
    """Every child's metrics (summed from their files by prometheus_client) and the launcher's restarts."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(pool.metrics_dir))
    registry.register(RestartsCollector(pool))
    return registry


def serve_health(pool: WorkerPool, host: str, port: int) -> ThreadingHTTPServer:
    """``/ready`` is 200 once every process has warmed up; ``/live`` is 200 while the pool runs;
    ``/metrics`` is Prometheus's text format for every process of the pool."""
    registry = metrics_registry(pool)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path == "/metrics":
                body = generate_latest(registry)
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.end_headers()
                self.wfile.write(body)
                return
            status = pool.status()
            ok = {"/ready": status["ready"], "/live": not pool.stopping.is_set()}.get(self.path)
            body = json.dumps(status).encode()
            self.send_response(404 if ok is None else 200 if ok else 503)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    try:
        server = ThreadingHTTPServer((host, port), Handler)
    except OSError as exc:
        raise ConfigError(f"the health server cannot listen on {host}:{port}: {exc.strerror or exc}; "
                          "choose another --health-port or --health-host") from None
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


def run_pool(settings: Settings, *, devices: str, procs_per_device: str, queues: list[str] | None,
             health_port: int, loglevel: str, shutdown_timeout: float) -> None:
    configure(settings, loglevel)
    pool = WorkerPool(settings=settings, devices=parse_devices(devices, detect_gpus()),
                      procs_per_device=None if procs_per_device == "auto" else int(procs_per_device),
                      queues=queues or [queue_for(settings.model)], loglevel=loglevel)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: finishing the batches in hand", signum)
        pool.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = serve_health(pool, settings.health_host, health_port)
    log.info("health on %s:%d (/ready, /live, /metrics)", settings.health_host, health_port)
    try:
        pool.start()
        pool.supervise()
    finally:
        pool.stop(shutdown_timeout)
        server.shutdown()
