"""Starting a job: manifest, progress registration, then the frame-batch tasks. Used by the
client and by the worker's submit task, so both paths behave the same."""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery

from autolabel import layout
from autolabel.contract import (
    TASK_DETECT,
    DetectTask,
    FrameRef,
    JobManifest,
    JobSpec,
    VideoInfo,
    queue_for,
)
from autolabel.progress import ProgressStore
from autolabel.storage import ObjectStore


def batches(frames: Sequence[FrameRef], size: int) -> list[tuple[FrameRef, ...]]:
    return [tuple(frames[i:i + size]) for i in range(0, len(frames), size)]


def enqueue_frames(celery: Celery, spec: JobSpec, frames: Sequence[FrameRef]) -> int:
    """Send the frames as DetectTasks of ``spec.batch_size``; returns the number of tasks sent."""
    chunks = batches(frames, spec.batch_size)
    for chunk in chunks:
        payload = DetectTask(job_id=spec.job_id, options=spec.options, frames=chunk)
        celery.send_task(TASK_DETECT, kwargs=payload.model_dump(mode="json"),
                         queue=queue_for(spec.options.model), priority=spec.priority)
    return len(chunks)


def start_job(
    store: ObjectStore,
    progress: ProgressStore,
    celery: Celery,
    spec: JobSpec,
    frames: Sequence[FrameRef],
    video: VideoInfo | None = None,
) -> JobManifest:
    """Write the manifest first, so that any worker that sees a task can also see its job."""
    manifest = JobManifest(spec=spec, video=video, frames=tuple(frames))
    store.put_json(layout.manifest_key(spec.job_id), manifest)
    progress.register(spec.job_id, total=len(frames), model=spec.options.model, source=spec.source)
    enqueue_frames(celery, spec, frames)
    return manifest
