"""The job's last step: read every frame's result and write the exports, once."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from autolabel import layout
from autolabel.contract import FrameResult, JobManifest
from autolabel.exports import build_coco, build_labelstudio, build_summary
from autolabel.progress import JobState
from autolabel_worker.runtime import Runtime

log = logging.getLogger(__name__)


def finalize_job(rt: Runtime, job_id: str) -> None:
    """Write the exports unless the job is already done: a finalize message delivered twice (its
    worker died after writing, before acknowledging) changes nothing the second time."""
    status = rt.progress.status(job_id)
    if status.state != JobState.FINALIZING:
        log.info("job %s is %s; nothing to finalize", job_id, status.state)
        return
    manifest = JobManifest.model_validate(rt.store.get_json(layout.manifest_key(job_id)))
    done = rt.progress.done_frames(job_id)
    keys = [layout.detection_key(job_id, frame.frame_id) for frame in manifest.frames if frame.frame_id in done]
    with ThreadPoolExecutor(max_workers=rt.settings.frame_fetch_threads) as pool:
        results = [FrameResult.model_validate(raw) for raw in pool.map(rt.store.get_json, keys)]
    versions = sorted({result.model_version for result in results}) or [rt.model.version]
    summary = build_summary(manifest, results, status, rt.progress.timings(job_id),
                            model_version=",".join(versions), finished_at=time.time())
    rt.store.put_json(layout.export_key(job_id, "coco.json"), build_coco(manifest, results, rt.detector.classes))
    rt.store.put_json(layout.export_key(job_id, "labelstudio.json"),
                      [task.model_dump(mode="json") for task in build_labelstudio(manifest, results, rt.store.bucket)])
    rt.store.put_json(layout.export_key(job_id, "summary.json"), summary)
    rt.progress.mark_done(job_id)
    log.info("job %s finalized: %d labeled, %d failed, %d missing", job_id, summary.labeled_frames,
             len(summary.failed_frames), len(summary.missing_frames))
