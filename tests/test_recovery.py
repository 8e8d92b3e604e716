"""A killed worker's messages come back within two leases with the production visibility timeout.

Real redis-server, S3 server and `autolabel worker` pools, with AUTOLABEL_VISIBILITY_TIMEOUT_S
at its production default (3600 s): Redis's own redelivery cannot be what brings the messages
back. The lease is 6 s to keep the tests short; the bound, 2 x AUTOLABEL_LEASE_S, is relative
to it (autolabel_worker.recovery). Each scenario finds the messages the killed processes held
(``autolabel:unacked:holders``), measures the time from the kill until each of them is held by
a live process or finished (not waiting in a queue, not with a dead holder), and counts the job
as the fault suite does (``workerpool.tally``): 0 lost, 0 duplicated writes.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib
from kombu import Connection, Exchange, Producer, Queue
from workerpool import (
    BIN,
    MODEL,
    WORKER_ENV,
    Pool,
    Tally,
    job_frames,
    report,
    small_canvas_configs,
    tally,
    upload_frames,
    versioned_stack,
    wait_for_progress,
)

from autolabel.celery_app import make_celery
from autolabel.cli import ProgressLine
from autolabel.client import LabelingClient
from autolabel.contract import TASK_DETECT, DetectOptions, DetectTask, FrameRef, queue_for
from autolabel.devservices import DevStack, wait_until
from autolabel.holders import HOLDERS_KEY, UNACKED_KEY, heartbeat_key
from autolabel.progress import JobState
from autolabel.settings import Settings
from autolabel.storage import ObjectStore
from autolabel_worker.broker import Transport
from autolabel_worker.delivery import Deliveries
from autolabel_worker.recovery import Holder

pytestmark = [pytest.mark.fault, pytest.mark.integration]

LEASE_S = 6
RECOVERY_ENV = {**WORKER_ENV, "AUTOLABEL_VISIBILITY_TIMEOUT_S": "3600", "AUTOLABEL_LEASE_S": str(LEASE_S)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevStack]:
    with versioned_stack(tmp_path_factory.mktemp("recovery-services")) as started:
        yield started


@pytest.fixture(scope="module")
def configs_dir(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> Path:
    return small_canvas_configs(repo_root, tmp_path_factory.mktemp("configs"))


@pytest.fixture(scope="module")
def frame_keys(stack: DevStack) -> list[str]:
    return upload_frames(ObjectStore.from_settings(stack.settings()), "recovery/frames", 20, seed=77)


@pytest.fixture(scope="module")
def pool(stack: DevStack, configs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    with Pool(stack, configs_dir, tmp_path_factory.mktemp("pool") / "pool.log", env=RECOVERY_ENV) as started:
        yield started


@pytest.fixture
def client(stack: DevStack) -> LabelingClient:
    return LabelingClient(stack.settings())


def own_database(stack: DevStack, db: int) -> Settings:
    """The stack's settings on Redis database ``db``, which no worker of the module's pools sweeps."""
    return stack.settings(broker_url=f"{stack.settings().broker_url.rsplit('/', 1)[0]}/{db}", lease_s=LEASE_S,
                          visibility_timeout_s=3600)


def held_by(redis: redis_lib.Redis, pids: set[int]) -> dict[str, str]:
    """Delivery tag -> holder, for the unacknowledged messages that the processes ``pids`` took."""
    return {tag: holder for tag, holder in redis.hgetall(HOLDERS_KEY).items() if int(holder.split("/")[1]) in pids}


def queued_tags(redis: redis_lib.Redis, queue: str = queue_for(MODEL)) -> set[str]:
    """Delivery tags of the messages waiting in ``queue`` (each of its priority lists)."""
    tags = set()
    for key in redis.scan_iter(f"{queue}*"):
        if redis.type(key) == "list":
            tags.update(json.loads(item)["properties"]["delivery_tag"] for item in redis.lrange(key, 0, -1))
    return tags


def seconds_to_redeliver(redis: redis_lib.Redis, orphaned: dict[str, str], killed_at: float) -> float:
    """Seconds from the kill until every message in ``orphaned`` (tag -> dead holder) is held by a
    live process or was acknowledged; fails after 4 leases."""
    dead = set(orphaned.values())

    def redelivered(tag: str, holders: dict[str, str], queued: set[str]) -> bool:
        holder = holders.get(tag)
        if holder is not None:
            return holder not in dead
        return tag not in queued and not redis.hexists(UNACKED_KEY, tag)

    while True:
        holders, queued = redis.hgetall(HOLDERS_KEY), queued_tags(redis)
        waiting = [tag for tag in orphaned if not redelivered(tag, holders, queued)]
        elapsed = time.monotonic() - killed_at
        if not waiting:
            return elapsed
        assert elapsed < 4 * LEASE_S, (f"{len(waiting)} of {len(orphaned)} messages of the killed processes not "
                                       f"delivered again after {elapsed:.0f} s: {waiting[:5]}")
        time.sleep(0.05)


def finish(client: LabelingClient, pool: Pool, job_id: str, frames: list[FrameRef]) -> Tally:
    status = client.wait(job_id, timeout=300)
    assert status.state == JobState.DONE
    counts, _ = tally(client, job_id, frames)
    counts.check(passes_again_allowed=True)  # a frame may pass again when its process died after the pass
    assert counts.failed == 0 and counts.export_writes == 1
    assert pool.finalized(job_id) == 1
    return counts


def test_a_sigkilled_workers_messages_come_back_within_two_leases(client: LabelingClient, pool: Pool,
                                                                  frame_keys: list[str],
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    started, job_id, frames = time.monotonic(), "recovery-sigkill", job_frames(frame_keys, 160)
    client.submit_frames(frames, job_id=job_id, model=MODEL, batch_size=4)
    wait_for_progress(client, job_id, 0.2)
    victim = pool.kill_busy(signal.SIGKILL, random.Random(5))
    killed_at = time.monotonic()
    orphaned = held_by(pool.redis, {victim})
    assert orphaned, "the killed process held no message"
    recovered_s = seconds_to_redeliver(pool.redis, orphaned, killed_at)
    counts = finish(client, pool, job_id, frames)
    report(capsys, "SIGKILL, visibility timeout 3600 s", counts, time.monotonic() - started,
           f"{len(orphaned)} messages back in {recovered_s:.1f} s, bound {2 * LEASE_S} s", passes_again_allowed=True)
    assert recovered_s <= 2 * LEASE_S


def test_a_lost_nodes_messages_are_recovered_by_another_node(stack: DevStack, configs_dir: Path,
                                                             client: LabelingClient, pool: Pool,
                                                             frame_keys: list[str], tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A second pool (another node) takes part of a job; its launcher and all its processes are
    SIGKILLed at once and nothing restarts them. The first pool puts its messages back and runs them."""
    started, job_id, frames = time.monotonic(), "recovery-node", job_frames(frame_keys, 200)
    node = Pool(stack, configs_dir, tmp_path / "node.log", processes=2, env=RECOVERY_ENV)
    try:
        node.wait_ready()
        pids = node.pids()
        client.submit_frames(frames, job_id=job_id, model=MODEL, batch_size=4)
        wait_for_progress(client, job_id, 0.2)
        wait_until(node.busy_pids, "a process of the node in the middle of a batch", 60)
        for pid in (node.launcher.pid, *pids):  # the launcher first: it would restart its processes
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        node.launcher.wait()
        orphaned = held_by(pool.redis, pids)
        assert orphaned, "the lost node held no message"
        recovered_s = seconds_to_redeliver(pool.redis, orphaned, killed_at)
    finally:
        node.stop()
    counts = finish(client, pool, job_id, frames)
    report(capsys, "node lost, visibility timeout 3600 s", counts, time.monotonic() - started,
           f"{len(orphaned)} messages of {len(pids)} processes back in {recovered_s:.1f} s, bound {2 * LEASE_S} s",
           passes_again_allowed=True)
    assert recovered_s <= 2 * LEASE_S


