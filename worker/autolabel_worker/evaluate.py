"""Accuracy and speed of a detector on a held-out synthetic video: ``python -m autolabel_worker.evaluate``."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import av
import numpy as np

from autolabel.contract import JobManifest
from autolabel.selection import labels_for_frames
from autolabel.synth import generate_video
from autolabel_worker.detector import Detector
from autolabel_worker.models import REPO_CONFIGS_DIR, WEIGHTS_DIR
from autolabel_worker.scoring import ScoredBox, map_scores

# Low enough that the precision-recall curve is complete; the job's own threshold is separate.
EVAL_SCORE_THRESHOLD = 0.01


def decode_bgr(video: Path) -> list[np.ndarray]:
    """Every frame of a video as BGR arrays, decoded the way the worker decodes them (PyAV)."""
    with av.open(str(video)) as container:
        return [frame.to_ndarray(format="bgr24") for frame in container.decode(video=0)]


def evaluate_video(detector: Detector, mp4: Path, coco_gt_json: Path, batch_size: int = 4) -> dict[str, float]:
    """COCO mAP@[.5:.95] and mAP@0.5 (pycocotools) of batched predictions on a decoded video.

    Ground-truth images are matched by ``frame_index`` to the decoding order, categories by name.
    """
    frames = decode_bgr(mp4)
    boxes: list[ScoredBox] = []
    for start in range(0, len(frames), batch_size):
        batch = frames[start:start + batch_size]
        for index, detections in enumerate(detector.predict(batch, EVAL_SCORE_THRESHOLD), start=start):
            boxes += [ScoredBox(index, d.class_name, d.xywh(), d.score) for d in detections]
    scores = map_scores(json.loads(coco_gt_json.read_text()), boxes)
    return {"map": round(scores.map, 4), "map50": round(scores.map50, 4), "frames": len(frames)}


def carried_boxes(manifest: JobManifest, boxes: Iterable[ScoredBox]) -> list[ScoredBox]:
    """A frame-selection job's boxes on every sampled frame: each dropped frame gets the boxes of the
    kept frame that stands for it (labels carried forward, as a labeling tool would show them)."""
    index_of = {frame.frame_id: frame.index for frame in manifest.frames}
    by_index: dict[int | None, list[ScoredBox]] = defaultdict(list)
    for box in boxes:
        by_index[box.frame_index].append(box)
    return [replace(box, frame_index=index) for index, frame_id in sorted(labels_for_frames(manifest).items())
            for box in by_index[index_of[frame_id]]]


def frames_per_second(detector: Detector, batch_size: int, repeats: int = 3,
                      size: tuple[int, int] = (1280, 720)) -> float:
    """Throughput of ``predict`` on batches of ``size`` frames, after one warm-up batch."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8) for _ in range(batch_size)]
    detector.predict(images)
    started = time.perf_counter()
    for _ in range(repeats):
        detector.predict(images)
    return batch_size * repeats / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="shapes-rtmdet-tiny", help="config name in configs/ with weights in weights/")
    parser.add_argument("--seed", type=int, default=424242, help="seed of the held-out video")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of the held-out 10 fps video")
    args = parser.parse_args(argv)
    detector = Detector.load(REPO_CONFIGS_DIR / f"{args.model}.py", WEIGHTS_DIR / f"{args.model}.pth")
    with tempfile.TemporaryDirectory() as tmp:
        video, truth = Path(tmp) / "heldout.mp4", Path(tmp) / "heldout.json"
        generate_video(video, truth, width=1280, height=720, fps=10, seconds=args.seconds, seed=args.seed)
        scores = evaluate_video(detector, video, truth)
    print(f"held-out seed {args.seed}, {scores['frames']} frames at 1280x720: "
          f"mAP@[.5:.95] {scores['map']:.3f}  mAP@0.5 {scores['map50']:.3f}")
    for batch_size in (1, 4):
        print(f"batch {batch_size}: {frames_per_second(detector, batch_size):.2f} frames/s at 1280x720 on CPU")


if __name__ == "__main__":
    main()
