"""Celery glue: validate the payload, run the step, acknowledge only after results are written."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TypeVar

import redis
from celery.exceptions import Reject
from celery.signals import worker_init, worker_ready
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
from autolabel.jobs import start_job
from autolabel_worker.app import app
from autolabel_worker.detect import process_batch
from autolabel_worker.finalize import finalize_job
from autolabel_worker.runtime import runtime, write_ready_file

log = logging.getLogger(__name__)
Payload = TypeVar("Payload", bound=BaseModel)

# Transient failures of the store or Redis: retried with exponential backoff and jitter.
RETRY = {
    "autoretry_for": (StorageError, redis.ConnectionError, redis.TimeoutError),
    "retry_backoff": 2,
    "retry_backoff_max": 120,
    "retry_jitter": True,
    "max_retries": 8,
}


@worker_init.connect
def _load_model(**_: Any) -> None:
    # Before the worker consumes anything: load the model once and run a warm-up batch.
    report = runtime().warm_up()
    log.info("warm-up: batch %d in %.2f s, peak memory %.0f MiB on %s", report.batch_size, report.seconds,
             report.peak_memory_bytes / 2**20, report.device)


@worker_ready.connect
def _report_ready(**_: Any) -> None:
    rt = runtime()
    if rt.settings.ready_file and rt.warmup is not None:
        write_ready_file(Path(rt.settings.ready_file), rt.warmup)


def parse(model: type[Payload], payload: dict[str, Any]) -> Payload:
    """A malformed message is rejected (dropped with a log line), never retried or crashed on."""
    try:
        return validated(model, payload)
    except InvalidInputError as exc:
        log.error("rejecting malformed message: %s", exc)
        raise Reject(str(exc), requeue=False) from exc


@app.task(name=TASK_DETECT, bind=True, **RETRY)
def detect_frames(self: Any, **payload: Any) -> dict[str, Any]:
    task = parse(DetectTask, payload)
    if process_batch(runtime(), task):
        app.send_task(TASK_FINALIZE, kwargs=FinalizeTask(job_id=task.job_id).model_dump(),
                      queue=queue_for(task.options.model))
    return {"job_id": task.job_id, "frames": len(task.frames)}


@app.task(name=TASK_FINALIZE, bind=True, **RETRY)
def finalize(self: Any, **payload: Any) -> dict[str, Any]:
    task = parse(FinalizeTask, payload)
    finalize_job(runtime(), task.job_id)
    return {"job_id": task.job_id}


@app.task(name=TASK_SUBMIT, bind=True, **RETRY)
def submit_frames(self: Any, **payload: Any) -> dict[str, Any]:
    """The raw Celery path: a backend sends a whole job; this fans it out like the client does."""
    task = parse(SubmitFramesTask, payload)
    rt = runtime()
    start_job(rt.store, rt.progress, app, task.spec, task.frames)
    return {"job_id": task.spec.job_id, "frames": len(task.frames)}
