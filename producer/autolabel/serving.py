"""Which models are served: the config names a producer can see, and the workers alive now.

Each worker process advertises the model it serves in Redis, in the sorted set
``autolabel:workers:MODEL``: its member (``host:pid``) is scored with the time of its last
heartbeat, sent every ``HEARTBEAT_INTERVAL_S`` by a thread. A worker is live while its last
heartbeat is younger than ``HEARTBEAT_TTL_S``. Queues are durable, so a job submitted before
its workers start simply waits; the heartbeats tell such a job from one that no worker has
taken for so long that waiting on it is pointless (`autolabel status`, ``LabelingClient.wait``).
Times are each machine's clock, as everywhere in the progress store (NTP-synchronized hosts).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

import redis

from autolabel.contract import queue_for

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_S = 10.0
# Three missed heartbeats: a worker busy on a long forward pass still gets its thread scheduled.
HEARTBEAT_TTL_S = 3 * HEARTBEAT_INTERVAL_S
# A worker's last heartbeat is kept this long, so "no worker for N min" counts from it.
FORGET_AFTER_S = 7 * 24 * 3600


def workers_key(model: str) -> str:
    return f"autolabel:workers:{model}"


def config_names(configs_dir: Path) -> list[str]:
    """The model names a configs directory defines (one ``NAME.py`` each)."""
    return sorted(path.stem for path in configs_dir.glob("*.py"))


def last_heartbeat(client: redis.Redis, model: str) -> float | None:
    """When a worker serving ``model`` last said it was alive; None if none ever did (or long ago)."""
    newest = client.zrevrange(workers_key(model), 0, 0, withscores=True)
    return float(newest[0][1]) if newest else None


def unserved_for_s(client: redis.Redis, model: str, *, since: float, now: float | None = None) -> float | None:
    """Seconds no live worker has served ``model``, counted from ``since`` (a job's creation) or
    from the last heartbeat, whichever is later; None while a worker is live."""
    now = time.time() if now is None else now
    last = last_heartbeat(client, model)
    if last is not None and now - last < HEARTBEAT_TTL_S:
        return None
    return max(0.0, now - max(since, last or 0.0))


def no_worker_message(job_id: str, model: str, waited_s: float) -> str:
    return (f"job {job_id}: no live worker serves model {model!r}; none has taken queue {queue_for(model)} for "
            f"{waited_s / 60:.1f} min. Start one (AUTOLABEL_MODEL={model} autolabel worker) or check the model "
            "name; the job stays queued")


class Heartbeat:
    """A worker process's advertisement of the model it serves, refreshed by a daemon thread."""

    def __init__(self, client: redis.Redis, model: str, interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self.client, self.model, self.interval_s = client, model, interval_s
        self.name = f"{socket.gethostname()}:{os.getpid()}"

    def beat(self) -> None:
        now = time.time()
        key = workers_key(self.model)
        with self.client.pipeline() as pipe:
            pipe.zadd(key, {self.name: now})
            pipe.zremrangebyscore(key, "-inf", now - FORGET_AFTER_S)
            pipe.expire(key, FORGET_AFTER_S)
            pipe.execute()

    def start(self) -> None:
        threading.Thread(target=self._run, name="heartbeat", daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                self.beat()
            except redis.RedisError as exc:
                # Redis restarting: the worker goes on; producers see it again at the next beat.
                log.warning("heartbeat for model %s not sent (%s); next in %.0f s", self.model, exc, self.interval_s)
            time.sleep(self.interval_s)
