"""The launcher's /metrics and the JSON logs, on a real `autolabel worker` pool.

One pool of 2 CPU processes against the module's own redis-server (with a password, so the logs
can be searched for it) and S3 server. Its /metrics is scraped with an HTTP GET and read with
prometheus_client's own parser; the counts it is checked against come from elsewhere: the result
objects in the versioned bucket (every write of a result is a version), coco.json, and the job
summary's forward passes (counted by the tasks in Redis).
"""

from __future__ import annotations

import json
import random
import signal
import stat
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from workerpool import (
    MODEL,
    WORKER_ENV,
    Pool,
    job_frames,
    small_canvas_configs,
    tally,
    upload_frames,
    versioned_stack,
    wait_for_progress,
)

from autolabel import layout
from autolabel.client import LabelingClient
from autolabel.devservices import DevStack, wait_until
from autolabel.settings import Settings
from autolabel_worker.pool import WorkerPool, metrics_registry

pytestmark = [pytest.mark.integration]

PASSWORD = "pw-Zq81-metrics"
FRAMES = 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    with versioned_stack(tmp_path_factory.mktemp("metrics-services")) as started:
        # Redis with a password from here on: every client of this module puts it in its URL.
        redis_lib.Redis.from_url(started.settings().broker_url).config_set("requirepass", PASSWORD)
        yield started


@pytest.fixture(scope="module")
def broker_url(stack: DevStack) -> str:
    return stack.settings().broker_url.replace("redis://", f"redis://:{PASSWORD}@", 1)


@pytest.fixture(scope="module")
def client(stack: DevStack, broker_url: str) -> LabelingClient:
    return LabelingClient(stack.settings(broker_url=broker_url))


@pytest.fixture(scope="module")
def keys(client: LabelingClient) -> list[str]:
    return upload_frames(client.store, "metrics-src", 8, seed=14)


