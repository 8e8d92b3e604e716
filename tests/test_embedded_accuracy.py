"""The embedded model meets its bar on a video it has never seen, through the real decode and inference path."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from autolabel.synth import generate_video
from autolabel_worker.detector import Detector
from autolabel_worker.evaluate import evaluate_video
from autolabel_worker.models import REPO_CONFIGS_DIR, WEIGHTS_DIR

MODEL = "shapes-rtmdet-tiny"
CHECKPOINT = Path(os.environ.get("AUTOLABEL_TEST_SHAPES_CHECKPOINT", WEIGHTS_DIR / f"{MODEL}.pth"))
# Training draws seeds 1000 * (seed + 1) + 1 onwards (a few dozen videos); the documented
# held-out video is 424242. This one is neither.
TEST_SEED = 9_090_909
# Measured on this video (the same at batch 1 and 4): mAP@0.5 0.9969, mAP@[.5:.95] 0.9147. The bars
# sit 0.02 below, so a regression of a few points fails here rather than hiding under a loose bar.
MAP50_BAR = 0.977
MAP_BAR = 0.895


@pytest.mark.slow
def test_map50_on_a_fresh_held_out_video(tmp_path: Path) -> None:
    assert CHECKPOINT.is_file(), f"the embedded model's weights are missing: {CHECKPOINT}"
    video, truth = tmp_path / "heldout.mp4", tmp_path / "heldout.json"
    info = generate_video(video, truth, width=1280, height=720, fps=10, seconds=4, seed=TEST_SEED)
    detector = Detector.load(REPO_CONFIGS_DIR / f"{MODEL}.py", CHECKPOINT)
    scores = evaluate_video(detector, video, truth, batch_size=4)
    assert scores["frames"] == info.frames == 40
    assert sum(not a["iscrowd"] for a in json.loads(truth.read_text())["annotations"]) >= 200
    assert scores["map50"] >= MAP50_BAR, scores
    assert scores["map"] >= MAP_BAR, scores
