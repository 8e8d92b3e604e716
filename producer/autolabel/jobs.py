"""Starting a job: manifest, progress registration, then the frame-batch tasks. Used by the
client and by the worker's submit task, so both paths behave the same."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from celery import Celery

from autolabel import layout
from autolabel.celery_app import frames_repr
from autolabel.contract import (
    TASK_DETECT,
    DetectTask,
    FrameRef,
    JobManifest,
    JobSpec,
    SelectionReport,
    VideoInfo,
    queue_for,
    validated,
)
from autolabel.errors import ObjectNotFoundError
from autolabel.progress import ProgressStore
from autolabel.storage import ObjectStore

log = logging.getLogger(__name__)


def batches(frames: Sequence[FrameRef], size: int) -> list[tuple[FrameRef, ...]]:
    return [tuple(frames[i:i + size]) for i in range(0, len(frames), size)]


def enqueue_frames(celery: Celery, spec: JobSpec, frames: Sequence[FrameRef]) -> int:
    """Send the frames as DetectTasks of ``spec.batch_size``; returns the number of tasks sent."""
    chunks = batches(frames, spec.batch_size)
    for chunk in chunks:
        payload = DetectTask(job_id=spec.job_id, options=spec.options, frames=chunk)
        kwargs = payload.model_dump(mode="json")
        # kwargsrepr here too: the task-sent event (Flower's queued tasks) is built before the header is.
        celery.send_task(TASK_DETECT, kwargs=kwargs, kwargsrepr=frames_repr(kwargs),
                         queue=queue_for(spec.options.model), priority=spec.priority)
    return len(chunks)


def previous_manifest(store: ObjectStore, job_id: str) -> JobManifest | None:
    """The manifest of an earlier submission under this job id; None for an id not used yet."""
    try:
        return JobManifest.model_validate(store.get_json(layout.manifest_key(job_id)))
    except ObjectNotFoundError:
        return None


def changed_frame(previous: JobManifest, frames: Iterable[FrameRef]) -> str | None:
    """Why ``frames`` are not the previous submission's: a frame id that now names another image
    (another key, or another content hash where both are known). None when every frame id the two
    share names the same image; frames only one of them has are no conflict (another sampling)."""
    before = {frame.frame_id: frame for frame in previous.frames}
    return next((change for frame in frames if (change := frame_change(before.get(frame.frame_id), frame))), None)


def frame_change(old: FrameRef | None, new: FrameRef) -> str | None:
    """Why ``new`` is not the image ``old`` (the same frame id, submitted before) named; None if it is."""
    if old is None:
        return None
    if old.key != new.key:
        return f"frame {new.frame_id} was {old.key}, now {new.key}"
    if old.sha256 and new.sha256 and old.sha256 != new.sha256:
        return f"frame {new.frame_id} is another image (sha256 {old.sha256}, now {new.sha256})"
    return None


def drop_leftovers(store: ObjectStore, previous: JobManifest, frames: Sequence[FrameRef]) -> int:
    """Delete what the previous submission made for frames this one does not have: their results
    and, for a video job, the frames it uploaded. Every object under the job's prefix then belongs
    to the new manifest. Frames of a ``submit_frames`` job are the caller's and stay. Returns how many."""
    ids = {frame.frame_id for frame in frames}
    keys = {frame.key for frame in frames}
    gone = [frame for frame in previous.frames if frame.frame_id not in ids]
    doomed = [layout.detection_key(previous.spec.job_id, frame.frame_id) for frame in gone]
    if previous.spec.source != "frames":
        uploaded = (layout.frame_key(previous.spec.job_id, frame.frame_id) for frame in gone)
        doomed += [key for key in uploaded if key not in keys]
    store.delete_keys(doomed)
    return len(doomed)


def start_job(
    store: ObjectStore,
    progress: ProgressStore,
    celery: Celery,
    spec: JobSpec,
    frames: Sequence[FrameRef],
    video: VideoInfo | None = None,
    previous: JobManifest | None = None,
    selection: SelectionReport | None = None,
) -> JobManifest:
    """Write the manifest first, so that any worker that sees a task can also see its job.

    ``previous``: the manifest of an earlier submission under the same job id. Its results are
    reused only for frames labeled from the same image (the workers compare content hashes); what
    it made for frames this submission does not have is deleted. ``selection``: which of the
    video's sampled frames were kept (``frames``) and why the others were dropped.
    """
    # Checked before anything is changed: a job above MAX_FRAMES_PER_JOB is refused with the limit named.
    manifest = validated(JobManifest, {"spec": spec, "video": video, "selection": selection, "frames": tuple(frames)})
    if previous is not None:
        if change := changed_frame(previous, frames):
            log.warning("job %s submitted again with other frames (%s): results of changed frames are made again",
                        spec.job_id, change)
        drop_leftovers(store, previous, frames)
    store.put_json(layout.manifest_key(spec.job_id), manifest)
    progress.register(spec.job_id, total=len(frames), model=spec.options.model, source=spec.source)
    enqueue_frames(celery, spec, frames)
    return manifest
