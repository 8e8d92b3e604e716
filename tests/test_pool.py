"""`autolabel worker`: sizing rules, and real pinned processes that are watched and restarted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from autolabel.devservices import DevStack, free_port, wait_until
from autolabel.errors import ConfigError
from autolabel_worker.pool import Gpu, cpu_processes, parse_devices, processes_that_fit

GIB = 1 << 30


def test_reference_card_fits_two_processes() -> None:
    # The reference deployment: one process peaked at 9.6 GB on a 24 GB RTX 4090.
    assert processes_that_fit(24 * GIB, int(9.6 * GIB)) == 2
    assert processes_that_fit(80 * GIB, int(9.6 * GIB)) == 7
    assert processes_that_fit(8 * GIB, int(9.6 * GIB)) == 1


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


def _status(port: int) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


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

