"""Export files built from known results: COCO boxes, Label Studio percentages, the summary."""

from __future__ import annotations

import pytest

from autolabel.contract import DetectOptions, FrameRef, FrameResult, JobManifest, JobSpec, VideoInfo
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


def test_labelstudio_percentages_match_values_worked_out_by_hand() -> None:
    """Percentages of each frame's own size, checked against figures worked out by hand (not by the code
    under test): a landscape and a portrait frame, so a width/height mix-up cannot pass."""
    frames = (FrameRef(frame_id="wide", key="up/wide.jpg"), FrameRef(frame_id="tall", key="up/tall.jpg"))
    manifest = JobManifest(spec=JobSpec(job_id="j", source="frames", options=DetectOptions(model="m")), frames=frames)
    results = [
        FrameResult(job_id="j", frame_id="wide", frame_index=None, timestamp=None, width=640, height=480, model="m",
                    model_version="abc", detections=(
                        # x 64/640 = 10 %, y 120/480 = 25 %, width 160/640 = 25 %, height 360/480 = 75 %
                        Detection(box=(64, 120, 224, 480), score=0.9, class_id=1, class_name="square"),
                        # x 0, y 0, width 640/640 = 100 %, height 48/480 = 10 %
                        Detection(box=(0, 0, 640, 48), score=0.5, class_id=0, class_name="circle"))),
        FrameResult(job_id="j", frame_id="tall", frame_index=None, timestamp=None, width=480, height=640, model="m",
                    model_version="abc", detections=(
                        # x 48/480 = 10 %, y 32/640 = 5 %, width 48/480 = 10 %, height 608/640 = 95 %
                        Detection(box=(48, 32, 96, 640), score=0.7, class_id=2, class_name="triangle"),)),
    ]
    tasks = [task.model_dump(mode="json") for task in build_labelstudio(manifest, results, bucket="b")]
    values = [[(r["value"]["x"], r["value"]["y"], r["value"]["width"], r["value"]["height"])
               for r in task["predictions"][0]["result"]] for task in tasks]
    assert values[0] == [pytest.approx((10.0, 25.0, 25.0, 75.0)), pytest.approx((0.0, 0.0, 100.0, 10.0))]
    assert values[1] == [pytest.approx((10.0, 5.0, 10.0, 95.0))]
    sizes = [(r["original_width"], r["original_height"]) for task in tasks for r in task["predictions"][0]["result"]]
    assert sizes == [(640, 480), (640, 480), (480, 640)]
    labels = [r["value"]["rectanglelabels"] for task in tasks for r in task["predictions"][0]["result"]]
    assert labels == [["square"], ["circle"], ["triangle"]]
    assert [task["data"]["image"] for task in tasks] == ["s3://b/up/wide.jpg", "s3://b/up/tall.jpg"]
    assert [task["predictions"][0]["score"] for task in tasks] == [pytest.approx(0.7), pytest.approx(0.7)]


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


def test_summary_carries_the_video_frames_read_and_expected(job) -> None:
    manifest, results = job
    video = VideoInfo(width=1280, height=720, fps=25.0, frame_count=40, frames_expected=100, duration_s=1.6)
    status = JobStatus(job_id="j", state=JobState.FINALIZING, total=3, done=2, failed=0, model="m",
                       source="v.mp4", created_at=100.0)
    summary = build_summary(manifest.model_copy(update={"video": video}), results, status, {},
                            model_version="abc", finished_at=105.0)
    written = summary.model_dump(mode="json")["video"]
    assert (written["frame_count"], written["frames_expected"]) == (40, 100)
    assert build_summary(manifest, results, status, {}, model_version="abc", finished_at=105.0).video is None
