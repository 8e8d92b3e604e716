"""System-wide metrics for Prometheus, read from Redis when Prometheus scrapes: `autolabel exporter`.

The workers export what each process does (the launcher's /metrics); what belongs to the whole
system, the queues and the jobs, is exported here once, so that a sum over worker pods never
counts a queue twice. Torch-free: it needs Redis only (docs/operations.md lists the metrics).

    autolabel_queue_length{queue}   messages waiting in a model's queue: kombu keeps one Redis list
                                    per priority band (the queue, then queue + sep + 3, 6, 9), summed
    autolabel_queue_unacked         messages taken by workers and not acknowledged (kombu's hash)
    autolabel_jobs{state}           jobs per state, every state listed (0 where none)
    autolabel_frames_pending        frames of queued and running jobs neither labeled nor failed
    autolabel_workers_alive{model}  worker processes whose heartbeat is younger than HEARTBEAT_TTL_S

The queues are those of the models the workers have served in the last week (their heartbeat
sets) and those of jobs not ended, plus the default queue (finalize and submit tasks).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.types import StartResponse, WSGIApplication as WSGIApp

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel
from prometheus_client import make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector, CollectorRegistry
from pydantic import BaseModel

from autolabel.contract import DEFAULT_QUEUE, queue_for
from autolabel.holders import UNACKED_KEY
from autolabel.progress import JOBS_INDEX, JobState
from autolabel.serving import HEARTBEAT_TTL_S, workers_key

log = logging.getLogger(__name__)

DEFAULT_PORT = 9464
# Job hashes read per pipeline round trip: the jobs index holds every job ever submitted.
_CHUNK = 500
_OPEN_STATES = (JobState.QUEUED, JobState.RUNNING)


class SystemSnapshot(BaseModel):
    """What the exporter reads from Redis at one scrape."""

    queue_length: dict[str, int]
    unacked: int
    jobs: dict[JobState, int]
    frames_pending: int
    workers_alive: dict[str, int]


def priority_lists(queue: str) -> list[str]:
    """The Redis lists kombu's transport keeps for ``queue``, one per priority band (``_q_for_pri``)."""
    return [f"{queue}{Channel.sep}{step}" if step else queue for step in PRIORITY_STEPS]


def served_models(client: redis.Redis) -> set[str]:
    """Models with a worker heartbeat set: served now or within the last week (serving.FORGET_AFTER_S)."""
    prefix = workers_key("")
    return {key.removeprefix(prefix) for key in client.scan_iter(match=f"{prefix}*", count=1000)}


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def read_jobs(client: redis.Redis) -> tuple[dict[JobState, int], int, set[str]]:
    """Jobs per state, frames pending and the models of the jobs not ended."""
    jobs = dict.fromkeys(JobState, 0)
    pending = 0
    models: set[str] = set()
    ids = client.zrange(JOBS_INDEX, 0, -1)
    for chunk in _chunks(ids, _CHUNK):
        with client.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                pipe.hmget(f"autolabel:job:{job_id}", "state", "total", "model")
            fields = pipe.execute()
        # Frames counted for open jobs only: the index keeps every job ever submitted, most ended.
        open_jobs = [(job_id, int(total or 0), model) for job_id, (state, total, model) in zip(chunk, fields)
                     if state is not None and JobState(state) in _OPEN_STATES]
        for state, _, _ in fields:
            if state is not None:  # a job whose hash is gone: `autolabel jobs` drops it from the index
                jobs[JobState(state)] += 1
        with client.pipeline(transaction=False) as pipe:
            for job_id, _, _ in open_jobs:
                pipe.scard(f"autolabel:job:{job_id}:done")
                pipe.hlen(f"autolabel:job:{job_id}:failed")
            counts = pipe.execute()
        for (_, total, model), done, failed in zip(open_jobs, counts[::2], counts[1::2]):
            pending += max(0, total - done - failed)
            if model:
                models.add(model)
    return jobs, pending, models


def read_snapshot(client: redis.Redis, now: float | None = None) -> SystemSnapshot:
    now = time.time() if now is None else now
    jobs, pending, job_models = read_jobs(client)
    served = served_models(client)
    queues = sorted({DEFAULT_QUEUE} | {queue_for(model) for model in served | job_models})
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            for name in priority_lists(queue):
                pipe.llen(name)
        pipe.hlen(UNACKED_KEY)
        for model in sorted(served):
            pipe.zcount(workers_key(model), now - HEARTBEAT_TTL_S, "+inf")
        replies = pipe.execute()
    bands = len(PRIORITY_STEPS)
    lengths = {queue: sum(replies[i * bands:(i + 1) * bands]) for i, queue in enumerate(queues)}
    unacked = replies[len(queues) * bands]
    alive = dict(zip(sorted(served), replies[len(queues) * bands + 1:]))
    return SystemSnapshot(queue_length=lengths, unacked=unacked, jobs=jobs, frames_pending=pending,
                          workers_alive=alive)


class SystemCollector(Collector):
    """Reads Redis on every scrape: Prometheus sees the state at its scrape time, and nothing is
    cached between scrapes. A Redis error fails the scrape (``metrics_app``), so a stale or
    partial reading never looks like an empty queue."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterable[Metric]:
        return families(read_snapshot(self.client))


def families(snapshot: SystemSnapshot) -> list[Metric]:
    queue = GaugeMetricFamily("autolabel_queue_length", "Messages waiting in the queue (all priority lists)",
                              labels=["queue"])
    for name, length in snapshot.queue_length.items():
        queue.add_metric([name], length)
    jobs = GaugeMetricFamily("autolabel_jobs", "Jobs by state", labels=["state"])
    for state, count in snapshot.jobs.items():
        jobs.add_metric([state.value], count)
    alive = GaugeMetricFamily("autolabel_workers_alive", "Worker processes with a live heartbeat, per model",
                              labels=["model"])
    for model, count in snapshot.workers_alive.items():
        alive.add_metric([model], count)
    return [
        queue,
        GaugeMetricFamily("autolabel_queue_unacked", "Messages reserved by workers and not acknowledged",
                          value=snapshot.unacked),
        jobs,
        GaugeMetricFamily("autolabel_frames_pending", "Frames of queued and running jobs not yet labeled or failed",
                          value=snapshot.frames_pending),
        alive,
    ]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        """No access log: a line per scrape would bury the exporter's own lines."""


def metrics_app(registry: CollectorRegistry) -> WSGIApp:
    """prometheus_client's /metrics app; a scrape while Redis does not answer gets a 503 with the
    reason and one log line (Prometheus records ``up`` 0: alert AutolabelExporterDown)."""
    app = make_wsgi_app(registry)

    def guarded(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            return app(environ, start_response)
        except redis.RedisError as exc:
            log.warning("scrape failed: Redis did not answer (%s)", exc)
            start_response("503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
            return [f"Redis did not answer: {exc}\n".encode()]

    return guarded


def serve(broker_url: str, host: str, port: int) -> None:
    """Serve /metrics on ``host:port`` until the process is stopped."""
    # decode_responses: keys and fields as str; timeouts: a scrape fails instead of hanging on a lost Redis.
    client = redis.Redis.from_url(broker_url, decode_responses=True, socket_connect_timeout=5, socket_timeout=10)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SystemCollector(client))
    server = make_server(host, port, metrics_app(registry), ThreadingWSGIServer, handler_class=_QuietHandler)
    # As a container's PID 1 the process gets no default SIGTERM action: stop on it explicitly.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("autolabel exporter: http://%s:%d/metrics", host, port)
    with server:
        server.serve_forever()
