"""Metrics as an operator sees them: the exporter, the operations files, and a real Prometheus.

The exporter is read over HTTP against a real redis-server holding real kombu messages, jobs and
heartbeats. The operations files (ops/) are checked by Debian's promtool, and their PromQL may
name only the metrics docs/operations.md documents. The last test runs a real job on a real
`autolabel worker` pool (redis-server, the S3 server) with the exporter and Flower beside it,
while Debian's `prometheus` scrapes all three with the repository's scrape config (its targets
replaced by the test's ports, a 1 s interval), and asks Prometheus's HTTP API what it saw.
"""

from __future__ import annotations

import base64
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
import yaml
from kombu import Connection
from prometheus_client.parser import text_string_to_metric_families
from workerpool import MODEL, WORKER_ENV, Pool, job_frames, small_canvas_configs, tally, upload_frames, \
    versioned_stack, wait_for_progress

from autolabel.celery_app import make_celery
from autolabel.client import LabelingClient
from autolabel.contract import DEFAULT_QUEUE, TASK_DETECT, DetectOptions, DetectTask, FrameRef, JobSpec, queue_for
from autolabel.devservices import DevStack, Service, free_port, redis_service, wait_until
from autolabel.exporter import priority_lists
from autolabel.jobs import enqueue_frames
from autolabel.progress import JobState, ProgressStore
from autolabel.serving import HEARTBEAT_TTL_S, Heartbeat, workers_key
from autolabel.settings import Settings
from autolabel.storage import ObjectStore

ROOT = Path(__file__).resolve().parents[1]
OPS = ROOT / "ops"
BIN = Path(sys.executable).parent
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is not installed: run `make services` (Debian's prometheus package)"
    return path


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The samples of a /metrics endpoint by sample name: (labels, value) pairs."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def start_exporter(env: dict[str, str], log: Path) -> Service:
    port = free_port()
    service = Service("autolabel exporter", [str(BIN / "autolabel"), "exporter", "--host", "127.0.0.1",
                                             "--port", str(port)], port, log)
    service.start(env)
    return service


# --- the exporter against real Redis contents ----------------------------------------------------

@pytest.fixture(scope="module")
def redis_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = redis_service(tmp_path_factory.mktemp("exporter-redis"))
    service.start()
    yield service
    service.stop()


def detect_task(job_id: str, model: str, count: int) -> dict[str, Any]:
    frames = [FrameRef(frame_id=f"{i:05d}", key=f"k/{i}.jpg") for i in range(count)]
    return DetectTask(job_id=job_id, options=DetectOptions(model=model), frames=tuple(frames)).model_dump(mode="json")


@pytest.mark.integration
def test_the_exporter_reads_queues_jobs_and_workers_from_redis(redis_only: Service, tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{redis_only.port}/0"
    client = redis_lib.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    progress = ProgressStore.from_url(url)
    # Jobs in four states: 10 frames queued, 8 running with 3 labeled and 1 failed, one done, one cancelled.
    progress.register("j-queued", total=10, model="m1", source="frames")
    progress.register("j-running", total=8, model="m2", source="frames")
    progress.record("j-running", done=["a", "b", "c"], failed={"d": "decode: broken"})
    progress.register("j-done", total=1, model="m1", source="frames")
    progress.record("j-done", done=["a"], failed={})
    progress.mark_done("j-done")
    progress.register("j-cancelled", total=5, model="m3", source="frames")
    progress.cancel("j-cancelled")
    # Messages as a producer sends them: model m1's queue in three priority bands, one message of m2.
    celery = make_celery(Settings(_env_file=None, broker_url=url))
    for priority in (0, 5, 9, 9):
        celery.send_task(TASK_DETECT, kwargs=detect_task("j-queued", "m1", 2), queue=queue_for("m1"),
                         priority=priority)
    celery.send_task(TASK_DETECT, kwargs=detect_task("j-running", "m2", 2), queue=queue_for("m2"))
    # A worker takes one of m1's messages and does not acknowledge it: kombu moves it to `unacked`.
    with Connection(url) as connection:
        message = connection.SimpleQueue(queue_for("m1")).get(timeout=5)
        assert message.delivery_tag
        # Heartbeats: two processes of m1 alive, one of m2 whose last beat is too old.
        Heartbeat(client, "m1").beat()
        client.zadd(workers_key("m1"), {"other-host:42": time.time()})
        client.zadd(workers_key("m2"), {"gone-host:7": time.time() - HEARTBEAT_TTL_S - 5})
        exporter = start_exporter({"PATH": "/usr/bin:/bin", "AUTOLABEL_BROKER_URL": url}, tmp_path / "exporter.log")
        try:
            samples = scrape(exporter.port)
        finally:
            exporter.stop()
    queues = {labels["queue"]: value for labels, value in samples["autolabel_queue_length"]}
    # m3's only job is cancelled and no worker ever served it: no queue of its own is listed.
    assert queues == {queue_for("m1"): 3, queue_for("m2"): 1, DEFAULT_QUEUE: 0}
    assert samples["autolabel_queue_unacked"] == [({}, 1)]
    jobs = {labels["state"]: value for labels, value in samples["autolabel_jobs"]}
    assert jobs == {"queued": 1, "running": 1, "finalizing": 0, "done": 1, "cancelled": 1}
    assert samples["autolabel_frames_pending"] == [({}, 10 + 8 - 3 - 1)]
    alive = {labels["model"]: value for labels, value in samples["autolabel_workers_alive"]}
    assert alive == {"m1": 2, "m2": 0}


@pytest.mark.integration
def test_a_scrape_without_redis_fails_instead_of_reporting_empty_queues(tmp_path: Path) -> None:
    # Redis gone: an empty queue would be a lie that a KEDA or an alert acts on; the scrape fails
    # and Prometheus records up == 0 (alert AutolabelExporterDown).
    exporter = start_exporter({"PATH": "/usr/bin:/bin", "AUTOLABEL_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"},
                              tmp_path / "exporter.log")
    try:
        with pytest.raises(urllib.error.HTTPError) as failed:
            scrape(exporter.port)
    finally:
        exporter.stop()
    assert failed.value.code == 500
    assert "scrape failed: Redis did not answer" in (tmp_path / "exporter.log").read_text()


# --- what Flower shows of a task -----------------------------------------------------------------

@pytest.mark.integration
def test_frame_tasks_tell_their_job_and_frames_in_every_send(redis_only: Service) -> None:
    url = f"redis://127.0.0.1:{redis_only.port}/1"
    client = redis_lib.Redis.from_url(url, decode_responses=True)
    client.flushdb()
    celery = make_celery(Settings(_env_file=None, broker_url=url))
    spec = JobSpec(job_id="flower-job", source="frames", options=DetectOptions(model="m9"), batch_size=3)
    frames = [FrameRef(frame_id=f"{i:05d}", key=f"k/{i}.jpg") for i in range(7)]
    assert enqueue_frames(celery, spec, frames) == 3
    # A send that names no repr, as Celery's retry does (it rebuilds the message from the request).
    celery.send_task(TASK_DETECT, kwargs=detect_task("retried-job", "m9", 2), queue=queue_for("m9"))
    shown = sorted(json.loads(raw)["headers"]["kwargsrepr"]
                   for name in priority_lists(queue_for("m9")) for raw in client.lrange(name, 0, -1))
    assert shown == ["job=flower-job frames=1 (00006)", "job=flower-job frames=3 (00000..00002)",
                     "job=flower-job frames=3 (00003..00005)", "job=retried-job frames=2 (00000..00001)"]
