"""A backend with only Celery, `celery inspect` and Flower against a real worker; bad queue items.

One real `autolabel worker` (1 process, 1 thread: tasks run one at a time, in the order the worker
takes them) on the session's redis-server and S3 server. The "plain" app is what a backend or
`celery --broker URL flower` has: `Celery(broker=URL)` with Celery's and kombu's defaults.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Reject

from autolabel.celery_app import make_celery
from autolabel.client import LabelingClient
from autolabel.contract import TASK_DETECT, TASK_SUBMIT, FrameRef, SubmitFramesTask, queue_for
from autolabel.devservices import DevStack, free_port, wait_until
from autolabel.errors import JobNotFoundError
from autolabel.progress import JobState, JobStatus
from autolabel.settings import Settings
from autolabel.storage import ObjectStore
from autolabel_worker.broker import BAD_MESSAGES_KEY, BadMessage
from autolabel_worker.tasks import RequeueingTask
from workerpool import MODEL, Pool, small_canvas_configs, upload_frames

pytestmark = pytest.mark.integration

QUEUE = queue_for(MODEL)


@pytest.fixture(scope="module")
def pool(devstack: DevStack, repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    configs = small_canvas_configs(repo_root, tmp_path_factory.mktemp("configs"))
    # The default delivery settings: nothing here kills a worker.
    with Pool(devstack, configs, tmp_path_factory.mktemp("pool") / "pool.log", processes=1, threads=1,
              env={}) as started:
        yield started


@pytest.fixture(scope="module")
def plain(devstack: DevStack) -> Iterator[Celery]:
    app = Celery(broker=devstack.settings().broker_url, set_as_current=False)
    app.conf.accept_content = ["json"]
    yield app
    app.close()


@pytest.fixture(scope="module")
def frame_keys(devstack: DevStack) -> list[str]:
    return upload_frames(ObjectStore.from_settings(devstack.settings()), "compat/frames", 4, seed=77)


@pytest.fixture(scope="module")
def client(devstack: DevStack) -> LabelingClient:
    return LabelingClient(devstack.settings())


def frames(keys: list[str]) -> list[FrameRef]:
    return [FrameRef(frame_id=f"f{i}", key=key) for i, key in enumerate(keys)]


def plain_submit(plain: Celery, job_id: str, keys: list[str], *, spec: dict[str, Any] | None = None,
                 **send_options: Any) -> None:
    """docs/task-contract.md's example, with ``send_options`` (a priority) added to send_task."""
    payload = SubmitFramesTask.model_validate({
        "spec": {"job_id": job_id, "source": "frames", "options": {"model": MODEL}, "batch_size": 2, **(spec or {})},
        "frames": [f.model_dump(mode="json") for f in frames(keys)],
    })
    plain.send_task(TASK_SUBMIT, kwargs=payload.model_dump(mode="json"), queue=QUEUE, **send_options)


def wait_done(client: LabelingClient, job_id: str, timeout: float = 90) -> JobStatus:
    def done() -> bool:
        try:
            return client.status(job_id).state == JobState.DONE
        except JobNotFoundError:
            return False  # a submit message not taken yet

    wait_until(done, f"job {job_id} done", timeout)
    return client.status(job_id)


def worker_name(pool: Pool) -> str:
    return pool.status()[1]["processes"][0]["name"]


def test_plain_celery_submit_with_and_without_priority(pool: Pool, plain: Celery, client: LabelingClient,
                                                       frame_keys: list[str]) -> None:
    pool.wait_ready()
    plain_submit(plain, "plain-priority-5", frame_keys, priority=5)
    plain_submit(plain, "plain-priority-9", frame_keys, priority=9)
    plain_submit(plain, "plain-no-priority", frame_keys)
    for job_id in ("plain-priority-5", "plain-priority-9", "plain-no-priority"):
        assert wait_done(client, job_id).done == len(frame_keys)


def test_plain_inspect_and_control_reach_the_worker(pool: Pool, plain: Celery, devstack: DevStack) -> None:
    """What `celery --broker URL inspect ping` and Flower do."""
    pool.wait_ready()
    name = worker_name(pool)
    assert plain.control.inspect(destination=[name], timeout=5).ping() == {name: {"ok": "pong"}}
    active = plain.control.inspect(destination=[name], timeout=5).active_queues()
    assert [q["name"] for q in active[name]] == [QUEUE]
    ping = subprocess.run([str(Path(sys.executable).with_name("celery")), "--broker", devstack.settings().broker_url,
                           "inspect", "ping", "--destination", name, "--timeout", "5"],
                          capture_output=True, text=True, timeout=60)
    assert ping.returncode == 0 and f"{name}: OK" in ping.stdout and "1 node online" in ping.stdout, ping.stdout