def test_a_sweep_puts_back_only_messages_of_dead_holders_once(stack: DevStack) -> None:
    """The sweep, on the workers' own transport: a live holder's message stays; a dead holder's
    stays while its task lease is held, then goes back once to its priority list, however many
    sweep at once; an ack by a process that is no longer the holder leaves the new holder's entry."""
    settings = own_database(stack, 2)
    celery, queue, task_id = make_celery(settings), "recovery-sweep", "sweep-task"
    redis = redis_lib.Redis.from_url(settings.broker_url, decode_responses=True)
    options = celery.conf.broker_transport_options
    connections = [Connection(settings.broker_url, transport=Transport, transport_options=options) for _ in range(3)]
    channels = [connection.default_channel for connection in connections]
    try:
        celery.send_task(TASK_DETECT, task_id=task_id, kwargs={"job_id": "sweep"}, queue=queue, priority=6)
        taken = channels[0].basic_get(queue)
        tag = taken.delivery_tag
        assert redis.hget(HOLDERS_KEY, tag) == Holder.of_this_process(redis).id
        assert channels[1].qos.sweep() == 0, "a live holder's message was put back"

        redis.hset(HOLDERS_KEY, tag, "gone-host/1/dead")  # its holder died: no heartbeat
        redis.set(Deliveries.lease_key(task_id), "gone-host/1/dead", px=60_000)
        assert channels[1].qos.sweep() == 0, "put back while its task lease was held"
        redis.delete(Deliveries.lease_key(task_id))
        barrier = threading.Barrier(2)

        def sweep(channel: Any) -> int:
            barrier.wait()
            return channel.qos.sweep()

        with ThreadPoolExecutor(2) as sweepers:
            assert sum(sweepers.map(sweep, channels[1:])) == 1
        assert not redis.hexists(UNACKED_KEY, tag) and not redis.hexists(HOLDERS_KEY, tag)
        assert redis.llen(channels[0]._q_for_pri(queue, 6)) == 1  # kombu's list for priorities 6-8

        again = channels[2].basic_get(queue)
        assert (again.delivery_tag, again.delivery_info["redelivered"]) == (tag, True)
        # The first holder was paused, not dead; it resumes and acknowledges after the message went
        # to another process: that process's record stays.
        redis.hset(HOLDERS_KEY, tag, "other-host/2/alive")
        taken.ack()
        assert redis.hget(HOLDERS_KEY, tag) == "other-host/2/alive" and redis.hexists(UNACKED_KEY, tag)
        redis.hset(HOLDERS_KEY, tag, Holder.of_this_process(redis).id)
        again.ack()
        assert not redis.hexists(UNACKED_KEY, tag) and not redis.hexists(HOLDERS_KEY, tag)
    finally:
        for connection in connections:
            connection.release()


