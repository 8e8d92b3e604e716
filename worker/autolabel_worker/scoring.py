"""COCO mAP of detections against ground truth, with pycocotools.

Detections are matched to ground-truth images by frame index and to categories by class
name, so an export's own ids never have to agree with the ground truth's.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from autolabel.exports import CocoFile


@dataclass(frozen=True)
class ScoredBox:
    frame_index: int
    class_name: str
    xywh: tuple[float, float, float, float]
    score: float


@dataclass(frozen=True)
class MapScores:
    map: float  # mAP@[.5:.95]
    map50: float


def map_scores(ground_truth: dict[str, Any], boxes: Iterable[ScoredBox]) -> MapScores:
    image_by_frame = {image["frame_index"]: image["id"] for image in ground_truth["images"]}
    category_by_name = {category["name"]: category["id"] for category in ground_truth["categories"]}
    results = [
        {"image_id": image_by_frame[box.frame_index], "category_id": category_by_name[box.class_name],
         "bbox": list(box.xywh), "score": box.score}
        for box in boxes
        if box.frame_index in image_by_frame and box.class_name in category_by_name
    ]
    if not results:
        return MapScores(0.0, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt = COCO()
        gt.dataset = ground_truth
        gt.createIndex()
        evaluation = COCOeval(gt, gt.loadRes(results), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return MapScores(map=float(evaluation.stats[0]), map50=float(evaluation.stats[1]))


def export_boxes(export: CocoFile) -> list[ScoredBox]:
    """The boxes of a job's COCO export, keyed for ``map_scores``."""
    frames = {image.id: image.frame_index for image in export.images}
    names = {category.id: category.name for category in export.categories}
    return [ScoredBox(frames[a.image_id], names[a.category_id], a.bbox, a.score) for a in export.annotations
            if frames[a.image_id] is not None]
