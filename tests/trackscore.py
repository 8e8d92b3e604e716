"""MOTA, IDF1 and ID switches of a job's tracks against a synthetic video's ground truth, by motmetrics.

The ground truth is the generator's COCO file (``autolabel.synth``): its ``track_id`` is each
object's identity and ``iscrowd`` marks boxes too hidden to count. Tests import this module the
way they import workerpool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import motmetrics
import numpy as np
from pycocotools import mask as coco_mask

from autolabel.contract import FrameResult

MATCH_IOU = 0.5
METRICS = ("mota", "idf1", "num_switches", "num_false_positives", "num_misses", "num_objects", "num_unique_objects",
           "mostly_tracked", "num_fragmentations")


def _iou(boxes: list[list[float]], truth: list[list[float]]) -> np.ndarray:
    """IoU of xywh boxes (rows) against xywh ground truth (columns), by pycocotools."""
    if not boxes or not truth:
        return np.zeros((len(boxes), len(truth)))
    return np.asarray(coco_mask.iou(boxes, truth, [0] * len(truth)), dtype=float).reshape(len(boxes), len(truth))


def tracking_scores(truth: dict[str, Any], results: Sequence[FrameResult]) -> dict[str, float]:
    """motmetrics' scores of the boxes on a track (``track_id`` set) in ``results``, frame by frame
    (matched to the ground truth's images by ``frame_index``), at IoU 0.5. A box that matches only
    ground truth marked iscrowd counts neither way, as in COCO evaluation."""
    images = {image["id"]: image["frame_index"] for image in truth["images"]}
    by_frame: dict[int, list[dict[str, Any]]] = {}
    for annotation in truth["annotations"]:
        by_frame.setdefault(images[annotation["image_id"]], []).append(annotation)
    accumulator = motmetrics.MOTAccumulator(auto_id=True)
    for result in results:
        annotations = by_frame.get(result.frame_index, [])
        counted = [a for a in annotations if not a["iscrowd"]]
        crowd = [a for a in annotations if a["iscrowd"]]
        hyps = [d for d in result.detections if d.track_id is not None]
        boxes = [list(d.xywh()) for d in hyps]
        on_counted = _iou(boxes, [a["bbox"] for a in counted])
        on_crowd = _iou(boxes, [a["bbox"] for a in crowd])
        keep = [i for i in range(len(hyps))
                if not (crowd and on_crowd[i].max() >= MATCH_IOU and not (counted and on_counted[i].max() >= MATCH_IOU))]
        iou = on_counted[keep].T if keep else np.zeros((len(counted), 0))
        # motmetrics 1.4.0's own IoU helper calls np.asfarray, gone in NumPy 2: the distances are made
        # here from pycocotools' IoU; the matching and the metrics are motmetrics'.
        distances = np.where(iou >= MATCH_IOU, 1.0 - iou, np.nan)
        accumulator.update([a["track_id"] for a in counted], [hyps[i].track_id for i in keep], distances)
    summary = motmetrics.metrics.create().compute(accumulator, metrics=list(METRICS), name="video")
    return {name: float(summary[name].iloc[0]) for name in METRICS}
