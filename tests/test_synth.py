"""The synthetic video is the oracle for every accuracy and pipeline test, so its own promises are checked here."""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from autolabel.synth import MIN_SIZE, SHAPE_CLASSES, generate_video, render_frames

WIDTH, HEIGHT, FPS, SECONDS = 320, 240, 10, 3.0


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    workdir = tmp_path_factory.mktemp("synth")
    mp4, truth = workdir / "a.mp4", workdir / "a.json"
    info = generate_video(mp4, truth, width=WIDTH, height=HEIGHT, fps=FPS, seconds=SECONDS, seed=7)
    assert (info.frames, info.width, info.height) == (30, WIDTH, HEIGHT)
    return mp4, json.loads(truth.read_text())


def _pyav_frames(mp4: Path) -> list[np.ndarray]:
    with av.open(str(mp4)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def test_pyav_and_opencv_read_every_frame_at_the_right_size(video: tuple[Path, dict]) -> None:
    mp4, truth = video
    pyav = _pyav_frames(mp4)
    capture = cv2.VideoCapture(str(mp4))
    opencv = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        opencv.append(frame)
    capture.release()
    assert len(pyav) == len(opencv) == len(truth["images"]) == 30
    assert {f.shape for f in pyav} == {f.shape for f in opencv} == {(HEIGHT, WIDTH, 3)}
    # Both decoders see the same picture (their YUV->BGR conversions differ by rounding only).
    assert np.abs(pyav[10].astype(int) - opencv[10].astype(int)).mean() < 3


def test_same_seed_same_video_other_seed_other_video(video: tuple[Path, dict], tmp_path: Path) -> None:
    mp4, truth = video
    generate_video(tmp_path / "b.mp4", tmp_path / "b.json", width=WIDTH, height=HEIGHT, fps=FPS,
                   seconds=SECONDS, seed=7)
    assert json.loads((tmp_path / "b.json").read_text()) == truth
    # The drawn frames are exact; the libx264 in PyAV's wheels is not bit-reproducible from run
    # to run, so each encoding is checked against the drawn frames, up to compression noise.
    drawn = [frame.image[..., ::-1].astype(int) for frame in render_frames(WIDTH, HEIGHT, 30, seed=7)]
    for decoded in (_pyav_frames(mp4), _pyav_frames(tmp_path / "b.mp4")):
        errors = [np.abs(d.astype(int) - e).mean() for d, e in zip(decoded, drawn, strict=True)]
        assert max(errors) < 4.0, errors
    generate_video(tmp_path / "c.mp4", tmp_path / "c.json", width=WIDTH, height=HEIGHT, fps=FPS,
                   seconds=SECONDS, seed=8)
    assert json.loads((tmp_path / "c.json").read_text())["annotations"] != truth["annotations"]


def test_coco_ground_truth_is_consistent(video: tuple[Path, dict]) -> None:
    _, truth = video
    assert [c["name"] for c in sorted(truth["categories"], key=lambda c: c["id"])] == list(SHAPE_CLASSES)
    assert [c["id"] for c in truth["categories"]] == [1, 2, 3]
    frames = {image["id"]: image for image in truth["images"]}
    assert sorted(image["frame_index"] for image in frames.values()) == list(range(30))
    assert truth["annotations"]
    for ann in truth["annotations"]:
        x, y, w, h = ann["bbox"]
        image = frames[ann["image_id"]]
        assert 0 <= x and 0 <= y and w > 0 and h > 0
        assert x + w <= image["width"] and y + h <= image["height"]
        assert 0 < ann["area"] <= w * h
        assert ann["iscrowd"] in (0, 1)


def test_ground_truth_boxes_hug_the_drawn_pixels() -> None:
    """An unoccluded object's box is exactly the extent of its colour, found in the pixels themselves."""
    checked = 0
    for frame in render_frames(640, 360, 10, seed=5):
        boxes = [a.box for a in frame.annotations]
        for ann in frame.annotations:
            x1, y1, x2, y2 = ann.box
            ex1, ey1, ex2, ey2 = max(0, x1 - 3), max(0, y1 - 3), min(640, x2 + 3), min(360, y2 + 3)
            alone = all(b == ann.box or b[2] <= ex1 or b[0] >= ex2 or b[3] <= ey1 or b[1] >= ey2 for b in boxes)
            if ann.ignore or not alone:
                continue
            region = frame.image[ey1:ey2, ex1:ex2].reshape(-1, 3)
            colours, counts = np.unique(region, axis=0, return_counts=True)
            colour = colours[counts.argmax()]  # every shape covers at least half its box
            ys, xs = np.nonzero((frame.image[ey1:ey2, ex1:ex2] == colour).all(axis=2))
            assert (ex1 + xs.min(), ey1 + ys.min(), ex1 + xs.max() + 1, ey1 + ys.max() + 1) == ann.box
            checked += 1
    assert checked >= 20


@pytest.fixture(scope="module")
def long_render() -> list:
    # Three 1280x720 videos' worth of annotations: enough objects for the statistics below.
    return [frame.annotations for seed in (11, 12, 13) for frame in render_frames(1280, 720, 100, seed)]


def test_all_classes_small_objects_overlaps_entries_and_exits(long_render: list) -> None:
    annotations = [ann for frame in long_render for ann in frame]
    visible = [ann for ann in annotations if not ann.ignore]
    assert {ann.class_id for ann in visible} == set(range(len(SHAPE_CLASSES)))
    sides = [max(a.box[2] - a.box[0], a.box[3] - a.box[1]) for a in visible]
    assert min(sides) <= MIN_SIZE + 2, "objects as small as ~12 px must be in the data"
    assert max(sides) >= 100
    assert any(a.ignore for a in annotations), "mostly hidden objects are marked, not silently kept"

    def overlaps(a, b) -> bool:
        return a.box[0] < b.box[2] and b.box[0] < a.box[2] and a.box[1] < b.box[3] and b.box[1] < a.box[3]

    assert any(overlaps(a, b) for frame in long_render for a, b in combinations(frame, 2))
    at_edge = [a for a in visible if a.box[0] == 0 or a.box[1] == 0 or a.box[2] == 1280 or a.box[3] == 720]
    assert at_edge, "objects must cross the frame's border"
    first, last = {a.track_id for a in long_render[0]}, {a.track_id for a in long_render[99]}
    assert last - first, "new objects enter during the video"
    assert first - last, "objects leave during the video"


def test_background_changes_over_time() -> None:
    frames = list(render_frames(320, 240, 40, seed=3))
    # Pixels no object covers in either frame still change: the background moves.
    assert np.abs(frames[0].image.astype(int) - frames[39].image.astype(int)).mean() > 5
