"""Celery glue: validate the payload, run the step, acknowledge only after results are written."""

from __future__ import annotations

import logging
import random
import time
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import redis
from celery import Task
from celery.exceptions import Reject
from celery.signals import task_retry, worker_init, worker_ready
from kombu.exceptions import OperationalError
from pydantic import BaseModel

from autolabel.contract import (
    TASK_DETECT,
    TASK_FINALIZE,
    TASK_SUBMIT,
    DetectTask,
    FinalizeTask,
    SubmitFramesTask,
    queue_for,
    validated,
)
from autolabel.errors import InvalidInputError, StorageError
from autolabel.jobs import previous_manifest, start_job
from autolabel.progress import DeadLetter
from autolabel.serving import Heartbeat
from autolabel.settings import get_settings
from autolabel_worker import metrics
from autolabel_worker.app import app
from autolabel_worker.delivery import Deliveries, LeaseBusy
from autolabel_worker.detect import BatchTimeLimitExceeded, process_batch
from autolabel_worker.finalize import finalize_job
from autolabel_worker.runtime import runtime, write_ready_file

log = logging.getLogger(__name__)
Payload = TypeVar("Payload", bound=BaseModel)

# Transient failures of the store or Redis (progress or broker), and a batch that ran out of
# time: retried with exponential backoff and jitter, AUTOLABEL_MAX_RETRIES times at most.
RETRY = {
    "autoretry_for": (StorageError, redis.ConnectionError, redis.TimeoutError, OperationalError,
                      BatchTimeLimitExceeded),
    "retry_backoff": 2,
    "retry_backoff_max": get_settings().retry_backoff_max_s,
    "retry_jitter": True,
    "max_retries": get_settings().max_retries,
}


@worker_init.connect
def _load_model(**_: Any) -> None:
    # Before the worker consumes anything: load the model once and run a warm-up batch.
    started = time.perf_counter()
    rt = runtime()
    load_s = time.perf_counter() - started
    report = rt.warm_up()
    metrics.record_model(rt.model.version, load_s, report.seconds)
    log.info("warm-up: batch %d in %.2f s, peak memory %.0f MiB on %s", report.batch_size, report.seconds,
             report.peak_memory_bytes / 2**20, report.device)


@worker_ready.connect
def _report_ready(**_: Any) -> None:
    rt = runtime()
    if rt.settings.ready_file and rt.warmup is not None:
        write_ready_file(Path(rt.settings.ready_file), rt.warmup)
    # From now on this process takes its model's tasks: say so, so that producers can tell a job
    # waiting its turn from one no worker will take (an unknown model name, no worker started).
    Heartbeat(rt.progress.redis, rt.model.name).start()


@task_retry.connect
def _count_retry(**_: Any) -> None:
    metrics.here(metrics.RETRIES).inc()


def parse(model: type[Payload], payload: dict[str, Any]) -> Payload:
    """A malformed message fails as expected (the tasks declare ``throws``): Celery logs one line
    with the field and the reason and no traceback, acknowledges the message (never retried, never
    crashed on), and its task-failed event, which Flower shows, carries the reason. Celery's Reject
    logged some 40 lines of chained traceback and sent the event as ``ExceptionWithTraceback()``."""
    try:
        return validated(model, payload)
    except InvalidInputError as exc:
        raise InvalidInputError(f"rejecting malformed message: {exc}") from None


@cache
def deliveries() -> Deliveries:
    rt = runtime()
    return Deliveries(rt.progress.redis, lease_s=rt.settings.lease_s)


def send_finalize(job_id: str, model: str) -> None:
    app.send_task(TASK_FINALIZE, kwargs=FinalizeTask(job_id=job_id).model_dump(), queue=queue_for(model))


def run_later(task: Task) -> None:
    """Send this very message again for later, as the same task id and without spending a retry:
    another delivery of it holds its lease. Acknowledging this copy then loses nothing."""
    countdown = deliveries().lease_ms / 1000 * (1 + random.random())
    log.info("task %s[%s] is running elsewhere; this delivery runs again in %.0f s", task.name, task.request.id,
             countdown)
    task.signature_from_request(task.request, countdown=countdown).apply_async()


