"""COCO mAP and recall of detections against ground truth, with pycocotools.

Detections are matched to ground-truth images by frame index and to categories by class
name, so an export's own ids never have to agree with the ground truth's.
"""

from __future__ import annotations

import contextlib
import io
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
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


def recall(ground_truth: dict[str, Any], boxes: Iterable[ScoredBox], iou_threshold: float = 0.5) -> float:
    """The share of the ground truth's objects found: each object (``iscrowd`` 0; crowd objects are
    not counted) matched by at most one box of its class and frame with IoU >= ``iou_threshold``,
    boxes taken by score, highest first, each to the free object it overlaps most (COCO's greedy
    matching, at one IoU and without a score cut: filter ``boxes`` first)."""
    names = {category["id"]: category["name"] for category in ground_truth["categories"]}
    frames = {image["id"]: image["frame_index"] for image in ground_truth["images"]}
    objects: dict[tuple[int, str], list[list[float]]] = defaultdict(list)
    for annotation in ground_truth["annotations"]:
        if not annotation["iscrowd"]:
            objects[(frames[annotation["image_id"]], names[annotation["category_id"]])].append(annotation["bbox"])
    found = 0
    by_key: dict[tuple[int, str], list[ScoredBox]] = defaultdict(list)
    for box in boxes:
        by_key[(box.frame_index, box.class_name)].append(box)
    for key, truth in objects.items():
        candidates = sorted(by_key.get(key, []), key=lambda box: -box.score)
        if not candidates:
            continue
        overlaps = mask_utils.iou([list(box.xywh) for box in candidates], truth, [0] * len(truth))
        free = np.ones(len(truth), bool)
        for row in np.asarray(overlaps):
            best = np.where(free, row, -1.0).argmax()
            if free[best] and row[best] >= iou_threshold:
                free[best] = False
                found += 1
    total = sum(len(truth) for truth in objects.values())
    return found / total if total else 1.0