def test_a_put_back_by_the_holder_loses_nothing_when_its_route_lookup_fails(
        stack: DevStack, monkeypatch: pytest.MonkeyPatch) -> None:
    """kombu puts back what a process holds when its broker connection drops. For a message sent
    through a named exchange that means looking the exchange's bindings up, which fails on a closing
    channel ('NoneType' object has no attribute 'hostname'); kombu logged it and removed the message
    from ``unacked`` all the same, pushed nowhere. Here such a message stays, is disowned, and the
    next sweep puts it back; a put-back that can route pushes the message once, and leaves alone a
    message another process holds by now."""
    settings = own_database(stack, 4)
    queue, options = "recovery-restore", make_celery(settings).conf.broker_transport_options
    redis = redis_lib.Redis.from_url(settings.broker_url, decode_responses=True)
    connections = [Connection(settings.broker_url, transport=Transport, transport_options=options) for _ in range(3)]
    closing, sweeping, healthy = (connection.default_channel for connection in connections)
    me, other = Holder.of_this_process(redis), "other-host/2/alive"
    try:
        # Through an exchange of its own (Celery's send_task uses the default one): putting the
        # message back then looks the exchange's bindings up in Redis.
        bound = Queue(queue, Exchange("recovery-restore-exchange"), routing_key=queue)
        for task_id in ("restore-unroutable", "restore-taken-over", "restore-routable"):
            Producer(sweeping).publish({"task": task_id}, exchange=bound.exchange, routing_key=queue, declare=[bound])
        unroutable, taken_over = (closing.basic_get(queue).delivery_tag for _ in range(2))
        waiting = queued_tags(redis, queue)
        redis.hset(HOLDERS_KEY, taken_over, other)  # swept to another process, which lives
        redis.set(heartbeat_key(other), "1", px=60_000)

        def closed(exchange: str) -> list[tuple[str, str, str]]:
            raise AttributeError("'NoneType' object has no attribute 'hostname'")

        monkeypatch.setattr(closing, "get_table", closed)
        closing.qos.restore_unacked()
        assert redis.hexists(UNACKED_KEY, unroutable), "the message left unacked without going back to its queue"
        assert redis.hget(HOLDERS_KEY, unroutable) == me.disowned
        assert redis.hget(HOLDERS_KEY, taken_over) == other and redis.hexists(UNACKED_KEY, taken_over)
        assert queued_tags(redis, queue) == waiting and len(waiting) == 1

        assert sweeping.qos.sweep() == 1
        assert queued_tags(redis, queue) == waiting | {unroutable}
        assert not redis.hexists(UNACKED_KEY, unroutable) and not redis.hexists(HOLDERS_KEY, unroutable)

        taken = healthy.basic_get(queue)
        assert taken.delivery_info["redelivered"]  # kombu's put-back goes where the next pop takes from
        healthy.qos.restore_unacked()
        assert redis.llen(queue) == 2 and queued_tags(redis, queue) == waiting | {unroutable}
        assert not redis.hexists(UNACKED_KEY, taken.delivery_tag) and not redis.hexists(HOLDERS_KEY, taken.delivery_tag)
        assert redis.hget(HOLDERS_KEY, taken_over) == other and redis.hexists(UNACKED_KEY, taken_over)
    finally:
        for connection in connections:
            connection.release()


