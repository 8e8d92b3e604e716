"""One frame-batch task: fetch, batched detection, one result file per frame, progress."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from autolabel import layout
from autolabel.contract import DetectTask, FrameResult
from autolabel_worker.frames import load_frames
from autolabel_worker.runtime import Runtime

log = logging.getLogger(__name__)


def process_batch(rt: Runtime, task: DetectTask) -> bool:
    """Label the task's frames; returns True when this batch completed the job (finalize is due)."""
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
        return rt.progress.record(job_id, done=(), failed={f.frame_id: refusal for f in task.frames}) == 1

    rt.progress.mark_started(job_id)
    frames, failures = load_frames(rt.store, task.frames, max_pixels=rt.settings.max_frame_pixels,
                                   threads=rt.settings.frame_fetch_threads)
    results: list[FrameResult] = []
    if frames:
        outcome = rt.batcher.predict([frame.image for frame in frames], options.score_threshold)
        rt.progress.add_timing(job_id, frames=len(frames), device_seconds=outcome.device_seconds,
                               frames_per_pass=sum(outcome.pass_sizes))
        keep = set(options.classes) if options.classes else None
        for frame, detections in zip(frames, outcome.results):
            if isinstance(detections, BaseException):
                failures[frame.ref.frame_id] = f"inference failed: {type(detections).__name__}: {detections}"
                continue
            kept = sorted((d for d in detections if keep is None or d.class_name in keep), key=lambda d: -d.score)
            results.append(FrameResult(
                job_id=job_id, frame_id=frame.ref.frame_id, frame_index=frame.ref.index,
                timestamp=frame.ref.timestamp, width=frame.width, height=frame.height,
                model=rt.model.name, model_version=rt.model.version, detections=tuple(kept),
            ))
    if results:
        with ThreadPoolExecutor(max_workers=min(rt.settings.frame_fetch_threads, len(results))) as pool:
            list(pool.map(lambda r: rt.store.put_json(layout.detection_key(job_id, r.frame_id), r), results))
    for frame_id, reason in failures.items():
        log.warning("job %s frame %s failed: %s", job_id, frame_id, reason)
    completed = rt.progress.record(job_id, done=[r.frame_id for r in results], failed=failures)
    if completed == -1:
        log.warning("job %s is not registered in Redis; results were written but progress is not tracked", job_id)
    return completed == 1
