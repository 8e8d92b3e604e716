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
from workerpool import MODEL, THREADS, Pool, job_frames, small_canvas_configs, tally, upload_frames, \
    versioned_stack, wait_for_progress

from autolabel.celery_app import FLOWER_TASKS_COLUMNS, make_celery
from autolabel.client import LabelingClient
from autolabel.contract import (
    DEFAULT_QUEUE,
    TASK_DETECT,
    TASK_SUBMIT,
    DetectOptions,
    DetectTask,
    FrameRef,
    JobSpec,
    SubmitFramesTask,
    queue_for,
)
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
    assert failed.value.code == 503
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
    # A whole job for the worker to fan out (SubmitFramesTask: the job id is in its spec).
    celery.send_task(TASK_SUBMIT, kwargs=SubmitFramesTask(spec=spec, frames=tuple(frames)).model_dump(mode="json"),
                     queue=queue_for("m9"))
    shown = sorted(json.loads(raw)["headers"]["kwargsrepr"]
                   for name in priority_lists(queue_for("m9")) for raw in client.lrange(name, 0, -1))
    assert shown == ["job=flower-job frames=1 (00006)", "job=flower-job frames=3 (00000..00002)",
                     "job=flower-job frames=3 (00003..00005)", "job=flower-job frames=7 (00000..00006)",
                     "job=retried-job frames=2 (00000..00001)"]


# --- the operations files ------------------------------------------------------------------------

DASHBOARD = OPS / "grafana" / "autolabel-dashboard.json"
ALERTS = OPS / "prometheus" / "alerts.yml"
# Series Prometheus itself makes; every other name in the files must be documented.
PROMETHEUS_SERIES = {"up"}


def documented_metrics() -> dict[str, str]:
    """Metric name -> type, from docs/operations.md's tables (the list operators read)."""
    text = (ROOT / "docs" / "operations.md").read_text()
    return dict(re.findall(r"^\| `(autolabel_\w+)` \| (counter|gauge|histogram) \|", text, re.M))


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def alert_exprs() -> list[str]:
    return [rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]