@pytest.fixture(scope="module")
def pool(stack: DevStack, broker_url: str, repo_root: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    configs = small_canvas_configs(repo_root, tmp_path_factory.mktemp("configs"))
    env = {**WORKER_ENV, "AUTOLABEL_BROKER_URL": broker_url, "AUTOLABEL_LOG_FORMAT": "json"}
    with Pool(stack, configs, tmp_path_factory.mktemp("pool") / "worker.log", processes=2, threads=2,
              env=env) as started:
        yield started


def scrape(pool: Pool) -> tuple[str, dict[str, float]]:
    """/metrics as text, and each sample name's value summed over its series."""
    with urllib.request.urlopen(f"http://127.0.0.1:{pool.port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return text, sums


def ram_bytes() -> int:
    with open("/proc/meminfo") as meminfo:
        return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal:"))


def result_writes(client: LabelingClient) -> int:
    """Every write of any job's result object: versions in the bucket (a result written twice counts twice)."""
    writes = 0
    for page in client.store.client.get_paginator("list_object_versions").paginate(
            Bucket=client.store.bucket, Prefix="jobs/"):
        writes += sum(1 for version in page.get("Versions", []) if "/detections/" in version["Key"])
    return writes


def test_metrics_count_a_job(pool: Pool, client: LabelingClient, keys: list[str],
                             capsys: pytest.CaptureFixture[str]) -> None:
    frames = job_frames(keys, FRAMES)
    job_id = client.submit_frames(frames, job_id="metrics-job", model=MODEL, batch_size=4)
    client.wait(job_id, timeout=300)
    counts, summary = tally(client, job_id, frames)
    text, sums = scrape(pool)
    with capsys.disabled():
        print("\n[metrics] /metrics excerpt after a 20-frame job:\n" + "\n".join(
            line for line in text.splitlines() if line.startswith((
                "autolabel_frames_labeled_total", "autolabel_forward_seconds_count", "autolabel_batch_frames_sum",
                "autolabel_device_busy_seconds_total", "autolabel_process_resident_bytes", "autolabel_model_info",
                "autolabel_child_restarts_total", "autolabel_stage_seconds_count"))))
    assert counts.labeled == summary.labeled_frames == FRAMES
    assert sums["autolabel_frames_labeled_total"] == FRAMES
    assert sums.get("autolabel_frames_failed_total", 0) == 0
    # Every pass of the job and no other (the warm-up is not a pass of the batcher's).
    passes = sums["autolabel_forward_seconds_count"]
    assert passes == pytest.approx(summary.timings.forward_passes, abs=0.01), (passes, summary.timings)
    assert sums["autolabel_batch_frames_count"] == passes
    assert sums["autolabel_batch_frames_sum"] == sum(client.progress.passes(job_id).values()) == FRAMES
    assert sums["autolabel_batch_wait_seconds_count"] == FRAMES
    assert sums["autolabel_stage_seconds_count"] >= 2 * FRAMES  # fetch and decode per frame, upload per task
    assert sums["autolabel_device_busy_seconds_total"] > 0
    assert sums["autolabel_model_warmup_seconds"] > 0 and sums["autolabel_model_load_seconds"] > 0
    assert sums["autolabel_model_info"] == 2  # one per process
    assert sums["autolabel_process_resident_bytes"] > 2 * 100 * 2**20
    assert sums["autolabel_device_memory_total_bytes"] == 2 * ram_bytes()  # on CPU: the machine's RAM, per process
    assert sums["autolabel_child_restarts_total"] == 0
    assert 'process="0"' in text and 'process="1"' in text and 'device="cpu"' in text


def test_a_killed_childs_counts_neither_vanish_nor_double(pool: Pool, client: LabelingClient, keys: list[str],
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    _, before = scrape(pool)
    frames = job_frames(keys, 2 * FRAMES)
    job_id = client.submit_frames(frames, job_id="metrics-kill", model=MODEL, batch_size=4)
    wait_for_progress(client, job_id, 0.2)
    victim = pool.kill_busy(signal.SIGKILL, random.Random(14))
    wait_until(lambda: victim not in pool.pids() and pool.status()[0] == 200, "the killed process restarted", 120)
    client.wait(job_id, timeout=300)
    counts, _ = tally(client, job_id, frames)
    counts.check(passes_again_allowed=True)
    _, after = scrape(pool)
    with capsys.disabled():
        labeled = before["autolabel_frames_labeled_total"], after["autolabel_frames_labeled_total"]
        print(f"\n[metrics] SIGKILL of pid {victim}: frames_labeled_total {labeled[0]:.0f} -> {labeled[1]:.0f}, "
              f"result writes in the bucket {result_writes(client)}, this job {counts.labeled} labeled / "
              f"{counts.duplicated_passes} passed again, restarts {after['autolabel_child_restarts_total']:.0f}, "
              f"deliveries lost {after['autolabel_deliveries_lost_total']:.0f}")
    # The dead process's counts stay (its file is kept) and are not counted again by its successor.
    assert after["autolabel_frames_labeled_total"] == result_writes(client)
    assert after["autolabel_frames_labeled_total"] >= before["autolabel_frames_labeled_total"] + counts.labeled
    assert after["autolabel_child_restarts_total"] == 1
    # Its messages came back through the workers' sweep (the 20 s visibility timeout is later than the job's end).
    assert after["autolabel_deliveries_lost_total"] >= 1
    assert after["autolabel_model_info"] == 2  # the dead process's live gauges went with it


def test_frames_labeled_before_count_as_skipped(pool: Pool, client: LabelingClient, keys: list[str]) -> None:
    frames = job_frames(keys, 4)
    client.wait(client.submit_frames(frames, job_id="metrics-skip", model=MODEL, batch_size=4), timeout=300)
    _, before = scrape(pool)
    # The same frames again: their results are there, stamped from the same image by the same model version.
    client.wait(client.submit_frames(frames, job_id="metrics-skip", model=MODEL, batch_size=4), timeout=300)
    _, after = scrape(pool)
    assert after.get("autolabel_frames_skipped_total", 0) - before.get("autolabel_frames_skipped_total", 0) == 4
    assert after["autolabel_frames_labeled_total"] == before["autolabel_frames_labeled_total"]


def test_json_logs(pool: Pool, client: LabelingClient, keys: list[str]) -> None:
    job_id = client.submit_frames(job_frames(keys, 4), job_id="metrics-logs", model=MODEL, batch_size=4)
    client.wait(job_id, timeout=300)
    pool.finalized(job_id)
    text = pool.log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    assert PASSWORD not in text
    # The broker's URL is logged (Celery's "Connected to"), its password masked.
    port = pool.redis.connection_pool.connection_kwargs["port"]
    assert any(f"@127.0.0.1:{port}" in line["message"] for line in lines)
    task_lines = [line for line in lines if line.get("task_id")]
    assert any(line["logger"] == "autolabel.pool" for line in lines)  # the launcher's
    assert any(line["logger"].startswith("celery") for line in lines)  # Celery's own
    finalize = [line for line in task_lines if f"job {job_id} finalized" in line["message"]]
    assert finalize and finalize[0]["job_id"] == job_id
    detect = [line for line in task_lines if line.get("job_id") == job_id and "frames" in line]
    assert detect and all(line["model"] == MODEL and line["device"] == "cpu" for line in detect)
    assert {line["frames"] for line in detect} == {4}
    # Celery's "received" line, before the task runs, names its job too (from the task's kwargsrepr).
    assert any(line["logger"] == "celery.worker.strategy" for line in detect)


def test_the_metrics_directory_is_the_pools_own_and_goes_when_it_stops(tmp_path: Path) -> None:
    pool = WorkerPool(settings=Settings(_env_file=None), devices=["cpu"], procs_per_device=2, queues=["q"],
                      run_dir=tmp_path)
    pool.children = [pool.child("cpu", slot) for slot in range(2)]
    assert {child.env["PROMETHEUS_MULTIPROC_DIR"] for child in pool.children} == {str(pool.metrics_dir)}
    assert stat.S_IMODE(pool.metrics_dir.stat().st_mode) == 0o700 and not any(pool.metrics_dir.iterdir())
    pool.children[1].restarts = 2
    text = generate_latest(metrics_registry(pool)).decode()
    assert 'autolabel_child_restarts_total{device="cpu",process="1"} 2.0' in text
    assert 'autolabel_child_restarts_total{device="cpu",process="0"} 0.0' in text
    pool.stop(1)
    assert not pool.metrics_dir.exists()
