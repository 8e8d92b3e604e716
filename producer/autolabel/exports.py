"""The job's export files, built from its manifest and per-frame results.

COCO: category ids are class ids + 1 (0 stays free for tools that reserve it for background);
``file_name`` is the frame's object key in the bucket. Label Studio: one task per frame with
one prediction whose boxes are in percent of the original image size, as its import expects.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone

from pydantic import BaseModel, Field

from autolabel.contract import FrameResult, JobManifest, SelectionReport, VideoInfo
from autolabel.progress import DeadLetter, JobStatus


class CocoImage(BaseModel):
    id: int
    file_name: str
    width: int
    height: int
    frame_id: str
    frame_index: int | None
    timestamp: float | None


class CocoCategory(BaseModel):
    id: int
    name: str


class CocoAnnotation(BaseModel):
    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    area: float
    score: float
    iscrowd: int = 0
    track_id: int | None = Field(None, description="the detection's track (jobs with tracking), as in its result file")


class CocoFile(BaseModel):
    info: dict[str, str]
    images: list[CocoImage]
    categories: list[CocoCategory]
    annotations: list[CocoAnnotation]


class LabelStudioValue(BaseModel):
    x: float
    y: float
    width: float
    height: float
    rotation: float = 0.0
    rectanglelabels: list[str]


class LabelStudioRegion(BaseModel):
    id: str
    type: str = "rectanglelabels"
    from_name: str = "label"
    to_name: str = "image"
    original_width: int
    original_height: int
    image_rotation: int = 0
    value: LabelStudioValue
    score: float


class LabelStudioPrediction(BaseModel):
    model_version: str
    score: float
    result: list[LabelStudioRegion]


class LabelStudioTask(BaseModel):
    data: dict[str, str | int | float | None]
    predictions: list[LabelStudioPrediction]


class FailedFrame(BaseModel):
    frame_id: str
    reason: str


class Timings(BaseModel):
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime
    wall_seconds: float = Field(description="first batch started to exports written")
    frames_per_second: float
    device_seconds: float = Field(description="forward-pass time, each pass split over its frames")
    mean_frames_per_pass: float = Field(description="average size of the forward passes the frames rode in")
    forward_passes: float = Field(0.0, description="forward passes the job's frames went through (a pass shared "
                                  "with another job's frames counts as the job's share of it); compare with "
                                  "the workers' autolabel_forward_seconds_count")


class TrackingSummary(BaseModel):
    """How the job's detections were linked into tracks (jobs submitted with tracking)."""

    tracker: str = Field(description="library, version and algorithm that linked the detections")
    parameters: dict[str, float] = Field(description="the tracker's settings")
    tracks: int = Field(description="tracks made")
    untracked: int = Field(description="detections on no track (track_id null): low-score boxes that continue no "
                           "track, boxes whose track never got a second box; in COCO, not in the track exports")
    seconds: float = Field(description="wall time of the linking, on CPU in finalize; no device time")


class Summary(BaseModel):
    job_id: str
    source: str
    model: str
    model_version: str
    total_frames: int
    labeled_frames: int
    failed_frames: list[FailedFrame]
    dead_letters: list[DeadLetter] = Field(default=[], description="tasks given up after their deliveries kept "
                                           "dying; their frames are among failed_frames")
    missing_frames: list[str]
    frames_with_detections: int
    detections: int
    detections_per_class: dict[str, int]
    selection: SelectionReport | None = Field(default=None, description="frames considered and kept, and why each "
                                              "other was dropped (the manifest's); the exports list kept frames only")
    video: VideoInfo | None = Field(default=None, description="the source video as the producer read it (the "
                                    "manifest's); frames_expected above frame_count: the file was truncated")
    timings: Timings
    tracking: TrackingSummary | None = Field(default=None, description="null: the job was submitted without tracking")
    exports: list[str] = Field(default=["coco.json", "labelstudio.json", "summary.json"],
                               description="the export files written for the job, beside it under jobs/JOB_ID/")


def in_frame_order(manifest: JobManifest, results: Sequence[FrameResult]) -> list[FrameResult]:
    by_id = {result.frame_id: result for result in results}
    return [by_id[frame.frame_id] for frame in manifest.frames if frame.frame_id in by_id]