def named_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers outside strings that are not functions,
    keywords, label names or durations."""
    code = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values and regexes out
    code = re.sub(r"\{[^}]*\}", "", code)  # label matchers out
    code = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", code)
    return set(re.findall(r"\b(?:autolabel_\w+|up)\b(?!\s*\()", code))


def base_name(name: str, documented: dict[str, str]) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and documented.get(name.removesuffix(suffix)) == "histogram":
            return name.removesuffix(suffix)
    return name


def test_every_panel_and_alert_names_documented_metrics_only() -> None:
    documented = documented_metrics()
    assert len(documented) >= 25, "docs/operations.md's metric tables were not found"
    for expr in dashboard_exprs() + alert_exprs():
        names = named_metrics(expr)
        assert names, f"no metric found in {expr!r}"
        unknown = {base_name(name, documented) for name in names} - set(documented) - PROMETHEUS_SERIES
        assert not unknown, f"{expr!r} names {sorted(unknown)}, which docs/operations.md does not document"
        histograms = {name for name in names if documented.get(name) == "histogram"}
        assert not histograms, f"{expr!r} names histograms {sorted(histograms)} without _bucket, _sum or _count"


def test_the_name_check_is_live() -> None:
    documented = documented_metrics()
    assert {base_name(n, documented) for n in named_metrics(
        'sum by (model) (rate(autolabel_frames_labelled_total{model="a"}[5m]))')} == {"autolabel_frames_labelled_total"}
    assert named_metrics('histogram_quantile(0.9, sum by (le) (rate(autolabel_forward_seconds_bucket[1m])))') == \
        {"autolabel_forward_seconds_bucket"}


def test_the_dashboard_covers_the_issues_panels() -> None:
    exprs = " ".join(dashboard_exprs())
    for needed in ("autolabel_frames_labeled_total", "autolabel_batch_frames_bucket", "autolabel_queue_length",
                   "autolabel_forward_seconds_bucket", "autolabel_device_memory_peak_reserved_bytes",
                   "autolabel_device_busy_seconds_total", "autolabel_frames_failed_total"):
        assert needed in exprs, f"no panel shows {needed}"


def test_promtool_checks_the_scrape_config_the_rules_and_the_dashboards_queries(tmp_path: Path) -> None:
    promtool = tool("promtool")
    for argv in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                 ["test", "rules", "alerts.test.yml"]):
        done = subprocess.run([promtool, *argv], cwd=OPS / "prometheus", capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"promtool {' '.join(argv)}:\n{done.stdout}{done.stderr}"
    # The dashboard's queries parse as PromQL: each as a recording rule, Grafana's interval variable
    # replaced by a duration.
    rules = [{"record": f"dashboard:query{i}", "expr": expr.replace("$__rate_interval", "1m")}
             for i, expr in enumerate(dashboard_exprs())]
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run([promtool, "check", "rules", str(tmp_path / "dashboard.yml")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_is_live(tmp_path: Path) -> None:
    broken = ALERTS.read_text().replace("increase(autolabel_dead_letters_total[1h])",
                                        "increase(autolabel_dead_letters_total[1h]")
    (tmp_path / "alerts.yml").write_text(broken)
    done = subprocess.run([tool("promtool"), "check", "rules", str(tmp_path / "alerts.yml")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0 and "AutolabelDeadLetters" in done.stdout + done.stderr


# --- a real Prometheus during a real job ---------------------------------------------------------

PROCESSES = 2
FLOWER_AUTH = "operator:metrics-test"


class Prometheus:
    """Debian's prometheus on loopback with the repository's scrape config, its targets replaced."""

    def __init__(self, workdir: Path, targets: dict[str, int]) -> None:
        config = yaml.safe_load((OPS / "prometheus" / "prometheus.yml").read_text())
        config["global"].update(scrape_interval="1s", evaluation_interval="1s")
        jobs = {scrape["job_name"]: scrape for scrape in config["scrape_configs"]}
        assert set(jobs) == set(targets), f"the scrape config's jobs are {sorted(jobs)}"
        for name, port in targets.items():
            jobs[name]["static_configs"] = [{"targets": [f"127.0.0.1:{port}"]}]
        shutil.copy(OPS / "prometheus" / "alerts.yml", workdir / "alerts.yml")
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.port = free_port()
        self.service = Service("prometheus", [
            tool("prometheus"), f"--config.file={workdir / 'prometheus.yml'}", f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}"], self.port, workdir / "prometheus.log")

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.load(response)
        assert answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        return self.api("query", query=expr, **({"time": f"{at:.3f}"} if at is not None else {}))["result"]

    def value(self, expr: str, at: float | None = None) -> float:
        (result,) = self.query(expr, at) or [{"value": [0, "nan"]}]
        return float(result["value"][1])

    def settles_at(self, expr: str, expected: float, timeout: float = 20) -> float:
        """Waits until ``expr`` is ``expected`` (Prometheus scraped the latest values); returns it, or
        fails with the value it kept."""
        seen: list[float] = []

        def equal() -> bool:
            seen.append(self.value(expr))
            return abs(seen[-1] - expected) < 1e-6

        try:
            wait_until(equal, f"{expr} == {expected}", timeout)
        except TimeoutError:
            raise AssertionError(f"Prometheus: {expr} is {seen[-1] if seen else 'absent'}, not {expected}") from None
        return seen[-1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    with versioned_stack(tmp_path_factory.mktemp("metrics-services")) as started:
        yield started


@pytest.fixture(scope="module")
def observed(stack: DevStack, repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pool, Prometheus]]:
    """A worker pool, the exporter and Flower on the stack, and Prometheus scraping the three."""
    workdir = tmp_path_factory.mktemp("observed")
    configs = small_canvas_configs(repo_root, tmp_path_factory.mktemp("configs"))
    with Pool(stack, configs, workdir / "pool.log", processes=PROCESSES) as pool:
        exporter = start_exporter(stack.subprocess_env(), workdir / "exporter.log")
        flower_port = free_port()
        flower = Service("flower", [str(BIN / "celery"), "--broker", stack.env()["AUTOLABEL_BROKER_URL"], "flower",
                                    "--address=127.0.0.1", f"--port={flower_port}"], flower_port, workdir / "flower.log")
        flower.start(stack.subprocess_env(FLOWER_BASIC_AUTH=FLOWER_AUTH))
        prometheus = Prometheus(workdir, {"autolabel-worker": pool.port, "autolabel-exporter": exporter.port,
                                          "flower": flower_port})
        prometheus.service.start()
        try:
            wait_until(lambda: prometheus.value('sum(up{job=~"autolabel-worker|autolabel-exporter|flower"})') == 3,
                       "Prometheus scraping the pool, the exporter and Flower", 30)
            yield pool, prometheus
        finally:
            for service in (prometheus.service, flower, exporter):
                service.stop()


def slot_of(pool: Pool, pid: int) -> str:
    """The process label (slot) of a worker process: its name is autolabel-DEVICE-SLOT@host."""
    (name,) = [p["name"] for p in pool.status()[1]["processes"] if p["pid"] == pid]
    return name.split("@")[0].rsplit("-", 1)[1]


def launcher_value(pool: Pool, name: str) -> float:
    return sum(value for _, value in scrape(pool.port).get(name, []))


@pytest.mark.e2e
@pytest.mark.integration
def test_prometheus_sees_a_real_job_and_a_killed_process(stack: DevStack, observed: tuple[Pool, Prometheus],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    pool, prometheus = observed
    client = LabelingClient(stack.settings())
    keys = upload_frames(client.store, "metrics/frames", 12, seed=14)
    frames_total, passes_total = "sum(autolabel_frames_labeled_total)", "sum(autolabel_forward_seconds_count)"
    queue = f'autolabel_queue_length{{queue="{queue_for(MODEL)}"}}'
    # Passes before the job (none, unless the warm-up counts as one): counted from here.
    passes_before = launcher_value(pool, "autolabel_forward_seconds_count")
    if passes_before:
        prometheus.settles_at(passes_total, passes_before)

    # A job of 24 frames, 2 a task: 12 messages for 2 processes of 4 threads, so some wait in the queue.
    frames = job_frames(keys, 24)
    started = time.time()
    client.submit_frames(frames, job_id="metrics-plain", model=MODEL, batch_size=2)
    assert client.wait("metrics-plain", timeout=120).state == JobState.DONE
    counts, summary = tally(client, "metrics-plain", frames)
    counts.check(passes_again_allowed=False)
    labeled = prometheus.settles_at(frames_total, counts.labeled)
    assert labeled == counts.labeled == len(frames)
    passes = prometheus.settles_at(passes_total, passes_before + summary.timings.forward_passes) - passes_before
    prometheus.settles_at(queue, 0)
    prometheus.settles_at('autolabel_jobs{state="done"}', 1)
    prometheus.settles_at("autolabel_frames_pending", 0)
    prometheus.settles_at(f'autolabel_workers_alive{{model="{MODEL}"}}', PROCESSES)
    window = f"{int(time.time() - started) + 2}s"
    queued_peak = prometheus.value(f"max_over_time({queue}[{window}])")

    # A second job; the busiest process is SIGKILLed in the middle and the launcher restarts it.
    frames = job_frames(keys, 32)
    client.submit_frames(frames, job_id="metrics-killed", model=MODEL, batch_size=2)
    wait_for_progress(client, "metrics-killed", 0.25)
    # The victim is a process whose labeled frames Prometheus has already scraped: a process that
    # had counted none yet has no series whose vanishing the check below could see.
    slots = {p["pid"]: slot_of(pool, p["pid"]) for p in pool.status()[1]["processes"]}

    def uncounted() -> frozenset[int]:
        return frozenset(pid for pid, slot in slots.items()
                         if not prometheus.value(f'autolabel_frames_labeled_total{{process="{slot}"}}') > 0)

    wait_until(lambda: uncounted() != frozenset(slots), "a worker process's frames in Prometheus", 30)
    killed_at = time.time()  # before the signal: what Prometheus held then was scraped before the kill
    victim = pool.kill_busy(signal.SIGKILL, random.Random(14), spare=uncounted())
    slot = slots[victim]
    series = f'autolabel_frames_labeled_total{{process="{slot}"}}'
    assert client.wait("metrics-killed", timeout=180).state == JobState.DONE
    pool.wait_ready(120)
    killed_counts, _ = tally(client, "metrics-killed", frames)
    killed_counts.check(passes_again_allowed=True)
    # The dead process's frames stay counted and are not counted again by its successor: never more
    # than coco.json. A result whose write landed in the store while the process was killed before
    # the store's answer reached it is not counted (its redelivery finds it and counts it skipped):
    # at most the frames of the tasks the process held (THREADS x 2).
    total = prometheus.settles_at(frames_total, launcher_value(pool, "autolabel_frames_labeled_total"))
    labeled_killed = total - counts.labeled
    skipped = prometheus.value("sum(autolabel_frames_skipped_total)")
    assert killed_counts.labeled - THREADS * 2 <= labeled_killed <= killed_counts.labeled
    assert labeled_killed + skipped >= killed_counts.labeled
    prometheus.settles_at(f'sum(autolabel_child_restarts_total{{process="{slot}"}})', 1)
    before_kill = prometheus.value(series, at=killed_at)
    after = prometheus.value(series)
    assert after >= before_kill > 0, f"process {slot}'s counter went from {before_kill} to {after}"
    assert prometheus.value(f"resets({series}[{int(time.time() - killed_at) + 10}s])") == 0
    prometheus.settles_at(queue, 0)
    # Every autolabel_* series Prometheus holds is one docs/operations.md documents.
    documented = documented_metrics()
    names = {name for name in prometheus.api("label/__name__/values") if name.startswith("autolabel_")}
    assert {base_name(name, documented) for name in names} <= set(documented)
    assert prometheus.value('sum(flower_events_total{type="task-succeeded"})') > 0
    with capsys.disabled():
        print(f"\n[metrics] Prometheus {prometheus.port}: {frames_total} = {labeled:.0f} after metrics-plain "
              f"(coco.json {counts.labeled} frames); passes {passes:.0f} (summary {summary.timings.forward_passes}); "
              f"queue peak {queued_peak:.0f} -> 0; process {slot} SIGKILLed: its counter {before_kill:.0f} -> "
              f"{after:.0f}, 0 resets, restarts 1; metrics-killed {labeled_killed:.0f} counted of "
              f"{killed_counts.labeled} in coco.json, {skipped:.0f} skipped")
        for result in prometheus.query(f"sum by (process) ({frames_total.removeprefix('sum(').removesuffix(')')})"):
            print(f"[metrics] autolabel_frames_labeled_total{result['metric']} = {result['value'][1]}")


@pytest.mark.e2e
@pytest.mark.integration
def test_flower_asks_for_its_password_except_on_metrics_and_healthcheck(observed: tuple[Pool, Prometheus]) -> None:
    pool, prometheus = observed
    (flower,) = [t for t in prometheus.api("targets")["activeTargets"] if t["labels"]["job"] == "flower"]
    base = flower["scrapeUrl"].removesuffix("/metrics")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{base}/tasks", timeout=5)
    assert refused.value.code == 401
    token = base64.b64encode(FLOWER_AUTH.encode()).decode()
    with urllib.request.urlopen(urllib.request.Request(f"{base}/tasks", headers={"Authorization": f"Basic {token}"}),
                                timeout=5) as response:
        assert response.status == 200
    for path in ("/metrics", "/healthcheck"):
        with urllib.request.urlopen(f"{base}{path}", timeout=5) as response:
            assert response.status == 200


def test_the_producer_image_shows_flowers_arguments_column() -> None:
    dockerfile = (ROOT / "docker" / "producer.Dockerfile").read_text()
    assert f"FLOWER_TASKS_COLUMNS={FLOWER_TASKS_COLUMNS}" in dockerfile
    assert "kwargs" in FLOWER_TASKS_COLUMNS.split(",")
