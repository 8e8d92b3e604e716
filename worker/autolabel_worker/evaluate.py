"""Accuracy and speed of a detector on a held-out synthetic video: ``python -m autolabel_worker.evaluate``."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from autolabel.synth import generate_video
from autolabel_worker.detector import Detector
from autolabel_worker.models import REPO_CONFIGS_DIR, WEIGHTS_DIR
from autolabel_worker.scoring import ScoredBox, map_scores


def decode_bgr(video: Path) -> list[np.ndarray]:
    with av.open(str(video)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def evaluate_video(detector: Detector, workdir: Path, *, seed: int, width: int = 1280, height: int = 720,
                   seconds: float = 6.0, fps: int = 10, batch_size: int = 4) -> dict[str, float]:
    """mAP@[.5:.95] and mAP@0.5 of batched predictions on a freshly generated video, decoded from MP4."""
    video, gt_path = workdir / f"heldout-{seed}.mp4", workdir / f"heldout-{seed}.json"
    generate_video(video, gt_path, width=width, height=height, fps=fps, seconds=seconds, seed=seed)
    frames = decode_bgr(video)
    boxes: list[ScoredBox] = []
    for start in range(0, len(frames), batch_size):
        for index, detections in enumerate(detector.predict(frames[start:start + batch_size], 0.05), start=start):
            boxes += [ScoredBox(index, d.class_name, d.xywh(), d.score) for d in detections]
    scores = map_scores(json.loads(gt_path.read_text()), boxes)
    return {"map": round(scores.map, 4), "map50": round(scores.map50, 4), "frames": len(frames)}


def frames_per_second(detector: Detector, batch_size: int, repeats: int = 3, size: tuple[int, int] = (1280, 720)) -> float:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8) for _ in range(batch_size)]
    detector.predict(images)
    started = time.perf_counter()
    for _ in range(repeats):
        detector.predict(images)
    return batch_size * repeats / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="shapes-rtmdet-tiny")
    parser.add_argument("--seed", type=int, default=424242)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    detector = Detector.load(REPO_CONFIGS_DIR / f"{args.model}.py", WEIGHTS_DIR / f"{args.model}.pth")
    with tempfile.TemporaryDirectory() as tmp:
        scores = evaluate_video(detector, Path(tmp), seed=args.seed, seconds=args.seconds)
    print(f"held-out seed {args.seed}, {scores['frames']} frames at 1280x720: "
          f"mAP@[.5:.95] {scores['map']:.3f}  mAP@0.5 {scores['map50']:.3f}")
    for batch_size in (1, 4):
        print(f"batch {batch_size}: {frames_per_second(detector, batch_size):.2f} frames/s at 1280x720 on CPU")


if __name__ == "__main__":
    main()
