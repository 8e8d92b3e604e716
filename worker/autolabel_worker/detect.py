"""One frame-batch task: fetch, batched detection, one result file per frame, progress."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from autolabel import layout
from autolabel.contract import DetectOptions, DetectTask, FrameRef, FrameResult
from autolabel.errors import AutolabelError
from autolabel.storage import ObjectStore
from autolabel_worker import metrics
from autolabel_worker.delivery import HeldLease, settle
from autolabel_worker.frames import load_frames, thread_map
from autolabel_worker.runtime import Runtime

log = logging.getLogger(__name__)


class BatchTimeLimitExceeded(AutolabelError):
    """The task's frames were not through the model within the batch time limit; the task is retried."""


def result_stamp(model_version: str, options: DetectOptions, input_sha256: str) -> dict[str, str]:
    """Object metadata of a result file: which weights and options made it, from which image bytes
    (their content_hash). A result with the same stamp is not made again."""
    digest = hashlib.sha256(options.model_dump_json().encode()).hexdigest()[:16]
    return {"model-version": model_version, "options": digest, "input": input_sha256}


def existing_stamps(store: ObjectStore, job_id: str, refs: Sequence[FrameRef],
                    threads: int) -> dict[str, dict[str, str] | None]:
    """The stamp of each frame's result object, None where there is none (HEAD only)."""

    def stamp(ref: FrameRef) -> dict[str, str] | None:
        return store.metadata(layout.detection_key(job_id, ref.frame_id))

    return dict(zip((ref.frame_id for ref in refs), thread_map(stamp, refs, threads)))


def write_result(store: ObjectStore, result: FrameResult, stamp: dict[str, str]) -> None:
    store.put_json(layout.detection_key(result.job_id, result.frame_id), result, stamp)
    # Counted as each write lands, so a process killed mid-task has counted what it wrote, except a
    # write the store kept whose reply the process never got: its redelivery counts it as skipped.
    metrics.here(metrics.FRAMES_LABELED).inc()