class RequeueingTask(Task):
    """Every task's base: a retry that cannot be sent puts its message back on its queue.

    Celery's ``retry`` sends a copy of the message for later and then acknowledges this one; when
    the copy cannot be sent (the broker is away: a retry for a Redis error often meets the same
    outage) it rejects the message without requeueing it. With Redis back a moment later that
    reject goes through and the task is gone: its frames neither labeled nor failed, the job never
    complete (seen with redis-server restarting for 3 s mid-job). Requeued, it runs again with the
    retries it had; while Redis is still away the reject fails too and the message stays
    unacknowledged, for kombu's put-back or the sweep."""

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().retry(*args, **kwargs)
        except Reject as reject:
            if reject.requeue:
                raise
            raise Reject(reject.reason, requeue=True) from None


class FramesTask(RequeueingTask):
    """A task that holds frames: when it fails for good, its frames fail with the reason, so the job completes."""

    def on_failure(self, exc: Exception, task_id: str, args: Any, kwargs: dict[str, Any], einfo: Any) -> None:
        try:
            task = validated(DetectTask, kwargs)
        except InvalidInputError:
            return  # rejected as malformed; it holds no frames of a known job
        reason = f"gave up after {self.request.retries} retries: {type(exc).__name__}: {exc}"
        kind = "time_limit" if isinstance(exc, BatchTimeLimitExceeded) else "retries"
        metrics.here(metrics.FRAMES_FAILED, reason=kind).inc(len(task.frames))
        try:
            completed = runtime().progress.record(task.job_id, done=(), failed=dict.fromkeys(
                (f.frame_id for f in task.frames), reason), claimer=task_id)
            if completed == 1:
                send_finalize(task.job_id, task.options.model)
        except (redis.RedisError, OSError):
            log.exception("task %s failed and its frames could not be marked failed; `autolabel retry %s` "
                          "re-enqueues them", task_id, task.job_id)


@app.task(name=TASK_DETECT, bind=True, base=FramesTask, throws=(InvalidInputError,), **RETRY)
def detect_frames(self: Any, **payload: Any) -> dict[str, Any]:
    task = parse(DetectTask, payload)
    rt = runtime()
    try:
        # Counted before the lease is taken: a delivery killed at any moment its lease can be seen
        # running is a counted one. A delivery that finds the lease busy ends cleanly, uncounted.
        with deliveries().track(self.request.id) as delivery, deliveries().lease(self.request.id) as lease:
            if delivery.lost >= rt.settings.max_deliveries:
                # This task's deliveries keep dying with their worker (OOM, a crash in native code):
                # stop feeding it to workers, fail its frames and keep the record.
                log.error("task %s of job %s: %d deliveries lost; dead-lettering %d frames", self.request.id,
                          task.job_id, delivery.lost, len(task.frames))
                letter = DeadLetter(task_id=self.request.id, frame_ids=[f.frame_id for f in task.frames],
                                    lost_deliveries=delivery.lost)
                completed = rt.progress.dead_letter(
                    task.job_id, letter, f"dead-lettered after {delivery.lost} lost deliveries") == 1
                delivery.settled = True
                metrics.here(metrics.DEAD_LETTERS).inc()
                metrics.here(metrics.FRAMES_FAILED, reason="dead_letter").inc(len(task.frames))
            else:
                completed = process_batch(rt, task, claimer=self.request.id, lease=lease)
            if completed:
                send_finalize(task.job_id, task.options.model)
    except LeaseBusy:
        run_later(self)
    return {"job_id": task.job_id, "frames": len(task.frames)}


@app.task(name=TASK_FINALIZE, bind=True, base=RequeueingTask, throws=(InvalidInputError,), **RETRY)
def finalize(self: Any, **payload: Any) -> dict[str, Any]:
    task = parse(FinalizeTask, payload)
    try:
        # One finalize at a time per job, whichever message it came from.
        with deliveries().lease(f"finalize:{task.job_id}"):
            finalize_job(runtime(), task.job_id)
    except LeaseBusy:
        run_later(self)
    return {"job_id": task.job_id}


@app.task(name=TASK_SUBMIT, bind=True, base=RequeueingTask, throws=(InvalidInputError,), **RETRY)
def submit_frames(self: Any, **payload: Any) -> dict[str, Any]:
    """The raw Celery path: a backend sends a whole job; this fans it out like the client does."""
    task = parse(SubmitFramesTask, payload)
    rt = runtime()
    # A job id used before with other frames is not refused here (a fire-and-forget sender would
    # never see the refusal): its frames are labeled again where their images changed.
    start_job(rt.store, rt.progress, app, task.spec, task.frames,
              previous=previous_manifest(rt.store, task.spec.job_id))
    return {"job_id": task.spec.job_id, "frames": len(task.frames)}
