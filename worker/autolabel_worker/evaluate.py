"""Accuracy and speed of a detector on a held-out synthetic video: ``python -m autolabel_worker.evaluate``.

``--skip-similar SHARE [SHARE ...]``: what frame selection saves and loses instead, on a held-out video with
still stretches and cuts or on any ``--video`` (with ``--gt``, its COCO ground truth)."""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np

from autolabel import layout
from autolabel.contract import DetectOptions, FrameRef, JobManifest, JobSpec, Sampling, Selection
from autolabel.selection import FrameSelector, labels_for_frames
from autolabel.synth import generate_video
from autolabel_worker.detector import Detector
from autolabel_worker.models import REPO_CONFIGS_DIR, WEIGHTS_DIR
from autolabel.video import iter_sampled_frames
from autolabel_worker.scoring import ScoredBox, map_scores, recall

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


@dataclass(frozen=True)
class SelectionFigures:
    """Frame selection on one video against labeling every frame (one detector, the job's score threshold)."""

    rule: Selection
    considered: int
    kept: int
    cuts: int
    seconds_per_frame: float  # forward-pass time a frame, labeling every frame
    recall_every: float | None  # of the ground truth's objects, labeling every frame (None: no ground truth)
    recall_carried: float | None  # the same, kept frames labeled and their labels carried to the dropped ones
    agreement: float  # the every-frame labels found by the carried ones (IoU >= 0.5): needs no ground truth

    @property
    def seconds_saved(self) -> float:
        return (self.considered - self.kept) * self.seconds_per_frame


def evaluate_selection(detector: Detector, model: str, video: Path, rules: Sequence[Selection],
                       truth: dict | None = None, batch_size: int = 4,
                       score_threshold: float = 0.3) -> list[SelectionFigures]:
    """Label every frame of ``video`` once (decoded as the producer decodes it), then select frames
    with each rule; the kept frames' labels are their own (the embedded model's fixed canvas makes
    results independent of the batch), the dropped frames' those of the kept frame standing for them."""
    frames = list(iter_sampled_frames(video, Sampling()))
    boxes: list[ScoredBox] = []
    seconds = 0.0
    for start in range(0, len(frames), batch_size):
        batch = frames[start:start + batch_size]
        started = time.perf_counter()
        outputs = detector.predict([np.asarray(frame.image)[..., ::-1] for frame in batch], score_threshold)
        seconds += time.perf_counter() - started
        boxes += [ScoredBox(frame.index, d.class_name, d.xywh(), d.score)
                  for frame, detections in zip(batch, outputs) for d in detections]
    every_frame = _as_truth(boxes, [frame.index for frame in frames])
    figures = []
    for rule in rules:
        selector = FrameSelector(rule)
        kept = {frame.index for frame in frames if selector.consider(frame.index, frame.timestamp, frame.image)}
        report = selector.report()
        manifest = JobManifest(
            spec=JobSpec(job_id="evaluate", source=str(video), options=DetectOptions(model=model), selection=rule),
            selection=report,
            frames=tuple(FrameRef(frame_id=layout.video_frame_id(index), index=index,
                                  key=f"frames/{layout.video_frame_id(index)}.jpg") for index in sorted(kept)))
        carried = carried_boxes(manifest, [box for box in boxes if box.frame_index in kept])
        figures.append(SelectionFigures(
            rule=rule, considered=report.considered, kept=report.kept, cuts=len(report.cuts),
            seconds_per_frame=seconds / len(frames),
            recall_every=recall(truth, boxes) if truth else None,
            recall_carried=recall(truth, carried) if truth else None,
            agreement=recall(every_frame, carried)))
    return figures


def _as_truth(boxes: list[ScoredBox], frame_indices: list[int]) -> dict:
    """Boxes as COCO ground truth, for the recall of one labeling against another."""
    names = sorted({box.class_name for box in boxes})
    return {"images": [{"id": n + 1, "frame_index": index} for n, index in enumerate(frame_indices)],
            "categories": [{"id": n + 1, "name": name} for n, name in enumerate(names)],
            "annotations": [{"image_id": frame_indices.index(box.frame_index) + 1,
                             "category_id": names.index(box.class_name) + 1, "bbox": list(box.xywh), "iscrowd": 0}
                            for box in boxes]}


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


def _print_selection(detector: Detector, args: argparse.Namespace) -> None:
    rules = [Selection(skip_similar=share, cut_threshold=args.cut_threshold) for share in args.skip_similar]
    with tempfile.TemporaryDirectory() as tmp:
        video, truth = args.video, args.gt
        if video is None:
            # A third of the video in two still stretches, and two cuts.
            count = round(args.seconds * 10)
            video, truth = Path(tmp) / "heldout.mp4", Path(tmp) / "heldout.json"
            generate_video(video, truth, width=1280, height=720, fps=10, seconds=args.seconds, seed=args.seed,
                           stills=((count // 10, 3 * count // 10), (6 * count // 10, 7 * count // 10)),
                           cuts=(count // 2, 8 * count // 10))
        all_figures = evaluate_selection(detector, args.model, video, rules,
                                         json.loads(truth.read_text()) if truth else None)
    print(f"{video.name if args.video else f'held-out seed {args.seed} with stills and cuts'}: "
          f"{all_figures[0].seconds_per_frame:.3f} s a frame labeling every frame"
          + (f", recall@0.5 {all_figures[0].recall_every:.3f}" if truth else ""))
    for figures in all_figures:
        print(f"skip_similar {figures.rule.skip_similar}: {figures.kept} of {figures.considered} frames kept "
              f"({figures.cuts} cuts), {figures.seconds_saved:.1f} s saved; "
              + (f"recall@0.5 kept + carried {figures.recall_carried:.3f}; " if truth else "")
              + f"every-frame labels the carried ones find: {figures.agreement:.3f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="shapes-rtmdet-tiny", help="config name in configs/ with weights in weights/")
    parser.add_argument("--seed", type=int, default=424242, help="seed of the held-out video")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of the held-out 10 fps video")
    parser.add_argument("--skip-similar", type=float, nargs="+",
                        help="measure frame selection with these thresholds instead (every frame labeled once)")
    parser.add_argument("--cut-threshold", type=float, default=0.1, help="frame selection's cut threshold")
    parser.add_argument("--video", type=Path, help="with --skip-similar: this video, not a generated one")
    parser.add_argument("--gt", type=Path, help="--video's COCO ground truth (images with frame_index)")
    args = parser.parse_args(argv)
    detector = Detector.load(REPO_CONFIGS_DIR / f"{args.model}.py", WEIGHTS_DIR / f"{args.model}.pth")
    if args.skip_similar is not None:
        _print_selection(detector, args)
        return
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
