"""Fault injection with real processes: nothing lost and nothing duplicated in the exports.

A real redis-server (AOF on), the real S3 server (moto's server mode) and a real
`autolabel worker` pool of 3 processes. Each scenario submits a job, injects its fault in the
middle of the job, waits for the job to end and checks the final exports: every frame is in
coco.json exactly once or failed with a reason, the COCO image ids are unique, and the exports
were written once.

The counts do not come from the exports or from Redis progress (``workerpool.count_frames``):
the bucket has versioning on, so a second write of a frame's result is a second version of its
object; each frame's forward passes are counted by the workers (``ProgressStore.passes``),
before its result is written; and a frame is lost when the client listed it and there is
neither a result object nor a failure for it. ``test_the_counts_catch_a_broken_worker`` shows
that the counts fail on a worker that writes each result twice and on one that skips a write
but records progress.

A frame may go through the model twice only where a worker dies between the pass and the
write (SIGKILL, the dead-lettered task, the 2,000-frame run) or a batch outlives its time limit
(the object store outage: a batch fetched before the outage waits out the limit, its frames
still pass, and the retry passes them again) or Redis is away for longer than two thirds of the
lease (a copy of a running task's message takes its lapsed lease and passes its frames too).
Every other scenario asserts one pass per frame.

Speed on 2 cores: the workers load the embedded model's config with a 320x192 canvas instead
of 1280x720 (a copy in a temporary AUTOLABEL_CONFIGS_DIR): same weights, same code path, a
sixteenth of the compute. Delivery settings are scaled down so recovery takes seconds: a
visibility timeout of 20 s, a 15 s batch time limit and a 4 s lease (the workers' sweep puts a
killed worker's messages back within two leases; tests/test_recovery.py times that with the
production visibility timeout, 3600 s).

The object store outage pauses the S3 server with SIGSTOP for 20 s, then SIGCONT: moto keeps
its buckets in memory, so stopping the process would lose every object, which a real store
does not do when it is unreachable. Paused, it accepts no request and answers none (clients
time out or wait), and it comes back with its data.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from workerpool import (
    BIN,
    MAX_DELIVERIES,
    MODEL,
    PROCESSES,
    WORKER_ENV,
    Pool,
    Tally,
    count_frames,
    job_frames,
    small_canvas_configs,
    report,
    tally,
    upload_frames,
    versioned_stack,
    wait_for_progress,
)

from autolabel import layout
from autolabel.client import LabelingClient
from autolabel.contract import (
    TASK_DETECT,
    DetectOptions,
    DetectTask,
    FrameRef,
    FrameResult,
    JobManifest,
    JobSpec,
    queue_for,
)
from autolabel.celery_app import make_celery
from autolabel.devservices import DevStack, Service, free_port, redis_service, wait_until
from autolabel.errors import BrokerError
from autolabel.exports import Summary
from autolabel.jobs import enqueue_frames
from autolabel.progress import JobState, ProgressStore, ping_broker
from autolabel.settings import Settings
from autolabel.storage import ObjectStore
from autolabel_worker.batching import Batcher
from autolabel_worker.delivery import Deliveries, LeaseBusy
from autolabel_worker.detect import BatchTimeLimitExceeded, process_batch
from autolabel_worker.models import ModelFiles
from autolabel_worker.runtime import Runtime

pytestmark = [pytest.mark.fault, pytest.mark.integration]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    # Its own services: the scenarios restart and pause them.
    with versioned_stack(tmp_path_factory.mktemp("fault-services")) as started:
        assert "--appendonly" in started.redis.argv and "yes" in started.redis.argv
        yield started


@pytest.fixture(scope="module")
def configs_dir(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    return small_canvas_configs(repo_root, tmp_path_factory.mktemp("configs"))


@pytest.fixture(scope="module")
def pool(stack: DevStack, configs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    with Pool(stack, configs_dir, tmp_path_factory.mktemp("pool") / "pool.log") as started:
        yield started


@pytest.fixture(scope="module")
def frame_keys(stack: DevStack) -> list[str]:
    return upload_frames(ObjectStore.from_settings(stack.settings()), "fault/frames", 40, seed=4242)


@pytest.fixture
def client(stack: DevStack) -> LabelingClient:
    return LabelingClient(stack.settings())


def lost_deliveries(client: LabelingClient) -> dict[str, int]:
    """Per task id, deliveries that started and never ended (the counts the workers keep)."""
    redis = client.progress.redis
    return {key.rsplit(":", 1)[1]: redis.hlen(key) for key in redis.scan_iter(Deliveries.count_key("*"))}


def run_scenario(client: LabelingClient, pool: Pool, job_id: str, frames: list[FrameRef],
                 fault: Callable[[], str], *, passes_again_allowed: bool, at: float = 0.25,
                 timeout: float = 300) -> tuple[Tally, Summary, str]:
    pool.wait_ready()
    client.submit_frames(frames, job_id=job_id, model=MODEL, batch_size=4)
    wait_for_progress(client, job_id, at)
    assert client.status(job_id).finished < len(frames), "the job ended before the fault could hit it"
    note = fault()
    status = client.wait(job_id, timeout=timeout)
    assert status.state == JobState.DONE
    counts, summary = tally(client, job_id, frames)
    counts.check(passes_again_allowed=passes_again_allowed)
    assert pool.finalized(job_id) == 1 and counts.export_writes == 1
    return counts, summary, note


def test_a_lease_admits_one_delivery_and_lapses_when_its_holder_dies(stack: DevStack) -> None:
    """The renewals are watched, not raced against a sleep: on a busy machine a stall shorter
    than the lease (3 s, renewed every second) changes nothing."""
    redis = redis_lib.Redis.from_url(stack.settings().broker_url, decode_responses=True)
    deliveries = Deliveries(redis, lease_s=3)
    key = Deliveries.lease_key("task-a")
    with deliveries.lease("task-a"):
        token, seen = redis.get(key), [redis.pttl(key)]

        def renewed_twice() -> bool:
            seen.append(redis.pttl(key))  # a renewal puts the time left back up
            return sum(later > earlier for earlier, later in zip(seen, seen[1:])) >= 2

        wait_until(renewed_twice, "two renewals of a held lease", 20)
        assert redis.get(key) == token
        with pytest.raises(LeaseBusy), deliveries.lease("task-a"):
            pass
    assert redis.get(key) is None  # released on exit
    with deliveries.lease("task-a"):
        pass
    # A holder that died renews nothing: its lease lapses after lease_s.
    redis.set(Deliveries.lease_key("task-b"), "host/1/dead", px=1500)
    with pytest.raises(LeaseBusy), deliveries.lease("task-b"):
        pass
    wait_until(lambda: redis.get(Deliveries.lease_key("task-b")) is None, "the dead holder's lease to lapse", 10)
    with deliveries.lease("task-b"):
        pass
    # A lease that lapsed while Redis was away is taken again by its live holder, which then looks
    # for results a copy may have written meanwhile (confirm is True); unless another delivery holds
    # it now: then the holder must not write (confirm raises).
    with deliveries.lease("task-d") as held:
        assert held.confirm() is False
        redis.delete(held.key)
        assert held.confirm() is True and redis.get(held.key) == held.token
        redis.set(held.key, "host/2/copy")
        with pytest.raises(LeaseBusy):
            held.confirm()


def test_only_deliveries_that_never_ended_are_counted(stack: DevStack) -> None:
    redis = redis_lib.Redis.from_url(stack.settings().broker_url, decode_responses=True)
    deliveries = Deliveries(redis, lease_s=5)
    for _ in range(2):  # ended cleanly, by a return and by an exception (a retry)
        with pytest.raises(RuntimeError), deliveries.track("task-c") as delivery:
            assert delivery.lost == 0
            raise RuntimeError("retry")
    killed = deliveries.track("task-c")
    killed.__enter__()  # entered and never left, as when its process is killed
    with deliveries.track("task-c") as delivery:
        assert delivery.lost == 1
        delivery.settled = True
    assert not redis.exists(Deliveries.count_key("task-c"))
    del killed


class SlowModel:
    """Stands in for the detector where only time matters: each forward pass takes ``seconds``."""

    classes = ("circle", "square", "triangle")

    def __init__(self, seconds: float) -> None:
        self.seconds, self.frames = seconds, 0

    def prepare(self, image: object) -> object:
        return image

    def collate(self, prepared: list[object]) -> list[object]:
        return prepared

    def forward(self, batch: list[object]) -> list[None]:
        time.sleep(self.seconds)
        self.frames += len(batch)
        return [None for _ in batch]

    def postprocess(self, output: None, threshold: float) -> list[object]:
        return []


def slow_runtime(stack: DevStack, model: SlowModel, batch_time_limit_s: float) -> Runtime:
    settings = stack.settings(batch_time_limit_s=batch_time_limit_s)
    return Runtime(settings=settings, store=ObjectStore.from_settings(settings),
                   progress=ProgressStore.from_url(settings.broker_url),
                   model=ModelFiles(MODEL, Path("unused.py"), Path("unused.pth"), "slow-model"),
                   batcher=Batcher(lambda: model, max_batch=4))


@pytest.mark.parametrize(("pass_s", "limit_s", "passed"), [(0.0, 10, True), (1.0, 0.5, True), (0.0, 0.001, False)],
                         ids=["in-time", "pass-past-the-limit", "fetch-past-the-limit"])
def test_each_frame_handed_to_the_model_counts_one_pass(stack: DevStack, frame_keys: list[str], pass_s: float,
                                                        limit_s: float, passed: bool) -> None:
    """Counted before the results are written; a batch past its time limit still runs (counted);
    frames whose fetch used up the limit are retried without taking the device (not counted)."""
    model = SlowModel(pass_s)
    rt = slow_runtime(stack, model, limit_s)
    job_id, frames = f"passes-{pass_s}-{limit_s}", job_frames(frame_keys, 3)
    rt.progress.register(job_id, total=len(frames), model=MODEL, source="frames")
    task = DetectTask(job_id=job_id, options=DetectOptions(model=MODEL), frames=frames)
    try:
        if limit_s < 10:
            with pytest.raises(BatchTimeLimitExceeded):
                process_batch(rt, task)
        else:
            assert process_batch(rt, task) is True
        rt.batcher.call(lambda: None)  # after every frame handed over has been through the model
    finally:
        rt.batcher.close()
    assert model.frames == (len(frames) if passed else 0)
    assert rt.progress.passes(job_id) == ({f.frame_id: 1 for f in frames} if passed else {})


BROKEN_WORKER = """\
# A broken worker for test_faults.py ({bug}): every Python process started with this
# directory on PYTHONPATH loads it.
from autolabel.storage import ObjectStore

