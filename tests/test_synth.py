"""The synthetic video and its ground truth: deterministic, readable, and as specified."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from autolabel.synth import SHAPE_CLASSES, generate_video, render_frames


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    info = generate_video(out / "v.mp4", out / "v.json", width=640, height=360, fps=10, seconds=6, seed=11)
    assert info.frames == 60
    return info.video, json.loads(info.ground_truth.read_text())


def test_same_seed_same_frames_other_seed_other_frames() -> None:
    def digest(seed: int) -> str:
        return hashlib.sha256(b"".join(f.image.tobytes() for f in render_frames(320, 240, 5, seed))).hexdigest()

    assert digest(3) == digest(3)
    assert digest(3) != digest(4)


def test_readable_by_pyav_and_opencv(video) -> None:
    path, gt = video
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == len(gt["images"]) == 60
    assert frames[0].shape == (360, 640, 3)
    capture = cv2.VideoCapture(str(path))
    count = 0
    while capture.read()[0]:
        count += 1
    assert count == 60


def test_ground_truth_matches_the_spec(video) -> None:
    _, gt = video
    assert [c["name"] for c in gt["categories"]] == list(SHAPE_CLASSES)
    boxes = [a for a in gt["annotations"] if not a["iscrowd"]]
    assert {a["category_id"] for a in boxes} == {1, 2, 3}
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 640 and y + h <= 360 and w > 0 and h > 0
    assert min(max(a["bbox"][2], a["bbox"][3]) for a in boxes) <= 14  # small objects exist
    tracks = Counter(a["track_id"] for a in gt["annotations"])
    # Objects enter and leave: some tracks do not span the whole video.
    assert min(tracks.values()) < len(gt["images"])
    assert len(tracks) > max(len([a for a in gt["annotations"] if a["image_id"] == 1]), 1)


def test_boxes_are_where_the_colour_is(video) -> None:
    """Decoded pixels inside a large box differ from the background around it."""
    path, gt = video
    with av.open(str(path)) as container:
        first = next(iter(container.decode(video=0))).to_ndarray(format="rgb24").astype(int)
    big = max((a for a in gt["annotations"] if a["image_id"] == 1 and not a["iscrowd"]), key=lambda a: a["area"])
    x, y, w, h = (int(v) for v in big["bbox"])
    centre = first[y + h // 2, x + w // 2]
    saturation = centre.max() - centre.min()
    grey_levels = first.max(axis=2) - first.min(axis=2)
    assert saturation > np.percentile(grey_levels, 50) or centre.max() > 235 or centre.max() < 30
