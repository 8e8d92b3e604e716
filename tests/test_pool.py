"""`autolabel worker`: sizing rules, and real pinned processes that are watched and restarted."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

import pytest

from autolabel.devservices import DevStack, free_port, wait_until
from autolabel.errors import ConfigError
from autolabel.settings import Settings
from autolabel_worker.pool import Gpu, WorkerPool, cpu_processes, parse_devices, processes_that_fit, restart_delay_s

AUTOLABEL = Path(sys.executable).with_name("autolabel")

GIB = 1 << 30


def test_reference_card_fits_two_processes() -> None:
    # The reference deployment: one process peaked at 9.6 GB on a 24 GB RTX 4090.
    assert processes_that_fit(24 * GIB, int(9.6 * GIB)) == 2
    assert processes_that_fit(80 * GIB, int(9.6 * GIB)) == 7
    assert processes_that_fit(8 * GIB, int(9.6 * GIB)) == 1


def test_auto_counts_only_the_pods_share_of_a_time_sliced_card() -> None:
    # Two pods time-slice a 24 GB card: each sees all of it, but may use 12 GB (less its own 1 GiB context).
    assert processes_that_fit(24 * GIB, int(9.6 * GIB), replicas=2) == 1
    assert processes_that_fit(80 * GIB, int(9.6 * GIB), replicas=2) == 3
    assert processes_that_fit(80 * GIB, int(9.6 * GIB), replicas=4) == 1
    assert processes_that_fit(80 * GIB, int(4 * GIB), replicas=4) == 4


@pytest.mark.parametrize(("replicas", "processes"), [(1, 2), (2, 1)])
def test_the_pool_sizes_auto_from_the_gpu_replicas_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           replicas: int, processes: int) -> None:
    """The launcher's auto path, with nvidia-smi reporting a 24 GB card and a stand-in process that
    reports a 9.6 GB warm-up peak (a real process writing its ready file, no model)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, NVIDIA GeForce RTX 4090, 24564'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    report = json.dumps({"peak_memory_bytes": int(9.6 * GIB)})

    class StandInPool(WorkerPool):
        def child(self, device: str, slot: int):  # type: ignore[no-untyped-def]
            real = super().child(device, slot)
            code = f"open({str(real.ready_file)!r}, 'w').write({report!r}); import time; time.sleep(60)"
            return dataclasses.replace(real, argv=[sys.executable, "-c", code])

    pool = StandInPool(settings=Settings(_env_file=None, gpu_replicas=replicas), devices=["0"],
                       procs_per_device=None, queues=["autolabel.m"], run_dir=tmp_path)
    try:
        pool.start()
        assert len(pool.children) == processes
    finally:
        pool.stop(timeout=5)


def test_cpu_auto_is_one_process_per_two_cores() -> None:
    assert [cpu_processes(n) for n in (1, 2, 3, 16)] == [1, 1, 1, 8]


def test_device_selection() -> None:
    gpus = [Gpu(0, "A", 24 * GIB), Gpu(1, "B", 24 * GIB)]
    assert parse_devices("all", gpus) == ["0", "1"]
    assert parse_devices("all", []) == ["cpu"]
    assert parse_devices("1", gpus) == ["1"]
    with pytest.raises(ConfigError, match="no GPU 3"):
        parse_devices("0,3", gpus)
    with pytest.raises(ConfigError, match="GPU indices"):
        parse_devices("gpu0", gpus)


def test_restart_backoff_doubles_up_to_30_s() -> None:
    assert [restart_delay_s(n) for n in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_each_gpu_process_sees_only_its_card(tmp_path: Path) -> None:
    pool = WorkerPool(settings=Settings(_env_file=None), devices=["0", "1"], procs_per_device=2,
                      queues=["autolabel.m"], run_dir=tmp_path)
    children = [pool.child(device, slot) for device in pool.devices for slot in range(2)]
    for child in children:
        assert (child.env["CUDA_VISIBLE_DEVICES"], child.env["AUTOLABEL_DEVICE"]) == (child.device, "cuda:0")
        assert child.argv[child.argv.index("--queues") + 1] == "autolabel.m"
    assert len({child.name for child in children}) == 4
    # What a started process sees: the same launch with a stand-in for celery (which would load the model).
    for child in children:
        stand_in = dataclasses.replace(child, argv=[sys.executable, "-c", "import time; time.sleep(60)"])
        stand_in.start()
        assert stand_in.process is not None
        pid = stand_in.process.pid
        try:
            # Until exec, /proc shows the environment of the forked test process.
            wait_until(lambda: b"time.sleep" in Path(f"/proc/{pid}/cmdline").read_bytes(), "the stand-in's exec", 10)
            env = _environ(pid)
            assert (env["CUDA_VISIBLE_DEVICES"], env["AUTOLABEL_DEVICE"]) == (child.device, "cuda:0")
            assert env["AUTOLABEL_READY_FILE"] == str(child.ready_file)
        finally:
            stand_in.process.kill()
            stand_in.process.wait()


def _get(port: int, path: str = "/ready") -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _status(port: int) -> tuple[int, dict]:
    return _get(port, "/ready")


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _listening_address(port: int) -> str:
    """The IPv4 address a socket listens on at ``port``, from /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, local_port = local.split(":")
        if int(local_port, 16) == port and state == "0A":  # 0A: LISTEN
            return socket.inet_ntoa(bytes.fromhex(address)[::-1])
    raise AssertionError(f"nothing listens on port {port}")


def _launch(devstack: DevStack, log: IO[bytes], port: int, *args: str, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(AUTOLABEL), "worker", "--devices", "cpu", "--procs-per-device", "1", "--threads", "1",
                             "--health-port", str(port), *args],
                            env=devstack.subprocess_env(**env), stdout=log, stderr=subprocess.STDOUT)


def _stop(launcher: subprocess.Popen[bytes]) -> None:
    """SIGTERM, which stops the launcher's processes with it (SIGKILL would leave them running)."""
    if launcher.poll() is None:
        launcher.send_signal(signal.SIGTERM)
        try:
            launcher.wait(60)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()


def _first_pid(port: int) -> int:
    wait_until(lambda: _status(port)[1]["processes"][0]["pid"] is not None, "the launcher's first process", 60)
    return int(_status(port)[1]["processes"][0]["pid"])


def _kill_and_time_restart(port: int, pid: int) -> tuple[int, float]:
    """SIGKILL the pool's process ``pid``; returns its successor's pid and the seconds until it started."""
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: _status(port)[1]["processes"][0]["pid"] not in (pid, None), f"a successor of {pid}", 60)
    return int(_status(port)[1]["processes"][0]["pid"]), time.monotonic() - killed_at