_put_json = ObjectStore.put_json


def put_json(self, key, value, metadata=None):
    if "/detections/" in key:
        if {bug!r} == "writes-twice":
            _put_json(self, key, value, metadata)
        elif key.endswith("3.json"):
            return  # not written; the task goes on and records the frame as labeled
    _put_json(self, key, value, metadata)


ObjectStore.put_json = put_json
"""


@pytest.mark.parametrize("bug", ["writes-twice", "skips-a-write"])
def test_the_counts_catch_a_broken_worker(bug: str, stack: DevStack, configs_dir: Path, frame_keys: list[str],
                                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The checks every scenario makes fail on a worker that writes each result twice, and on
    one that skips a write but records the frame as labeled in Redis progress. One process with
    the bug patched in (a sitecustomize.py), on a Redis database of its own."""
    started = time.monotonic()
    (tmp_path / "sitecustomize.py").write_text(BROKEN_WORKER.format(bug=bug))
    broker_url = stack.settings().broker_url.rsplit("/", 1)[0] + "/1"
    broken = Pool(stack, configs_dir, tmp_path / "pool.log", processes=1,
                  env={**WORKER_ENV, "PYTHONPATH": str(tmp_path), "AUTOLABEL_BROKER_URL": broker_url})
    client = LabelingClient(stack.settings(broker_url=broker_url))
    job_id, frames = f"fault-broken-{bug}", job_frames(frame_keys, 16)
    try:
        broken.wait_ready()
        client.submit_frames(frames, job_id=job_id, model=MODEL, batch_size=4)
        wait_until(lambda: client.status(job_id).finished == len(frames), f"every frame of {job_id} recorded", 120)
    finally:
        broken.stop()
    status = client.status(job_id)
    assert (status.done, status.failed) == (len(frames), 0), "progress in Redis says every frame was labeled"
    counts = count_frames(client, job_id, frames, status.failures)
    with pytest.raises(AssertionError, match="duplicated writes" if bug == "writes-twice" else "frames lost"):
        counts.check(passes_again_allowed=True)
    if bug == "writes-twice":
        assert (counts.duplicated_writes, counts.lost) == (len(frames), 0)
    else:
        assert (counts.duplicated_writes, counts.lost) == (0, 2)  # frames 00003 and 00013
    report(capsys, f"broken worker: {bug}", counts, time.monotonic() - started, "the checks fail, as they must")