def process_batch(rt: Runtime, task: DetectTask, claimer: str = "", lease: HeldLease | None = None) -> bool:
    """Label the task's frames; returns True when this batch completed the job (finalize is due).

    ``claimer`` (the Celery task id) lets a redelivery of the task that completed the job claim
    its finalize again, in case the first delivery died before sending it. ``lease``, the task's,
    is confirmed before the results are written (LeaseBusy when another delivery holds it).
    """
    started = time.monotonic()
    job_id = task.job_id
    if rt.progress.is_cancelled(job_id):
        log.info("job %s is cancelled; skipping %d frames", job_id, len(task.frames))
        return False
    options = task.options
    refusal = None
    if options.model != rt.model.name:
        refusal = f"this worker serves model {rt.model.name!r}, the task asks for {options.model!r}"
    elif options.classes and (unknown := set(options.classes) - set(rt.detector.classes)):
        refusal = f"unknown class names {sorted(unknown)}; the model knows {list(rt.detector.classes)}"
    if refusal:
        metrics.here(metrics.FRAMES_FAILED, reason="invalid").inc(len(task.frames))
        return rt.progress.record(job_id, done=(), failed={f.frame_id: refusal for f in task.frames},
                                  claimer=claimer) == 1

    rt.progress.mark_started(job_id)
    # The check for existing results runs beside the fetch: it matters only on a redelivery or
    # re-submission, and waiting for it first would add a round trip to every frame's latency.
    with ThreadPoolExecutor(max_workers=1) as side:
        existing = side.submit(existing_stamps, rt.store, job_id, task.frames, rt.settings.frame_fetch_threads)
        frames, failures = load_frames(rt.store, task.frames, max_pixels=rt.settings.max_frame_pixels,
                                       threads=rt.settings.frame_fetch_threads)
        stamps = existing.result()
    # A result is reused only for the same input: the hash of the bytes just fetched, or, for a
    # frame that cannot be fetched any more, the hash its submitter gave. Another image under the
    # same frame id (a job id used again for another video) is labeled again.
    inputs = {frame.ref.frame_id: frame.sha256 for frame in frames}
    inputs.update({ref.frame_id: ref.sha256 for ref in task.frames if ref.frame_id in failures and ref.sha256})
    wanted = {frame_id: result_stamp(rt.model.version, options, sha256) for frame_id, sha256 in inputs.items()}
    skipped = {frame_id for frame_id, stamp in wanted.items() if stamps[frame_id] == stamp}
    for frame in frames:
        if frame.ref.sha256 and frame.ref.sha256 != frame.sha256:
            log.warning("job %s frame %s: %s is not the image submitted (sha256 %s, fetched %s); labeling what "
                        "was fetched", job_id, frame.ref.frame_id, frame.ref.key, frame.ref.sha256, frame.sha256)
    if skipped:
        log.info("job %s: %d frames already labeled from the same image by this model version, not labeled again",
                 job_id, len(skipped))
        frames = [frame for frame in frames if frame.ref.frame_id not in skipped]
        failures = {frame_id: reason for frame_id, reason in failures.items() if frame_id not in skipped}
    results: list[FrameResult] = []
    if frames:
        left = rt.settings.batch_time_limit_s - (time.monotonic() - started)
        frame_ids = [frame.ref.frame_id for frame in frames]
        late = BatchTimeLimitExceeded(f"job {job_id}: {len(frames)} frames not through the model within "
                                      f"{rt.settings.batch_time_limit_s:.0f} s")
        if left <= 0:
            raise late  # the fetch took the whole limit: retried before the frames take the device
        try:
            outcome = rt.batcher.predict([frame.image for frame in frames], options.score_threshold, timeout=left)
        except TimeoutError as exc:
            # The frames still go through the model when their turn comes, for nothing: counted as passed.
            rt.progress.count_passes(job_id, frame_ids)
            raise late from exc
        metrics.record_memory()
        # Counted before the results are written, so a pass whose results never land shows as a
        # second pass of those frames. Waits out a Redis restart: failing here would throw the pass away.
        settle(f"count the passes of job {job_id}", lambda: rt.progress.add_timing(
            job_id, frame_ids=frame_ids, device_seconds=outcome.device_seconds,
            frames_per_pass=sum(outcome.pass_sizes), passes=sum(1 / size for size in outcome.pass_sizes if size)))
        keep = set(options.classes) if options.classes else None
        for frame, detections in zip(frames, outcome.results):
            if isinstance(detections, BaseException):
                failures[frame.ref.frame_id] = f"inference failed: {type(detections).__name__}: {detections}"
                metrics.here(metrics.FRAMES_FAILED, reason="inference").inc()
                continue
            kept = sorted((d for d in detections if keep is None or d.class_name in keep), key=lambda d: -d.score)
            results.append(FrameResult(
                job_id=job_id, frame_id=frame.ref.frame_id, frame_index=frame.ref.index,
                timestamp=frame.ref.timestamp, width=frame.width, height=frame.height,
                model=rt.model.name, model_version=rt.model.version, detections=tuple(kept),
            ))
    if results and lease is not None and lease.confirm():
        # The lease lapsed while Redis was away: a copy of this message may have labeled these
        # frames and ended meanwhile. What it wrote is kept; this delivery writes the rest.
        refs = [ref for ref in task.frames if ref.frame_id in {r.frame_id for r in results}]
        written = existing_stamps(rt.store, job_id, refs, rt.settings.frame_fetch_threads)
        skipped |= {r.frame_id for r in results if written[r.frame_id] == wanted[r.frame_id]}
        results = [r for r in results if r.frame_id not in skipped]
    if results:
        with metrics.here(metrics.STAGE_SECONDS, stage="upload").time():
            thread_map(lambda r: write_result(rt.store, r, wanted[r.frame_id]), results,
                       rt.settings.frame_fetch_threads)
    metrics.here(metrics.FRAMES_SKIPPED).inc(len(skipped))
    for frame_id, reason in failures.items():
        log.warning("job %s frame %s failed: %s", job_id, frame_id, reason)
    completed = rt.progress.record(job_id, done=[r.frame_id for r in results] + sorted(skipped), failed=failures,
                                   claimer=claimer)
    if completed == -1:
        log.warning("job %s is not registered in Redis; results were written but progress is not tracked", job_id)
    return completed == 1
