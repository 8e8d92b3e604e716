"""The job's last step: read every frame's result and write the exports, once."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor

from autolabel import layout
from autolabel.contract import FrameResult, JobManifest
from autolabel.exports import TrackingSummary, build_coco, build_labelstudio, build_summary
from autolabel.progress import JobState
from autolabel.track_exports import build_cvat_video, build_labelstudio_video, build_mot
from autolabel_worker.runtime import Runtime
from autolabel_worker.tracking import link_tracks

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
        stored = list(pool.map(rt.store.get_with_metadata, keys))
        loaded = [FrameResult.model_validate_json(raw) for raw, _ in stored]
        results, tracking = _tracks(manifest, loaded)
        # Result files whose track ids changed are written again, with the metadata they had (the
        # stamp that lets a re-submission reuse them).
        changed = [(key, new, meta) for key, old, new, (_, meta) in zip(keys, loaded, results, stored) if new != old]
        list(pool.map(lambda write: rt.store.put_json(*write), changed))
    versions = sorted({result.model_version for result in results}) or [rt.model.version]
    exports = list(layout.EXPORT_NAMES)
    if tracking is not None:
        rt.store.put_bytes(layout.export_key(job_id, "cvat-video.xml"),
                           build_cvat_video(manifest, results, rt.detector.classes), "application/xml")
        rt.store.put_bytes(layout.export_key(job_id, "mot.txt"), build_mot(manifest, results).encode(), "text/plain")
        exports += ["cvat-video.xml", "mot.txt"]
        if manifest.video is not None:
            rt.store.put_json(layout.export_key(job_id, "labelstudio-video.json"),
                              [task.model_dump(mode="json") for task in build_labelstudio_video(manifest, results)])
            exports.append("labelstudio-video.json")
    summary = build_summary(manifest, results, status, rt.progress.timings(job_id),
                            model_version=",".join(versions), finished_at=time.time(), tracking=tracking,
                            exports=exports)
    rt.store.put_json(layout.export_key(job_id, "coco.json"), build_coco(manifest, results, rt.detector.classes))
    rt.store.put_json(layout.export_key(job_id, "labelstudio.json"),
                      [task.model_dump(mode="json") for task in build_labelstudio(manifest, results, rt.store.bucket)])
    rt.store.put_json(layout.export_key(job_id, "summary.json"), summary)
    rt.progress.mark_done(job_id)
    log.info("job %s finalized: %d labeled, %d failed, %d missing", job_id, summary.labeled_frames,
             len(summary.failed_frames), len(summary.missing_frames))


def _tracks(manifest: JobManifest, results: list[FrameResult]) -> tuple[list[FrameResult], TrackingSummary | None]:
    """``results`` (in manifest order), their detections linked into tracks when the job asked for
    it. Without tracking, track ids a reused result carries (from an earlier, tracked submission of
    the same job id) are cleared: they belonged to other frames' tracks."""
    if manifest.spec.track:
        return link_tracks(results)
    return [result.model_copy(update={"detections": tuple(d.model_copy(update={"track_id": None})
                                                           for d in result.detections)}) for result in results], None
