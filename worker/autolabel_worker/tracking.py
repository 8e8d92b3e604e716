"""Links a job's detections across its frames into tracks, on CPU, when the job is finalized.

The linking is OC-SORT as implemented by Roboflow's ``trackers`` package (``OCSORTTracker``; why
that library and that algorithm rather than its ByteTrack: docs/results.md). One tracker runs per
class, so a track keeps one label (CVAT and Label Studio tracks have one) and two crossing objects
of different classes never swap ids.
The tracker steps once per labeled frame, whatever the time between them: frames dropped as
near-duplicates stood still, and sampled frames are evenly spaced.

The tracker gives a new track its id only from the track's second box; a labeling export needs the
first one too, so it is given its track's id once the track has one (the tracklet starts at exactly
that box). A box the tracker puts on no track (a box below HIGH_SCORE, which OC-SORT never
associates, a box whose track never got a second one) keeps ``track_id`` null: it stays in the
frame's results and in COCO, and is left out of the track exports; such boxes are mostly false
detections (docs/results.md).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from importlib.metadata import version

import numpy as np
import supervision as sv
from trackers import OCSORTTracker

from autolabel.contract import FrameResult
from autolabel.exports import TrackingSummary

# A lost track is kept this many labeled frames for its object to come back (an occlusion at a
# crossing); a longer wait lets a track that left the frame take over an object entering nearby.
LOST_FRAMES = 10
# Boxes at or above this score are associated and may start tracks; lower ones (down to the job's
# score threshold, 0.3 by default) stay on no track.
HIGH_SCORE = 0.5
MIN_IOU = 0.1  # of a track's predicted box and a box, to link them

PARAMETERS = {"lost_frames": LOST_FRAMES, "high_score": HIGH_SCORE, "min_iou": MIN_IOU}


def _tracker() -> OCSORTTracker:
    # frame_rate 30 makes lost_track_buffer a count of steps: one step per labeled frame.
    return OCSORTTracker(lost_track_buffer=LOST_FRAMES, frame_rate=30.0, minimum_consecutive_frames=1,
                         minimum_iou_threshold=MIN_IOU, high_conf_det_threshold=HIGH_SCORE)


def link_tracks(results: Sequence[FrameResult]) -> tuple[list[FrameResult], TrackingSummary]:
    """``results`` in frame order, each detection given a ``track_id`` (1, 2, ... in order of first
    appearance); and what was done. Earlier track ids on the input are ignored."""
    started = time.perf_counter()
    # (position of the frame, index of the detection in it) -> (class id, the tracker's id)
    assigned: dict[tuple[int, int], tuple[int, int]] = {}
    trackers: dict[int, OCSORTTracker] = {}
    firsts: dict[int, dict[int, tuple[object, tuple[int, int]]]] = {}  # class -> id(tracklet) -> (it, first box)
    for position, result in enumerate(results):
        by_class: dict[int, list[int]] = {}
        for index, det in enumerate(result.detections):
            by_class.setdefault(det.class_id, []).append(index)
        for class_id in sorted(set(by_class) | set(trackers)):
            tracker = trackers.setdefault(class_id, _tracker())
            indices = by_class.get(class_id, [])
            dets = [result.detections[i] for i in indices]
            known = {id(t) for t in tracker.tracks}
            out = tracker.update(sv.Detections(
                xyxy=np.array([d.box for d in dets], dtype=float).reshape(-1, 4),
                confidence=np.array([d.score for d in dets], dtype=float),
                data={"index": np.array(indices, dtype=int)}))
            spawned = firsts.setdefault(class_id, {})
            for box, index, tracker_id in zip(out.xyxy, out.data.get("index", ()), out.tracker_id):
                if tracker_id >= 0:
                    assigned[(position, int(index))] = (class_id, int(tracker_id))
                    continue
                for tracklet in tracker.tracks:
                    if id(tracklet) not in known and id(tracklet) not in spawned and np.allclose(
                            tracklet.get_state_bbox(), box, rtol=0, atol=0.01):
                        spawned[id(tracklet)] = (tracklet, (position, int(index)))
                        break
            for tracklet in tracker.tracks:
                first = spawned.get(id(tracklet))
                if first is not None and first[0] is tracklet and tracklet.tracker_id >= 0:
                    assigned[first[1]] = (class_id, int(tracklet.tracker_id))
                    del spawned[id(tracklet)]
            alive = {id(t) for t in tracker.tracks}
            for key in [key for key in spawned if key not in alive]:
                del spawned[key]  # a tracklet dropped before it got an id: its first box stands alone
    global_ids: dict[tuple[int, int], int] = {}
    linked = []
    for position, result in enumerate(results):
        detections = []
        for index, det in enumerate(result.detections):
            key = assigned.get((position, index))
            track_id = None if key is None else global_ids.setdefault(key, len(global_ids) + 1)
            detections.append(det.model_copy(update={"track_id": track_id}))
        linked.append(result.model_copy(update={"detections": tuple(detections)}))
    summary = TrackingSummary(tracker=f"trackers {version('trackers')} OCSORTTracker, one per class",
                              parameters={k: float(v) for k, v in PARAMETERS.items()}, tracks=len(global_ids),
                              untracked=sum(1 for r in linked for d in r.detections if d.track_id is None),
                              seconds=round(time.perf_counter() - started, 3))
    return linked, summary
