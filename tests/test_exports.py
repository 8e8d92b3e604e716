"""Export files built from known results: COCO boxes, Label Studio percentages, the summary."""

from __future__ import annotations

import pytest

from autolabel.contract import DetectOptions, FrameRef, FrameResult, JobManifest, JobSpec
from autolabel.detections import Detection
from autolabel.exports import build_coco, build_labelstudio, build_summary, labelstudio_to_pixels
from autolabel.progress import JobState, JobStatus

CLASSES = ("circle", "square", "triangle")


def _result(frame_id: str, index: int, detections: list[Detection]) -> FrameResult:
    return FrameResult(job_id="j", frame_id=frame_id, frame_index=index, timestamp=index / 10, width=1280,
                       height=720, model="m", model_version="abc", detections=tuple(detections))


@pytest.fixture
def job() -> tuple[JobManifest, list[FrameResult]]:
    frames = [FrameRef(frame_id=f"{i:08d}", key=f"jobs/j/frames/{i:08d}.jpg", index=i, timestamp=i / 10)
              for i in range(3)]
    spec = JobSpec(job_id="j", source="v.mp4", options=DetectOptions(model="m"))
    results = [
        # Written out of order: exports must follow the manifest's frame order.
        _result("00000002", 2, [Detection(box=(10, 20, 110, 70), score=0.9, class_id=2, class_name="triangle")]),
        _result("00000000", 0, [Detection(box=(0.5, 1.5, 12.5, 13.5), score=0.8, class_id=0, class_name="circle"),
                                Detection(box=(640, 360, 1280, 720), score=0.4, class_id=1, class_name="square")]),
    ]
    return JobManifest(spec=spec, frames=tuple(frames)), results


def test_coco_boxes_are_xywh_in_pixels(job) -> None:
    manifest, results = job
    coco = build_coco(manifest, results, CLASSES)
    assert [image.frame_id for image in coco.images] == ["00000000", "00000002"]
    assert coco.images[0].file_name == "jobs/j/frames/00000000.jpg"
    assert [c.name for c in coco.categories] == list(CLASSES)
    first = coco.annotations[0]
    assert first.bbox == (0.5, 1.5, 12.0, 12.0)
    assert first.area == 144.0
    assert first.category_id == 1 and coco.categories[0].id == 1
    assert {a.image_id for a in coco.annotations} == {1, 2}
    assert len({a.id for a in coco.annotations}) == 3


def test_labelstudio_boxes_convert_back_to_the_same_pixels(job) -> None:
    manifest, results = job
    tasks = build_labelstudio(manifest, results, bucket="labels")
    assert tasks[0].data["image"] == "s3://labels/jobs/j/frames/00000000.jpg"
    regions = tasks[0].predictions[0].result
    assert regions[1].value.x == pytest.approx(50.0) and regions[1].value.width == pytest.approx(50.0)
    originals = [d.box for d in results[1].detections]
    for region, box in zip(regions, originals):
        assert labelstudio_to_pixels(region) == pytest.approx(box, abs=1e-6)
        assert region.original_width == 1280 and region.original_height == 720


def test_summary_counts_classes_failures_and_missing(job) -> None:
    manifest, results = job
    status = JobStatus(job_id="j", state=JobState.FINALIZING, total=3, done=2, failed=0, model="m",
                       source="v.mp4", created_at=100.0, started_at=101.0)
    timings = {"frames_inferred": 2, "frames_per_pass_sum": 6, "device_seconds": 0.5}
    summary = build_summary(manifest, results, status, timings, model_version="abc", finished_at=105.0)
    assert summary.detections_per_class == {"circle": 1, "square": 1, "triangle": 1}
    assert summary.missing_frames == ["00000001"]
    assert summary.timings.wall_seconds == 4.0
    assert summary.timings.mean_frames_per_pass == 3.0 and summary.timings.device_seconds == 0.5
    status.failures = {"00000001": "FrameError: empty"}
    summary = build_summary(manifest, results, status, {}, model_version="abc", finished_at=105.0)
    assert summary.missing_frames == []
    assert summary.failed_frames[0].reason == "FrameError: empty"
