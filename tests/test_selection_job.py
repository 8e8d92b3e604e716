"""Frame selection in a real job: a generated video with static stretches and a cut, labeled once
with every frame and once with --skip-similar, by a real worker pool on the session's services.

The figures (frames kept, device time saved, recall of the ground truth's objects with the kept
frames' labels carried to the dropped ones against labeling every frame) are printed for
docs/results.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from autolabel import layout
from autolabel.client import LabelingClient
from autolabel.devservices import DevStack
from autolabel.errors import InvalidInputError
from autolabel.exports import CocoFile, Summary
from autolabel.synth import generate_video
from autolabel_worker.evaluate import carried_boxes
from autolabel_worker.scoring import ScoredBox, export_boxes, recall
from workerpool import Pool, small_canvas_configs

pytestmark = pytest.mark.integration
BIN = Path(sys.executable).parent

FRAMES, STILLS, CUTS = 40, ((4, 14), (26, 32)), (20,)
# Frames after the first of each still stretch show its picture again.
DROPPED = [index for start, end in STILLS for index in range(start + 1, end + 1)]
SKIP_SIMILAR = 0.002


def test_recall_counts_each_object_once_by_class_and_iou() -> None:
    truth = {"images": [{"id": 1, "frame_index": 0}, {"id": 2, "frame_index": 1}],
             "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"}],
             "annotations": [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},
                             {"image_id": 1, "category_id": 1, "bbox": [1, 0, 10, 10], "iscrowd": 0},
                             {"image_id": 1, "category_id": 2, "bbox": [50, 50, 10, 10], "iscrowd": 0},
                             {"image_id": 2, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 1}]}
    boxes = [ScoredBox(0, "circle", (0, 0, 10, 10), 0.9),  # one box for two overlapping circles: one found
             ScoredBox(0, "circle", (30, 30, 10, 10), 0.8),  # overlaps nothing
             ScoredBox(0, "circle", (50, 50, 10, 10), 0.7)]  # on the square, but another class
    assert recall(truth, boxes) == 1 / 3  # the crowd object of frame 1 is not counted
    assert recall(truth, boxes + [ScoredBox(0, "circle", (1, 0, 10, 10), 0.5)]) == 2 / 3


@pytest.fixture(scope="module")
def pool(devstack: DevStack, repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pool]:
    configs = small_canvas_configs(repo_root, tmp_path_factory.mktemp("configs"))
    with Pool(devstack, configs, tmp_path_factory.mktemp("pool") / "pool.log", processes=1, env={}) as started:
        yield started


def _exports(client: LabelingClient, job_id: str) -> tuple[CocoFile, Summary]:
    client.wait(job_id, timeout=600)
    return (CocoFile.model_validate(client.store.get_json(layout.export_key(job_id, "coco.json"))),
            Summary.model_validate(client.store.get_json(layout.export_key(job_id, "summary.json"))))


def test_a_cut_threshold_without_selection_is_refused(devstack: DevStack, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="give skip_similar"):
        LabelingClient(devstack.settings()).submit_video(tmp_path / "any.mp4", cut_threshold=0.3)


def test_a_job_with_frame_selection_labels_fewer_frames_and_finds_the_same_objects(
    devstack: DevStack, pool: Pool, tmp_path: Path
) -> None:
    video, truth_path = tmp_path / "stills.mp4", tmp_path / "stills.json"
    generate_video(video, truth_path, width=320, height=180, fps=10, seconds=FRAMES / 10, seed=6161,
                   stills=STILLS, cuts=CUTS)
    truth = json.loads(truth_path.read_text())
    client = LabelingClient(devstack.settings())

    every_id = client.submit_video(video)
    every, every_summary = _exports(client, every_id)
    # Through the CLI, which prints the counts.
    submitted = subprocess.run([str(BIN / "autolabel"), "submit", str(video), "--skip-similar", str(SKIP_SIMILAR)],
                               env=devstack.subprocess_env(), capture_output=True, text=True, timeout=300)
    assert submitted.returncode == 0, submitted.stderr
    assert (f"frame selection: {FRAMES - len(DROPPED)} of {FRAMES} sampled frames kept ({len(CUTS)} scene cuts), "
            f"{len(DROPPED)} near-duplicates dropped") in submitted.stderr
    job_id = submitted.stdout.strip()
    coco, summary = _exports(client, job_id)

    manifest = client.manifest(job_id)
    report = manifest.selection
    assert report is not None and summary.selection == report
    assert (report.considered, report.kept) == (FRAMES, FRAMES - len(DROPPED))
    assert [frame.index for frame in report.dropped] == DROPPED
    assert {frame.reason for frame in report.dropped} == {"similar"}
    assert report.cuts == tuple(layout.video_frame_id(index) for index in CUTS)
    assert report.kept_by_reason == {"first": 1, "cut": len(CUTS), "changed": FRAMES - len(DROPPED) - 1 - len(CUTS)}
    # Only kept frames were uploaded, labeled and exported.
    kept = [frame.index for frame in manifest.frames]
    assert kept == [index for index in range(FRAMES) if index not in DROPPED]
    assert len(client.store.list_keys(layout.job_prefix(job_id) + "frames/")) == report.kept
    assert [image.frame_index for image in coco.images] == kept
    studio = client.store.get_json(layout.export_key(job_id, "labelstudio.json"))
    assert [task["data"]["frame_index"] for task in studio] == kept
    assert (summary.total_frames, summary.labeled_frames, every_summary.labeled_frames) == (report.kept, report.kept,
                                                                                            FRAMES)

    # The kept frames' labels carried to the dropped ones, against labeling every frame.
    threshold = 0.3  # the jobs' score threshold
    all_boxes = [box for box in export_boxes(every) if box.score >= threshold]
    carried = carried_boxes(manifest, [box for box in export_boxes(coco) if box.score >= threshold])
    first_dropped = report.dropped[0]
    assert sorted(b.xywh for b in carried if b.frame_index == first_dropped.index) == sorted(
        b.xywh for b in carried if b.frame_index == int(first_dropped.like))
    every_recall, selected_recall = recall(truth, all_boxes), recall(truth, carried)
    per_frame_s = every_summary.timings.device_seconds / every_summary.labeled_frames
    print(f"frame selection: {report.kept}/{report.considered} frames kept, {len(report.dropped)} dropped; "
          f"device {every_summary.timings.device_seconds:.2f} s for every frame, "
          f"{summary.timings.device_seconds:.2f} s with selection; {per_frame_s * 1000:.0f} ms a frame, "
          f"{per_frame_s * len(report.dropped):.2f} s saved; recall@0.5 every frame {every_recall:.3f}, "
          f"selected and carried {selected_recall:.3f} (job {every_id} / {job_id})")
    # Not a figure of the model: 320x180 frames on a 320x192 canvas put its 12-140 px shapes out of
    # the proportions it was trained on; what matters here is the comparison below.
    assert every_recall > 0.5
    # The dropped frames show the picture of the kept frame they carry from, up to compression noise.
    assert selected_recall >= every_recall - 0.02