def test_priorities_order_work_the_same_on_both_paths(pool: Pool, plain: Celery, client: LabelingClient,
                                                      frame_keys: list[str]) -> None:
    """With the worker not consuming, jobs are queued from low to high priority on both paths;
    once it consumes again, its one thread labels them from high to low priority. A message sent
    without a priority (its job at the default priority) does not pass a job queued before it at
    the default priority."""
    pool.wait_ready()
    name = worker_name(pool)
    assert plain.control.cancel_consumer(QUEUE, destination=[name], reply=True, timeout=5)
    try:
        client.submit_frames(frames(frame_keys), job_id="order-client-low", model=MODEL, batch_size=2, priority=9)
        plain_submit(plain, "order-plain-low", frame_keys, spec={"priority": 9}, priority=9)
        client.submit_frames(frames(frame_keys), job_id="order-client-default", model=MODEL, batch_size=2)
        plain_submit(plain, "order-plain-default", frame_keys)
        client.submit_frames(frames(frame_keys), job_id="order-client-high", model=MODEL, batch_size=2, priority=0)
        plain_submit(plain, "order-plain-high", frame_keys, spec={"priority": 0}, priority=0)
        time.sleep(1)
        assert client.status("order-client-low").done == 0, "the worker took work while not consuming"
    finally:
        assert plain.control.add_consumer(QUEUE, destination=[name], reply=True, timeout=5)
    jobs = {job_id: wait_done(client, job_id) for job_id in (
        "order-client-high", "order-plain-high", "order-client-default", "order-plain-default",
        "order-client-low", "order-plain-low")}
    spans = {job_id: (status.started_at, status.labeled_at) for job_id, status in jobs.items()}
    order = sorted(spans, key=lambda job_id: spans[job_id][0])
    assert order == ["order-client-high", "order-plain-high", "order-client-default", "order-plain-default",
                     "order-client-low", "order-plain-low"], spans
    # One thread: each job's frames were labeled before the next job's first frame.
    for earlier, later in zip(order, order[1:]):
        assert spans[earlier][1] <= spans[later][0], (earlier, later, spans)


def envelope(headers: object, body: str = "[[], {}, {}]", **properties: object) -> bytes:
    """A kombu message as a Redis list holds it: a JSON envelope around the base64 body."""
    return json.dumps({
        "body": base64.b64encode(body.encode()).decode(), "content-encoding": "utf-8",
        "content-type": "application/json", "headers": headers,
        "properties": {"delivery_tag": "tag-1", "body_encoding": "base64", "priority": 0,
                       "delivery_info": {"exchange": "", "routing_key": QUEUE}, **properties}}).encode()


# Each of these killed the worker process: kombu could not decode it.
NOT_MESSAGES = [
    b"plain text",
    b'{"unterminated": ',
    b"[1, 2, 3]",
    b'"a JSON string"',
    b'{"body": "eyJ4IjogMX0=", "headers": {}}',
    envelope({}, body="x", delivery_tag=None),
    envelope("headers that are a string"),
    envelope({"task": TASK_DETECT, "id": "t-1"}, delivery_info={}),
    bytes(range(256)),
]
# kombu messages that are not Celery task messages: each made the worker reconnect to Redis, get it
# back and fail again, several times a second.
NOT_TASKS = [
    envelope({"task": TASK_DETECT}),
    envelope({"task": TASK_DETECT, "id": "t-2"}, body="5"),
    envelope({"task": TASK_DETECT, "id": "t-3"}, body="[1, 2]"),
]