def test_status_and_wait_say_which_tasks_wait_for_a_gone_worker(stack: DevStack,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`autolabel status` and the --wait progress line name the tasks held by a process whose
    heartbeat is gone, instead of 'running' with an ETA, and when a sweep puts them back."""
    settings, job_id, model = own_database(stack, 3), "recovery-orphans", "nobody-serves-this"
    client = LabelingClient(settings)
    client.progress.register(job_id, total=8, model=model, source="frames")
    frames = [FrameRef(frame_id=f"{i}", key=f"k/{i}.jpg") for i in range(8)]
    for part in (frames[:4], frames[4:]):
        client.celery.send_task(TASK_DETECT, queue="recovery-orphans", kwargs=DetectTask(
            job_id=job_id, options=DetectOptions(model=model), frames=part).model_dump(mode="json"))
    with Connection(settings.broker_url, transport=Transport,
                    transport_options=client.celery.conf.broker_transport_options) as connection:
        taken = [connection.default_channel.basic_get("recovery-orphans") for _ in range(2)]
        line = ProgressLine(False, note=client.orphans_note)
        line(client.status(job_id))
        assert "ETA -, queued" in capsys.readouterr().err  # held by this live process: nothing to say
        client.progress.redis.hset(HOLDERS_KEY, taken[0].delivery_tag, "gone-host/1/dead")
        expected = ("1 task (4 frames) held by a worker process that is gone; a live worker puts them back in "
                    f"the queue within {LEASE_S / 4:.0f} s")  # the sweep runs four times per lease
        line.last = 0.0
        line(client.status(job_id))
        assert capsys.readouterr().err.rstrip().endswith(f"0.0 frames/s, {expected}")
        shown = subprocess.run([str(BIN / "autolabel"), "status", job_id], capture_output=True, text=True,
                               env=stack.subprocess_env(**RECOVERY_ENV, AUTOLABEL_BROKER_URL=settings.broker_url),
                               check=True).stdout
        assert f"  {expected}\n" in shown