def build_coco(manifest: JobManifest, results: Sequence[FrameResult], classes: Sequence[str]) -> CocoFile:
    keys = {frame.frame_id: frame.key for frame in manifest.frames}
    images: list[CocoImage] = []
    annotations: list[CocoAnnotation] = []
    for image_id, result in enumerate(in_frame_order(manifest, results), start=1):
        images.append(CocoImage(id=image_id, file_name=keys[result.frame_id], width=result.width,
                                height=result.height, frame_id=result.frame_id,
                                frame_index=result.frame_index, timestamp=result.timestamp))
        for det in result.detections:
            x, y, w, h = det.xywh()
            annotations.append(CocoAnnotation(id=len(annotations) + 1, image_id=image_id,
                                              category_id=det.class_id + 1, bbox=(x, y, w, h),
                                              area=w * h, score=det.score, track_id=det.track_id))
    categories = [CocoCategory(id=class_id + 1, name=name) for class_id, name in enumerate(classes)]
    info = {"description": f"autolabel job {manifest.spec.job_id}", "source": manifest.spec.source,
            "model": manifest.spec.options.model}
    return CocoFile(info=info, images=images, categories=categories, annotations=annotations)


def build_labelstudio(manifest: JobManifest, results: Sequence[FrameResult], bucket: str) -> list[LabelStudioTask]:
    keys = {frame.frame_id: frame.key for frame in manifest.frames}
    tasks: list[LabelStudioTask] = []
    for result in in_frame_order(manifest, results):
        regions = [
            LabelStudioRegion(
                id=f"{result.frame_id}-{n}",
                original_width=result.width,
                original_height=result.height,
                value=LabelStudioValue(
                    x=100.0 * det.box[0] / result.width,
                    y=100.0 * det.box[1] / result.height,
                    width=100.0 * det.width / result.width,
                    height=100.0 * det.height / result.height,
                    rectanglelabels=[det.class_name],
                ),
                score=det.score,
            )
            for n, det in enumerate(result.detections)
        ]
        mean_score = sum(r.score for r in regions) / len(regions) if regions else 0.0
        tasks.append(LabelStudioTask(
            data={"image": f"s3://{bucket}/{keys[result.frame_id]}", "frame_id": result.frame_id,
                  "frame_index": result.frame_index, "timestamp": result.timestamp},
            predictions=[LabelStudioPrediction(model_version=f"{result.model}@{result.model_version}",
                                               score=mean_score, result=regions)],
        ))
    return tasks


def labelstudio_to_pixels(region: LabelStudioRegion) -> tuple[float, float, float, float]:
    """A Label Studio rectangle back in original-image pixels (x1, y1, x2, y2)."""
    v, w, h = region.value, region.original_width, region.original_height
    x1, y1 = v.x * w / 100.0, v.y * h / 100.0
    return (x1, y1, x1 + v.width * w / 100.0, y1 + v.height * h / 100.0)


def _utc(timestamp: float | None) -> datetime | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, timezone.utc)


def build_summary(
    manifest: JobManifest,
    results: Sequence[FrameResult],
    status: JobStatus,
    timings: dict[str, float],
    *,
    model_version: str,
    finished_at: float,
    tracking: TrackingSummary | None = None,
    exports: Sequence[str] = ("coco.json", "labelstudio.json", "summary.json"),
) -> Summary:
    per_class: Counter[str] = Counter(det.class_name for result in results for det in result.detections)
    labeled = {result.frame_id for result in results}
    failed = [FailedFrame(frame_id=fid, reason=reason) for fid, reason in sorted(status.failures.items())]
    failed_ids = {f.frame_id for f in failed}
    missing = [f.frame_id for f in manifest.frames if f.frame_id not in labeled and f.frame_id not in failed_ids]
    start = status.started_at or status.created_at
    wall = max(finished_at - start, 1e-6)
    inferred = timings.get("frames_inferred", 0.0)
    return Summary(
        job_id=manifest.spec.job_id,
        source=manifest.spec.source,
        model=manifest.spec.options.model,
        model_version=model_version,
        total_frames=len(manifest.frames),
        labeled_frames=len(labeled),
        failed_frames=failed,
        dead_letters=status.dead_letters,
        missing_frames=missing,
        frames_with_detections=sum(1 for result in results if result.detections),
        detections=sum(per_class.values()),
        detections_per_class=dict(sorted(per_class.items())),
        selection=manifest.selection,
        video=manifest.video,
        timings=Timings(
            created_at=_utc(status.created_at),
            started_at=_utc(status.started_at),
            finished_at=_utc(finished_at),
            wall_seconds=round(wall, 3),
            frames_per_second=round(len(labeled) / wall, 3),
            device_seconds=round(timings.get("device_seconds", 0.0), 3),
            mean_frames_per_pass=round(timings.get("frames_per_pass_sum", 0.0) / inferred, 3) if inferred else 0.0,
            forward_passes=round(timings.get("forward_passes", 0.0), 3),
        ),
        tracking=tracking,
        exports=list(exports),
    )