def test_items_on_the_queue_that_are_not_task_messages_are_kept_aside(pool: Pool, client: LabelingClient,
                                                                      frame_keys: list[str]) -> None:
    pool.wait_ready()
    pids, redis = pool.pids(), client.progress.redis
    kept_before, unacked_before = redis.llen(BAD_MESSAGES_KEY), redis.hlen("unacked")
    for item in NOT_MESSAGES + NOT_TASKS:
        redis.lpush(QUEUE, item)
    count = len(NOT_MESSAGES) + len(NOT_TASKS)
    wait_until(lambda: redis.llen(BAD_MESSAGES_KEY) - kept_before == count, "the items kept aside", 20)
    kept = [BadMessage.model_validate_json(raw) for raw in reversed(redis.lrange(BAD_MESSAGES_KEY, 0, count - 1))]
    for record, item in zip(kept, NOT_MESSAGES):
        data = record.data.encode() if record.encoding == "utf-8" else base64.b64decode(record.data)
        assert data == item and record.list == QUEUE and record.reason, record
    for record, item in zip(kept[len(NOT_MESSAGES):], NOT_TASKS):
        headers = json.loads(item)["headers"]
        assert record.reason.startswith("not a Celery task message") and json.loads(record.data)["headers"] == headers
    client.submit_frames(frames(frame_keys), job_id="after-garbage", model=MODEL, batch_size=2)
    assert wait_done(client, "after-garbage").done == len(frame_keys)
    assert pool.pids() == pids, "an item on the queue took the worker process down"
    log = pool.log_path.read_text(errors="replace")
    assert log.count("is not a task message") == count
    assert "Unrecoverable error" not in log and "Connection to broker lost" not in log
    assert redis.hlen("unacked") <= unacked_before, "an item stayed unacknowledged (it would come back)"


def test_a_malformed_payload_is_one_log_line_and_its_reason_reaches_flower(pool: Pool, plain: Celery,
                                                                           client: LabelingClient) -> None:
    """Flower reads a task's failure from the task-failed event's exception field."""
    pool.wait_ready()
    events: list[dict[str, Any]] = []
    with plain.connection_for_read() as connection:
        receiver = plain.events.Receiver(connection, handlers={"*": events.append})
        listening = threading.Thread(target=receiver.capture, kwargs={"limit": None, "timeout": None}, daemon=True)
        listening.start()
        try:
            wait_until(lambda: any(e["type"] == "worker-heartbeat" for e in events), "the worker's events", 30)
            log_before = pool.log_path.stat().st_size
            task_id = "malformed-payload-1"
            client.celery.send_task(TASK_DETECT, task_id=task_id, queue=QUEUE, kwargs={
                "job_id": "j", "options": {"model": MODEL}, "frames": [{"frame_id": "a", "key": "/etc/passwd"}]})
            wait_until(lambda: any(e["type"] == "task-failed" and e["uuid"] == task_id for e in events),
                       "the task-failed event", 30)
        finally:
            receiver.should_stop = True
            listening.join(10)
    failed = next(e for e in events if e["type"] == "task-failed" and e["uuid"] == task_id)
    assert "frames.0.key" in failed["exception"] and "relative" in failed["exception"], failed["exception"]
    time.sleep(0.5)  # anything the worker logs after the event
    with pool.log_path.open("rb") as log:
        log.seek(log_before)
        lines = log.read().decode(errors="replace").splitlines()
    about = [line for line in lines if task_id in line]
    assert "Traceback" not in "\n".join(lines) and len(lines) <= 3, "\n".join(lines)
    assert sum("frames.0.key" in line for line in about) == 1, "\n".join(lines)


def test_a_retry_that_cannot_be_sent_puts_its_message_back() -> None:
    """Celery rejects a message without requeueing it when the retry's copy cannot be sent; with
    Redis back a moment later the reject went through and the task was lost (a job stuck at 236/240
    after redis-server restarted for 3 s). The worker's tasks requeue it instead. The broker here is
    a port nothing listens on: the copy's publish fails for real."""
    app = make_celery(Settings(broker_url=f"redis://127.0.0.1:{free_port()}/0"))

    @app.task(bind=True, base=RequeueingTask, max_retries=3, shared=False)
    def flaky(self: Any) -> None:
        raise AssertionError("not run: only its retry is")

    flaky.push_request(id="retry-unsent", retries=0, called_directly=False, is_eager=False,
                       delivery_info={"exchange": "", "routing_key": QUEUE})
    try:
        with pytest.raises(Reject) as rejected:
            flaky.retry(exc=ConnectionError("Redis away"), countdown=1)
    finally:
        flaky.pop_request()
        app.close()
    assert rejected.value.requeue is True, "the message would be dropped"