def test_sigkill_of_a_worker_mid_batch(client: LabelingClient, pool: Pool, frame_keys: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    frames, before, started = job_frames(frame_keys, 240), lost_deliveries(client), time.monotonic()
    rng = random.Random(1)
    counts, _, note = run_scenario(client, pool, "fault-sigkill", frames,
                                   lambda: f"killed pid {pool.kill_busy(signal.SIGKILL, rng)}",
                                   passes_again_allowed=True)
    lost = {task: n for task, n in lost_deliveries(client).items() if n > before.get(task, 0)}
    # The killed process held at least one task whose delivery never ended; it was delivered again.
    assert lost, "the SIGKILL hit no task in flight"
    assert counts.failed == 0
    report(capsys, "SIGKILL mid-batch", counts, time.monotonic() - started, f"{note}, {len(lost)} deliveries lost",
           passes_again_allowed=True)


def test_sigterm_of_a_worker_mid_batch(client: LabelingClient, pool: Pool, frame_keys: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    frames, before, started = job_frames(frame_keys, 240), lost_deliveries(client), time.monotonic()
    rng = random.Random(2)
    counts, _, note = run_scenario(client, pool, "fault-sigterm", frames,
                                   lambda: f"SIGTERM to pid {pool.kill_busy(signal.SIGTERM, rng)}",
                                   passes_again_allowed=False)
    # Warm shutdown: the batches in hand were finished and acknowledged, none was abandoned.
    assert {task: n for task, n in lost_deliveries(client).items() if n > before.get(task, 0)} == {}
    assert counts.failed == 0
    report(capsys, "SIGTERM mid-batch", counts, time.monotonic() - started, note)


@pytest.mark.parametrize("down_s", [3, 30])
def test_redis_restart_mid_job(down_s: int, stack: DevStack, client: LabelingClient, pool: Pool,
                               frame_keys: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Down 30 s: longer than a task used to wait for Redis to end its delivery (~8 s): no delivery
    may stay counted as lost (one would bring its task closer to the dead-letter record)."""
    frames, before, started = job_frames(frame_keys, 240), lost_deliveries(client), time.monotonic()

    def restart() -> str:
        pid = stack.redis.process.pid
        stack.redis.stop()  # SIGTERM: redis-server writes its AOF and exits
        time.sleep(down_s)
        stack.redis.start()
        return f"redis-server pid {pid} down {down_s} s, AOF reloaded"

    # A running task's lease, renewed every third of it, can lapse in an outage of two thirds of it
    # (4 s here): a copy of its message (put back when the workers lost Redis) may take it and pass
    # the frames again, and the first delivery writes only what the copy did not (HeldLease.confirm).
    longer_than_lease = down_s > float(WORKER_ENV["AUTOLABEL_LEASE_S"]) * 2 / 3
    counts, _, note = run_scenario(client, pool, f"fault-redis-restart-{down_s}", frames, restart,
                                   passes_again_allowed=longer_than_lease)
    assert counts.failed == 0
    lost = {task: n for task, n in lost_deliveries(client).items() if n > before.get(task, 0)}
    assert lost == {}, f"deliveries counted as lost, though no worker died: {lost}"
    report(capsys, f"redis-server down {down_s} s (AOF) mid-job", counts, time.monotonic() - started, note,
           passes_again_allowed=longer_than_lease)


def test_object_store_unavailable_for_20_s(stack: DevStack, client: LabelingClient, pool: Pool,
                                           frame_keys: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    frames, started = job_frames(frame_keys, 240), time.monotonic()

    def pause() -> str:
        process = stack.s3.process
        os.kill(process.pid, signal.SIGSTOP)
        try:
            paused_at = client.status("fault-s3-outage").finished
            time.sleep(20)
            # Nothing could be written meanwhile: the outage was real.
            assert client.status("fault-s3-outage").finished - paused_at <= PROCESSES * 4 * 4
        finally:
            os.kill(process.pid, signal.SIGCONT)
        return "S3 server SIGSTOPped for 20 s"

    counts, _, note = run_scenario(client, pool, "fault-s3-outage", frames, pause, timeout=400,
                                   passes_again_allowed=True)
    assert counts.failed == 0
    report(capsys, "object store unavailable 20 s", counts, time.monotonic() - started, note,
           passes_again_allowed=True)


def test_poison_frames_and_a_dead_lettered_task(stack: DevStack, client: LabelingClient, pool: Pool,
                                                frame_keys: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Frames the decoder fails on every time end in the failed list; a task whose worker is
    killed on every delivery ends in the dead-letter record; the rest of the job completes."""
    started, job_id = time.monotonic(), "fault-poison"
    store = client.store
    good = job_frames(frame_keys, 60)
    store.put_bytes("fault/poison/truncated.jpg", store.get_bytes(frame_keys[0])[:300], "image/jpeg")
    store.put_bytes("fault/poison/garbage.jpg", bytes(random.Random(3).randbytes(5000)), "image/jpeg")
    store.put_bytes("fault/poison/empty.jpg", b"", "image/jpeg")
    poison = [FrameRef(frame_id="poison-truncated", key="fault/poison/truncated.jpg"),
              FrameRef(frame_id="poison-garbage", key="fault/poison/garbage.jpg"),
              FrameRef(frame_id="poison-empty", key="fault/poison/empty.jpg"),
              FrameRef(frame_id="poison-missing", key="fault/poison/never-uploaded.jpg")]
    # A full task (64 frames, a few seconds) so that each of its deliveries can be caught running.
    doomed = [FrameRef(frame_id=f"doomed-{i:02d}", key=frame_keys[i % len(frame_keys)]) for i in range(64)]
    spec = JobSpec(job_id=job_id, source="frames", options=DetectOptions(model=MODEL), batch_size=4)
    pool.wait_ready()
    doomed_task = "doomed-task-0001"
    frames = good + poison + doomed
    # start_job, with the doomed frames sent as a task of their own under a known id.
    store.put_json(layout.manifest_key(job_id), JobManifest(spec=spec, frames=tuple(frames)))
    client.progress.register(job_id, total=len(frames), model=MODEL, source="frames")
    enqueue_frames(client.celery, spec, good + poison)
    # The doomed task goes out once the rest has ended: a process killed for holding it must not
    # also hold good frames in every delivery, or they would be dead-lettered with it.
    wait_until(lambda: client.status(job_id).finished == len(good + poison), "the good and poison frames", 120)
    client.celery.send_task(TASK_DETECT, task_id=doomed_task, queue=queue_for(MODEL),
                            kwargs=DetectTask(job_id=job_id, options=spec.options, frames=doomed).model_dump(mode="json"))
    # Whichever process runs the doomed task dies, as if the task crashed it: its lease names it.
    killed, token = [], None
    for _ in range(MAX_DELIVERIES):
        wait_until(lambda: pool.redis.get(Deliveries.lease_key(doomed_task)) not in (None, token),
                   "the next delivery of the doomed task", 60)
        token = pool.redis.get(Deliveries.lease_key(doomed_task))
        killed.append(Deliveries.holder_pid(token))
        os.kill(killed[-1], signal.SIGKILL)

    status = client.wait(job_id, timeout=300)
    assert status.state == JobState.DONE
    counts, summary = tally(client, job_id, frames)
    counts.check(passes_again_allowed=True)
    assert pool.finalized(job_id) == 1
    failed = {f.frame_id: f.reason for f in summary.failed_frames}
    assert set(failed) == {f.frame_id for f in poison + doomed}, failed
    assert "FrameError" in failed["poison-truncated"] and "FrameError" in failed["poison-garbage"]
    assert "empty (0 bytes)" in failed["poison-empty"] and "does not exist" in failed["poison-missing"]
    assert failed["doomed-00"] == f"dead-lettered after {MAX_DELIVERIES} lost deliveries"
    assert [(d.task_id, d.frame_ids) for d in summary.dead_letters] == [(doomed_task, [f.frame_id for f in doomed])]
    shown = subprocess.run([str(BIN / "autolabel"), "status", job_id], env=stack.subprocess_env(),
                           capture_output=True, text=True, check=True).stdout
    assert f"dead letter: task {doomed_task} after {MAX_DELIVERIES} lost deliveries" in shown
    assert "failed poison-garbage: FrameError" in shown
    report(capsys, "poison frames + dead-lettered task", counts, time.monotonic() - started,
           f"{len(poison)} poison, {len(doomed)} dead-lettered after killing pids {killed}", passes_again_allowed=True)


def test_a_delivery_of_a_running_task_waits_for_its_lease(client: LabelingClient, pool: Pool,
                                                          frame_keys: list[str]) -> None:
    """A message delivered again while its first delivery still runs (connection loss, visibility
    timeout) does not run in parallel: it is sent again for later and runs once the lease is free."""
    pool.wait_ready()
    job_id, frames, task_id = "fault-lease", job_frames(frame_keys, 4), "lease-held-task"
    spec = JobSpec(job_id=job_id, source="frames", options=DetectOptions(model=MODEL), batch_size=4)
    client.store.put_json(layout.manifest_key(job_id), JobManifest(spec=spec, frames=tuple(frames)))
    client.progress.register(job_id, total=len(frames), model=MODEL, source="frames")
    held_log = pool.log_path.read_text(errors="replace").count(f"[{task_id}] is running elsewhere")
    # The test holds the task's lease, as its first delivery would while running on another worker.
    with Deliveries(client.progress.redis, lease_s=4).lease(task_id):
        client.celery.send_task(TASK_DETECT, task_id=task_id, queue=queue_for(MODEL),
                                kwargs=DetectTask(job_id=job_id, options=spec.options, frames=frames).model_dump(mode="json"))
        wait_until(lambda: pool.log_path.read_text(errors="replace").count(f"[{task_id}] is running elsewhere")
                   > held_log, "the second delivery to find the lease held", 30)
        assert client.status(job_id).done == 0
    status = client.wait(job_id, timeout=60)
    assert (status.state, status.done) == (JobState.DONE, len(frames))
    counts, _ = tally(client, job_id, frames)
    counts.check(passes_again_allowed=False)
    assert counts.labeled == len(frames)


def test_bad_messages_are_refused_and_the_workers_go_on(client: LabelingClient, pool: Pool,
                                                        frame_keys: list[str]) -> None:
    """Malformed payloads are rejected (not retried), pickled and unknown content is never decoded;
    no worker process dies, nothing stays queued, and the next job completes."""
    pool.wait_ready()
    pids, queue = pool.pids(), queue_for(MODEL)
    malformed = [
        {"job_id": "../etc", "options": {"model": MODEL}, "frames": [{"frame_id": "a", "key": "jobs/x/a.jpg"}]},
        {"job_id": "j", "options": {"model": MODEL}, "frames": [{"frame_id": "a", "key": "/etc/passwd"}]},
        {"job_id": "j", "options": "fast", "frames": "all"},
        {"job_id": "j", "options": {"model": MODEL}, "frames": [{"frame_id": f"{i}", "key": "k"} for i in range(65)]},
    ]
    for payload in malformed:
        client.celery.send_task(TASK_DETECT, kwargs=payload, queue=queue)
    with client.celery.connection_for_write() as connection:
        producer = connection.Producer()
        # Protocol-2 bodies a worker would run if it decoded them: pickle is how a deserialization exploit arrives.
        producer.publish(((), {"job_id": "pickled"}, {}), serializer="pickle", routing_key=queue,
                         headers={"task": TASK_DETECT, "id": "pickled-message"})
        producer.publish(b"job_id: yaml", content_type="application/x-yaml", content_encoding="utf-8",
                         routing_key=queue, headers={"task": TASK_DETECT, "id": "yaml-message"})

    job_id, frames = "fault-after-bad-messages", job_frames(frame_keys, 8)
    client.submit_frames(frames, job_id=job_id, model=MODEL, batch_size=4)
    assert client.wait(job_id, timeout=120).done == len(frames)

    def refused() -> bool:
        log = pool.log_path.read_text(errors="replace")
        return (log.count("rejecting malformed message") >= len(malformed)
                and "Refusing to deserialize untrusted content of type pickle" in log
                and "Refusing to deserialize untrusted content of type yaml" in log)

    wait_until(refused, "the workers to refuse every bad message", 30)
    assert pool.pids() == pids, "a bad message took a worker process down"
    redis = client.progress.redis
    wait_until(lambda: redis.hlen("unacked") == 0, "no message left unacknowledged", 30)
    assert sum(redis.llen(key) for key in redis.scan_iter(f"{queue}*") if redis.type(key) == "list") == 0


def test_redis_restarts_on_a_port_no_other_process_is_given(tmp_path: Path) -> None:
    """The Redis restart scenario keeps its port: it lies outside the kernel's ephemeral range
    (no bind to port 0, no outgoing connection gets it), and a start that finds it taken says so."""
    server = redis_service(tmp_path)
    low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    assert not low <= server.port <= high
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", server.port))
        squatter.listen()
        with pytest.raises(RuntimeError, match=f"port {server.port} is taken by another process"):
            server.start()
    server.start()
    server.stop()


def test_redis_password_url_passes_through(tmp_path: Path) -> None:
    password = "s3cr3t-pw"
    port = free_port()
    server = Service("redis-server (password)", [shutil.which("redis-server") or "redis-server", "--port", str(port),
                     "--bind", "127.0.0.1", "--save", "", "--requirepass", password], port, tmp_path / "redis.log")
    server.start()
    try:
        url = f"redis://:{password}@127.0.0.1:{port}/0"
        progress = ProgressStore.from_url(url)
        progress.register("pw-job", total=1, model=MODEL, source="frames")
        assert progress.status("pw-job").total == 1
        with pytest.raises(redis_lib.AuthenticationError):
            ProgressStore.from_url(f"redis://127.0.0.1:{port}/0").status("pw-job")
        app = make_celery(Settings(_env_file=None, broker_url=url))
        app.send_task(TASK_DETECT, kwargs={"job_id": "pw-job"}, queue="pw-queue")
        assert progress.redis.llen("pw-queue") == 1
    finally:
        server.stop()


def make_tls_files(out: Path) -> tuple[Path, Path, Path]:
    """A CA, a server certificate it signed for 127.0.0.1 (a SAN, as clients check it) and the
    server's key, as PEM files in ``out``: (CA, certificate, key)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "autolabel test CA")])

    def certificate(subject: x509.Name, key: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    paths = out / "ca.pem", out / "server.pem", out / "server.key"
    paths[0].write_bytes(certificate(ca_name, ca_key, ca=True).public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(certificate(server_name, server_key, ca=False).public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return paths


def test_redis_with_tls_and_a_password(stack: DevStack, configs_dir: Path, frame_keys: list[str], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A redis-server that speaks TLS only (``--port 0``), with a certificate from a CA the test
    makes, and a password: a submit, a worker, `autolabel status` and Flower connect with
    ``rediss://:PASSWORD@...``, the CA file named in the URL (``ssl_ca_certs``). A wrong password
    is one line naming AUTOLABEL_BROKER_URL, its password masked, from submit, status and doctor."""
    started = time.monotonic()
    ca, certificate, key = make_tls_files(tmp_path)
    password, wrong, port = "tls-pw-4711", "wrong-pw-0042", free_port()
    server = Service("redis-server (TLS, password)", [
        shutil.which("redis-server") or "redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(certificate), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
        "--tls-auth-clients", "no", "--requirepass", password, "--save", "", "--dir", str(tmp_path),
    ], port, tmp_path / "redis.log")

    def url(secret: str, *, with_ca: bool = True) -> str:
        return (f"rediss://:{secret}@127.0.0.1:{port}/0?ssl_cert_reqs=required"
                + (f"&ssl_ca_certs={ca}" if with_ca else ""))

    server.start()
    try:
        # TLS for real: the server's certificate is checked against the CA, and plain Redis gets nowhere.
        with pytest.raises(BrokerError, match="certificate verify failed"):
            ping_broker(url(password, with_ca=False))
        with pytest.raises(BrokerError):
            ping_broker(f"redis://:{password}@127.0.0.1:{port}/0")
        env = stack.subprocess_env(AUTOLABEL_BROKER_URL=url(password))
        client = LabelingClient(stack.settings(broker_url=url(password)))
        job_id, frames = "fault-tls", job_frames(frame_keys, 8)
        flower_port = free_port()
        flower = Service("flower", [str(BIN / "celery"), "--broker", url(password), "flower", "--address=127.0.0.1",
                                    f"--port={flower_port}"], flower_port, tmp_path / "flower.log")
        with Pool(stack, configs_dir, tmp_path / "pool.log", processes=1,
                  env={**WORKER_ENV, "AUTOLABEL_BROKER_URL": url(password)}):
            client.submit_frames(frames, job_id=job_id, model=MODEL, batch_size=4)
            assert client.wait(job_id, timeout=120).done == len(frames)
            counts, _ = tally(client, job_id, frames)
            counts.check(passes_again_allowed=False)
            shown = subprocess.run([str(BIN / "autolabel"), "status", job_id], env=env, capture_output=True,
                                   text=True, check=True).stdout
            assert job_id in shown and JobState.DONE in shown
            # Flower asks the workers over the broker (inspect), TLS and password included.
            flower.start({**env, "FLOWER_UNAUTHENTICATED_API": "true"})
            try:
                def flower_lists_the_worker() -> bool:
                    with urllib.request.urlopen(f"http://127.0.0.1:{flower_port}/api/workers?refresh=1",
                                                timeout=10) as response:
                        workers = json.load(response)
                    return any(queue["name"] == queue_for(MODEL)
                               for worker in workers.values() for queue in worker.get("active_queues") or ())

                wait_until(flower_lists_the_worker, "Flower to list the worker over rediss://", 60)
            finally:
                flower.stop()
        wrong_env = stack.subprocess_env(AUTOLABEL_BROKER_URL=url(wrong))
        for command in (["submit", str(tmp_path / "video.mp4")], ["status", job_id], ["doctor", "--producer"]):
            result = subprocess.run([str(BIN / "autolabel"), *command], env=wrong_env, capture_output=True, text=True)
            assert result.returncode == 1 and "Traceback" not in result.stderr and wrong not in result.stdout + result.stderr
            if command[0] == "doctor":
                line = next(line for line in result.stdout.splitlines() if line.startswith("FAIL redis"))
                assert "fix: redis: put Redis's password in AUTOLABEL_BROKER_URL" in result.stdout
            else:
                [line] = result.stderr.strip().splitlines()
            assert "AUTOLABEL_BROKER_URL=rediss://:********@127.0.0.1" in line and "refused the password" in line
    finally:
        server.stop()
    with capsys.disabled():
        print(f"\n[fault] {'Redis over TLS with a password':<38} {len(frames)} frames labeled; submit, worker, "
              f"status, Flower over rediss://; a wrong password named in one line ({time.monotonic() - started:.0f} s)")


def test_resubmission_and_retry_skip_results_already_made(client: LabelingClient, pool: Pool,
                                                          frame_keys: list[str]) -> None:
    """Re-submitting a finished job (same id) or retrying it labels nothing again: the result
    objects keep their bytes and their write times. A frame whose result is gone is labeled
    again, alone in its pass this time: the same detections, equal to float32 rounding (CPU
    kernels differ with the batch size in the last bits; hence results are never rewritten)."""
    job_id, frames = "fault-idempotent", job_frames(frame_keys, 24)
    pool.wait_ready()
    client.submit_frames(frames, job_id=job_id, model=MODEL, batch_size=4)
    assert client.wait(job_id, timeout=120).done == len(frames)
    keys = [layout.detection_key(job_id, f.frame_id) for f in frames]

    def snapshot() -> dict[str, tuple[bytes, object]]:
        heads = {k: client.store.client.head_object(Bucket=client.store.bucket, Key=k)["LastModified"] for k in keys}
        return {k: (client.store.get_bytes(k), heads[k]) for k in keys}

    first = snapshot()
    time.sleep(1.1)  # object times have 1 s resolution: a rewrite would show
    client.submit_frames(frames, job_id=job_id, model=MODEL, batch_size=4)
    status = client.wait(job_id, timeout=120)
    assert (status.state, status.done, status.failed) == (JobState.DONE, len(frames), 0)
    client.progress.redis.srem(f"autolabel:job:{job_id}:done", frames[0].frame_id)  # as if its record was lost
    assert client.retry(job_id) == 1
    assert client.wait(job_id, timeout=120).done == len(frames)
    assert snapshot() == first

    gone = keys[1]
    client.store.client.delete_object(Bucket=client.store.bucket, Key=gone)
    client.progress.redis.srem(f"autolabel:job:{job_id}:done", frames[1].frame_id)
    assert client.retry(job_id) == 1
    assert client.wait(job_id, timeout=120).done == len(frames)
    again = snapshot()
    assert again[gone][1] > first[gone][1]
    before, after = (FrameResult.model_validate_json(snap[gone][0]) for snap in (first, again))
    assert after.model_dump(exclude={"detections"}) == before.model_dump(exclude={"detections"})
    assert [d.class_name for d in after.detections] == [d.class_name for d in before.detections]
    assert [v for d in after.detections for v in (*d.box, d.score)] == pytest.approx(
        [v for d in before.detections for v in (*d.box, d.score)], abs=1e-4)
    assert {k: v for k, v in again.items() if k != gone} == {k: v for k, v in first.items() if k != gone}
    counts, _ = tally(client, job_id, frames)
    # Written twice and passed twice: only the frame whose result was deleted; nothing lost.
    assert (counts.labeled, counts.lost, counts.uncounted) == (len(frames), 0, [])
    assert counts.rewritten == counts.passed_again == {frames[1].frame_id: 1}


def test_2000_frames_on_3_workers_two_killed_at_random(client: LabelingClient, pool: Pool, frame_keys: list[str],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    seed = int(os.environ.get("AUTOLABEL_FAULT_SEED", time.time_ns() % 10_000))
    with capsys.disabled():  # before anything can fail: AUTOLABEL_FAULT_SEED replays the run
        print(f"\n[fault] 2,000 frames: seed {seed}")
    rng, frames, job_id, started = random.Random(seed), job_frames(frame_keys, 2000), "fault-2000", time.monotonic()
    pool.wait_ready()
    client.submit_frames(frames, job_id=job_id, model=MODEL, batch_size=8)
    victims = []
    for moment in sorted(rng.uniform(0.05, 0.6) for _ in range(2)):
        wait_for_progress(client, job_id, moment)
        victims.append(pool.kill_busy(signal.SIGKILL, rng, spare=frozenset(victims)))
    status = client.wait(job_id, timeout=420)
    assert status.state == JobState.DONE
    counts, _ = tally(client, job_id, frames)
    counts.check(passes_again_allowed=True)
    assert counts.failed == 0 and counts.export_writes == 1
    assert pool.finalized(job_id) == 1
    report(capsys, "2,000 frames, 3 workers, 2 SIGKILLs", counts, time.monotonic() - started,
           f"seed {seed}, killed pids {victims}", passes_again_allowed=True)