@pytest.mark.integration
def test_restart_backoff_grows_and_starts_over_after_a_good_run(devstack: DevStack, tmp_path: Path) -> None:
    """A process that keeps dying young waits 1, 2, 4 s; one that ran AUTOLABEL_RESTART_RESET_S waits 1 s again.
    The launcher notices a death within 0.5 s."""
    port = free_port()
    with (tmp_path / "pool.log").open("wb") as log:
        launcher = _launch(devstack, log, port, "--health-host", "127.0.0.1", AUTOLABEL_RESTART_RESET_S="5")
        try:
            wait_until(lambda: _status(port)[0] in (200, 503), "the health server", 60)
            assert _listening_address(port) == "127.0.0.1"
            pid, delays = _first_pid(port), []
            for _ in range(3):
                pid, delay = _kill_and_time_restart(port, pid)
                delays.append(delay)
            time.sleep(5.5)  # this one runs past AUTOLABEL_RESTART_RESET_S
            pid, after_good_run = _kill_and_time_restart(port, pid)
            for expected, delay in zip((1, 2, 4, 1), (*delays, after_good_run)):
                assert expected <= delay < expected + 1.5, (delays, after_good_run)
            assert _status(port)[1]["processes"][0]["restarts"] == 4
        finally:
            _stop(launcher)


@pytest.mark.integration
def test_live_is_503_while_stopping_and_a_stuck_process_is_killed_at_the_shutdown_timeout(
        devstack: DevStack, tmp_path: Path) -> None:
    port, log_path = free_port(), tmp_path / "pool.log"
    with log_path.open("wb") as log:
        launcher = _launch(devstack, log, port, "--shutdown-timeout", "3", AUTOLABEL_HEALTH_HOST="127.0.0.1")
        try:
            wait_until(lambda: _get(port, "/live")[0] == 200, "/live", 60)
            assert _listening_address(port) == "127.0.0.1"
            # Warmed up, so it has Celery's SIGTERM handler (a fresh interpreter would just die of SIGTERM).
            wait_until(lambda: _status(port)[0] == 200, "the process warmed up", 300)
            pid = _first_pid(port)
            os.kill(pid, signal.SIGSTOP)  # a process that never finishes its batch
            sent_at = time.monotonic()
            launcher.send_signal(signal.SIGTERM)
            wait_until(lambda: _get(port, "/live")[0] == 503, "/live to turn 503", 2)
            assert launcher.wait(30) == 0
            took_s = time.monotonic() - sent_at
        finally:
            _stop(launcher)
    assert 3 <= took_s < 5, took_s
    assert not Path(f"/proc/{pid}").exists()
    assert f"(pid {pid}) still running 3 s after SIGTERM; killed" in log_path.read_text()


@pytest.mark.integration
def test_a_health_port_in_use_is_a_one_line_error(devstack: DevStack) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run([str(AUTOLABEL), "worker", "--devices", "cpu", "--procs-per-device", "1",
                                 "--health-port", str(port)], env=devstack.subprocess_env(),
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: ConfigError: the health server cannot listen on 0.0.0.0:{port}: Address already in use; "
        "choose another --health-port or --health-host"], result.stderr


@pytest.mark.integration
def test_pinned_processes_are_restarted_and_stop_on_sigterm(devstack: DevStack, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "pool.log").open("wb")
    launcher = subprocess.Popen(
        [str(Path(sys.executable).with_name("autolabel")), "worker", "--devices", "cpu", "--procs-per-device", "2",
         "--threads", "2", "--health-port", str(port), "--shutdown-timeout", "60"],
        env=devstack.subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _status(port)[0] == 200, "the pool's /ready", timeout=300)
        processes = _status(port)[1]["processes"]
        assert len(processes) == 2
        for process in processes:
            env = _environ(process["pid"])
            assert env["CUDA_VISIBLE_DEVICES"] == "" and env["AUTOLABEL_DEVICE"] == "cpu"
            assert process["warmup"]["batch_size"] >= 1 and process["warmup"]["peak_memory_bytes"] > 0

        victim = processes[0]["pid"]
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: _status(port)[0] == 503, "the pool to notice the dead process", timeout=30)
        wait_until(lambda: _status(port)[0] == 200, "the restarted process", timeout=300)
        restarted = _status(port)[1]["processes"][0]
        assert restarted["pid"] != victim and restarted["restarts"] == 1

        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(90) == 0
        for pid in (restarted["pid"], processes[1]["pid"]):
            assert not Path(f"/proc/{pid}").exists(), f"worker process {pid} outlived the launcher"
    finally:
        if launcher.poll() is None:
            launcher.kill()
        log.close()

