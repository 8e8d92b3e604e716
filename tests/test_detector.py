"""Detector.predict: one batched forward pass that keeps each frame's detections its own, in its own pixels."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from autolabel.detections import Detection
from autolabel.synth import render_frames
from autolabel_worker.batching import Batcher
from autolabel_worker.detector import Detector
from autolabel_worker.models import REPO_CONFIGS_DIR, WEIGHTS_DIR

MODEL = "shapes-rtmdet-tiny"
# Tests may point at another checkpoint of the same model (for example a fresh training run).
CHECKPOINT = Path(os.environ.get("AUTOLABEL_TEST_SHAPES_CHECKPOINT", WEIGHTS_DIR / f"{MODEL}.pth"))


@pytest.fixture(scope="module")
def detector() -> Detector:
    assert CHECKPOINT.is_file(), f"the embedded model's weights are missing: {CHECKPOINT}"
    return Detector.load(REPO_CONFIGS_DIR / f"{MODEL}.py", CHECKPOINT)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    # BGR, as the worker decodes them; frames 0 and 25 of one video differ in every object's place.
    video = list(render_frames(1280, 720, 26, seed=31337))
    return [np.ascontiguousarray(video[i].image[..., ::-1]) for i in (0, 25)]


@pytest.fixture(scope="module")
def mixed_sizes(frames: list[np.ndarray]) -> list[np.ndarray]:
    big, other = frames
    return [
        big,
        cv2.resize(other, (640, 360), interpolation=cv2.INTER_AREA),
        np.ascontiguousarray(big[:, 160:1120]),  # 960x720, another aspect ratio
        np.ascontiguousarray(other[100:600, 300:900]),  # 600x500
    ]


def _confident(detections: list[Detection], threshold: float = 0.3) -> list[Detection]:
    return sorted((d for d in detections if d.score >= threshold), key=lambda d: (d.class_id, d.box))


def test_loads_weights_and_class_names(detector: Detector) -> None:
    assert detector.classes == ("circle", "square", "triangle")
    assert detector.report is not None and detector.report.clean


def test_batch_of_mixed_sizes_equals_one_by_one(detector: Detector, mixed_sizes: list[np.ndarray]) -> None:
    batch = mixed_sizes
    together = detector.predict(batch)
    alone = [detector.predict([image])[0] for image in batch]
    for image, batched, single in zip(batch, together, alone, strict=True):
        batched, single = _confident(batched), _confident(single)
        assert batched, "every test frame shows objects the model finds"
        assert [d.class_id for d in batched] == [d.class_id for d in single]
        for a, b in zip(batched, single):
            assert np.abs(np.subtract(a.box, b.box)).max() < 1e-3
            assert abs(a.score - b.score) < 1e-4
        height, width = image.shape[:2]
        assert all(0 <= d.box[0] < d.box[2] <= width and 0 <= d.box[1] < d.box[3] <= height for d in batched)
    # Different frames in one batch must not come back as each other's results.
    assert [d.box for d in _confident(together[0])] != [d.box for d in _confident(together[2])]


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


def test_boxes_are_in_the_original_frame_pixels(detector: Detector, frames: list[np.ndarray]) -> None:
    full = frames[0]
    half = cv2.resize(full, (640, 360), interpolation=cv2.INTER_AREA)
    big, small = detector.predict([full, half])
    # Objects large enough to survive halving; small ones may be lost in the downscale.
    large = [d for d in _confident(big, 0.5) if min(d.width, d.height) >= 30]
    assert len(large) >= 3
    for d in large:
        scaled = [tuple(2 * v for v in s.box) for s in small if s.class_id == d.class_id and s.score >= 0.3]
        best = max((_iou(d.box, s) for s in scaled), default=0.0)
        assert best >= 0.85, f"{d} has no counterpart at twice the size in the 640x360 frame"
    # And the boxes of the half-size frame are in its own pixels: none reaches past 640x360.
    assert max(s.box[2] for s in small) <= 640 and max(s.box[3] for s in small) <= 360


def test_the_batcher_splits_the_pass_across_threads_without_changing_a_detection(
        detector: Detector, mixed_sizes: list[np.ndarray]) -> None:
    # The Batcher runs the test pipeline and postprocessing on this thread, collate on its forming
    # thread and only the forward pass on the model's: the same detections as one predict call.
    batcher = Batcher(lambda: detector, max_batch=4)
    try:
        outcome = batcher.predict(mixed_sizes, 0.0)
        alone = batcher.predict(mixed_sizes[1:2], 0.0)
    finally:
        batcher.close()
    assert batcher.stats.sizes == [4, 1] and outcome.pass_sizes == [4, 4, 4, 4]
    assert outcome.results == detector.predict(mixed_sizes)
    assert alone.results == detector.predict(mixed_sizes[1:2])
